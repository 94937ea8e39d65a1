/** The graph builder writes a well-formed ModelProto: raw little-endian initializers, symbolic dims, stable names. */
import t from 'tap';
import { GraphBuilder, IR_VERSION, OPSET } from '../../tools/export/onnx/builder.js';
import { decodeModel, f32, run } from './helpers.js';

function tinyGraph() {
  const g = new GraphBuilder('demo');
  const x = g.input('x', 'float32', ['N', 3]);
  const w = g.scope('lin', () => g.weight('weight', Float32Array.from([1, 2, 3, 4, 5, 6, -1.5, 0.25, 1e-20]), [3, 3]));
  const y = g.op('Add', [g.op('MatMul', [x, w]), g.scalar(1)]);
  g.output('y', y, 'float32', ['N', 3]);
  return g;
}

t.test('initializers are raw little-endian float32 with scoped names', async (t) => {
  const m = decodeModel(tinyGraph().encode());
  t.equal(Number(m.irVersion), IR_VERSION);
  t.equal(Number(m.opsetImport[0]!.version), OPSET);
  const w = m.graph!.initializer!.find((i) => i.name === 'lin/weight')!;
  t.ok(w, 'scoped name');
  t.same(w.dims!.map(Number), [3, 3]);
  t.equal(w.floatData?.length ?? 0, 0, 'no float_data: raw_data only');
  const raw = w.rawData!;
  const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  t.same(
    Array.from({ length: 9 }, (_, i) => view.getFloat32(i * 4, true)),
    Array.from(Float32Array.from([1, 2, 3, 4, 5, 6, -1.5, 0.25, 1e-20])),
  );
  t.same(
    m.graph!.input![0]!.type!.tensorType!.shape!.dim!.map((d) => d.dimParam || Number(d.dimValue)),
    ['N', 3],
  );
});

t.test('the graph runs and the same calls give the same bytes', async (t) => {
  const y = await run(tinyGraph().encode(), { x: f32([1, 0, 0, 0, 1, 1], [2, 3]) });
  t.same(Array.from(y.y!.data as Float32Array), [2, 3, 4, Math.fround(3.5), Math.fround(6.25), 7]);
  t.same(Buffer.from(tinyGraph().encode()), Buffer.from(tinyGraph().encode()));
});

t.test('shared constants are created once; duplicate names are refused', async (t) => {
  const g = new GraphBuilder('c');
  t.equal(g.ints([1, 2]), g.ints([1, 2]));
  t.not(g.ints([1, 2]), g.ints([1, 2], [2, 1]));
  t.equal(
    g.scope('a', () => g.scalar(2)),
    g.scalar(2),
    'constants live at the root scope',
  );
  g.input('x', 'float32', [1]);
  t.throws(() => g.input('x', 'float32', [1]), /duplicate/);
  t.throws(() => g.weight('w', new Float32Array(3), [2, 2]), /3 values for dims \[2,2\]/);
});
