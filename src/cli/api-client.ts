import { readFileSync } from 'node:fs';
import { Agent, request as httpsRequest } from 'node:https';
import { rootCertificates } from 'node:tls';
import { createSasToken } from '../domain/sas.js';

/**
 * The admin CLI's HTTPS client of the service API. It knows the connection string, signs each request with a SAS
 * token, and turns DPS error bodies into ServiceApiError; it never sees the database.
 */
export const SERVICE_API_VERSION = '2021-10-01';
/** Tokens are made per request, so a short life is enough and limits what a leaked header can do. */
const TOKEN_LIFETIME_SECONDS = 3600;

export interface ServiceConnection {
  /** The host name as the server knows the instance (no port): what the SAS `sr` names. */
  hostName: string;
  /** A port when the connection string's HostName carries one (provisiond only; Azure's never do). */
  port: number | undefined;
  keyName: string;
  key: string;
}

/** A failure the user should see as one line (exit code 1), never with a stack trace. */
export class CliError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CliError';
  }
}

/** An error answer of the service API, carrying the DPS error envelope (dps-wire.md §1.1). */
export class ServiceApiError extends CliError {
  readonly status: number;
  readonly errorCode: number | undefined;
  readonly trackingId: string | undefined;
  readonly serverMessage: string;

  constructor(status: number, body: unknown, text: string) {
    const envelope = typeof body === 'object' && body !== null ? (body as Record<string, unknown>) : {};
    const errorCode = typeof envelope.errorCode === 'number' ? envelope.errorCode : undefined;
    const trackingId = typeof envelope.trackingId === 'string' ? envelope.trackingId : undefined;
    const serverMessage =
      typeof envelope.message === 'string' ? envelope.message : text.trim() === '' ? `HTTP ${status}` : text.trim().slice(0, 500);
    const details = [`HTTP ${status}`, ...(errorCode === undefined ? [] : [`errorCode ${errorCode}`]), ...(trackingId === undefined ? [] : [`trackingId ${trackingId}`])];
    super(`${serverMessage} (${details.join(', ')})`);
    this.name = 'ServiceApiError';
    this.status = status;
    this.errorCode = errorCode;
    this.trackingId = trackingId;
    this.serverMessage = serverMessage;
  }
}

/** `HostName=host[:port];SharedAccessKeyName=…;SharedAccessKey=…`, fields in any order. */
export function parseServiceConnectionString(text: string): ServiceConnection {
  const fields = new Map<string, string>();
  for (const part of text.trim().split(';')) {
    if (part.trim() === '') continue;
    const eq = part.indexOf('=');
    if (eq <= 0) throw new CliError(`the connection string has a part without '=': '${part}'`);
    fields.set(part.slice(0, eq).trim().toLowerCase(), part.slice(eq + 1).trim());
  }
  const missing = ['HostName', 'SharedAccessKeyName', 'SharedAccessKey'].filter((name) => !fields.get(name.toLowerCase()));
  if (missing.length > 0) {
    throw new CliError(`the connection string lacks ${missing.join(', ')}; expected HostName=host[:port];SharedAccessKeyName=…;SharedAccessKey=…`);
  }
  const hostField = fields.get('hostname') ?? '';
  const match = /^(\[[^\]]+\]|[^:]+)(?::(\d{1,5}))?$/.exec(hostField);
  if (match === null || match[1] === undefined) throw new CliError(`HostName '${hostField}' is not host or host:port`);
  const port = match[2] === undefined ? undefined : Number(match[2]);
  if (port !== undefined && (port < 1 || port > 65535)) throw new CliError(`HostName '${hostField}' has an invalid port`);
  return {
    hostName: match[1].replace(/^\[(.*)\]$/, '$1'),
    port,
    keyName: fields.get('sharedaccesskeyname') ?? '',
    key: fields.get('sharedaccesskey') ?? '',
  };
}

/** A connection string for another policy (or instance) reachable the same way as `base`. */
export function formatServiceConnectionString(connection: ServiceConnection): string {
  const host = connection.hostName.includes(':') ? `[${connection.hostName}]` : connection.hostName;
  const hostWithPort = connection.port === undefined ? host : `${host}:${connection.port}`;
  return `HostName=${hostWithPort};SharedAccessKeyName=${connection.keyName};SharedAccessKey=${connection.key}`;
}

/** Response headers by lower-case name (the subset of fetch's Headers the commands use). */
export interface ApiHeaders {
  get(name: string): string | null;
}

export interface ApiResponse {
  status: number;
  headers: ApiHeaders;
  body: unknown;
}

export interface ApiRequest {
  query?: Record<string, string>;
  headers?: Record<string, string>;
  body?: unknown;
}

export interface ServiceApiClientOptions {
  connection: ServiceConnection;
  /** PEM file of a CA to trust besides the system store (the dev CA of a provisiond data directory). */
  caFile?: string;
  now?: () => Date;
}

export class ServiceApiClient {
  readonly connection: ServiceConnection;
  readonly #base: URL;
  readonly #agent: Agent;
  readonly #now: () => Date;

  constructor(options: ServiceApiClientOptions) {
    this.connection = options.connection;
    const host = options.connection.hostName.includes(':') ? `[${options.connection.hostName}]` : options.connection.hostName;
    this.#base = new URL(`https://${host}`);
    if (options.connection.port !== undefined) this.#base.port = String(options.connection.port);
    this.#now = options.now ?? (() => new Date());
    if (options.caFile !== undefined) {
      let ca: string;
      try {
        ca = readFileSync(options.caFile, 'utf8');
      } catch (error) {
        throw new CliError(`cannot read --ca ${options.caFile}: ${(error as Error).message}`);
      }
      // `ca` replaces the default trust store, so keep the public roots alongside the given CA.
      this.#agent = new Agent({ keepAlive: true, ca: [...rootCertificates, ca] });
    } else {
      // Without `ca` the default store applies, which includes NODE_EXTRA_CA_CERTS.
      this.#agent = new Agent({ keepAlive: true });
    }
  }

  /** Where requests go, for messages. */
  get origin(): string {
    return this.#base.origin;
  }

  #token(): string {
    // The server identifies the instance by host name alone, so the token names the host without a port.
    return createSasToken({
      resource: this.connection.hostName,
      keyBase64: this.connection.key,
      keyName: this.connection.keyName,
      expirySeconds: Math.floor(this.#now().getTime() / 1000) + TOKEN_LIFETIME_SECONDS,
    });
  }

  /** Sends one request; any status outside 2xx becomes a ServiceApiError with the server's message and errorCode. */
  async request(method: string, path: string, request: ApiRequest = {}): Promise<ApiResponse> {
    const url = new URL(path, this.#base);
    url.searchParams.set('api-version', SERVICE_API_VERSION);
    for (const [name, value] of Object.entries(request.query ?? {})) url.searchParams.set(name, value);
    const headers: Record<string, string> = { accept: 'application/json', authorization: this.#token(), ...request.headers };
    let body: string | undefined;
    if (request.body !== undefined) {
      body = JSON.stringify(request.body);
      headers['content-type'] = 'application/json; charset=utf-8';
    }
    // node:https rather than fetch: the CLI starts in a fraction of the time without loading an HTTP client library.
    let response: { status: number; headers: ApiHeaders; text: string };
    try {
      response = await this.#send(method, url, headers, body);
    } catch (error) {
      throw new CliError(describeNetworkError(error, this.origin));
    }
    const { text } = response;
    let parsed: unknown = undefined;
    if (text !== '') {
      try {
        parsed = JSON.parse(text);
      } catch {
        parsed = undefined;
      }
    }
    if (response.status < 200 || response.status >= 300) throw new ServiceApiError(response.status, parsed, text);
    return { status: response.status, headers: response.headers, body: parsed };
  }

  #send(method: string, url: URL, headers: Record<string, string>, body: string | undefined): Promise<{ status: number; headers: ApiHeaders; text: string }> {
    return new Promise((resolve, reject) => {
      const request = httpsRequest(url, { method, headers, agent: this.#agent }, (response) => {
        const chunks: Buffer[] = [];
        response.on('data', (chunk: Buffer) => chunks.push(chunk));
        response.on('error', reject);
        response.on('end', () => {
          const received = response.headers;
          resolve({
            status: response.statusCode ?? 0,
            headers: {
              get(name: string) {
                const value = received[name.toLowerCase()];
                return value === undefined ? null : Array.isArray(value) ? value.join(', ') : value;
              },
            },
            text: Buffer.concat(chunks).toString('utf8'),
          });
        });
      });
      request.on('error', reject);
      request.end(body);
    });
  }

  async close(): Promise<void> {
    this.#agent.destroy();
  }
}

const TLS_TRUST_CODES = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'UNABLE_TO_GET_ISSUER_CERT',
  'CERT_UNTRUSTED',
]);

/** Turns a socket or TLS failure into a sentence that says what to do about it. */
function describeNetworkError(cause: unknown, origin: string): string {
  const code = typeof cause === 'object' && cause !== null && 'code' in cause ? String((cause as { code: unknown }).code) : '';
  // A refused dual-stack connect is an AggregateError with an empty message; its code still says what happened.
  const message = (cause instanceof Error ? cause.message : String(cause)) || code || 'unknown network error';
  if (TLS_TRUST_CODES.has(code)) {
    return `cannot reach ${origin}: the server certificate is not trusted (${message}); pass --ca <file> or set NODE_EXTRA_CA_CERTS to the provisiond CA (see 'provisiond info')`;
  }
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') {
    return `cannot reach ${origin}: the server certificate does not cover this host name (${message}); add it with 'provisiond serve --host-names'`;
  }
  return `cannot reach ${origin}: ${message}`;
}
