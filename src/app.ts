import type { FastifyBaseLogger, FastifyInstance } from 'fastify';
import pino from 'pino';
import { sqliteFile, type Config } from './config/config.js';
import { EnrollmentService, groupSpec, individualSpec } from './services/enrollments.js';
import { InstanceService, OWNER_POLICY } from './services/instances.js';
import { RegistrationRecordService } from './services/registration-records.js';
import { ServiceAuth } from './services/service-auth.js';
import type { ServiceDeps } from './services/deps.js';
import { openSqliteStore } from './store/open-store.js';
import type { Store } from './store/store.js';
import { controlPlanePlugin } from './transports/http/service-api/control-plane.js';
import { serviceApiPlugin } from './transports/http/service-api/plugin.js';
import { createHttpServer } from './transports/http/server.js';
import { ensureTlsMaterial, type TlsMaterial } from './tls/dev-ca.js';

/**
 * The composition root: chooses the store and transports, wires services, and returns something that can listen and
 * close. Nothing here reads argv or env; main.ts does that.
 */
export interface AppDeps {
  config: Config;
  /** Defaults to the store the config names. */
  store?: Store;
  /** Defaults to the dev CA material under dataDir/tls. */
  tls?: TlsMaterial;
  logger?: FastifyBaseLogger;
  now?: () => Date;
  version?: string;
}

export interface ServerInfo {
  instance: string;
  serviceConnectionString: string;
  idScope: string;
  caCertificatePath: string;
  hostNames: string[];
  ports: { https: number };
  dataDir: string;
}

export interface App {
  readonly http: FastifyInstance;
  readonly store: Store;
  info(): Promise<ServerInfo>;
  /** Binds every listener; rejects with ListenError naming the port and the flag to change it. */
  listen(): Promise<void>;
  close(): Promise<void>;
}

export class ListenError extends Error {
  constructor(what: string, address: string, cause: NodeJS.ErrnoException, flag: string) {
    const reason =
      cause.code === 'EADDRINUSE'
        ? 'the address is already in use'
        : cause.code === 'EACCES'
          ? 'permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)'
          : cause.message;
    const port = Number(address.slice(address.lastIndexOf(':') + 1));
    const example = port === 8443 ? 8444 : 8443;
    super(`cannot listen for ${what} on ${address}: ${reason}; choose another port with ${flag} (e.g. ${flag} ${example})`);
    this.name = 'ListenError';
  }
}

export async function createApp(deps: AppDeps): Promise<App> {
  const { config } = deps;
  const logger = deps.logger ?? (pino({ level: config.logLevel }) as unknown as FastifyBaseLogger);
  const store = deps.store ?? (await openSqliteStore(sqliteFile(config)));
  const tls = deps.tls ?? (await ensureTlsMaterial(config.dataDir, config.hostNames));
  const serviceDeps: ServiceDeps = { store, config, now: deps.now ?? (() => new Date()) };

  const instances = new InstanceService(serviceDeps);
  const auth = new ServiceAuth(serviceDeps);
  const enrollments = new EnrollmentService(serviceDeps, individualSpec);
  const groups = new EnrollmentService(serviceDeps, groupSpec);
  const registrations = new RegistrationRecordService(serviceDeps);
  const operator = await instances.bootstrap();

  const { app: http, openApi } = createHttpServer({ config, logger, tls: { key: tls.key, cert: tls.cert } });
  await http.register(serviceApiPlugin({ auth, enrollments: enrollments as never, groups: groups as never, registrations }));
  await http.register(controlPlanePlugin({ auth, instances }));
  http.get('/healthz', async () => ({ status: 'ok' }));
  http.get('/openapi.json', async () => openApi.document(deps.version ?? '0.0.0'));
  await http.ready();

  return {
    http,
    store,
    async info() {
      const owner = await store.getAccessPolicy(operator.id, OWNER_POLICY);
      const hostName = operator.serviceHostNames[0] ?? config.hostNames[0] ?? 'localhost';
      return {
        instance: operator.name,
        serviceConnectionString:
          owner === undefined ? '' : `HostName=${hostName};SharedAccessKeyName=${owner.keyName};SharedAccessKey=${owner.primaryKey}`,
        idScope: operator.idScope,
        caCertificatePath: tls.caPath,
        hostNames: [...config.hostNames],
        ports: { https: config.httpsPort },
        dataDir: config.dataDir,
      };
    },
    async listen() {
      const address = `${config.listenHost}:${config.httpsPort}`;
      try {
        await http.listen({ port: config.httpsPort, host: config.listenHost });
      } catch (error) {
        throw new ListenError('HTTPS', address, error as NodeJS.ErrnoException, '--https-port');
      }
    },
    async close() {
      await http.close();
      await store.close();
    },
  };
}
