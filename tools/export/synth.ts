/**
 * `export synth`: writes a complete reference model set (every stage as an ONNX graph with seeded
 * weights, plus manifest.json). The same config and seed give byte-identical files everywhere.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { STAGES, stageSignature, type StageName } from '../../src/engine/contract.js';
import {
  MANIFEST_FILE,
  MANIFEST_FORMAT,
  MANIFEST_VERSION,
  parseManifest,
  serializeManifest,
  sha256Bytes,
  type Manifest,
  type ManifestInput,
} from '../../src/engine/manifest.js';
import { CONFIGS, type SynthConfigName } from './configs.js';
import { Rng } from './onnx/random.js';
import { STAGE_BUILDERS } from './stages/index.js';

export interface SynthOptions {
  config: SynthConfigName;
  seed: number;
  out: string;
  /** Called before each stage is built and once at the end (stage undefined). */
  onProgress?: (e: SynthProgress) => void;
}

export interface SynthProgress {
  stage?: StageName;
  done: number;
  total: number;
  /** Parameters and bytes of the stage just written. */
  params?: number;
  bytes?: number;
}

export const modelSetId = (config: string, seed: number) => `setokim-${config}-seed${seed}`;

export async function synthesize(opts: SynthOptions): Promise<Manifest> {
  const a = CONFIGS[opts.config];
  const stages = STAGES;
  const root = new Rng(opts.seed);
  await mkdir(opts.out, { recursive: true });
  const manifest: ManifestInput = {
    format: MANIFEST_FORMAT,
    formatVersion: MANIFEST_VERSION,
    id: modelSetId(opts.config, opts.seed),
    description: `Setokim reference model set "${opts.config}" with seeded random weights (seed ${opts.seed}); real architecture, no trained weights.`,
    architecture: a,
    stages: {},
  };
  let done = 0;
  for (const stage of stages) {
    opts.onProgress?.({ stage, done, total: stages.length });
    const model = STAGE_BUILDERS[stage](a, root);
    const bytes = model.g.encode(`setokim ${opts.config} ${stage}, seed ${opts.seed}`);
    const file = `${stage}.onnx`;
    await writeFile(join(opts.out, file), bytes);
    manifest.stages[stage] = {
      file,
      format: 'onnx',
      sha256: sha256Bytes(bytes),
      bytes: bytes.length,
      precision: 'fp32',
      signature: stageSignature(stage, a),
      variants: [],
    };
    done++;
    opts.onProgress?.({ stage, done, total: stages.length, params: model.g.parameterCount(), bytes: bytes.length });
  }
  const parsed = parseManifest(manifest, join(opts.out, MANIFEST_FILE));
  await writeFile(join(opts.out, MANIFEST_FILE), serializeManifest(manifest));
  return parsed;
}
