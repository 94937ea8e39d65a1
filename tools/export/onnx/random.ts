/**
 * Seeded weights. mulberry32 uses only integer arithmetic, and the values are scaled with exact
 * IEEE operations (no log/cos), so a seed gives the same bits on every machine and Node version.
 */
export class Rng {
  private state: number;

  constructor(seed: number) {
    this.state = seed >>> 0;
  }

  /** Uniform in [0, 1). */
  next(): number {
    let t = (this.state = (this.state + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** A new generator for one tensor, so adding a weight never shifts the values of the others. */
  fork(label: string): Rng {
    let h = this.state ^ 0x9e3779b9;
    for (let i = 0; i < label.length; i++) h = Math.imul(h ^ label.charCodeAt(i), 0x01000193) >>> 0;
    return new Rng(h);
  }

  /** n values, uniform with mean 0 and standard deviation `std`. */
  uniform(n: number, std: number): Float32Array {
    const half = std * Math.sqrt(3); // uniform on [-a, a] has std a / sqrt(3)
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = (this.next() * 2 - 1) * half;
    return out;
  }
}
