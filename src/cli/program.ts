import { Command } from 'commander';
import type { Config } from '../config/config.js';
import type { ServerInfo } from '../app.js';
import { addConfigOptions, addServeOptions, configFromFlags, type ConfigFlags } from './config-options.js';
import { registerAdminCommands } from './admin.js';
import { registerBackupCommands } from './commands/backup.js';

/**
 * The `provisiond` command line. Server commands (serve, info) work on a data directory; every admin command is a
 * client of the service API and never touches the database.
 */
export interface CliIo {
  env: Record<string, string | undefined>;
  out(text: string): void;
  err(text: string): void;
  /** Asks a question on the terminal and resolves with the answer; absent when stdin is not a terminal. */
  prompt?: (question: string) => Promise<string>;
}

export interface ServerRunner {
  /** Starts the server and resolves once it is listening. */
  serve(config: Config): Promise<ServerInfo>;
  /** Initialises the data directory if needed and returns its connection details, without listening. */
  info(config: Config): Promise<ServerInfo>;
}

/**
 * The connection details. `serve` shows the owner key only on the start that created it: its output shares stdout
 * with the JSON log, which ends up in log collectors; `provisiond info` shows it on demand.
 */
export function formatInfo(info: ServerInfo, options: { withKey: boolean } = { withKey: true }): string {
  const connectionString = options.withKey
    ? info.serviceConnectionString
    : `${info.serviceConnectionString.replace(/SharedAccessKey=[^;]*/, 'SharedAccessKey=****')}   (the key: provisiond info)`;
  return [
    `provisiond instance '${info.instance}'`,
    `  ID scope:                   ${info.idScope}`,
    `  service connection string:  ${connectionString}`,
    info.serverCertificate.source === 'devCa'
      ? `  CA certificate:             ${info.caCertificatePath}   (export NODE_EXTRA_CA_CERTS=${info.caCertificatePath})`
      : `  server certificate:         ${info.serverCertificate.path}   (yours, used as it is; issued by ${info.serverCertificate.issuer})`,
    `  host names:                 ${info.hostNames.join(', ')}`,
    `  HTTPS port:                 ${info.ports.https}`,
    ...(info.ports.mqtt === undefined ? [] : [`  MQTT port:                  ${info.ports.mqtt}`]),
    ...(info.ports.amqp === undefined ? [] : [`  AMQP port:                  ${info.ports.amqp}`]),
    `  data directory:             ${info.dataDir}`,
    `  portal:                     https://${info.hostNames[0] ?? 'localhost'}${info.ports.https === 443 ? '' : `:${info.ports.https}`}/portal/`,
  ].join('\n');
}

export function buildProgram(io: CliIo, runner: ServerRunner, version: string): Command {
  const program = new Command('provisiond')
    .description('A self-hostable Device Provisioning Service, wire-compatible with Azure IoT Hub DPS')
    .version(version)
    .configureOutput({ writeOut: (text) => io.out(text), writeErr: (text) => io.err(text) })
    .exitOverride();

  addServeOptions(addConfigOptions(program.command('serve').description('run the server (HTTPS service API, device API, built-in hub)'))).action(
    async (flags: ConfigFlags) => {
      const info = await runner.serve(await configFromFlags(flags, io.env));
      // stdout carries the JSON log lines; the banner is for the person who started the server.
      io.err(`${formatInfo(info, { withKey: info.created })}\n`);
    },
  );

  addConfigOptions(program.command('info').description('print the service connection string, ID scope and CA path'))
    .option('--json', 'print JSON for scripts')
    .action(async (flags: ConfigFlags & { json?: boolean }) => {
      const info = await runner.info(await configFromFlags(flags, io.env));
      io.out(flags.json === true ? `${JSON.stringify(info, null, 2)}\n` : `${formatInfo(info)}\n`);
    });

  registerBackupCommands(program, io, version);
  registerAdminCommands(program, io);
  return program;
}
