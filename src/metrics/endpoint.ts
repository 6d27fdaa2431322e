import { timingSafeEqual, createHash } from 'node:crypto';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { FastifyInstance } from 'fastify';
import { ProvisioningError } from '../domain/errors.js';
import type { Metrics } from './metrics.js';

/**
 * Where Prometheus scrapes: `/metrics` on the HTTPS listener, or on a separate plain-HTTP listener (`metricsListen`,
 * e.g. an address only the monitoring network reaches). With `metricsToken` set, a scrape must send
 * `Authorization: Bearer <token>` (Prometheus: `authorization: { credentials: … }`).
 */
export function bearerMatches(header: string | undefined, token: string | undefined): boolean {
  if (token === undefined) return true;
  const presented = /^Bearer\s+(\S+)$/i.exec(header ?? '')?.[1];
  if (presented === undefined) return false;
  // Hashes have equal lengths, so the comparison takes the same time whatever was sent.
  const digest = (text: string) => createHash('sha256').update(text).digest();
  return timingSafeEqual(digest(presented), digest(token));
}

export function addMetricsRoute(app: FastifyInstance, metrics: Metrics, token: string | undefined): void {
  app.get('/metrics', async (request, reply) => {
    if (!bearerMatches(request.headers.authorization, token)) {
      void reply.header('www-authenticate', 'Bearer');
      throw new ProvisioningError('Unauthorized', 'Metrics need Authorization: Bearer <metricsToken>.');
    }
    const { contentType, body } = await metrics.render();
    return reply.type(contentType).send(body);
  });
}

export interface MetricsListener {
  readonly server: Server;
  listen(): Promise<void>;
  close(): Promise<void>;
}

/** `host:port` (IPv6 hosts in brackets). */
export function parseListenAddress(address: string): { host: string; port: number } {
  const at = address.lastIndexOf(':');
  return { host: address.slice(0, at).replace(/^\[(.*)\]$/, '$1'), port: Number(address.slice(at + 1)) };
}

export function createMetricsListener(address: string, metrics: Metrics, token: string | undefined): MetricsListener {
  const { host, port } = parseListenAddress(address);
  const server = createServer((request: IncomingMessage, response) => {
    const path = new URL(request.url ?? '/', 'http://metrics').pathname;
    if (request.method !== 'GET' || path !== '/metrics') {
      response.writeHead(404, { 'content-type': 'text/plain; charset=utf-8' }).end('Only GET /metrics is served here.\n');
      return;
    }
    if (!bearerMatches(request.headers.authorization, token)) {
      response.writeHead(401, { 'content-type': 'text/plain; charset=utf-8', 'www-authenticate': 'Bearer' }).end('Authorization: Bearer <metricsToken> required.\n');
      return;
    }
    metrics.render().then(
      ({ contentType, body }) => response.writeHead(200, { 'content-type': contentType }).end(body),
      (error: unknown) => response.writeHead(500, { 'content-type': 'text/plain; charset=utf-8' }).end(`${(error as Error).message}\n`),
    );
  });
  return {
    server,
    listen: () =>
      new Promise((resolve, reject) => {
        server.once('error', reject);
        server.listen(port, host, () => {
          server.off('error', reject);
          resolve();
        });
      }),
    close: () =>
      new Promise((resolve) => {
        if (!server.listening) return resolve();
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
