/** Plain TypeScript (float64) references for the ONNX building blocks. */

export function layerNormRef(x: Float32Array, width: number, eps: number): Float64Array {
  const out = new Float64Array(x.length);
  for (let r = 0; r < x.length / width; r++) {
    let mean = 0;
    for (let c = 0; c < width; c++) mean += x[r * width + c]!;
    mean /= width;
    let v = 0;
    for (let c = 0; c < width; c++) v += (x[r * width + c]! - mean) ** 2;
    const inv = 1 / Math.sqrt(v / width + eps);
    for (let c = 0; c < width; c++) out[r * width + c] = (x[r * width + c]! - mean) * inv;
  }
  return out;
}

export function rmsNormRef(x: Float32Array, width: number, eps: number): Float64Array {
  const out = new Float64Array(x.length);
  for (let r = 0; r < x.length / width; r++) {
    let ms = 0;
    for (let c = 0; c < width; c++) ms += x[r * width + c]! ** 2;
    const inv = 1 / Math.sqrt(ms / width + eps);
    for (let c = 0; c < width; c++) out[r * width + c] = x[r * width + c]! * inv;
  }
  return out;
}

export const geluTanhRef = (x: number) => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3)));

/**
 * RoPE in HF LLaMA's rotate-half layout on x [heads, T, hd] for positions start..start+T-1:
 * out[i] = x[i] cos(p f_i') - x[i + hd/2] sin(...) for i < hd/2, x[i] cos + x[i - hd/2] sin above.
 */
export function ropeRef(
  x: Float32Array,
  heads: number,
  T: number,
  hd: number,
  start: number,
  theta: number,
): Float64Array {
  const out = new Float64Array(x.length);
  const half = hd / 2;
  for (let h = 0; h < heads; h++) {
    for (let t = 0; t < T; t++) {
      const base = (h * T + t) * hd;
      for (let i = 0; i < half; i++) {
        const ang = (start + t) * theta ** ((-2 * i) / hd);
        const a = x[base + i]!;
        const b = x[base + i + half]!;
        out[base + i] = a * Math.cos(ang) - b * Math.sin(ang);
        out[base + i + half] = b * Math.cos(ang) + a * Math.sin(ang);
      }
    }
  }
  return out;
}

/** softmax(q k^T / sqrt(hd) + mask) v per head; q [h, Sq, hd], k/v [h, Sk, hd], mask [Sq, Sk] additive. */
export function attentionRef(
  q: Float32Array,
  k: Float32Array,
  v: Float32Array,
  heads: number,
  Sq: number,
  Sk: number,
  hd: number,
  mask?: Float32Array,
): Float64Array {
  const out = new Float64Array(heads * Sq * hd);
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < Sq; i++) {
      const s = new Float64Array(Sk);
      let max = -Infinity;
      for (let j = 0; j < Sk; j++) {
        let dot = 0;
        for (let d = 0; d < hd; d++) dot += q[(h * Sq + i) * hd + d]! * k[(h * Sk + j) * hd + d]!;
        s[j] = dot / Math.sqrt(hd) + (mask ? mask[i * Sk + j]! : 0);
        max = Math.max(max, s[j]!);
      }
      let sum = 0;
      for (let j = 0; j < Sk; j++) sum += s[j] = Math.exp(s[j]! - max);
      for (let j = 0; j < Sk; j++) {
        for (let d = 0; d < hd; d++) out[(h * Sq + i) * hd + d] += (s[j]! / sum) * v[(h * Sk + j) * hd + d]!;
      }
    }
  }
  return out;
}
