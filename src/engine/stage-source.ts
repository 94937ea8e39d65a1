/**
 * What a model set offers the registry for one stage: its ONNX graph (portable, in manifest.json)
 * and, when one was built on this machine, a TensorRT engine under `<set>/engines/`.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import type { StageName } from './contract.js';
import { enginePlanPath } from './engine-builder.js';
import type { Precision } from './manifest.js';
import type { ModelSet } from './modelset.js';
import type { StageSource } from './registry.js';

/**
 * ONNX Runtime opens the `precision` build written for it (or for every backend), else the main
 * file; TensorRT the engine built from the TensorRT build (or from the main file). A precision no
 * build of the stage has is MODEL_NOT_FOUND.
 */
export function stageSource(set: ModelSet, stage: StageName, precision?: Precision): StageSource {
  // MODEL_NOT_FOUND for a missing stage or precision
  set.stagePath(stage, precision, set.pick(stage, precision, 'onnxruntime') ? 'onnxruntime' : 'tensorrt');
  const main = set.pick(stage)!;
  const ort = set.pick(stage, precision, 'onnxruntime') ?? main;
  const trt = set.pick(stage, precision, 'tensorrt') ?? main;
  const source: StageSource = { stage, signature: set.manifest.stages[stage]!.signature };
  if (ort.format === 'onnx') source.onnx = path.join(set.dir, ort.file);
  if (trt.format === 'tensorrt') source.engine = path.join(set.dir, trt.file);
  const built = enginePlanPath(set.dir, stage, trt.precision);
  if (!source.engine && existsSync(built)) source.engine = built;
  return source;
}
