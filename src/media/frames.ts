/**
 * Raw RGB frames cut from a media tool's stdout, in a fixed set of reused buffers: the memory a
 * stream holds does not grow with its length (the complaint about camera VLMs: memory creeping on
 * long video). At most three frames exist per source: one being filled, one waiting for the
 * consumer, one the consumer holds.
 */

/** One frame: interleaved RGB, width x height x 3 bytes. */
export interface Frame {
  rgb: Uint8Array;
  width: number;
  height: number;
  /** Number of the frame in the source's output since the stream started (gaps are drops). */
  index: number;
  /** When its last byte arrived (performance.now() ms): the start of its frame-to-event latency. */
  at: number;
}

/** Buffers for frames of one size; a frame's buffer returns when it is dropped or handed back. */
export class FramePool {
  private readonly free: Uint8Array[] = [];
  constructor(readonly bytes: number) {}

  take(): Uint8Array {
    return this.free.pop() ?? new Uint8Array(this.bytes);
  }

  give(buffer: Uint8Array): void {
    if (buffer.byteLength === this.bytes && this.free.length < 3) this.free.push(buffer);
  }
}

/** Cuts a byte stream into frames of `width x height x 3` bytes (chunks arrive in any sizes). */
export class FrameAssembler {
  private current: Uint8Array | undefined;
  private filled = 0;
  private count = 0;

  constructor(
    readonly width: number,
    readonly height: number,
    private readonly pool: FramePool,
    private readonly onFrame: (f: Frame) => void,
  ) {}

  /** Frames completed so far. */
  get frames(): number {
    return this.count;
  }

  /** Bytes of a frame begun and not finished (a tool that dies mid-frame leaves some). */
  get partial(): number {
    return this.filled;
  }

  push(chunk: Uint8Array): void {
    let off = 0;
    while (off < chunk.byteLength) {
      this.current ??= this.pool.take();
      const n = Math.min(chunk.byteLength - off, this.pool.bytes - this.filled);
      this.current.set(chunk.subarray(off, off + n), this.filled);
      this.filled += n;
      off += n;
      if (this.filled === this.pool.bytes) {
        const rgb = this.current;
        this.current = undefined;
        this.filled = 0;
        this.onFrame({ rgb, width: this.width, height: this.height, index: this.count++, at: performance.now() });
      }
    }
  }

  /** Drops a partial frame (the tool stopped); the frame count goes on across restarts. */
  reset(): void {
    if (this.current) this.pool.give(this.current);
    this.current = undefined;
    this.filled = 0;
  }
}
