/**
 * Watches the AMQP byte stream of one connection and says when a frame is larger than the advertised max-frame-size
 * (or malformed), from its size field alone: rhea would otherwise buffer a frame of any announced size (up to 4 GB).
 * Protocol headers (`AMQP` + 4 bytes: one for SASL, one for AMQP) may appear at any frame boundary.
 */
export class AmqpFrameSizeGuard {
  readonly #maxFrameBytes: number;
  readonly #head = Buffer.alloc(4);
  #headLength = 0;
  #skip = 0;
  #violated = false;

  constructor(maxFrameBytes: number) {
    this.#maxFrameBytes = maxFrameBytes;
  }

  /** Feeds the next bytes; false (from then on) once a frame is too large or too small to be a frame. */
  accept(chunk: Uint8Array): boolean {
    if (this.#violated) return false;
    let offset = 0;
    while (offset < chunk.length) {
      if (this.#skip > 0) {
        const take = Math.min(this.#skip, chunk.length - offset);
        offset += take;
        this.#skip -= take;
        continue;
      }
      const take = Math.min(4 - this.#headLength, chunk.length - offset);
      this.#head.set(chunk.subarray(offset, offset + take), this.#headLength);
      this.#headLength += take;
      offset += take;
      if (this.#headLength < 4) break;
      this.#headLength = 0;
      if (this.#head.toString('latin1') === 'AMQP') {
        this.#skip = 4;
        continue;
      }
      // A frame is at least its 8-byte header (AMQP 1.0 §2.3.1).
      const size = this.#head.readUInt32BE(0);
      if (size < 8 || size > this.#maxFrameBytes) {
        this.#violated = true;
        return false;
      }
      this.#skip = size - 4;
    }
    return true;
  }
}
