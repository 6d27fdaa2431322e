import { Type, type Static, type TSchema } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import { resolve } from 'node:path';

/**
 * The one configuration schema. Sources merge as defaults < config file < environment < command-line flags, the
 * result is validated once (every problem listed), frozen and passed down. Nothing else reads process.env.
 */
export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

export const ConfigSchema = Type.Object({
  dataDir: Type.String({ minLength: 1, default: './data', description: 'Where the database, the dev CA and keys live.' }),
  listenHost: Type.String({ minLength: 1, default: '0.0.0.0', description: 'Address the listeners bind.' }),
  httpsPort: Type.Integer({ minimum: 0, maximum: 65535, default: 443 }),
  hostNames: Type.Array(Type.String({ minLength: 1, pattern: '^[A-Za-z0-9.:-]+$' }), {
    minItems: 1,
    default: ['localhost', '127.0.0.1'],
    description: 'Host names the server certificate covers; the first is the default instance service host name.',
  }),
  store: Type.String({
    minLength: 1,
    default: 'sqlite',
    description: "'sqlite' (a file in dataDir), a SQLite file path, or a postgres:// URL (a database shared by several nodes).",
  }),
  storePoolSize: Type.Integer({ minimum: 1, maximum: 1000, default: 10, description: 'PostgreSQL: connections per node (and as many again for per-device locks).' }),
  storeStatementTimeoutMs: Type.Integer({ minimum: 0, maximum: 3600000, default: 30000, description: 'PostgreSQL: a statement running longer fails (0: no limit).' }),
  leaseMs: Type.Integer({
    minimum: 500,
    maximum: 3600000,
    default: 30000,
    description: 'How long a node holds a data-request job or an instance\'s event delivery without renewing; a node that dies is replaced after this.',
  }),
  logLevel: Type.Union(
    LOG_LEVELS.map((level) => Type.Literal(level)),
    { default: 'info' },
  ),
  logFormat: Type.Union([Type.Literal('json'), Type.Literal('pretty')], {
    default: 'json',
    description: "'json' (one JSON object per line on stdout, for collectors) or 'pretty' (readable lines, for people).",
  }),
  logLevels: Type.Record(Type.String({ pattern: '^[A-Za-z]+$' }), Type.Union(LOG_LEVELS.map((level) => Type.Literal(level))), {
    default: {},
    description: 'Per-component log levels overriding logLevel, e.g. {"mqtt":"debug","http":"warn"}.',
  }),
  tlsCertFile: Type.Optional(Type.String({ minLength: 1, description: "The server certificate (PEM, leaf first, chain after it); used as it is, never replaced." })),
  tlsKeyFile: Type.Optional(Type.String({ minLength: 1, description: "The server certificate's private key (PEM)." })),
  metricsEnabled: Type.Boolean({ default: false, description: 'Serve Prometheus metrics at /metrics.' }),
  metricsToken: Type.Optional(Type.String({ minLength: 16, description: 'When set, /metrics requires Authorization: Bearer <token>.' })),
  metricsListen: Type.Optional(
    Type.String({ pattern: '^(\\[[0-9A-Fa-f:.]+\\]|[A-Za-z0-9.-]+):[0-9]{1,5}$', description: "host:port of a separate plain-HTTP listener for /metrics (instead of the HTTPS port)." }),
  ),
  bulkMaxItems: Type.Integer({ minimum: 1, maximum: 100000, default: 1000, description: 'Most items in one bulk request.' }),
  queryMaxItemCount: Type.Integer({ minimum: 1, maximum: 10000, default: 1000, description: 'Largest query page.' }),
  queryDefaultItemCount: Type.Integer({ minimum: 1, maximum: 10000, default: 100, description: 'Query page size when the client names none.' }),
  maxBodyBytes: Type.Integer({ minimum: 1024, maximum: 64 * 1024 * 1024, default: 4 * 1024 * 1024 }),
  registrationWaitMs: Type.Integer({
    minimum: 0,
    maximum: 25000,
    default: 3000,
    description: 'How long a register request waits for the assignment to finish before answering; a finished one is polled at once (Retry-After: 0).',
  }),
  retryAfterSeconds: Type.Integer({ minimum: 1, maximum: 60, default: 1, description: 'Retry-After sent while an assignment is still running.' }),
  customAllocationTimeoutMs: Type.Integer({ minimum: 100, maximum: 60000, default: 5000, description: 'Time limit of one custom allocation webhook call.' }),
  registrationsPerSecond: Type.Integer({ minimum: 0, maximum: 1000000, default: 10000, description: 'Register requests per second per instance (0: unlimited); bursts up to twice that.' }),
  pollsPerSecondPerDevice: Type.Integer({ minimum: 0, maximum: 1000, default: 5, description: 'Status polls per second per device (0: unlimited); bursts up to twice that.' }),
  refusedAttemptsPerSecondPerSource: Type.Integer({
    minimum: 0,
    maximum: 1000000,
    default: 20,
    description: 'Refused device attempts (bad credential, unknown ID scope) per second per source address (0: unlimited); bursts up to twice that, then the address is answered 429 until it slows down.',
  }),
  registrationIntentTimeoutMs: Type.Integer({
    minimum: 10000,
    maximum: 86400000,
    default: 120000,
    description: 'A registration still between its hub write and its record after this long was interrupted (its node died); the periodic sweep, every half of this, settles it. At start every intent is settled at once.',
  }),
  hubLatencyCacheMs: Type.Integer({ minimum: 0, maximum: 3600000, default: 60000, description: 'How long a measured hub latency (geoLatency) is reused.' }),
  dataRequestWaitMs: Type.Integer({ minimum: 0, maximum: 60000, default: 5000, description: 'How long creating a data request waits for it to finish before answering `running`.' }),
  lifecycleEventRetryBaseMs: Type.Integer({ minimum: 10, maximum: 600000, default: 1000, description: 'First retry delay of a failed lifecycle-event delivery; doubles per attempt up to 60 s.' }),
  auditPurgeIntervalMs: Type.Integer({ minimum: 1000, default: 3600000, description: 'How often events past their retention period are purged.' }),
  operationRetentionMs: Type.Integer({ minimum: 60000, default: 86400000, description: 'How long finished operations can still be polled.' }),
  shutdownGraceMs: Type.Integer({
    minimum: 0,
    maximum: 600000,
    default: 10000,
    description: 'On SIGTERM/SIGINT, how long requests already running may take to finish before their connections are cut.',
  }),
  mqttPort: Type.Integer({ minimum: 0, maximum: 65535, default: 8883, description: 'MQTT over TLS device port.' }),
  amqpPort: Type.Integer({ minimum: 0, maximum: 65535, default: 5671, description: 'AMQP over TLS device port.' }),
  mqttEnabled: Type.Boolean({ default: true, description: 'Serve MQTT over TLS on mqttPort.' }),
  amqpEnabled: Type.Boolean({ default: true, description: 'Serve AMQP over TLS on amqpPort.' }),
  webSocketsEnabled: Type.Boolean({ default: true, description: 'Serve MQTT and AMQP over WebSocket at /$iothub/websocket on the HTTPS port.' }),
  mqttMaxPacketBytes: Type.Integer({
    minimum: 1024,
    maximum: 16 * 1024 * 1024,
    default: 131072,
    description: 'Largest MQTT packet a device may send (DPS messages are at most 96 KB); a larger one closes the connection.',
  }),
  amqpMaxMessageBytes: Type.Integer({
    minimum: 1024,
    maximum: 16 * 1024 * 1024,
    default: 131072,
    description: 'The AMQP max-frame-size offered to devices, and the largest message; more closes the connection.',
  }),
  httpsHandshakeTimeoutMs: Type.Integer({ minimum: 1000, maximum: 120000, default: 10000, description: 'A TLS handshake on the HTTPS port that takes longer is dropped.' }),
  httpsRequestTimeoutMs: Type.Integer({
    minimum: 1000,
    maximum: 600000,
    default: 30000,
    description: 'Time to receive a whole request (its headers within half of it, at most 15 s); a slower one is answered 408 and the connection closed.',
  }),
  httpsIdleTimeoutMs: Type.Integer({
    minimum: 1000,
    maximum: 3600000,
    default: 30000,
    description: 'An HTTPS connection with no request in progress (new, or kept alive between requests) is closed after this long.',
  }),
  httpsMaxConnections: Type.Integer({ minimum: 1, maximum: 10000000, default: 10000, description: 'Open connections on the HTTPS port; more are closed at once.' }),
  httpsMaxConnectionsPerSource: Type.Integer({
    minimum: 1,
    maximum: 10000000,
    default: 1000,
    description: 'Open connections on the HTTPS port from one address (devices behind one NAT share it); more are closed at once.',
  }),
  tlsMaxHandshakes: Type.Integer({
    minimum: 1,
    maximum: 100000,
    default: 8,
    description: 'TLS handshakes each listener (HTTPS with its WebSocket paths, MQTT, AMQP) starts at once before serving its other connections again; more connections wait, taken in turn by source address.',
  }),
  tlsMaxWaitingHandshakes: Type.Integer({
    minimum: 0,
    maximum: 10000000,
    default: 1000,
    description: 'Connections (with their ClientHello) waiting for a TLS handshake on each listener; more are closed at once, before any TLS work.',
  }),
  maxDeviceConnections: Type.Integer({ minimum: 1, maximum: 10000000, default: 10000, description: 'Open MQTT and AMQP device connections (TLS and WebSocket together); more are refused.' }),
  deviceIdleTimeoutMs: Type.Integer({
    minimum: 1000,
    maximum: 86400000,
    default: 300000,
    description: 'An MQTT or AMQP device connection that sends nothing for this long is closed (longer than the SDKs\' keep-alive).',
  }),
});
export type Config = Readonly<Static<typeof ConfigSchema>>;

export class ConfigError extends Error {
  readonly problems: readonly string[];
  constructor(problems: string[]) {
    super(`invalid configuration:\n${problems.map((problem) => `  - ${problem}`).join('\n')}`);
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

/** Environment variable → config key, with how to read the text. */
type TextKind = 'string' | 'int' | 'list' | 'bool' | 'levels';
const ENV: Record<string, { key: keyof Config; kind: TextKind }> = {
  PROVISIOND_DATA_DIR: { key: 'dataDir', kind: 'string' },
  PROVISIOND_LISTEN_HOST: { key: 'listenHost', kind: 'string' },
  PROVISIOND_HTTPS_PORT: { key: 'httpsPort', kind: 'int' },
  PROVISIOND_HOST_NAMES: { key: 'hostNames', kind: 'list' },
  PROVISIOND_STORE: { key: 'store', kind: 'string' },
  PROVISIOND_STORE_POOL_SIZE: { key: 'storePoolSize', kind: 'int' },
  PROVISIOND_STORE_STATEMENT_TIMEOUT_MS: { key: 'storeStatementTimeoutMs', kind: 'int' },
  PROVISIOND_LEASE_MS: { key: 'leaseMs', kind: 'int' },
  PROVISIOND_LOG_LEVEL: { key: 'logLevel', kind: 'string' },
  PROVISIOND_LOG_FORMAT: { key: 'logFormat', kind: 'string' },
  PROVISIOND_LOG_LEVELS: { key: 'logLevels', kind: 'levels' },
  PROVISIOND_TLS_CERT_FILE: { key: 'tlsCertFile', kind: 'string' },
  PROVISIOND_TLS_KEY_FILE: { key: 'tlsKeyFile', kind: 'string' },
  PROVISIOND_METRICS_ENABLED: { key: 'metricsEnabled', kind: 'bool' },
  PROVISIOND_METRICS_TOKEN: { key: 'metricsToken', kind: 'string' },
  PROVISIOND_METRICS_LISTEN: { key: 'metricsListen', kind: 'string' },
  PROVISIOND_BULK_MAX_ITEMS: { key: 'bulkMaxItems', kind: 'int' },
  PROVISIOND_QUERY_MAX_ITEM_COUNT: { key: 'queryMaxItemCount', kind: 'int' },
  PROVISIOND_MAX_BODY_BYTES: { key: 'maxBodyBytes', kind: 'int' },
  PROVISIOND_REGISTRATION_WAIT_MS: { key: 'registrationWaitMs', kind: 'int' },
  PROVISIOND_RETRY_AFTER_SECONDS: { key: 'retryAfterSeconds', kind: 'int' },
  PROVISIOND_CUSTOM_ALLOCATION_TIMEOUT_MS: { key: 'customAllocationTimeoutMs', kind: 'int' },
  PROVISIOND_REGISTRATIONS_PER_SECOND: { key: 'registrationsPerSecond', kind: 'int' },
  PROVISIOND_POLLS_PER_SECOND_PER_DEVICE: { key: 'pollsPerSecondPerDevice', kind: 'int' },
  PROVISIOND_REFUSED_ATTEMPTS_PER_SECOND_PER_SOURCE: { key: 'refusedAttemptsPerSecondPerSource', kind: 'int' },
  PROVISIOND_REGISTRATION_INTENT_TIMEOUT_MS: { key: 'registrationIntentTimeoutMs', kind: 'int' },
  PROVISIOND_HUB_LATENCY_CACHE_MS: { key: 'hubLatencyCacheMs', kind: 'int' },
  PROVISIOND_OPERATION_RETENTION_MS: { key: 'operationRetentionMs', kind: 'int' },
  PROVISIOND_SHUTDOWN_GRACE_MS: { key: 'shutdownGraceMs', kind: 'int' },
  PROVISIOND_DATA_REQUEST_WAIT_MS: { key: 'dataRequestWaitMs', kind: 'int' },
  PROVISIOND_LIFECYCLE_EVENT_RETRY_BASE_MS: { key: 'lifecycleEventRetryBaseMs', kind: 'int' },
  PROVISIOND_AUDIT_PURGE_INTERVAL_MS: { key: 'auditPurgeIntervalMs', kind: 'int' },
  PROVISIOND_QUERY_DEFAULT_ITEM_COUNT: { key: 'queryDefaultItemCount', kind: 'int' },
  PROVISIOND_MQTT_PORT: { key: 'mqttPort', kind: 'int' },
  PROVISIOND_AMQP_PORT: { key: 'amqpPort', kind: 'int' },
  PROVISIOND_MQTT_ENABLED: { key: 'mqttEnabled', kind: 'bool' },
  PROVISIOND_AMQP_ENABLED: { key: 'amqpEnabled', kind: 'bool' },
  PROVISIOND_WEBSOCKETS_ENABLED: { key: 'webSocketsEnabled', kind: 'bool' },
  PROVISIOND_MQTT_MAX_PACKET_BYTES: { key: 'mqttMaxPacketBytes', kind: 'int' },
  PROVISIOND_AMQP_MAX_MESSAGE_BYTES: { key: 'amqpMaxMessageBytes', kind: 'int' },
  PROVISIOND_HTTPS_HANDSHAKE_TIMEOUT_MS: { key: 'httpsHandshakeTimeoutMs', kind: 'int' },
  PROVISIOND_HTTPS_REQUEST_TIMEOUT_MS: { key: 'httpsRequestTimeoutMs', kind: 'int' },
  PROVISIOND_HTTPS_IDLE_TIMEOUT_MS: { key: 'httpsIdleTimeoutMs', kind: 'int' },
  PROVISIOND_HTTPS_MAX_CONNECTIONS: { key: 'httpsMaxConnections', kind: 'int' },
  PROVISIOND_HTTPS_MAX_CONNECTIONS_PER_SOURCE: { key: 'httpsMaxConnectionsPerSource', kind: 'int' },
  PROVISIOND_TLS_MAX_HANDSHAKES: { key: 'tlsMaxHandshakes', kind: 'int' },
  PROVISIOND_TLS_MAX_WAITING_HANDSHAKES: { key: 'tlsMaxWaitingHandshakes', kind: 'int' },
  PROVISIOND_MAX_DEVICE_CONNECTIONS: { key: 'maxDeviceConnections', kind: 'int' },
  PROVISIOND_DEVICE_IDLE_TIMEOUT_MS: { key: 'deviceIdleTimeoutMs', kind: 'int' },
};
export const CONFIG_ENV_VARS = Object.keys(ENV);

function readText(text: string, kind: TextKind): unknown {
  if (kind === 'levels') return parseLogLevels(text);
  if (kind === 'bool') return /^(true|1|yes|on)$/i.test(text.trim()) ? true : /^(false|0|no|off)$/i.test(text.trim()) ? false : text;
  if (kind === 'int') return /^-?\d+$/.test(text.trim()) ? Number(text.trim()) : text;
  if (kind === 'list') return text.split(',').map((part) => part.trim()).filter((part) => part.length > 0);
  return text;
}

export interface ConfigSources {
  file?: Record<string, unknown>;
  fileName?: string;
  env?: Record<string, string | undefined>;
  flags?: Partial<Record<keyof Config, unknown>>;
}

export function loadConfig(sources: ConfigSources): Config {
  const problems: string[] = [];
  const merged: Record<string, unknown> = {};
  const known = new Set(Object.keys(ConfigSchema.properties));
  for (const [key, value] of Object.entries(sources.file ?? {})) {
    if (!known.has(key)) problems.push(`${sources.fileName ?? 'config file'}: unknown setting '${key}'`);
    else merged[key] = value;
  }
  for (const [name, { key, kind }] of Object.entries(ENV)) {
    const text = sources.env?.[name];
    if (text !== undefined && text !== '') merged[key] = readText(text, kind);
  }
  for (const [key, value] of Object.entries(sources.flags ?? {})) {
    if (value !== undefined) merged[key] = value;
  }
  const withDefaults = Value.Default(ConfigSchema, merged) as Record<string, unknown>;
  for (const error of Value.Errors(ConfigSchema, withDefaults)) {
    problems.push(`${error.path.slice(1).replaceAll('/', '.') || '(root)'}: ${describeProblem(error)}${error.value === undefined ? '' : ` (got ${JSON.stringify(error.value)})`}`);
  }
  if (problems.length > 0) throw new ConfigError(problems);
  const config = withDefaults as Static<typeof ConfigSchema>;
  config.dataDir = resolve(config.dataDir);
  config.hostNames = config.hostNames.map((name) => name.toLowerCase());
  return Object.freeze(config);
}

/** TypeBox says "Expected union value" for a choice of words; a person needs to read the words they may use. */
function describeProblem(error: { message: string; schema: TSchema }): string {
  const choices = (error.schema.anyOf as TSchema[] | undefined)?.map((member) => member.const as unknown);
  if (choices !== undefined && choices.length > 0 && choices.every((choice) => typeof choice === 'string')) {
    return `must be one of ${choices.join(', ')}`;
  }
  return error.message;
}

/** `mqtt=debug,http=warn` → { mqtt: 'debug', http: 'warn' } (the schema then checks the names and levels). */
export function parseLogLevels(text: string): Record<string, string> {
  const levels: Record<string, string> = {};
  for (const part of text.split(',').map((entry) => entry.trim()).filter((entry) => entry !== '')) {
    const at = part.indexOf('=');
    levels[at < 0 ? part : part.slice(0, at).trim()] = at < 0 ? '' : part.slice(at + 1).trim();
  }
  return levels;
}

/** True when the store is a PostgreSQL database (`postgres://` or `postgresql://`). */
export function usesPostgres(config: Config): boolean {
  return /^postgres(ql)?:\/\//i.test(config.store);
}

/** The SQLite file the config names. */
export function sqliteFile(config: Config): string {
  return config.store === 'sqlite' ? resolve(config.dataDir, 'provisiond.db') : resolve(config.store.replace(/^sqlite:/, ''));
}
