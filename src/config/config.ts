import { Type, type Static } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import { resolve } from 'node:path';

/**
 * The one configuration schema. Sources merge as defaults < config file < environment < command-line flags, the
 * result is validated once (every problem listed), frozen and passed down. Nothing else reads process.env.
 */
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
    ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].map((level) => Type.Literal(level)),
    { default: 'info' },
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
  hubLatencyCacheMs: Type.Integer({ minimum: 0, maximum: 3600000, default: 60000, description: 'How long a measured hub latency (geoLatency) is reused.' }),
  dataRequestWaitMs: Type.Integer({ minimum: 0, maximum: 60000, default: 5000, description: 'How long creating a data request waits for it to finish before answering `running`.' }),
  lifecycleEventRetryBaseMs: Type.Integer({ minimum: 10, maximum: 600000, default: 1000, description: 'First retry delay of a failed lifecycle-event delivery; doubles per attempt up to 60 s.' }),
  auditPurgeIntervalMs: Type.Integer({ minimum: 1000, default: 3600000, description: 'How often events past their retention period are purged.' }),
  operationRetentionMs: Type.Integer({ minimum: 60000, default: 86400000, description: 'How long finished operations can still be polled.' }),
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
const ENV: Record<string, { key: keyof Config; kind: 'string' | 'int' | 'list' | 'bool' }> = {
  PROVISIOND_DATA_DIR: { key: 'dataDir', kind: 'string' },
  PROVISIOND_LISTEN_HOST: { key: 'listenHost', kind: 'string' },
  PROVISIOND_HTTPS_PORT: { key: 'httpsPort', kind: 'int' },
  PROVISIOND_HOST_NAMES: { key: 'hostNames', kind: 'list' },
  PROVISIOND_STORE: { key: 'store', kind: 'string' },
  PROVISIOND_STORE_POOL_SIZE: { key: 'storePoolSize', kind: 'int' },
  PROVISIOND_STORE_STATEMENT_TIMEOUT_MS: { key: 'storeStatementTimeoutMs', kind: 'int' },
  PROVISIOND_LEASE_MS: { key: 'leaseMs', kind: 'int' },
  PROVISIOND_LOG_LEVEL: { key: 'logLevel', kind: 'string' },
  PROVISIOND_BULK_MAX_ITEMS: { key: 'bulkMaxItems', kind: 'int' },
  PROVISIOND_QUERY_MAX_ITEM_COUNT: { key: 'queryMaxItemCount', kind: 'int' },
  PROVISIOND_MAX_BODY_BYTES: { key: 'maxBodyBytes', kind: 'int' },
  PROVISIOND_REGISTRATION_WAIT_MS: { key: 'registrationWaitMs', kind: 'int' },
  PROVISIOND_RETRY_AFTER_SECONDS: { key: 'retryAfterSeconds', kind: 'int' },
  PROVISIOND_CUSTOM_ALLOCATION_TIMEOUT_MS: { key: 'customAllocationTimeoutMs', kind: 'int' },
  PROVISIOND_REGISTRATIONS_PER_SECOND: { key: 'registrationsPerSecond', kind: 'int' },
  PROVISIOND_POLLS_PER_SECOND_PER_DEVICE: { key: 'pollsPerSecondPerDevice', kind: 'int' },
  PROVISIOND_HUB_LATENCY_CACHE_MS: { key: 'hubLatencyCacheMs', kind: 'int' },
  PROVISIOND_OPERATION_RETENTION_MS: { key: 'operationRetentionMs', kind: 'int' },
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
  PROVISIOND_MAX_DEVICE_CONNECTIONS: { key: 'maxDeviceConnections', kind: 'int' },
  PROVISIOND_DEVICE_IDLE_TIMEOUT_MS: { key: 'deviceIdleTimeoutMs', kind: 'int' },
};
export const CONFIG_ENV_VARS = Object.keys(ENV);

function readText(text: string, kind: 'string' | 'int' | 'list' | 'bool'): unknown {
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
    problems.push(`${error.path.slice(1).replaceAll('/', '.') || '(root)'}: ${error.message}${error.value === undefined ? '' : ` (got ${JSON.stringify(error.value)})`}`);
  }
  if (problems.length > 0) throw new ConfigError(problems);
  const config = withDefaults as Static<typeof ConfigSchema>;
  config.dataDir = resolve(config.dataDir);
  config.hostNames = config.hostNames.map((name) => name.toLowerCase());
  return Object.freeze(config);
}

/** True when the store is a PostgreSQL database (`postgres://` or `postgresql://`). */
export function usesPostgres(config: Config): boolean {
  return /^postgres(ql)?:\/\//i.test(config.store);
}

/** The SQLite file the config names. */
export function sqliteFile(config: Config): string {
  return config.store === 'sqlite' ? resolve(config.dataDir, 'provisiond.db') : resolve(config.store.replace(/^sqlite:/, ''));
}
