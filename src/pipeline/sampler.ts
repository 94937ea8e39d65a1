/**
 * Next-token choice from one row of logits: greedy (temperature 0), or temperature + top-k +
 * top-p sampling with a seeded PRNG so that the same seed gives the same text.
 */
import { ErrorCodes, SetokimError } from '../errors.js';

/** mulberry32: small, fast, and fully determined by its 32-bit seed. */
export class Prng {
  private state: number;
  constructor(seed: number) {
    this.state = seed >>> 0;
  }
  /** Uniform in [0, 1). */
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** Standard normal (Box-Muller). */
  normal(): number {
    const u = 1 - this.next();
    const v = this.next();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  }
}

export interface SamplerParams {
  temperature: number; // 0 = greedy
  topK: number; // 0 = off
  topP: number; // 1 = off
  seed: number;
}

export function checkSamplerParams(p: SamplerParams): void {
  if (!(p.temperature >= 0) || !Number.isFinite(p.temperature))
    throw new SetokimError(ErrorCodes.BAD_ARGUMENT, `temperature must be >= 0, got ${p.temperature}`);
  if (!Number.isInteger(p.topK) || p.topK < 0)
    throw new SetokimError(ErrorCodes.BAD_ARGUMENT, `topK must be an integer >= 0, got ${p.topK}`);
  if (!(p.topP > 0 && p.topP <= 1))
    throw new SetokimError(ErrorCodes.BAD_ARGUMENT, `topP must be in (0, 1], got ${p.topP}`);
}

export class Sampler {
  readonly rng: Prng;
  constructor(readonly params: SamplerParams) {
    checkSamplerParams(params);
    this.rng = new Prng(params.seed);
  }

  /**
   * Picks a token from logits[offset .. offset+vocab). `allowed`, when given, restricts the choice
   * (used to keep generated images well formed: only `<target>` or `<im_end>` inside an image).
   */
  sample(logits: Float32Array, offset: number, vocab: number, allowed?: readonly number[]): number {
    const ids = allowed ?? null;
    const n = ids ? ids.length : vocab;
    const at = (i: number) => logits[offset + (ids ? ids[i]! : i)]!;
    const idOf = (i: number) => (ids ? ids[i]! : i);
    if (this.params.temperature === 0 || n === 1) {
      let best = 0;
      for (let i = 1; i < n; i++) if (at(i) > at(best)) best = i; // lowest id wins ties
      return idOf(best);
    }
    // Candidates: top-k by logit (all when k is 0), stable order by (logit desc, id asc).
    let order = Array.from({ length: n }, (_, i) => i);
    order.sort((a, b) => at(b) - at(a) || a - b);
    if (this.params.topK > 0 && this.params.topK < n) order = order.slice(0, this.params.topK);
    const invT = 1 / this.params.temperature;
    const top = at(order[0]!);
    const probs = order.map((i) => Math.exp((at(i) - top) * invT));
    let sum = probs.reduce((s, p) => s + p, 0);
    if (this.params.topP < 1) {
      let acc = 0;
      let keep = 0;
      while (keep < probs.length) {
        acc += probs[keep]! / sum;
        keep++;
        if (acc >= this.params.topP) break;
      }
      order = order.slice(0, keep);
      probs.length = keep;
      sum = probs.reduce((s, p) => s + p, 0);
    }
    let r = this.rng.next() * sum;
    for (let i = 0; i < probs.length; i++) {
      r -= probs[i]!;
      if (r < 0) return idOf(order[i]!);
    }
    return idOf(order[order.length - 1]!);
  }
}

/**
 * Stop strings over streamed text: holds back text that could be the start of a stop string, so a
 * stop string never reaches the client.
 */
export class StopMatcher {
  private pending = '';
  constructor(private readonly stops: readonly string[]) {}

  /** Feeds new text; returns what is safe to emit, and whether a stop string was hit. */
  push(delta: string): { emit: string; stopped: boolean } {
    const text = this.pending + delta;
    let cut = -1;
    for (const s of this.stops) {
      if (!s) continue;
      const i = text.indexOf(s);
      if (i >= 0 && (cut < 0 || i < cut)) cut = i;
    }
    if (cut >= 0) {
      this.pending = '';
      return { emit: text.slice(0, cut), stopped: true };
    }
    // Keep the longest suffix that is a prefix of some stop string.
    let hold = 0;
    for (const s of this.stops) {
      for (let k = Math.min(s.length - 1, text.length); k > hold; k--) {
        if (text.endsWith(s.slice(0, k))) {
          hold = k;
          break;
        }
      }
    }
    this.pending = text.slice(text.length - hold);
    return { emit: text.slice(0, text.length - hold), stopped: false };
  }

  /** The held-back text once generation ends without a stop string. */
  flush(): string {
    const rest = this.pending;
    this.pending = '';
    return rest;
  }
}
