import { readFileSync } from 'node:fs';
import { InvalidArgumentError, Option, type Command } from 'commander';
import { CliError, parseServiceConnectionString, ServiceApiClient, type ApiRequest } from '../api-client.js';
import type { CliIo } from '../program.js';

/**
 * What every admin command shares: how it finds the server (connection string, CA), how it prints (human or
 * `--json`), and small readers for JSON documents and option values.
 */
export const CONNECTION_STRING_ENV = 'PROVISIOND_CONNECTION_STRING';

export interface ConnectionFlags {
  connectionString?: string;
  ca?: string;
  json?: boolean;
}

export type Json = Record<string, unknown>;

/**
 * Adds --connection-string, --ca and --json (shown in their own help group) and the action. Call it last, so help
 * lists the command's own options first.
 */
export function adminAction(command: Command, action: Parameters<Command['action']>[0]): Command {
  return addConnectionOptions(command).action(action);
}

function addConnectionOptions(command: Command): Command {
  const group = 'Connection and output options:';
  return command
    .addOption(
      new Option('--connection-string <cs>', `service connection string HostName=host[:port];SharedAccessKeyName=…;SharedAccessKey=… (default: $${CONNECTION_STRING_ENV})`).helpGroup(group),
    )
    .addOption(new Option('--ca <file>', 'PEM file of a CA to trust, e.g. the caCertificatePath of `provisiond info` (NODE_EXTRA_CA_CERTS works too)').helpGroup(group))
    .addOption(new Option('--json', 'print the raw JSON response').helpGroup(group));
}

/** One admin command's run: a client for its connection and the printer for its output mode. */
export interface AdminContext {
  client: ServiceApiClient;
  /** Prints `raw` as JSON with --json, else the human text. */
  print(raw: unknown, human: () => string): void;
  request(method: string, path: string, request?: ApiRequest): Promise<unknown>;
}

export async function runAdmin(io: CliIo, flags: ConnectionFlags, work: (context: AdminContext) => Promise<void>): Promise<void> {
  const connectionString = flags.connectionString ?? io.env[CONNECTION_STRING_ENV];
  if (connectionString === undefined || connectionString.trim() === '') {
    throw new CliError(`no connection string: pass --connection-string or set ${CONNECTION_STRING_ENV} (see 'provisiond info')`);
  }
  const client = new ServiceApiClient({
    connection: parseServiceConnectionString(connectionString),
    ...(flags.ca === undefined ? {} : { caFile: flags.ca }),
  });
  const json = flags.json === true;
  try {
    await work({
      client,
      print(raw, human) {
        if (json) {
          if (raw !== undefined) io.out(`${JSON.stringify(raw, null, 2)}\n`);
        } else {
          io.out(`${human()}\n`);
        }
      },
      async request(method, path, request) {
        return (await client.request(method, path, request)).body;
      },
    });
  } finally {
    await client.close();
  }
}

/** A path of the service API from raw segments, each percent-encoded. */
export function apiPath(...segments: string[]): string {
  return `/${segments.map((segment) => encodeURIComponent(segment)).join('/')}`;
}

export function asObject(value: unknown): Json {
  return typeof value === 'object' && value !== null && !Array.isArray(value) ? (value as Json) : {};
}

export function asArray(value: unknown): unknown[] {
  return Array.isArray(value) ? value : [];
}

/** The value parser of a count option (--page-size, --max, --weight). */
export function positiveInteger(value: string): number {
  if (!/^\d{1,9}$/.test(value) || Number(value) < 1) throw new InvalidArgumentError('it must be a positive integer.');
  return Number(value);
}

/** For repeatable options (`--iot-hub a --iot-hub b`); commas also separate values. */
export function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), ...value.split(',').map((part) => part.trim()).filter((part) => part !== '')];
}

/** JSON given inline or as `@file`. */
export function readJsonArgument(option: string, value: string): unknown {
  let source = value;
  if (value.startsWith('@')) {
    try {
      source = readFileSync(value.slice(1), 'utf8');
    } catch (error) {
      throw new CliError(`${option}: cannot read ${value.slice(1)}: ${(error as Error).message}`);
    }
  }
  try {
    return JSON.parse(source) as unknown;
  } catch (error) {
    throw new CliError(`${option}: not valid JSON: ${(error as Error).message}`);
  }
}

export function readFileArgument(option: string, file: string): Buffer {
  try {
    return readFileSync(file);
  } catch (error) {
    throw new CliError(`${option}: cannot read ${file}: ${(error as Error).message}`);
  }
}

/**
 * Everything of a query page by page, following x-ms-continuation (dps-wire.md §2.4) until the last page or `max`
 * items.
 */
export async function queryAll(
  context: AdminContext,
  path: string,
  query: string | undefined,
  paging: { pageSize?: number; max?: number },
): Promise<unknown[]> {
  const items: unknown[] = [];
  let continuation: string | undefined;
  do {
    const headers: Record<string, string> = {};
    if (paging.pageSize !== undefined) headers['x-ms-max-item-count'] = String(paging.pageSize);
    if (continuation !== undefined) headers['x-ms-continuation'] = continuation;
    const response = await context.client.request('POST', path, { headers, ...(query === undefined ? {} : { body: { query } }) });
    items.push(...asArray(response.body));
    continuation = response.headers.get('x-ms-continuation') ?? undefined;
  } while (continuation !== undefined && continuation !== '' && (paging.max === undefined || items.length < paging.max));
  return paging.max === undefined ? items : items.slice(0, paging.max);
}

export interface ListFlags extends ConnectionFlags {
  where?: string;
  pageSize?: number;
  max?: number;
}

/** `whereExample` names fields of the listed kind: each list filters on its own fields. */
export function addListOptions(command: Command, whereExample = "\"provisioningStatus = 'disabled' AND registrationId LIKE 'line1-%'\""): Command {
  return command
    .option('--where <clause>', `filter, e.g. ${whereExample}`)
    .option('--page-size <n>', 'items per request (x-ms-max-item-count); the server caps it', positiveInteger)
    .option('--max <n>', 'stop after n items (default: follow continuation to the end)', positiveInteger);
}

/** `SELECT * FROM name [WHERE clause]`; a clause that already starts with WHERE is taken as is. */
export function selectQuery(from: string, where: string | undefined): string {
  if (where === undefined || where.trim() === '') return `SELECT * FROM ${from}`;
  const clause = where.trim().replace(/^where\s+/i, '');
  return `SELECT * FROM ${from} WHERE ${clause}`;
}

/**
 * A certificate file as the service API takes it (dps-wire.md §3 X509CertificateWithInfo): from PEM only the first
 * certificate block, so a private key kept in the same file never leaves this machine; DER as base64.
 */
export function certificateText(option: string, file: string): string {
  const bytes = readFileArgument(option, file);
  const asText = bytes.toString('utf8');
  if (!asText.includes('-----BEGIN')) return bytes.toString('base64');
  const block = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/.exec(asText);
  if (block === null) throw new CliError(`${option}: ${file} holds no PEM certificate (-----BEGIN CERTIFICATE-----)`);
  return `${block[0]}\n`;
}
