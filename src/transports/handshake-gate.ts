import type { Socket } from 'node:net';
import type { Server as TlsServer } from 'node:tls';
import type { FastifyBaseLogger } from 'fastify';

/**
 * A cap on the TLS handshakes one listener starts at once (issue 13.7; docs/transports.md "Limits").
 *
 * A handshake is the most expensive thing an unauthenticated peer can make the server do (a signature with the
 * server's key, a key exchange), and Node does it on the one thread that serves everything else, at once when the
 * ClientHello is handed to TLS. Without a cap, a burst of hundreds of handshakes on one port puts hundreds of
 * signatures ahead of every other connection's next step, on every port: the first request during a burst took
 * 2.7 s. With the cap, a listener starts at most `maxHandshakes` handshakes, then lets the event loop serve everything
 * else before it starts more. Connections wait, accepted and holding their ClientHello unprocessed, and are let in
 * **in turn by source address**, so a flood from a few addresses cannot keep a device at another address waiting
 * behind it. Past `maxWaiting`, or after waiting `waitTimeoutMs`, a connection is closed before any TLS work: the
 * client sees a reset and retries like after any network failure.
 *
 * A connection joins the queue only once its first bytes (the ClientHello) have arrived: a silent connection takes no
 * one's turn and is closed after `waitTimeoutMs`, as the handshake timeout did before. A handshake holds nothing once
 * started, so a peer that stalls halfway costs only its own connection (until the handshake timeout).
 *
 * The gate takes the place of the TLS server's own 'connection' listener (which starts the handshake) and calls it
 * when it is the connection's turn.
 */
export interface HandshakeLimits {
  /** Handshakes started at once on this listener before its other connections are served again. */
  maxHandshakes: number;
  /** Connections waiting for their handshake on this listener; more are closed at once. */
  maxWaiting: number;
  /** How long a connection may wait for its ClientHello and then its turn (the listener's handshake timeout). */
  waitTimeoutMs: number;
}

export interface HandshakeGateState {
  waiting: number;
  /** Connections closed by the gate since start (queue full or waited too long). */
  refused: number;
}

interface Waiting {
  socket: Socket;
  timer: NodeJS.Timeout;
}

/** How often a refusal is logged at most: a flood must not turn into a flood of log lines. */
const REFUSAL_LOG_INTERVAL_MS = 10_000;

export class HandshakeGate {
  readonly #startHandshake: (socket: Socket) => void;
  readonly #limits: HandshakeLimits;
  readonly #logger: FastifyBaseLogger;
  readonly #what: string;
  /** Handshakes started in this turn of the event loop. */
  #started = 0;
  #nextTurn: NodeJS.Immediate | undefined;
  /** Waiting connections by source address; the Map's order is the turn order. */
  readonly #queues = new Map<string, Waiting[]>();
  /** Every connection not yet handed to TLS (silent ones too), for the listener's close. */
  readonly #pending = new Set<Waiting>();
  #waiting = 0;
  #refused = 0;
  #refusedSinceLog = 0;
  #lastRefusalLog = 0;

  private constructor(startHandshake: (socket: Socket) => void, limits: HandshakeLimits, logger: FastifyBaseLogger, what: string) {
    this.#startHandshake = startHandshake;
    this.#limits = limits;
    this.#logger = logger;
    this.#what = what;
  }

  /**
   * Puts the gate in front of a TLS (or HTTPS) server's handshakes. Call it after the server's other 'connection'
   * listeners are attached: they run first, so a connection a cheaper limit refuses never reaches the queue.
   */
  static install(server: TlsServer, limits: HandshakeLimits, logger: FastifyBaseLogger, what: string): HandshakeGate {
    const tlsListener = server.listeners('connection').find((listener) => listener.name === 'tlsConnectionListener') as ((socket: Socket) => void) | undefined;
    // Node's tls.Server starts every handshake from this listener; without it there is nothing to gate.
    if (tlsListener === undefined) throw new Error(`the ${what} listener has no TLS connection listener to gate`);
    server.removeListener('connection', tlsListener);
    const gate = new HandshakeGate((socket) => tlsListener.call(server, socket), limits, logger, what);
    server.on('connection', (socket: Socket) => gate.#admit(socket));
    // Waiting connections are not the server's yet (no TLS socket, no HTTP connection): closing the listener closes
    // them, or they would hold its close open until they time out.
    const close = server.close.bind(server);
    server.close = ((callback?: (error?: Error) => void) => {
      gate.#clear();
      return close(callback);
    }) as typeof server.close;
    return gate;
  }

  get state(): HandshakeGateState {
    return { waiting: this.#waiting, refused: this.#refused };
  }

  #admit(socket: Socket): void {
    if (socket.destroyed) return;
    const source = socket.remoteAddress ?? '';
    const entry: Waiting = {
      socket,
      timer: setTimeout(() => {
        this.#pending.delete(entry);
        this.#dequeue(source, entry);
        this.#refuse(socket, 'no TLS handshake in time');
      }, this.#limits.waitTimeoutMs),
    };
    entry.timer.unref();
    this.#pending.add(entry);
    socket.once('close', () => {
      clearTimeout(entry.timer);
      this.#pending.delete(entry);
      this.#dequeue(source, entry);
    });
    // Nothing is processed until the ClientHello is there; it stays buffered for the TLS socket.
    // Under the cap with no one waiting, the handshake starts at once, as without the gate. Only when connections
    // wait does one join the queue, once its ClientHello has arrived. (Waiting for 'readable' first on every
    // connection broke one case: a device presenting a forged X.509 leaf got a reset instead of its 401 —
    // test/x509.test.ts: OpenSSL's failed check of its signature is read as a failed handshake when TLS starts from bytes
    // already read here; docs/reliability.md.)
    if (this.#waiting === 0 && this.#started < this.#limits.maxHandshakes) {
      this.#start(entry);
      return;
    }
    socket.once('readable', () => this.#ready(source, entry));
  }

  #ready(source: string, entry: Waiting): void {
    if (entry.socket.destroyed) return;
    if (this.#waiting === 0 && this.#started < this.#limits.maxHandshakes) {
      this.#start(entry);
      return;
    }
    if (this.#waiting >= this.#limits.maxWaiting) {
      clearTimeout(entry.timer);
      this.#pending.delete(entry);
      this.#refuse(entry.socket, 'too many connections waiting for a TLS handshake');
      return;
    }
    const queue = this.#queues.get(source);
    if (queue === undefined) this.#queues.set(source, [entry]);
    else queue.push(entry);
    this.#waiting += 1;
    this.#scheduleTurn();
  }

  #start(entry: Waiting): void {
    clearTimeout(entry.timer);
    this.#pending.delete(entry);
    this.#started += 1;
    this.#scheduleTurn();
    this.#startHandshake(entry.socket);
  }

  /** The next turn of the event loop (after other connections' I/O) starts the next handshakes. */
  #scheduleTurn(): void {
    this.#nextTurn ??= setImmediate(() => {
      this.#nextTurn = undefined;
      this.#started = 0;
      this.#pump();
    });
  }

  /** Starts waiting handshakes up to the cap, one source address at a time. */
  #pump(): void {
    while (this.#started < this.#limits.maxHandshakes && this.#waiting > 0) {
      const next = this.#queues.entries().next();
      if (next.done) break;
      const [source, queue] = next.value;
      const entry = queue.shift();
      this.#queues.delete(source);
      // The source goes to the back of the turn order if it has more waiting.
      if (queue.length > 0) this.#queues.set(source, queue);
      if (entry === undefined) continue;
      this.#waiting -= 1;
      if (entry.socket.destroyed) continue;
      this.#start(entry);
    }
  }

  #dequeue(source: string, entry: Waiting): void {
    const queue = this.#queues.get(source);
    const index = queue?.indexOf(entry) ?? -1;
    if (queue === undefined || index < 0) return;
    queue.splice(index, 1);
    if (queue.length === 0) this.#queues.delete(source);
    this.#waiting -= 1;
  }

  #refuse(socket: Socket, reason: string): void {
    this.#refused += 1;
    this.#refusedSinceLog += 1;
    const remoteAddress = socket.remoteAddress;
    socket.destroy();
    const now = Date.now();
    if (now - this.#lastRefusalLog >= REFUSAL_LOG_INTERVAL_MS) {
      this.#logger.warn(
        { listener: this.#what, remoteAddress, reason, refusedRecently: this.#refusedSinceLog, waiting: this.#waiting },
        `${this.#what} connection closed before its TLS handshake: ${reason}`,
      );
      this.#lastRefusalLog = now;
      this.#refusedSinceLog = 0;
    }
  }

  #clear(): void {
    if (this.#nextTurn !== undefined) clearImmediate(this.#nextTurn);
    this.#nextTurn = undefined;
    for (const entry of this.#pending) {
      clearTimeout(entry.timer);
      entry.socket.destroy();
    }
    this.#pending.clear();
    this.#queues.clear();
    this.#waiting = 0;
  }
}
