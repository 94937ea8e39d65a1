/** Declares a stage graph's inputs and outputs straight from the contract, so they cannot drift. */
import { stageSignature, type Architecture, type StageName } from '../../../src/engine/contract.js';
import { Model } from '../onnx/layers.js';
import { Rng } from '../onnx/random.js';

export interface StageGraph {
  model: Model;
  inputs: Record<string, string>;
  /** Call once with a value for every contract output. */
  finish(outputs: Record<string, string>): Model;
}

export function stageGraph(stage: StageName, a: Architecture, rng: Rng): StageGraph {
  const sig = stageSignature(stage, a);
  const model = new Model(stage, rng.fork(stage));
  const inputs: Record<string, string> = {};
  for (const t of sig.inputs) inputs[t.name] = model.g.input(t.name, t.dtype, t.shape);
  return {
    model,
    inputs,
    finish(outputs) {
      for (const t of sig.outputs) {
        const v = outputs[t.name];
        if (!v) throw new Error(`stage ${stage}: no value for output ${t.name}`);
        model.g.output(t.name, v, t.dtype, t.shape);
      }
      return model;
    },
  };
}
