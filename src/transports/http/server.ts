import { randomUUID } from 'node:crypto';
import Fastify, { type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { Config } from '../../config/config.js';
import { ProvisioningError } from '../../domain/errors.js';
import { compileSchema } from '../../domain/validation.js';
import { handleError, sendError } from './errors.js';
import { OpenApiCollector } from './openapi.js';
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
    ...(tls === undefined ? {} : { https: { key: tls.key, cert: tls.cert, ...DEVICE_TLS_OPTIONS } }),
    bodyLimit: config.maxBodyBytes,
    genReqId: () => randomUUID(),
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
  app.addHook('onRequest', async (request) => {
    if (request.headers['content-encoding']?.toLowerCase() === 'utf-8') delete request.headers['content-encoding'];
  });
  const openApi = new OpenApiCollector();
  openApi.attach(app);
  return { app, openApi };
}
