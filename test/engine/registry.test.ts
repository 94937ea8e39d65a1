import t from 'tap';
import type { Backend, Session } from '../../src/engine/backend.js';
import { tensor } from '../../src/engine/backend.js';
import { OrtBackend } from '../../src/engine/onnxruntime.js';
import { type Attempt, BackendRegistry, createDefaultRegistry } from '../../src/engine/registry.js';
import { tensorrtUnavailableReason } from '../../src/engine/tensorrt.js';
import { ADD_MATMUL_SIGNATURE, addMatMul, notOnnx, tmpDir } from './fixtures.js';
import { SetokimError } from '../../src/errors.js';

const dir = tmpDir();
const onnx = addMatMul(dir);

/** A backend that is never available, counting how often it is asked (lazy, once). */
class AbsentBackend implements Backend {
  probes = 0;
  constructor(
    readonly name: string,
    readonly priority: number,
    private readonly why: string,
  ) {}
  async available() {
    this.probes++;
    return false;
  }
  async unavailableReason() {
    return this.why;
  }
  async open(): Promise<Session> {
    throw new Error('never opened');
  }
}

t.test('the default registry orders TensorRT before ONNX Runtime', async (t) => {
  t.same(
    createDefaultRegistry()
      .backends()
      .map((b) => b.name),
    ['tensorrt', 'onnxruntime-cpu'],
  );
});

t.test(
  'a stage falls back to ONNX Runtime and reports why TensorRT was passed over',
  { skip: tensorrtUnavailableReason() === undefined && 'TensorRT is available here' },
  async (t) => {
    const skipped: Attempt[] = [];
    const reg = createDefaultRegistry();
    const s = await reg.open(
      { stage: 'add_matmul', onnx, engine: `${dir}/add_matmul.plan`, signature: ADD_MATMUL_SIGNATURE },
      { onSkip: (a) => skipped.push(a) },
    );
    t.teardown(() => s.dispose());
    t.equal(s.backend, 'onnxruntime-cpu');
    t.equal(skipped.length, 1);
    t.equal(skipped[0]!.backend, 'tensorrt');
    t.equal(skipped[0]!.reason, tensorrtUnavailableReason());
    t.same(await reg.availableBackends(), ['onnxruntime-cpu']);
    // The manifest's signature travels into the session.
    await t.rejects(s.run({ x: tensor('float32', new Float32Array(4), [1, 1, 4]) }), {
      code: 'BAD_INPUT',
      message: /stage 'add_matmul': missing input 'y'/,
    });
  },
);

t.test('one combined error lists why each backend could not load the stage', async (t) => {
  const reg = new BackendRegistry()
    .register(new AbsentBackend('tensorrt', 100, 'the addon was built without TensorRT'), (s) => s.engine)
    .register(new OrtBackend(), (s) => s.onnx);
  const err = await reg.open({ stage: 'encoder', onnx: notOnnx(dir) }).catch((e: unknown) => e);
  t.ok(err instanceof SetokimError);
  t.equal((err as SetokimError).code, 'BACKEND_UNAVAILABLE');
  const msg = (err as Error).message;
  t.match(msg, /no backend can load stage 'encoder'/);
  t.match(msg, /- tensorrt: the addon was built without TensorRT/);
  t.match(msg, /- onnxruntime-cpu: \[MODEL_INVALID\] stage 'encoder': ONNX Runtime cannot load .*broken\.onnx/);
  t.match(msg, /setokim doctor/);
  t.ok(msg.indexOf('tensorrt:') < msg.indexOf('onnxruntime-cpu:'), 'reasons in priority order');

  const none = await reg.open({ stage: 'llm' }).catch((e: Error) => e);
  t.match(none, {
    code: 'BACKEND_UNAVAILABLE',
    message: /onnxruntime-cpu: the model set has no onnxruntime-cpu file for this stage/,
  });
});

t.test('backends are probed lazily, once, and in priority order', async (t) => {
  const low = new AbsentBackend('low', 1, 'low is absent');
  const high = new AbsentBackend('high', 50, 'high is absent');
  const reg = new BackendRegistry().register(low, () => onnx).register(high, () => onnx);
  t.same(
    reg.backends().map((b) => b.name),
    ['high', 'low'],
  );
  t.equal(high.probes + low.probes, 0, 'registering probes nothing');
  for (let i = 0; i < 3; i++) await reg.open({ stage: 's' }).catch(() => undefined);
  t.equal(high.probes, 1);
  t.equal(low.probes, 1);
});

t.test('a backend whose probe throws is passed over with its message', async (t) => {
  const broken: Backend = {
    name: 'broken',
    priority: 200,
    available: async () => {
      throw new Error('driver exploded');
    },
    open: async () => {
      throw new Error('unreachable');
    },
  };
  const reg = new BackendRegistry().register(broken, () => onnx).register(new OrtBackend(), (s) => s.onnx);
  const skipped: Attempt[] = [];
  const s = await reg.open({ stage: 'add_matmul', onnx }, { onSkip: (a) => skipped.push(a) });
  t.teardown(() => s.dispose());
  t.equal(s.backend, 'onnxruntime-cpu');
  t.same(skipped, [{ backend: 'broken', reason: 'broken failed to initialise: driver exploded' }]);
});

t.test('only= restricts the backends and rejects unknown names', async (t) => {
  const reg = createDefaultRegistry();
  await t.rejects(reg.open({ stage: 'x', onnx }, { only: ['cuda-magic'] }), {
    code: 'BAD_ARGUMENT',
    message: /unknown backend 'cuda-magic'; known: tensorrt, onnxruntime-cpu/,
  });
  const err = await reg.open({ stage: 'x', onnx }, { only: ['tensorrt'] }).catch((e: Error) => e);
  if (tensorrtUnavailableReason() !== undefined) {
    t.match(err, { code: 'BACKEND_UNAVAILABLE', message: /tensorrt:/ });
    t.notMatch((err as Error).message, /onnxruntime-cpu/);
  }
});
