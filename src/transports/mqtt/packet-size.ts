/**
 * Watches the MQTT byte stream of one connection and says when a packet is larger than the limit, from its fixed
 * header alone: the broker's parser would otherwise buffer a packet of any announced size (up to 256 MB) before
 * looking at it. DPS messages are at most 96 KB (dps-wire.md §10).
 */
export class MqttPacketSizeGuard {
  readonly #maxPacketBytes: number;
  #state: 'type' | 'length' | 'body' = 'type';
  #remainingLength = 0;
  #multiplier = 1;
  #lengthBytes = 0;
  #bodyLeft = 0;
  #violated = false;

  constructor(maxPacketBytes: number) {
    this.#maxPacketBytes = maxPacketBytes;
  }

  /** Feeds the next bytes; false (from then on) once a packet is too large or its length field is malformed. */
  accept(chunk: Uint8Array): boolean {
    if (this.#violated) return false;
    let offset = 0;
    while (offset < chunk.length) {
      if (this.#state === 'type') {
        offset += 1;
        this.#state = 'length';
        this.#remainingLength = 0;
        this.#multiplier = 1;
        this.#lengthBytes = 0;
      } else if (this.#state === 'length') {
        const byte = chunk[offset] as number;
        offset += 1;
        this.#remainingLength += (byte & 0x7f) * this.#multiplier;
        this.#multiplier *= 128;
        this.#lengthBytes += 1;
        if ((byte & 0x80) !== 0) {
          // The remaining length has at most four bytes (MQTT 3.1.1 §2.2.3).
          if (this.#lengthBytes === 4) return this.#violate();
          continue;
        }
        if (1 + this.#lengthBytes + this.#remainingLength > this.#maxPacketBytes) return this.#violate();
        this.#bodyLeft = this.#remainingLength;
        this.#state = this.#bodyLeft === 0 ? 'type' : 'body';
      } else {
        const take = Math.min(this.#bodyLeft, chunk.length - offset);
        offset += take;
        this.#bodyLeft -= take;
        if (this.#bodyLeft === 0) this.#state = 'type';
      }
    }
    return true;
  }

  #violate(): false {
    this.#violated = true;
    return false;
  }
}
