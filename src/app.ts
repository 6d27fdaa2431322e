import type { FastifyBaseLogger, FastifyInstance } from 'fastify';
import pino from 'pino';
import { sqliteFile, type Config } from './config/config.js';
import { EnrollmentService, groupSpec, individualSpec } from './services/enrollments.js';
import { InstanceService, OWNER_POLICY } from './services/instances.js';
import { RegistrationRecordService } from './services/registration-records.js';
import { ServiceAuth } from './services/service-auth.js';
import type { ServiceDeps } from './services/deps.js';
import { openSqliteDatabase } from './store/open-store.js';
import { KyselyStore } from './store/kysely-store.js';
import { KyselyHubStore } from './store/hub-store.js';
import { BuiltInHubService } from './hubs/built-in-hubs.js';
import { RestHubClientFactory } from './hubs/registry-client.js';
import { builtInHubPlugin } from './transports/http/hub-api/plugin.js';
import { deviceApiPlugin } from './transports/http/device-api/plugin.js';
import { RegistrationService } from './services/registrations.js';
import { HubLatencies } from './services/hub-latency.js';
import { SymmetricKeyGroups } from './services/symmetric-key-groups.js';
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
  builtInHubConnectionString: string;
}

export interface App {
  readonly http: FastifyInstance;
  readonly store: Store;
  readonly builtInHubs: BuiltInHubService;
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
  const db = await openSqliteDatabase(sqliteFile(config));
  const store = new KyselyStore(db);
  const tls = deps.tls ?? (await ensureTlsMaterial(config.dataDir, config.hostNames));
  const serviceDeps: ServiceDeps = { store, config, now: deps.now ?? (() => new Date()) };

  const auth = new ServiceAuth(serviceDeps);
  const enrollments = new EnrollmentService(serviceDeps, individualSpec);
  const groups = new EnrollmentService(serviceDeps, groupSpec);
  const registrations = new RegistrationRecordService(serviceDeps);
  const builtInHubs = new BuiltInHubService({ hubStore: new KyselyHubStore(db), now: serviceDeps.now });
  const instances = new InstanceService(serviceDeps, (name) => builtInHubs.ensureHub(name));
  const hubClients = new RestHubClientFactory({
    ca: tls.ca,
    builtInAddress: { host: loopbackFor(config.listenHost), port: config.httpsPort },
  });
  const { instance: operator, created } = await instances.bootstrap();
  const defaultHub = await builtInHubs.ensureHub(config.hostNames[0] ?? 'localhost');
  // A fresh server links its built-in hub, so a first device provisions with no configuration at all. Only on first
  // start: a hub the owner later unlinks stays unlinked.
  if (created) await instances.putHub(operator, defaultHub.name, { builtIn: true });

  const registrationService = new RegistrationService({
    ...serviceDeps,
    hubClients,
    latencies: new HubLatencies(hubClients, config.hubLatencyCacheMs),
    groups: new SymmetricKeyGroups(store),
    logger,
  });

  const { app: http, openApi } = createHttpServer({ config, logger, tls: { key: tls.key, cert: tls.cert } });
  await http.register(serviceApiPlugin({ auth, enrollments: enrollments as never, groups: groups as never, registrations }));
  await http.register(controlPlanePlugin({ auth, instances }));
  await http.register(builtInHubPlugin({ hubs: builtInHubs }));
  await http.register(deviceApiPlugin({ registrations: registrationService }));
  http.get('/healthz', async () => ({ status: 'ok' }));
  http.get('/openapi.json', async () => openApi.document(deps.version ?? '0.0.0'));
  await http.ready();

  return {
    http,
    store,
    builtInHubs,
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
        builtInHubConnectionString: defaultHub.connectionString,
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
      await hubClients.close();
      await store.close();
    },
  };
}

/** Where this process reaches its own HTTPS listener (built-in hubs are called through it like any other hub). */
function loopbackFor(listenHost: string): string {
  return listenHost === '0.0.0.0' || listenHost === '::' ? '127.0.0.1' : listenHost;
}
