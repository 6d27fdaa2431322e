import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import type { Config } from '../config/config.js';

/** The options every server-side command shares (serve, info), and how they become a Config. */
export function addConfigOptions(command: Command): Command {
  return command
    .option('--config <file>', 'JSON config file (defaults < file < PROVISIOND_* env < flags)')
    .option('--data-dir <dir>', 'data directory (database, dev CA, keys); default ./data')
    .option('--https-port <port>', 'HTTPS port; default 443')
    .option('--host-names <names>', 'comma-separated host names for the server certificate; default localhost,127.0.0.1')
    .option('--store <store>', "'sqlite' (default: a file in the data directory), a SQLite file path, or a postgres:// URL")
    .option('--tls-cert-file <file>', 'your server certificate (PEM, chain after the leaf); used as it is')
    .option('--tls-key-file <file>', 'the private key of --tls-cert-file (PEM)')
    .option('--mqtt-port <port>', 'MQTT over TLS device port; default 8883')
    .option('--amqp-port <port>', 'AMQP over TLS device port; default 5671')
    // Both spellings, so that an absent flag leaves the setting to the config file and environment.
    .option('--mqtt', 'serve MQTT over TLS (default)')
    .option('--no-mqtt', 'do not serve MQTT over TLS')
    .option('--amqp', 'serve AMQP over TLS (default)')
    .option('--no-amqp', 'do not serve AMQP over TLS');
}

/** Options that matter only to a running server (how it listens, logs and limits devices): `info` does not take them. */
export function addServeOptions(command: Command): Command {
  return command
    .option('--listen-host <address>', 'address to bind; default 0.0.0.0')
    .option('--log-level <level>', 'fatal, error, warn, info, debug, trace or silent; default info')
    .option('--log-format <format>', 'json (one object per line on stdout, default) or pretty')
    .option('--log-levels <levels>', 'levels per component, e.g. mqtt=debug,http=warn')
    .option('--metrics', 'serve Prometheus metrics at /metrics')
    .option('--metrics-listen <host:port>', 'serve /metrics on this separate plain-HTTP address instead of the HTTPS port')
    .option('--websockets', 'serve MQTT and AMQP over WebSocket at /$iothub/websocket on the HTTPS port (default)')
    .option('--no-websockets', 'do not serve MQTT and AMQP over WebSocket')
    .option('--mqtt-max-packet-bytes <bytes>', 'largest MQTT packet from a device; default 131072')
    .option('--amqp-max-message-bytes <bytes>', 'AMQP max-frame-size and largest message from a device; default 131072')
    .option('--max-device-connections <n>', 'open MQTT/AMQP device connections; default 10000')
    .option('--device-idle-timeout-ms <ms>', 'close a silent MQTT/AMQP device connection after this long; default 300000');
}

export interface ConfigFlags {
  config?: string;
  dataDir?: string;
  httpsPort?: string;
  listenHost?: string;
  hostNames?: string;
  store?: string;
  logLevel?: string;
  logFormat?: string;
  logLevels?: string;
  tlsCertFile?: string;
  tlsKeyFile?: string;
  metrics?: boolean;
  metricsListen?: string;
  mqttPort?: string;
  amqpPort?: string;
  mqtt?: boolean;
  amqp?: boolean;
  websockets?: boolean;
  mqttMaxPacketBytes?: string;
  amqpMaxMessageBytes?: string;
  maxDeviceConnections?: string;
  deviceIdleTimeoutMs?: string;
}

/** Async because the schema library loads here, when a server command runs, not for every admin command. */
export async function configFromFlags(flags: ConfigFlags, env: Record<string, string | undefined>): Promise<Config> {
  const { loadConfig, parseLogLevels } = await import('../config/config.js');
  let file: Record<string, unknown> | undefined;
  if (flags.config !== undefined) {
    try {
      file = JSON.parse(readFileSync(flags.config, 'utf8')) as Record<string, unknown>;
    } catch (error) {
      throw new Error(`cannot read config file ${flags.config}: ${(error as Error).message}`);
    }
  }
  const int = (value: string | undefined): unknown => (value === undefined ? undefined : /^\d+$/.test(value) ? Number(value) : value);
  return loadConfig({
    ...(file === undefined ? {} : { file, fileName: flags.config }),
    env,
    flags: {
      dataDir: flags.dataDir,
      httpsPort: int(flags.httpsPort),
      listenHost: flags.listenHost,
      hostNames: flags.hostNames?.split(',').map((name) => name.trim()).filter((name) => name !== ''),
      store: flags.store,
      logLevel: flags.logLevel,
      logFormat: flags.logFormat,
      logLevels: flags.logLevels === undefined ? undefined : parseLogLevels(flags.logLevels),
      tlsCertFile: flags.tlsCertFile,
      tlsKeyFile: flags.tlsKeyFile,
      metricsEnabled: flags.metrics,
      metricsListen: flags.metricsListen,
      mqttPort: int(flags.mqttPort),
      amqpPort: int(flags.amqpPort),
      mqttEnabled: flags.mqtt,
      amqpEnabled: flags.amqp,
      webSocketsEnabled: flags.websockets,
      mqttMaxPacketBytes: int(flags.mqttMaxPacketBytes),
      amqpMaxMessageBytes: int(flags.amqpMaxMessageBytes),
      maxDeviceConnections: int(flags.maxDeviceConnections),
      deviceIdleTimeoutMs: int(flags.deviceIdleTimeoutMs),
    },
  });
}
