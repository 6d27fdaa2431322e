import type { Socket } from 'node:net';
import { createServer, type Server as TlsServer, type TLSSocket } from 'node:tls';
import type { FastifyBaseLogger } from 'fastify';
import { HandshakeGate, type HandshakeLimits } from './handshake-gate.js';
import { DEVICE_TLS_OPTIONS } from './tls-peer.js';

/**
 * The limits every long-lived device connection shares, whatever its protocol (MQTT, AMQP, either over WebSocket):
 * how many may be open at once, and how long one may stay silent. A refused or idle connection is destroyed; the
 * device reconnects later like after any network failure.
 */
export interface DeviceConnectionLimits {
  maxConnections: number;
  idleTimeoutMs: number;
}

export class DeviceConnections {
  readonly #limits: DeviceConnectionLimits;
  readonly #logger: FastifyBaseLogger;
  readonly #open = new Set<Socket>();

  constructor(limits: DeviceConnectionLimits, logger: FastifyBaseLogger) {
    this.#limits = limits;
    this.#logger = logger;
  }

  get size(): number {
    return this.#open.size;
  }

  get full(): boolean {
    return this.#open.size >= this.#limits.maxConnections;
  }

  /** How long a TLS handshake may take. */
  get handshakeTimeoutMs(): number {
    return Math.min(30000, this.#limits.idleTimeoutMs);
  }

  /** Counts the socket in, or destroys it when the server is full. Idle sockets are destroyed too. */
  admit(socket: Socket): boolean {
    if (this.full) {
      this.#logger.warn({ remoteAddress: socket.remoteAddress, open: this.#open.size }, 'device connection refused: connection limit reached');
      socket.destroy();
      return false;
    }
    this.#open.add(socket);
    socket.once('close', () => this.#open.delete(socket));
    if (this.#limits.idleTimeoutMs > 0) {
      socket.setTimeout(this.#limits.idleTimeoutMs, () => {
        this.#logger.debug({ remoteAddress: socket.remoteAddress }, 'device connection closed: idle');
        socket.destroy();
      });
    }
    return true;
  }

  /** Shutdown: device connections are long-lived and would otherwise hold the listeners open. */
  destroyAll(): void {
    for (const socket of this.#open) socket.destroy();
    this.#open.clear();
  }
}

export interface DeviceTlsListenerOptions {
  tls: { key: string; cert: string };
  connections: DeviceConnections;
  /** The listener's cap on TLS handshakes in progress (its own: a flood on one port does not fill another's). */
  handshakes: Pick<HandshakeLimits, 'maxHandshakes' | 'maxWaiting'>;
  /** The listener's name in log lines. */
  what: string;
  logger: FastifyBaseLogger;
  onConnection: (socket: TLSSocket) => void;
}

/**
 * A TLS listener for a device protocol. Client certificates are requested, never required: X.509 devices present
 * one, SAS devices do not, and the registration service decides what a certificate proves.
 */
export function createDeviceTlsServer(options: DeviceTlsListenerOptions): TlsServer {
  const { connections } = options;
  const server = createServer({
    key: options.tls.key,
    cert: options.tls.cert,
    // No session resumption: a resumed session keeps the leaf but not the intermediates an X.509 group device sent.
    ...DEVICE_TLS_OPTIONS,
    handshakeTimeout: connections.handshakeTimeoutMs,
  });
  // A full server refuses before spending a handshake; the TLS socket is what is counted (it owns the connection).
  // No Nagle delay, as on the HTTPS listener (Node's HTTP server default): an MQTT reply written while the PUBACK
  // before it is still unacknowledged would otherwise wait for that ACK. Measured (bench/README.md, session 28): MQTT
  // registrations on kept connections 1,021–1,033 → 1,135–1,171 a second at the same CPU per registration.
  server.on('connection', (socket: Socket) => {
    if (connections.full) socket.destroy();
    else socket.setNoDelay(true);
  });
  server.on('secureConnection', (socket: TLSSocket) => {
    if (connections.admit(socket)) options.onConnection(socket);
  });
  // Failed handshakes (a plain-TCP client, a bad certificate) concern that one socket only.
  server.on('tlsClientError', (_error, socket) => socket.destroy());
  // Last, so a connection the cap above refuses never waits for a handshake slot.
  HandshakeGate.install(server, { ...options.handshakes, waitTimeoutMs: connections.handshakeTimeoutMs }, options.logger, options.what);
  return server;
}

/** Binds a device listener; rejects with the errno error (app.ts turns it into a ListenError). */
export function listenOn(server: TlsServer, port: number, host: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (error: Error): void => reject(error);
    server.once('error', onError);
    server.listen(port, host, () => {
      server.off('error', onError);
      resolve();
    });
  });
}

export function closeServer(server: TlsServer): Promise<void> {
  return new Promise((resolve) => {
    if (!server.listening) return resolve();
    server.close(() => resolve());
  });
}
