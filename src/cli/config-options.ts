import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { loadConfig, type Config } from '../config/config.js';

/** The options every server-side command shares (serve, info), and how they become a Config. */
export function addConfigOptions(command: Command): Command {
  return command
    .option('--config <file>', 'JSON config file (defaults < file < PROVISIOND_* env < flags)')
    .option('--data-dir <dir>', 'data directory (database, dev CA, keys); default ./data')
    .option('--https-port <port>', 'HTTPS port; default 443')
    .option('--listen-host <address>', 'address to bind; default 0.0.0.0')
    .option('--host-names <names>', 'comma-separated host names for the server certificate; default localhost,127.0.0.1')
    .option('--store <store>', "'sqlite' (default: a file in the data directory) or a SQLite file path")
    .option('--log-level <level>', 'fatal, error, warn, info, debug, trace or silent; default info');
}

export interface ConfigFlags {
  config?: string;
  dataDir?: string;
  httpsPort?: string;
  listenHost?: string;
  hostNames?: string;
  store?: string;
  logLevel?: string;
}

export function configFromFlags(flags: ConfigFlags, env: Record<string, string | undefined>): Config {
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
    },
  });
}
