import { randomUUID } from 'node:crypto';
import type { Socket } from 'node:net';
import type { Server as TlsServer } from 'node:tls';
import Fastify, { type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { Config } from '../../config/config.js';
import { ProvisioningError } from '../../domain/errors.js';
import { compileSchema } from '../../domain/validation.js';
import { handleError, sendError } from './errors.js';
import { OpenApiCollector } from './openapi.js';
import { RequestLogger } from './request-logger.js';
import { HandshakeGate } from '../handshake-gate.js';
import { DEVICE_TLS_OPTIONS } from '../tls-peer.js';

/**
 * The HTTPS listener's Fastify instance: one server for the service API, the device API, the built-in hub registry
 * and the portal, each an encapsulated plugin. Client certificates are requested, never required, so X.509 devices
 * and SAS callers share the port.
 */
export interface HttpServerOptions {
  config: Config;
  logger: FastifyBaseLogger;
  tls: { key: string; cert: string } | undefined;
}

export function createHttpServer(options: HttpServerOptions): { app: FastifyInstance; openApi: OpenApiCollector } {
  const { config } = options;
  const tls = options.tls;
  const app = (Fastify as unknown as (opts: Record<string, unknown>) => FastifyInstance)({
    loggerInstance: options.logger,
    ...(tls === undefined ? {} : { https: { key: tls.key, cert: tls.cert, ...DEVICE_TLS_OPTIONS, handshakeTimeout: config.httpsHandshakeTimeoutMs } }),
    // Whole-request receipt; a response may take longer (a register waits up to registrationWaitMs).
    requestTimeout: config.httpsRequestTimeoutMs,
    // The socket's inactivity timer; what it does is decided by the 'timeout' listener in limitConnections.
    connectionTimeout: config.httpsIdleTimeoutMs,
    keepAliveTimeout: config.httpsIdleTimeoutMs,
    bodyLimit: config.maxBodyBytes,
    genReqId: () => randomUUID(),
    // request.log is made on first use: a pino child per request costs allocations while nothing is logged.
    childLoggerFactory: RequestLogger.factory,
    // IDs may be 128 characters, percent-encoded up to three times as long; the router's default limit (100) would
    // refuse a valid ID before the DPS validation could name what is wrong with an invalid one.
    routerOptions: { caseSensitive: false, ignoreTrailingSlash: true, maxParamLength: 1024 },
    // URLs the router cannot decode or match never reach the error handler; render them the DPS way too.
    frameworkErrors: (error: Error, request: FastifyRequest, reply: FastifyReply) => handleError(error, request, reply),
    onProtoPoisoning: 'error',
    onConstructorPoisoning: 'error',
    return503OnClosing: true,
    // Keep-alive sockets from SDK clients must not hold shutdown open (sdk-clients.md §6.11).
    forceCloseConnections: true,
  });
  app.setValidatorCompiler(({ schema }) => compileSchema(schema as Record<string, unknown>));
  app.setErrorHandler((error, request, reply) => handleError(error as Error, request, reply));
  app.setNotFoundHandler((request, reply) =>
    sendError(request, reply, new ProvisioningError('NotFound', `No resource at ${request.method} ${request.url.split('?')[0] ?? ''}.`)),
  );
  // Docs samples send `Content-Encoding: utf-8`; it names a charset, not a compression, and is ignored (dps-wire.md §1).
  // (Hooks every request passes are callback-style, not async: no promise and microtask turn per hook per request.)
  app.addHook('onRequest', (request, _reply, done) => {
    if (request.headers['content-encoding']?.toLowerCase() === 'utf-8') delete request.headers['content-encoding'];
    done();
  });
  limitConnections(app, config, options.logger);
  // After the connection caps (limitConnections), so a connection they refuse never waits for a handshake slot. The
  // WebSocket paths share this listener and its handshakes.
  if (tls !== undefined) {
    HandshakeGate.install(
      app.server as unknown as TlsServer,
      { maxHandshakes: config.tlsMaxHandshakes, maxWaiting: config.tlsMaxWaitingHandshakes, waitTimeoutMs: config.httpsHandshakeTimeoutMs },
      options.logger,
      'HTTPS',
    );
  }
  const openApi = new OpenApiCollector();
  openApi.attach(app);
  return { app, openApi };
}

/**
 * The HTTPS listener's connection limits (issue 13.4; docs/transports.md "Limits"): a TLS handshake, a request's
 * headers and the whole request are timed; a connection with no request in progress — one that never sends a request,
 * or a kept-alive one between requests — is closed after the idle timeout; and there is a cap on open connections,
 * overall and per source address, so idle sockets cannot use up the process's file descriptors.
 */
function limitConnections(app: FastifyInstance, config: Config, logger: FastifyBaseLogger): void {
  const server = app.server;
  server.maxConnections = config.httpsMaxConnections;
  server.headersTimeout = Math.min(15000, Math.ceil(config.httpsRequestTimeoutMs / 2));
  const perSource = new Map<string, number>();
  server.on('connection', (socket: Socket) => {
    const source = socket.remoteAddress ?? '';
    const open = perSource.get(source) ?? 0;
    if (open >= config.httpsMaxConnectionsPerSource) {
      logger.warn({ remoteAddress: source, open }, 'HTTPS connection refused: too many from this address');
      socket.destroy();
      return;
    }
    perSource.set(source, open + 1);
    socket.once('close', () => {
      const left = (perSource.get(source) ?? 1) - 1;
      if (left <= 0) perSource.delete(source);
      else perSource.set(source, left);
    });
  });
  // Requests in progress per socket: the inactivity timer must not cut a request whose handler is still working (a
  // register that waits for its assignment), only a connection that is doing nothing.
  const active = new WeakMap<object, number>();
  const upgraded = new WeakSet<object>();
  app.addHook('onRequest', (request, _reply, done) => {
    active.set(request.raw.socket, (active.get(request.raw.socket) ?? 0) + 1);
    done();
  });
  app.addHook('onResponse', (request, _reply, done) => {
    active.set(request.raw.socket, Math.max(0, (active.get(request.raw.socket) ?? 1) - 1));
    done();
  });
  // WebSocket device connections have their own idle limit (device-connections.ts).
  server.on('upgrade', (_request: unknown, socket: object) => upgraded.add(socket));
  server.on('timeout', (socket: Socket) => {
    if (upgraded.has(socket) || (active.get(socket) ?? 0) > 0) return;
    socket.destroy();
  });
}
