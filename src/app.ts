import type { IncomingMessage, ServerResponse } from 'node:http';
import { X509Certificate } from 'node:crypto';
import type { Server as TlsServer } from 'node:tls';
import type { FastifyBaseLogger, FastifyInstance } from 'fastify';
import { sqliteFile, usesPostgres, type Config } from './config/config.js';
import { EnrollmentService, groupSpec, individualSpec } from './services/enrollments.js';
import { redactUrl } from './domain/enrollment.js';
import { InstanceService, OWNER_POLICY } from './services/instances.js';
import { RegistrationRecordService } from './services/registration-records.js';
import { ServiceAuth } from './services/service-auth.js';
import type { ServiceDeps } from './services/deps.js';
import { openStore, openStoreReadOnly, type OpenedStore } from './store/open-store.js';
import type { GroupCommitOptions } from './store/group-commit.js';
import { lockDataDir } from './store/data-dir-lock.js';
import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { BuiltInHubService } from './hubs/built-in-hubs.js';
import { RestHubClientFactory } from './hubs/registry-client.js';
import { builtInHubPlugin } from './transports/http/hub-api/plugin.js';
import { deviceApiPlugin } from './transports/http/device-api/plugin.js';
import { RegistrationService } from './services/registrations.js';
import { HubLatencies } from './services/hub-latency.js';
import { SymmetricKeyGroups } from './services/symmetric-key-groups.js';
import type { Store } from './store/store.js';
import { controlPlanePlugin } from './transports/http/service-api/control-plane.js';
import { caCertificatesPlugin } from './transports/http/service-api/certificates.js';
import { CaCertificateService } from './services/ca-certificates.js';
import { CertificateIssuance } from './services/attestation/certificate-issuance.js';
import { CredentialPolicyService } from './services/attestation/credential-policies.js';
import { IssuingCaService } from './services/attestation/issuing-ca.js';
import { certificateIssuancePlugin, crlPlugin } from './transports/http/service-api/certificate-issuance.js';
import { serviceApiPlugin } from './transports/http/service-api/plugin.js';
import { createHttpServer } from './transports/http/server.js';
import { createDeviceEndpoints } from './transports/device-endpoints.js';
import { raiseFileLimit } from './transports/file-limit.js';
import { DEVICE_TLS_OPTIONS } from './transports/tls-peer.js';
import type { TlsMaterial } from './tls/dev-ca.js';
import { describeServerCertificate, loadServerCertificate, type CertificateSource, type ServedCertificate } from './tls/server-certificate.js';
import { componentLogger, createLogger, LOG_COMPONENTS, unknownComponents } from './logging/logger.js';
import { addMetricsRoute, createMetricsListener, type MetricsListener } from './metrics/endpoint.js';
import { checkReadiness } from './health/readiness.js';
import { operationalCounts, pendingMigrations } from './store/operational-counts.js';
import { AuditLog } from './services/audit-log.js';
import { purgeExpiredOperations, purgeIdleRateBuckets } from './services/retention-purge.js';
import { LifecycleEvents } from './services/lifecycle-events.js';
import { DataRequestService } from './services/customer-data/data-request-service.js';
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
  /** How registrations share a commit on SQLite (bench: the window and batch size measured in bench/README.md). */
  groupCommit?: GroupCommitOptions;
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
  /** True when this process created the default instance (and its owner key) on start. */
  created: boolean;
  /** The certificate the listeners serve: the dev CA's, or the operator's own (used as it is). */
  serverCertificate: { source: CertificateSource; path: string; subject: string; issuer: string; validTo: string };
}

export interface App {
  readonly http: FastifyInstance;
  readonly store: Store;
  readonly builtInHubs: BuiltInHubService;
  readonly audit: AuditLog;
  readonly dataRequests: DataRequestService;
  readonly registrations: RegistrationService;
  readonly symmetricKeyGroups: SymmetricKeyGroups;
  info(): Promise<ServerInfo>;
  /**
   * Reads the server certificate and key again and serves them to new connections on every listener; open
   * connections keep the certificate they started with (SIGHUP). A certificate that does not load leaves the
   * current one in place and rejects with why.
   */
  reloadTls(): Promise<ServerInfo['serverCertificate']>;
  /** Binds every listener; rejects with ListenError naming the port and the flag to change it. */
  listen(): Promise<void>;
  close(): Promise<void>;
}

const ALTERNATIVE_PORTS: Record<string, number> = { '--https-port': 8443, '--mqtt-port': 18883, '--amqp-port': 15671 };

export class ListenError extends Error {
  constructor(what: string, address: string, cause: NodeJS.ErrnoException, flag: string) {
    const reason =
      cause.code === 'EADDRINUSE'
        ? 'the address is already in use'
        : cause.code === 'EACCES'
          ? 'permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)'
          : cause.message;
    const port = Number(address.slice(address.lastIndexOf(':') + 1));
    // An unprivileged port that reads as the usual one for that protocol (443 → 8443, 8883 → 18883, 5671 → 15671).
    const usual = ALTERNATIVE_PORTS[flag] ?? 8443;
    const example = port === usual ? usual + 1 : usual;
    super(`cannot listen for ${what} on ${address}: ${reason}; choose another port with ${flag} (e.g. ${flag} ${example})`);
    this.name = 'ListenError';
  }
}

export async function createApp(deps: AppDeps): Promise<App> {
  const { config } = deps;
  const logger =
    deps.logger ?? createLogger({ level: config.logLevel, format: config.logFormat, levels: config.logLevels, serializers: { req: requestForLog } });
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
  const log = (component: Parameters<typeof componentLogger>[2]) => componentLogger(logger, config.logLevels, component);
  const unknown = unknownComponents(config.logLevels);
  if (unknown.length > 0) logger.warn({ unknown }, `logLevels names unknown components (${unknown.join(', ')}); known: ${LOG_COMPONENTS.join(', ')}`);
  const databaseFile = usesPostgres(config) ? undefined : sqliteFile(config);
  // Scrape-time sources refer to parts made further down; they are only read once the server runs.
  let httpServer: FastifyInstance['server'] | undefined;
  let devices: Awaited<ReturnType<typeof createDeviceEndpoints>> | undefined;
  let db: OpenedStore['db'] | undefined;
  const metrics = config.metricsEnabled || config.metricsListen !== undefined
    ? // prom-client is loaded only when metrics are on (issue 12, P6: memory a server without them never uses).
      new (await import('./metrics/metrics.js')).Metrics({
        openConnections: async () => ({
          https: await new Promise<number>((resolve) => (httpServer === undefined ? resolve(0) : httpServer.getConnections((error, count) => resolve(error === null ? count : 0)))),
          ...Object.fromEntries(await Promise.all((devices?.listeners ?? []).map(async (listener) => [listener.what.toLowerCase(), await listener.openConnections()] as const))),
        }),
        storeCounts: () => operationalCounts(db as OpenedStore['db']),
      })
    : undefined;
  // The one place that chooses the store: SQLite in the data directory, or a PostgreSQL database shared by nodes.
  const opened = await openStore(
    config,
    (error) => logger.warn({ err: error }, 'database connection lost; the pool reconnects'),
    metrics === undefined ? [] : [metrics.storePlugin()],
  );
  const { store, hubStore } = opened;
  db = opened.db;
  const tlsLogger = log('tls');
  let tls: TlsMaterial = deps.tls ?? (await loadServerCertificate(config));
  if (isServed(tls)) for (const warning of tls.warnings) tlsLogger.warn({ certificate: tls.certPath }, warning);
  const serviceDeps: ServiceDeps = { store, config, now: deps.now ?? (() => new Date()) };

  const auth = new ServiceAuth(serviceDeps);
  const audit = new AuditLog(serviceDeps, log('audit'));
  // This process among the nodes sharing the database: the holder named in leases.
  const nodeId = `${config.listenHost}/${process.pid}/${randomUUID()}`;
  const events = new LifecycleEvents(serviceDeps, log('events'), {
    retryBaseMs: config.lifecycleEventRetryBaseMs,
    retryMaxMs: 60_000,
    timeoutMs: 10_000,
    nodeId,
    leaseMs: config.leaseMs,
  });
  const symmetricKeyGroups = new SymmetricKeyGroups(store);
  const enrollments = new EnrollmentService(serviceDeps, individualSpec, (instance, changes) => {
    void events.emitMany(instance, changes.map(({ change, id }) => ({ type: `enrollment.${change}` as const, data: { registrationId: id } })));
  });
  const groups = new EnrollmentService(serviceDeps, groupSpec, (instance, changes) => {
    symmetricKeyGroups.invalidate(instance.id);
    void events.emitMany(instance, changes.map(({ change, id }) => ({ type: `enrollmentGroup.${change}` as const, data: { enrollmentGroupId: id } })));
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
  const { operator, defaultHub, created } = await store.withLock('provisiond/bootstrap', async () => {
    const { instance, created } = await instances.bootstrap();
    const hub = await builtInHubs.ensureHub(config.hostNames[0] ?? 'localhost');
    // A fresh server links its built-in hub, so a first device provisions with no configuration at all. Only on first
    // start: a hub the owner later unlinks stays unlinked.
    if (created) await instances.putHub(instance, hub.name, { builtIn: true });
    return { operator: instance, defaultHub: hub, created };
  });

  const measuredHubClients = metrics === undefined ? hubClients : metrics.measureHubWrites(hubClients);
  const issuingCa = new IssuingCaService(serviceDeps);
  const registrationService = new RegistrationService({
    ...serviceDeps,
    hubClients: measuredHubClients,
    latencies: new HubLatencies(hubClients, config.hubLatencyCacheMs),
    groups: symmetricKeyGroups,
    logger: log('registrations'),
    audit,
    events,
    ...(metrics === undefined ? {} : { observer: metrics.registrations }),
    issuance: new CertificateIssuance(serviceDeps, issuingCa),
    ...(deps.groupCommit === undefined ? {} : { groupCommit: deps.groupCommit }),
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
  const dataRequests = new DataRequestService({
    ...serviceDeps,
    hubClients: measuredHubClients,
    audit,
    events,
    logger: log('dataRequests'),
    waitMs: config.dataRequestWaitMs,
    nodeId,
    leaseMs: config.leaseMs,
    forgetDevices: (instanceId, registrationIds) => registrationService.forgetDevices(instanceId, registrationIds),
  });

  const { app: http, openApi } = createHttpServer({ config, logger: log('http'), tls: { key: tls.key, cert: tls.cert } });
  httpServer = http.server;
  if (metrics !== undefined) {
    // (Callback-style, as every hook a device request passes: no promise per request.)
    http.addHook('onResponse', (request, reply, done) => {
      const operationId = request.routeOptions.config.operationId;
      // Device API calls are counted as registrations; the portal's files and probes are not API calls.
      // elapsedTime: from Fastify's first hook to the answer's end (its system-log entry is written before the answer).
      if (operationId !== undefined && !operationId.startsWith('RuntimeRegistration_')) metrics.serviceApiRequest(request.method, request.routeOptions.url ?? '', reply.statusCode, reply.elapsedTime);
      done();
    });
  }
  // Every authenticated service-API call goes in the system log (added before the plugins, so it covers them all),
  // written before the answer leaves: a client that reads the log after its call finds the call there, on any node.
  const auditCall = serviceCallAuditor(audit);
  // Callback-style: a request no service-API caller made (every device request) passes without a promise.
  http.addHook('onSend', (request, reply, payload, done) => {
    if (request.caller === undefined) {
      done(null, payload);
      return;
    }
    auditCall(request, reply).then(
      () => done(null, payload),
      (error: unknown) => {
        // The call itself has happened; a log write that failed is the server's trouble, not a reason to answer 500.
        request.log.error({ err: error }, 'writing the log entry of a service-API call failed');
        done(null, payload);
      },
    );
  });
  await http.register(serviceApiPlugin({ auth, enrollments: enrollments as never, groups: groups as never, registrations, audit }));
  await http.register(controlPlanePlugin({ auth, instances }));
  await http.register(caCertificatesPlugin({ auth, certificates: new CaCertificateService(serviceDeps) }));
  await http.register(certificateIssuancePlugin({ auth, policies: new CredentialPolicyService(serviceDeps), issuingCa }));
  await http.register(crlPlugin({ store, issuingCa }));
  await http.register(builtInHubPlugin({ hubs: builtInHubs }));
  await http.register(deviceApiPlugin({ registrations: registrationService }));
  await http.register(customerDataPlugin({ auth, dataRequests, audit }));
  await http.register(portalPlugin());
  http.get('/healthz', async () => ({ status: 'ok' }));
  let metricsListener: MetricsListener | undefined;
  if (metrics !== undefined) {
    if (config.metricsListen === undefined) addMetricsRoute(http, metrics, config.metricsToken);
    else metricsListener = createMetricsListener(config.metricsListen, metrics, config.metricsToken);
  }
  http.get('/readyz', async (_request, reply) => {
    const readiness = await checkReadiness({
      store,
      instanceId: operator.id,
      ...(databaseFile === undefined ? {} : { databaseFile }),
      pendingMigrations: () => pendingMigrations(opened.db, store.capabilities),
      listeners: () => ({
        https: http.server.listening,
        ...Object.fromEntries((devices?.listeners ?? []).map((listener) => [listener.what.toLowerCase(), listener.isListening()])),
        ...(metricsListener === undefined ? {} : { metrics: metricsListener.server.listening }),
      }),
      outbox: async () => {
        const counts = await operationalCounts(opened.db);
        return { depth: counts.outboxDepth, oldestAgeSeconds: counts.outboxOldestAgeSeconds };
      },
      lastOutboxSweepAt: () => events.lastSweepAt,
    });
    return reply.code(readiness.httpStatus).send(readiness.body);
  });
  http.get('/openapi.json', async () => openApi.document(deps.version ?? '0.0.0'));
  await http.ready();
  hubClients.useBuiltInService(builtInHubs);
  const deviceEndpoints = await createDeviceEndpoints({
    config,
    logger: log('mqtt'),
    amqpLogger: log('amqp'),
    registrations: registrationService,
    tls: { key: tls.key, cert: tls.cert },
    httpServer: http.server,
  });
  devices = deviceEndpoints;
  const describeCertificate = (): ServerInfo['serverCertificate'] => {
    if (isServed(tls)) return { source: tls.source, path: tls.certPath, subject: tls.subject, issuer: tls.issuer, validTo: tls.validTo.toISOString() };
    const leaf = new X509Certificate(tls.cert);
    return { source: 'operator', path: tls.caPath, subject: leaf.subject, issuer: leaf.issuer, validTo: new Date(leaf.validTo).toISOString() };
  };

  // HTTPS requests being answered, so a stop can wait for them (see close()).
  const running = new Set<ServerResponse>();
  let draining = false;
  let onIdle: (() => void) | undefined;
  http.server.on('request', (_request: IncomingMessage, response: ServerResponse) => {
    // A request that arrives on an open connection while stopping is served, and its connection then closed.
    if (draining) response.setHeader('connection', 'close');
    running.add(response);
    response.once('close', () => {
      running.delete(response);
      if (running.size === 0) onIdle?.();
    });
  });
  const requestsDone = (limitMs: number) =>
    new Promise<void>((resolve) => {
      if (running.size === 0) return resolve();
      const timer = setTimeout(resolve, limitMs);
      onIdle = () => {
        clearTimeout(timer);
        resolve();
      };
    });

  let purgeTimer: NodeJS.Timeout | undefined;
  let intentTimer: NodeJS.Timeout | undefined;
  let resumeTimer: NodeJS.Timeout | undefined;
  return {
    http,
    store,
    builtInHubs,
    audit,
    dataRequests,
    registrations: registrationService,
    symmetricKeyGroups,
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
        created,
        serverCertificate: describeCertificate(),
      };
    },
    async reloadTls() {
      if (deps.tls !== undefined) throw new Error('this server was given its TLS material; there is nothing to reload');
      let next: ServedCertificate;
      try {
        next = await loadServerCertificate(config);
      } catch (error) {
        tlsLogger.error({ err: error }, 'server certificate not reloaded; the current one stays in use');
        throw error;
      }
      for (const warning of next.warnings) tlsLogger.warn({ certificate: next.certPath }, warning);
      const context = { key: next.key, cert: next.cert, ...DEVICE_TLS_OPTIONS };
      // Fastify was created with `https`, so its server is a TLS server (the raw type does not say so).
      (http.server as unknown as TlsServer).setSecureContext(context);
      deviceEndpoints.setSecureContext(next);
      tls = next;
      tlsLogger.info({ certificate: next.certPath, subject: next.subject, validTo: next.validTo.toISOString(), fingerprint256: next.fingerprint256 }, 'server certificate reloaded');
      return describeCertificate();
    },
    async listen() {
      // Connections are file descriptors: the soft limit goes up to the hard one before anything listens.
      const fileLimit = raiseFileLimit();
      if (fileLimit.problem !== undefined) logger.warn({ fileLimit }, fileLimit.problem);
      else logger.info({ fileLimit }, fileLimit.raisedFrom === undefined ? `open-file limit ${fileLimit.soft}` : `open-file limit raised from ${fileLimit.raisedFrom} to ${fileLimit.soft}`);
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
        await purgeExpiredOperations(serviceDeps);
        await purgeIdleRateBuckets(serviceDeps);
      };
      purgeTimer = setInterval(() => void purge().catch((error: unknown) => logger.error({ err: error }, 'purge failed')), config.auditPurgeIntervalMs);
      purgeTimer.unref();
      void purge().catch((error: unknown) => logger.error({ err: error }, 'purge failed'));
      await dataRequests.resumeUnfinished();
      // Registrations a previous run left between their hub write and their record are settled before devices come
      // in (docs/reliability.md); then a sweep catches any a failing hub kept open.
      const settled = await registrationService.reconcile({ olderThanMs: 0 });
      if (settled.completed + settled.rolledBack + settled.unreachable > 0) logger.warn({ settled }, 'interrupted registrations settled at start');
      intentTimer = setInterval(() => {
        void registrationService
          .reconcile({ olderThanMs: config.registrationIntentTimeoutMs })
          .catch((error: unknown) => logger.error({ err: error }, 'registration intent sweep failed'));
      }, Math.floor(config.registrationIntentTimeoutMs / 2));
      intentTimer.unref();
      // Nodes sharing a database: a job whose node died is taken over once its lease expires, without a restart.
      if (!store.capabilities.singleWriter) {
        resumeTimer = setInterval(
          () => void dataRequests.resumeUnfinished().catch((error: unknown) => logger.error({ err: error }, 'resuming data requests failed')),
          Math.max(250, Math.floor(config.leaseMs / 2)),
        );
        resumeTimer.unref();
      }
      for (const listener of deviceEndpoints.listeners) {
        try {
          await listener.listen();
        } catch (error) {
          throw new ListenError(listener.what, `${config.listenHost}:${listener.port}`, error as NodeJS.ErrnoException, listener.flag);
        }
      }
      if (metricsListener !== undefined) {
        try {
          await metricsListener.listen();
        } catch (error) {
          throw new ListenError('metrics', config.metricsListen ?? '', error as NodeJS.ErrnoException, '--metrics-listen');
        }
      }
    },
    async close() {
      if (purgeTimer !== undefined) clearInterval(purgeTimer);
      if (intentTimer !== undefined) clearInterval(intentTimer);
      if (resumeTimer !== undefined) clearInterval(resumeTimer);
      await dataRequests.stop();
      await events.close();
      // Stop accepting and close device connections; let HTTPS requests already running finish — for at most
      // shutdownGraceMs, so a stuck client cannot hold the stop open — and only then close Fastify: once it is
      // closing it refuses the in-process calls that running registrations make to the built-in hub.
      draining = true;
      http.server.close();
      http.server.closeIdleConnections();
      await metricsListener?.close();
      await Promise.all([deviceEndpoints.close(), requestsDone(config.shutdownGraceMs)]);
      http.server.closeAllConnections();
      await http.close();
      await hubClients.close();
      await store.close();
      releaseDataDir();
    },
  };
}

function isServed(tls: TlsMaterial): tls is ServedCertificate {
  return 'source' in tls;
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
      created: false,
      serverCertificate: describeServerCertificate(config),
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
