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

export function stageSource(set: ModelSet, stage: StageName, precision?: Precision): StageSource {
  const file = set.stagePath(stage, precision); // MODEL_NOT_FOUND for a missing stage or precision
  const pick = set.variants(stage).find((b) => path.join(set.dir, b.file) === file)!;
  const source: StageSource = { stage, signature: set.manifest.stages[stage]!.signature };
  if (pick.format === 'tensorrt') source.engine = file;
  else source.onnx = file;
  const built = enginePlanPath(set.dir, stage, pick.precision);
  if (!source.engine && existsSync(built)) source.engine = built;
  return source;
}
