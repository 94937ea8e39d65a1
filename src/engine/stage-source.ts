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
  const entry = set.manifest.stages[stage];
  const builds = set.variants(stage);
  const pick = precision ? builds.find((b) => b.precision === precision) : builds[0];
  const want = pick?.precision ?? precision ?? 'fp32';
  const source: StageSource = { stage, signature: entry?.signature };
  if (pick?.format === 'tensorrt') source.engine = path.join(set.dir, pick.file);
  else if (pick) source.onnx = path.join(set.dir, pick.file);
  const built = enginePlanPath(set.dir, stage, want);
  if (!source.engine && existsSync(built)) source.engine = built;
  return source;
}
