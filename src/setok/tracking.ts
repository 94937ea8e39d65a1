/**
 * Token ids across frames: a token keeps the id of the previous frame's token it overlaps most
 * (patches in common); a previous id goes to at most one new token, the largest overlap first
 * (then the lower new index, then the lower previous index); the rest get fresh ids.
 */
export interface TrackState {
  labels: Int32Array;
  ids: Int32Array;
}

export function assignIds(
  labels: Int32Array,
  count: number,
  prev: TrackState | undefined,
  nextId: () => number,
): Int32Array {
  const ids = new Int32Array(count).fill(-1);
  if (prev && prev.labels.length === labels.length) {
    const pc = prev.ids.length;
    const overlap = new Int32Array(count * pc);
    for (let p = 0; p < labels.length; p++) overlap[labels[p]! * pc + prev.labels[p]!]! += 1;
    const pairs: number[] = [];
    for (let i = 0; i < overlap.length; i++) if (overlap[i]! > 0) pairs.push(i);
    pairs.sort((a, b) => overlap[b]! - overlap[a]! || a - b); // a - b: new index, then previous index
    const prevTaken = new Uint8Array(pc);
    for (const pair of pairs) {
      const m = Math.floor(pair / pc);
      const q = pair % pc;
      if (ids[m] !== -1 || prevTaken[q]) continue;
      ids[m] = prev.ids[q]!;
      prevTaken[q] = 1;
    }
  }
  for (let m = 0; m < count; m++) if (ids[m] === -1) ids[m] = nextId();
  return ids;
}
