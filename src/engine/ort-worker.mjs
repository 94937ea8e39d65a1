// The worker thread that owns one ONNX Runtime session. onnxruntime-node's run() is a synchronous
// native call (wrapped in setImmediate), so running it on the JS thread would stall every other
// request for the whole inference; here it stalls only this worker.
// It also keeps the session's resident tensors (src/engine/resident.ts): arrays that stay in this
// thread between runs, fed to runs by handle and written with a run's output rows (the LLM's KV
// cache), so they never cross to the parent.
// Plain JavaScript on purpose: a worker starts without the parent's TypeScript loader, so this file
// runs as-is from src/ (tests) and from the installed package. The message types live in
// onnxruntime.ts (ToWorker, FromWorker); the parent checks every request before it comes here.
import { parentPort, workerData } from 'node:worker_threads';
import * as ort from 'onnxruntime-node';

const post = (m, transfer = []) => parentPort.postMessage(m, transfer);

const ARRAYS = {
  float32: Float32Array,
  float16: Uint16Array,
  int64: BigInt64Array,
  int32: Int32Array,
  int8: Int8Array,
  uint8: Uint8Array,
  bool: Uint8Array,
};

/** handle -> { dtype, dims, data } */
const resident = new Map();

const count = (dims) => dims.reduce((a, b) => a * b, 1);

function held(handle) {
  const t = resident.get(handle);
  if (!t) throw new Error(`resident tensor #${handle} is not held by this worker`);
  return t;
}

/**
 * Copies `rows` rows along `axis` from src (at srcOffset) into dst (at dstOffset): for every index
 * of the axes before `axis`, one contiguous block of rows x (product of the later axes).
 */
function copyRows(src, srcDims, dst, dstDims, axis, rows, srcOffset, dstOffset) {
  const same = srcDims.length === dstDims.length && srcDims.every((d, i) => i === axis || d === dstDims[i]);
  if (!same || srcOffset + rows > srcDims[axis] || dstOffset + rows > dstDims[axis]) {
    throw new Error(`rows [${srcDims}] along axis ${axis} do not fit [${dstDims}] at row ${dstOffset}`);
  }
  const inner = count(srcDims.slice(axis + 1));
  const outer = count(srcDims.slice(0, axis));
  for (let o = 0; o < outer; o++) {
    const s = (o * srcDims[axis] + srcOffset) * inner;
    dst.set(src.subarray(s, s + rows * inner), (o * dstDims[axis] + dstOffset) * inner);
  }
}

async function main() {
  const { file, options } = workerData;
  let session;
  try {
    session = await ort.InferenceSession.create(file, options);
  } catch (err) {
    post({ type: 'error', message: err.message });
    return;
  }
  post({
    type: 'ready',
    inputNames: [...session.inputNames],
    outputNames: [...session.outputNames],
    inputMetadata: [...session.inputMetadata],
  });
  // Requests run one after the other in arrival order: a copy or a run that reads a resident
  // tensor sees every write sent before it.
  let queue = Promise.resolve();
  parentPort.on('message', (msg) => {
    if (msg.type === 'dispose') {
      // Runs already received go first (their native call may not have started yet): releasing
      // under them, or the parent terminating this thread inside one, aborts the whole process.
      void queue
        .then(() => session.release())
        .finally(() => {
          resident.clear();
          post({ type: 'disposed' });
        });
      return;
    }
    if (msg.type === 'crash') {
      // Tests only: die the way a crash kills a worker (now, or on the next run so that it dies
      // with a run in flight), so the parent's recovery is tested for real.
      if (msg.atNextRun) crashOnRun = msg.how;
      else crash(msg.how);
      return;
    }
    if (msg.type === 'release') {
      for (const h of msg.handles) resident.delete(h);
      return;
    }
    if (msg.type === 'run' && crashOnRun) return crash(crashOnRun);
    queue = queue.then(() => answer(msg.id, () => handle(session, msg)));
  });
}

let crashOnRun;

function crash(how) {
  if (how === 'exit') process.exit(70); // in a worker this ends only the worker's thread
  setImmediate(() => {
    throw new Error('crash requested by a test');
  });
}

/** Runs one request and posts its result or its error. */
async function answer(id, fn) {
  try {
    const { outputs, transfer } = await fn();
    try {
      post({ type: 'result', id, outputs }, transfer);
    } catch {
      post({ type: 'result', id, outputs }); // a buffer that cannot move is copied instead
    }
  } catch (err) {
    post({ type: 'error', id, message: err.message });
  }
}

async function handle(session, msg) {
  switch (msg.type) {
    case 'run':
      return run(session, msg);
    case 'allocate':
      for (const t of msg.tensors) {
        resident.set(t.handle, { dtype: t.dtype, dims: t.dims, data: new ARRAYS[t.dtype](count(t.dims)) });
      }
      return { outputs: {}, transfer: [] };
    case 'copy':
      for (const c of msg.copies) {
        const from = held(c.from);
        const to = held(c.to);
        copyRows(from.data, from.dims, to.data, to.dims, c.axis, c.rows, c.fromOffset, c.toOffset);
      }
      return { outputs: {}, transfer: [] };
    case 'read': {
      const t = held(msg.handle);
      const data = t.data.slice();
      return { outputs: { tensor: { dtype: t.dtype, dims: t.dims, data } }, transfer: [data.buffer] };
    }
    default:
      throw new Error(`unknown request '${msg.type}'`);
  }
}

async function run(session, msg) {
  const inputs = {};
  for (const [name, t] of Object.entries(msg.feeds)) inputs[name] = new ort.Tensor(t.dtype, t.data, t.dims);
  for (const [name, h] of Object.entries(msg.resident)) {
    const t = held(h);
    inputs[name] = new ort.Tensor(t.dtype, t.data, t.dims); // wraps the array: no copy
  }
  const results = await session.run(inputs);
  const outputs = {};
  const transfer = [];
  for (const [name, v] of Object.entries(results)) {
    const w = msg.writes[name];
    if (w) {
      const to = held(w.handle);
      if (v.type !== to.dtype) throw new Error(`output '${name}' is ${v.type}, the resident tensor ${to.dtype}`);
      copyRows(v.data, v.dims, to.data, to.dims, w.axis, v.dims[w.axis], 0, w.offset);
      continue;
    }
    outputs[name] = { dtype: v.type, dims: [...v.dims], data: v.data };
    // Hand the output buffers over instead of copying them, when they are plain and unshared.
    if (v.data.buffer instanceof ArrayBuffer && !transfer.includes(v.data.buffer)) transfer.push(v.data.buffer);
  }
  return { outputs, transfer };
}

void main();
