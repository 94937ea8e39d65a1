/**
 * The backend registry (after onnxruntime-common's): backends with priorities, each initialised
 * lazily and once; a stage opens on the highest-priority backend that is available and has a file
 * for it, and falls back to the next. When none can, one BACKEND_UNAVAILABLE says why each failed.
 */
import { ErrorCodes, SetokimError } from '../errors.js';
import type { Backend, Session, SessionOptions } from './backend.js';
import type { StageSignature } from './contract.js';
import { OrtBackend, type OrtBackendOptions } from './onnxruntime.js';
import { TensorRtBackend, type TensorRtBackendOptions } from './tensorrt.js';

/** Everything a model set offers for one stage; each backend takes the file it can run. */
export interface StageSource {
  stage: string;
  /** The ONNX graph (ONNX Runtime; also what a TensorRT engine is built from). */
  onnx?: string;
  /** A TensorRT plan built for this machine (its manifest lies beside it). */
  engine?: string;
  signature?: StageSignature;
}

/** Picks the file a backend opens from a stage's source; undefined when the set has none for it. */
export type SourcePicker = (source: StageSource) => string | undefined;

/** A backend may say why it is unavailable; the registry puts that in the combined error. */
export interface ExplainsAvailability {
  unavailableReason(): Promise<string>;
}

export interface Attempt {
  backend: string;
  reason: string;
}

export interface StageOpenOptions extends Omit<SessionOptions, 'signature' | 'stage'> {
  /** Only these backends, by name (e.g. from a CLI --backend flag). */
  only?: readonly string[];
  /** Called for each backend passed over, before the one that opened. */
  onSkip?: (attempt: Attempt) => void;
}

interface Entry {
  backend: Backend;
  pick: SourcePicker;
  probe?: Promise<string | undefined>; // undefined: available; otherwise why not
}

const explains = (b: Backend): b is Backend & ExplainsAvailability =>
  typeof (b as Partial<ExplainsAvailability>).unavailableReason === 'function';

export class BackendRegistry {
  private readonly entries: Entry[] = [];

  /** Registers a backend; a second one with the same name replaces the first. */
  register(backend: Backend, pick: SourcePicker): this {
    const i = this.entries.findIndex((e) => e.backend.name === backend.name);
    if (i >= 0) this.entries.splice(i, 1);
    this.entries.push({ backend, pick });
    this.entries.sort((a, b) => b.backend.priority - a.backend.priority);
    return this;
  }

  /** Registered backends, highest priority first. */
  backends(): readonly Backend[] {
    return this.entries.map((e) => e.backend);
  }

  /** Why a backend is unavailable, or undefined when it is available. Probed once per backend. */
  whyUnavailable(name: string): Promise<string | undefined> {
    const e = this.entries.find((x) => x.backend.name === name);
    if (!e) return Promise.resolve(`no backend named '${name}' is registered`);
    e.probe ??= probe(e.backend);
    return e.probe;
  }

  /** Names of the backends that can run on this machine, highest priority first. */
  async availableBackends(): Promise<string[]> {
    const out: string[] = [];
    for (const e of this.entries)
      if ((await this.whyUnavailable(e.backend.name)) === undefined) out.push(e.backend.name);
    return out;
  }

  /** Opens a stage on the best backend that can; throws one BACKEND_UNAVAILABLE listing every reason. */
  async open(source: StageSource, options: StageOpenOptions = {}): Promise<Session> {
    const { only, onSkip, ...sessionOptions } = options;
    const tried: Attempt[] = [];
    const skip = (backend: string, reason: string) => {
      const a = { backend, reason };
      tried.push(a);
      onSkip?.(a);
    };
    if (only) {
      const unknown = only.filter((n) => !this.entries.some((e) => e.backend.name === n));
      if (unknown.length) {
        throw new SetokimError(
          ErrorCodes.BAD_ARGUMENT,
          `unknown backend ${unknown.map((n) => `'${n}'`).join(', ')}; known: ${this.entries.map((e) => e.backend.name).join(', ')}`,
        );
      }
    }
    for (const e of this.entries) {
      const name = e.backend.name;
      if (only && !only.includes(name)) continue;
      const why = await this.whyUnavailable(name);
      if (why !== undefined) {
        skip(name, why);
        continue;
      }
      const file = e.pick(source);
      if (!file) {
        skip(name, `the model set has no ${name} file for this stage`);
        continue;
      }
      try {
        return await e.backend.open(file, { ...sessionOptions, stage: source.stage, signature: source.signature });
      } catch (err) {
        skip(
          name,
          err instanceof SetokimError ? `[${err.code}] ${err.message}` : String((err as Error)?.message ?? err),
        );
      }
    }
    const lines = tried.map((a) => `  - ${a.backend}: ${a.reason}`).join('\n');
    throw new SetokimError(
      ErrorCodes.BACKEND_UNAVAILABLE,
      `no backend can load stage '${source.stage}':\n${lines || '  (no backend registered)'}\n` +
        'Run `setokim doctor` to see what this build and machine support.',
    );
  }
}

async function probe(backend: Backend): Promise<string | undefined> {
  try {
    if (await backend.available()) return undefined;
    return explains(backend) ? await backend.unavailableReason() : `${backend.name} is not available on this machine`;
  } catch (err) {
    return `${backend.name} failed to initialise: ${(err as Error)?.message ?? String(err)}`;
  }
}

/** TensorRT (engines, when the addon has it and a GPU is present) over ONNX Runtime CPU (ONNX graphs). */
export function createDefaultRegistry(
  options: { ort?: OrtBackendOptions; tensorrt?: TensorRtBackendOptions } = {},
): BackendRegistry {
  return new BackendRegistry()
    .register(new TensorRtBackend(options.tensorrt), (s) => s.engine)
    .register(new OrtBackend(options.ort), (s) => s.onnx);
}
