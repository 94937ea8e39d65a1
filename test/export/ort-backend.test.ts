/** A synthesised set through the engine layer: ModelSet -> OrtBackend with the manifest's signatures. */
import t from 'tap';
import { tensor } from '../../src/engine/backend.js';
import { headDim, STAGES } from '../../src/engine/contract.js';
import { ModelSet } from '../../src/engine/modelset.js';
import { OrtBackend } from '../../src/engine/onnxruntime.js';
import { synthesize } from '../../tools/export/synth.js';
import { randn } from './helpers.js';

t.test('every tiny stage opens in the ONNX Runtime backend; the LLM runs prefill then decode', async (t) => {
  const dir = t.testdir();
  await synthesize({ config: 'tiny', seed: 2, out: dir });
  const set = await ModelSet.open(dir);
  const ort = new OrtBackend({ threads: 1 });
  for (const stage of STAGES) {
    const s = await ort.open(set.stagePath(stage), { stage, signature: set.manifest.stages[stage]!.signature });
    t.same(
      [...s.inputNames],
      set.manifest.stages[stage]!.signature.inputs.map((i) => i.name),
      stage,
    );
    await s.dispose();
  }
  const a = set.architecture;
  const { hidden: H, layers, kvHeads } = a.llm;
  const hd = headDim(a);
  const llm = await ort.open(set.stagePath('llm'), { stage: 'llm', signature: set.manifest.stages.llm!.signature });
  t.teardown(() => llm.dispose());
  const cache = (rows: number, length: number) => ({
    past_length: tensor('int64', BigInt64Array.from([BigInt(length)]), [1]),
    ...Object.fromEntries(
      ['past_keys', 'past_values'].flatMap((n) =>
        Array.from({ length: layers }, (_, l) => [
          `${n}.${l}`,
          tensor('float32', new Float32Array(kvHeads * rows * hd), [1, kvHeads, rows, hd]),
        ]),
      ),
    ),
  });
  const pre = await llm.run({ inputs_embeds: tensor('float32', randn(4 * H, 1), [1, 4, H]), ...cache(0, 0) });
  t.same(pre['new_keys.0']!.dims, [1, kvHeads, 4, hd]);
  const dec = await llm.run({ inputs_embeds: tensor('float32', randn(H, 2), [1, 1, H]), ...cache(8, 4) });
  t.same(dec[`new_values.${layers - 1}`]!.dims, [1, kvHeads, 1, hd]);
  t.same(dec.logits!.dims, [1, 1, a.llm.vocab]);
  await t.rejects(llm.run({ inputs_embeds: tensor('float32', randn(2 * 3, 3), [1, 2, 3]), ...cache(0, 0) }), {
    code: 'BAD_INPUT',
  });
});
