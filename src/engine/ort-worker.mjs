// The worker thread that owns one ONNX Runtime session. onnxruntime-node's run() is a synchronous
// native call (wrapped in setImmediate), so running it on the JS thread would stall every other
// request for the whole inference; here it stalls only this worker.
// Plain JavaScript on purpose: a worker starts without the parent's TypeScript loader, so this file
// runs as-is from src/ (tests) and from the installed package. The message types live in
// onnxruntime.ts (ToWorker, FromWorker).
import { parentPort, workerData } from 'node:worker_threads';
import * as ort from 'onnxruntime-node';

const post = (m, transfer = []) => parentPort.postMessage(m, transfer);

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
  const running = new Set();
  parentPort.on('message', (msg) => {
    if (msg.type === 'dispose') {
      // Runs already received go first (their native call may not have started yet): releasing
      // under them, or the parent terminating this thread inside one, aborts the whole process.
      Promise.allSettled([...running])
        .then(() => session.release())
        .finally(() => post({ type: 'disposed' }));
      return;
    }
    if (msg.type === 'crash') {
      // Tests only: die the way a crash kills a worker (now, or on the next run so that it dies
      // with a run in flight), so the parent's recovery is tested for real.
      if (msg.atNextRun) crashOnRun = msg.how;
      else crash(msg.how);
      return;
    }
    if (crashOnRun) return crash(crashOnRun);
    const done = run(session, msg.id, msg.feeds);
    running.add(done);
    void done.finally(() => running.delete(done));
  });
}

let crashOnRun;

function crash(how) {
  if (how === 'exit') process.exit(70); // in a worker this ends only the worker's thread
  setImmediate(() => {
    throw new Error('crash requested by a test');
  });
}

async function run(session, id, feeds) {
  try {
    const inputs = {};
    for (const [name, t] of Object.entries(feeds)) inputs[name] = new ort.Tensor(t.dtype, t.data, t.dims);
    const results = await session.run(inputs);
    const outputs = {};
    const transfer = [];
    for (const [name, v] of Object.entries(results)) {
      outputs[name] = { dtype: v.type, dims: [...v.dims], data: v.data };
      // Hand the output buffers over instead of copying them, when they are plain and unshared.
      if (v.data.buffer instanceof ArrayBuffer && !transfer.includes(v.data.buffer)) transfer.push(v.data.buffer);
    }
    try {
      post({ type: 'result', id, outputs }, transfer);
    } catch {
      post({ type: 'result', id, outputs }); // a buffer that cannot move is copied instead
    }
  } catch (err) {
    post({ type: 'error', id, message: err.message });
  }
}

void main();
