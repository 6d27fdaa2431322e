import type { FastifyBaseLogger, FastifyInstance } from 'fastify';
import pino from 'pino';
import type { Config } from './config/config.js';
import { EnrollmentService, groupSpec, individualSpec } from './services/enrollments.js';
import { redactUrl } from './domain/enrollment.js';
import { dpsTimestamp } from './domain/time.js';
import { InstanceService, OWNER_POLICY } from './services/instances.js';
import { RegistrationRecordService } from './services/registration-records.js';
import { ServiceAuth } from './services/service-auth.js';
import type { ServiceDeps } from './services/deps.js';
import { openStore, openStoreReadOnly } from './store/open-store.js';
import { lockDataDir } from './store/data-dir-lock.js';
import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { BuiltInHubService } from './hubs/built-in-hubs.js';
import { RestHubClientFactory } from './hubs/registry-client.js';
import { builtInHubPlugin } from './transports/http/hub-api/plugin.js';
import { deviceApiPlugin } from './transports/http/device-api/plugin.js';
import { InjectTransport } from './transports/http/inject-transport.js';
import { RegistrationService } from './services/registrations.js';
import { HubLatencies } from './services/hub-latency.js';
import { SymmetricKeyGroups } from './services/symmetric-key-groups.js';
import type { Store } from './store/store.js';
import { controlPlanePlugin } from './transports/http/service-api/control-plane.js';
import { caCertificatesPlugin } from './transports/http/service-api/certificates.js';
import { CaCertificateService } from './services/ca-certificates.js';
import { serviceApiPlugin } from './transports/http/service-api/plugin.js';
import { createHttpServer } from './transports/http/server.js';
import { createDeviceEndpoints } from './transports/device-endpoints.js';
import { ensureTlsMaterial, type TlsMaterial } from './tls/dev-ca.js';
import { AuditLog } from './services/audit-log.js';
import { LifecycleEvents } from './services/lifecycle-events.js';
import { DataRequestService } from './services/data-requests.js';
import { customerDataPlugin } from './transports/http/service-api/customer-data.js';
import { serviceCallAuditor } from './transports/http/service-audit.js';
import { portalPlugin } from './transports/http/portal.js';

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
  ports: { https: number; mqtt?: number; amqp?: number };
  dataDir: string;
  builtInHubConnectionString: string;
}

export interface App {
  readonly http: FastifyInstance;
  readonly store: Store;
  readonly builtInHubs: BuiltInHubService;
  readonly audit: AuditLog;
  readonly dataRequests: DataRequestService;
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
  const logger = deps.logger ?? (pino({ level: config.logLevel, serializers: { req: requestForLog } }) as unknown as FastifyBaseLogger);
  // One data directory, one server: taken before anything in it is created, so first-start initialisation never
  // races another server.
  const dataDirLock = lockDataDir(config.dataDir);
  try {
    return await createLockedApp(deps, logger, () => dataDirLock.release());
  } catch (error) {
    dataDirLock.release();
    throw error;
  }
}

async function createLockedApp(deps: AppDeps, logger: FastifyBaseLogger, releaseDataDir: () => void): Promise<App> {
  const { config } = deps;
  // The one place that chooses the store: SQLite in the data directory, or a PostgreSQL database shared by nodes.
  const { store, hubStore } = await openStore(config, (error) => logger.warn({ err: error }, 'database connection lost; the pool reconnects'));
  const tls = deps.tls ?? (await ensureTlsMaterial(config.dataDir, config.hostNames));
  const serviceDeps: ServiceDeps = { store, config, now: deps.now ?? (() => new Date()) };

  const auth = new ServiceAuth(serviceDeps);
  const audit = new AuditLog(serviceDeps, logger);
  // This process among the nodes sharing the database: the holder named in leases.
  const nodeId = `${config.listenHost}/${process.pid}/${randomUUID()}`;
  const events = new LifecycleEvents(serviceDeps, logger, {
    retryBaseMs: config.lifecycleEventRetryBaseMs,
    retryMaxMs: 60_000,
    timeoutMs: 10_000,
    nodeId,
    leaseMs: config.leaseMs,
  });
  const symmetricKeyGroups = new SymmetricKeyGroups(store);
  const enrollments = new EnrollmentService(serviceDeps, individualSpec, (instance, change, id) => {
    void events.emit(instance, `enrollment.${change}`, { registrationId: id });
  });
  const groups = new EnrollmentService(serviceDeps, groupSpec, (instance, change, id) => {
    symmetricKeyGroups.invalidate(instance.id);
    void events.emit(instance, `enrollmentGroup.${change}`, { enrollmentGroupId: id });
  });
  const registrations = new RegistrationRecordService(serviceDeps);
  const builtInHubs = new BuiltInHubService({ hubStore, now: serviceDeps.now });
  const instances = new InstanceService(serviceDeps, (name) => builtInHubs.ensureHub(name));
  const hubClients = new RestHubClientFactory({
    ca: tls.ca,
    builtInAddress: { host: loopbackFor(config.listenHost), port: config.httpsPort },
  });
  // Nodes starting together on one database bootstrap one default instance: the first takes the lock and creates
  // it, the others find it.
  const { operator, defaultHub } = await store.withLock('provisiond/bootstrap', async () => {
    const { instance, created } = await instances.bootstrap();
    const hub = await builtInHubs.ensureHub(config.hostNames[0] ?? 'localhost');
    // A fresh server links its built-in hub, so a first device provisions with no configuration at all. Only on first
    // start: a hub the owner later unlinks stays unlinked.
    if (created) await instances.putHub(instance, hub.name, { builtIn: true });
    return { operator: instance, defaultHub: hub };
  });

  const registrationService = new RegistrationService({
    ...serviceDeps,
    hubClients,
    latencies: new HubLatencies(hubClients, config.hubLatencyCacheMs),
    groups: symmetricKeyGroups,
    logger,
    audit,
    events,
    onWebhookExchange: (instance, registrationId, exchange) =>
      void audit.record(instance.id, {
        kind: 'webhook',
        operation: 'customAllocation',
        actor: 'provisiond',
        subject: { registrationId },
        outcome: exchange.error === undefined ? 'success' : 'failure',
        ...(exchange.error === undefined ? {} : { reason: exchange.error }),
        details: {
          url: redactUrl(exchange.url),
          request: exchange.request as unknown as Record<string, unknown>,
          ...(exchange.status === undefined ? {} : { status: exchange.status }),
          ...(exchange.response === undefined ? {} : { response: exchange.response }),
          durationMs: exchange.durationMs,
        },
      }),
  });
  const dataRequests = new DataRequestService({ ...serviceDeps, hubClients, audit, events, logger, waitMs: config.dataRequestWaitMs, nodeId, leaseMs: config.leaseMs });

  const { app: http, openApi } = createHttpServer({ config, logger, tls: { key: tls.key, cert: tls.cert } });
  // Every authenticated service-API call goes in the system log (added before the plugins, so it covers them all).
  http.addHook('onResponse', serviceCallAuditor(audit));
  await http.register(serviceApiPlugin({ auth, enrollments: enrollments as never, groups: groups as never, registrations }));
  await http.register(controlPlanePlugin({ auth, instances }));
  await http.register(caCertificatesPlugin({ auth, certificates: new CaCertificateService(serviceDeps) }));
  await http.register(builtInHubPlugin({ hubs: builtInHubs }));
  await http.register(deviceApiPlugin({ registrations: registrationService }));
  await http.register(customerDataPlugin({ auth, dataRequests, audit }));
  await http.register(portalPlugin());
  http.get('/healthz', async () => ({ status: 'ok' }));
  http.get('/openapi.json', async () => openApi.document(deps.version ?? '0.0.0'));
  await http.ready();
  hubClients.useBuiltInTransport(new InjectTransport(http));
  const devices = await createDeviceEndpoints({ config, logger, registrations: registrationService, tls: { key: tls.key, cert: tls.cert }, httpServer: http.server });

  let purgeTimer: NodeJS.Timeout | undefined;
  let resumeTimer: NodeJS.Timeout | undefined;
  return {
    http,
    store,
    builtInHubs,
    audit,
    dataRequests,
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
        ports: {
          https: config.httpsPort,
          ...(config.mqttEnabled ? { mqtt: config.mqttPort } : {}),
          ...(config.amqpEnabled ? { amqp: config.amqpPort } : {}),
        },
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
      // Background work starts with the listeners: lifecycle-event delivery, the log's retention purge, and every
      // data request a previous run left unfinished.
      events.start();
      const purge = async () => {
        await audit.purgeExpired();
        await store.deleteOperationsBefore(dpsTimestamp(new Date(serviceDeps.now().getTime() - config.operationRetentionMs)));
      };
      purgeTimer = setInterval(() => void purge().catch((error: unknown) => logger.error({ err: error }, 'purge failed')), config.auditPurgeIntervalMs);
      purgeTimer.unref();
      void purge().catch((error: unknown) => logger.error({ err: error }, 'purge failed'));
      await dataRequests.resumeUnfinished();
      // Nodes sharing a database: a job whose node died is taken over once its lease expires, without a restart.
      if (!store.capabilities.singleWriter) {
        resumeTimer = setInterval(
          () => void dataRequests.resumeUnfinished().catch((error: unknown) => logger.error({ err: error }, 'resuming data requests failed')),
          Math.max(250, Math.floor(config.leaseMs / 2)),
        );
        resumeTimer.unref();
      }
      for (const listener of devices.listeners) {
        try {
          await listener.listen();
        } catch (error) {
          throw new ListenError(listener.what, `${config.listenHost}:${listener.port}`, error as NodeJS.ErrnoException, listener.flag);
        }
      }
    },
    async close() {
      if (purgeTimer !== undefined) clearInterval(purgeTimer);
      if (resumeTimer !== undefined) clearInterval(resumeTimer);
      await dataRequests.stop();
      await events.close();
      await devices.close();
      await http.close();
      await hubClients.close();
      await store.close();
      releaseDataDir();
    },
  };
}

/**
 * `provisiond info`: what a running (or stopped) server would print, read without creating or changing anything —
 * no data directory, CA, key, database file, migration or instance. On a data directory no server has initialised
 * yet it says so and how to start one.
 */
export async function readServerInfo(config: Config): Promise<ServerInfo> {
  const caPath = join(config.dataDir, 'tls', 'ca.pem');
  const notYet = (what: string) =>
    new Error(`${what}; nothing to show yet. Start the server once to initialise it: provisiond serve --data-dir ${config.dataDir}`);
  if (!existsSync(config.dataDir)) throw notYet(`the data directory ${config.dataDir} does not exist`);
  if (!existsSync(caPath)) throw notYet(`the data directory ${config.dataDir} is not initialised (no tls/ca.pem)`);
  const opened = await openStoreReadOnly(config);
  if (opened === undefined) throw notYet(`the data directory ${config.dataDir} has no database`);
  try {
    let instances: Awaited<ReturnType<Store['listInstances']>>;
    try {
      instances = await opened.store.listInstances();
    } catch {
      throw notYet('the database is not initialised');
    }
    const operator = instances[0];
    if (operator === undefined) throw notYet('the database has no instance');
    const owner = await opened.store.getAccessPolicy(operator.id, OWNER_POLICY);
    const hostName = operator.serviceHostNames[0] ?? config.hostNames[0] ?? 'localhost';
    const hub = await new BuiltInHubService({ hubStore: opened.hubStore, now: () => new Date() }).getHub(config.hostNames[0] ?? 'localhost');
    return {
      instance: operator.name,
      serviceConnectionString: owner === undefined ? '' : `HostName=${hostName};SharedAccessKeyName=${owner.keyName};SharedAccessKey=${owner.primaryKey}`,
      idScope: operator.idScope,
      caCertificatePath: caPath,
      hostNames: [...config.hostNames],
      ports: {
        https: config.httpsPort,
        ...(config.mqttEnabled ? { mqtt: config.mqttPort } : {}),
        ...(config.amqpEnabled ? { amqp: config.amqpPort } : {}),
      },
      dataDir: config.dataDir,
      builtInHubConnectionString: hub?.connectionString ?? '',
    };
  } finally {
    await opened.store.close();
  }
}

/** Where this process reaches its own HTTPS listener (built-in hubs are called through it like any other hub). */
function loopbackFor(listenHost: string): string {
  return listenHost === '0.0.0.0' || listenHost === '::' ? '127.0.0.1' : listenHost;
}

/**
 * What the operational log says about a request: the route pattern, never the URL — URLs carry registration and
 * device IDs, and this log is outside what a customer-data erase can reach.
 */
function requestForLog(request: { method?: string; ip?: string; routeOptions?: { url?: string } }): Record<string, unknown> {
  return { method: request.method, route: request.routeOptions?.url ?? '(no route)', remoteAddress: request.ip };
}
