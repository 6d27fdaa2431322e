/**
 * Credential checks of MQTT CONNECTs and AMQP SASL sign-ins, a few at a time and in turn by source address (issue
 * 13.7). A check reads the store (the instance, the enrollment, the record, the groups) and a refused one writes the
 * log entry that says why; a flood of bad sign-ins used to put a hundred of those ahead of a real device's, so its
 * CONNECT waited for all of them (a CONNACK timeout after 10 s in the flood test). With turns, a device at another
 * address waits for at most one check per source ahead of it. Waiting sign-ins are bounded by the open-connection cap
 * (`maxDeviceConnections`): each is an open connection.
 */
export const SIGN_INS_IN_PROGRESS = 4;

export class SignInTurns {
  readonly #max: number;
  #running = 0;
  /** Waiting checks by source address; the Map's order is the turn order. */
  readonly #queues = new Map<string, Array<() => void>>();

  constructor(max: number = SIGN_INS_IN_PROGRESS) {
    this.#max = max;
  }

  /**
   * Runs `check` when it is the source's turn; resolves or rejects as it does. A sign-in whose connection has gone by
   * then (`gone()`) is not checked at all: it rejects with `SignInAbandoned`.
   */
  async run<T>(source: string | undefined, check: () => Promise<T>, gone: () => boolean = () => false): Promise<T> {
    if (this.#running >= this.#max || this.#queues.size > 0) {
      await new Promise<void>((resolve) => {
        const key = source ?? '';
        const queue = this.#queues.get(key);
        if (queue === undefined) this.#queues.set(key, [resolve]);
        else queue.push(resolve);
      });
    } else {
      this.#running += 1;
    }
    try {
      if (gone()) throw new SignInAbandoned();
      return await check();
    } finally {
      this.#next();
    }
  }

  /** A check ended: its place goes to the source whose turn it is (which then goes to the back). */
  #next(): void {
    const next = this.#queues.entries().next();
    if (next.done) {
      this.#running -= 1;
      return;
    }
    const [source, queue] = next.value;
    const resume = queue.shift();
    this.#queues.delete(source);
    if (queue.length > 0) this.#queues.set(source, queue);
    resume?.();
  }
}

/** The connection of a waiting sign-in closed before its turn. */
export class SignInAbandoned extends Error {
  constructor() {
    super('the connection closed before its sign-in was checked');
    this.name = 'SignInAbandoned';
  }
}
