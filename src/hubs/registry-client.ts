import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { rootCertificates } from 'node:tls';
import type { Static, TSchema } from '@sinclair/typebox';
import type { Agent, Dispatcher } from 'undici';
import { createSasToken } from '../domain/sas.js';
import type { LinkedHubRecord } from '../store/store.js';
import { HubError, type HubClient, type HubClientFactory, type HubDevice, type HubDeviceRecord, type HubTwin, type HubTwinContent } from './hub-client.js';
import { BuiltInHubClient } from './built-in-hub-client.js';
import type { BuiltInHubService } from './built-in-hubs.js';
import { HUB_API_VERSION, parseHubErrorBody } from './hub-wire.js';
import { deviceBody, deviceRecordOf, DeviceResponse, parseConnectionString, twinOf, TwinResponse, type Checked } from './registry-shapes.js';

/**
 * How provisiond talks to an IoT hub: the registry REST API (api-version 2021-04-12) over HTTPS with a hub SAS token,
 * exactly as the azure-iothub Registry does (sdk-clients.md §3). A built-in hub of this process is called directly
 * (BuiltInHubClient, the same contract without the HTTP round trip); without that service — a factory on its own, as
 * in tests — built-in hubs are reached through the process's HTTPS listener.
 */

export interface RestHubClientOptions {
  /** PEM of the CA that signed the built-in listener's certificate; also trusted for external hubs. */
  ca: string;
  /** Where this process's HTTPS listener is reachable (built-in hubs are served there, picked by Host). */
  builtInAddress: { host: string; port: number };
  /** Per-request time limit; defaults to 30 s. */
  timeoutMs?: number;
}

/** Tokens live an hour and are re-signed when less than five minutes remain. */
const TOKEN_LIFETIME_SECONDS = 3600;
const TOKEN_RENEW_MARGIN_SECONDS = 300;
const DEFAULT_TIMEOUT_MS = 30_000;

/** How a request reaches a hub over the network. */
export interface HubTransport {
  send(request: HubRequest): Promise<HubResponse>;
}
export interface HubRequest {
  origin: string;
  path: string;
  method: Dispatcher.HttpMethod;
  headers: Record<string, string>;
  body?: string;
  timeoutMs: number;
}

/**
 * undici is loaded, and the agent made, on the first request: a process whose hubs are all built-in (called directly)
 * never loads it (issue 12, P6: ~100 modules of idle memory).
 */
class UndiciTransport implements HubTransport {
  readonly #options: Agent.Options;
  #dispatcher: Promise<Agent> | undefined;
  constructor(options: Agent.Options) {
    this.#options = options;
  }
  async send(request: HubRequest): Promise<HubResponse> {
    this.#dispatcher ??= import('undici').then(({ Agent }) => new Agent(this.#options));
    const response = await (await this.#dispatcher).request({
      origin: request.origin,
      path: request.path,
      method: request.method,
      headers: request.headers,
      ...(request.body === undefined ? {} : { body: request.body }),
      headersTimeout: request.timeoutMs,
      bodyTimeout: request.timeoutMs,
    });
    return { status: response.statusCode, text: await response.body.text() };
  }
  async close(): Promise<void> {
    if (this.#dispatcher !== undefined) await (await this.#dispatcher).close();
  }
}

export class RestHubClientFactory implements HubClientFactory {
  readonly #options: RestHubClientOptions;
  readonly #timeoutMs: number;
  readonly #clients = new Map<string, HubClient & { connectionString: string }>();
  /** Built-in hubs: one origin (the local listener) for every hub, told apart by TLS server name and Host. */
  readonly #builtInTransport: UndiciTransport;
  /** Built-in hubs hosted by this process, called directly (BuiltInHubClient); unset, they are reached over HTTPS. */
  #builtInService: BuiltInHubService | undefined;
  /** External hubs: their own origins, trusting the system CAs and `ca`. */
  readonly #externalTransport: UndiciTransport;

  constructor(options: RestHubClientOptions) {
    this.#options = options;
    this.#timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const common = { keepAliveTimeout: 30_000, headersTimeout: this.#timeoutMs, bodyTimeout: this.#timeoutMs, connectTimeout: 10_000 };
    // The built-in listener is this process at a fixed address, and its certificate must chain to `ca` (the only root
    // trusted here); the hub name is a virtual host chosen by Host, which that certificate need not list.
    this.#builtInTransport = new UndiciTransport({ ...common, connect: { ca: options.ca, checkServerIdentity: () => undefined } });
    this.#externalTransport = new UndiciTransport({ ...common, connect: { ca: [...rootCertificates, options.ca] } });
  }

  /** Serve built-in hubs in-process by direct call (the composition root passes the process's own hub service). */
  useBuiltInService(service: BuiltInHubService): void {
    this.#builtInService = service;
    this.#clients.clear();
  }

  /** Clients are cached per hub; a changed connection string (rotated keys) gets a new one. */
  forHub(hub: LinkedHubRecord): HubClient {
    const cacheKey = `${hub.builtIn ? 'built-in' : 'external'}|${hub.name}`;
    const cached = this.#clients.get(cacheKey);
    if (cached !== undefined && cached.connectionString === hub.connectionString) return cached;
    const { host, port } = this.#options.builtInAddress;
    const service = this.#builtInService;
    const client =
      hub.builtIn && service !== undefined
        ? new BuiltInHubClient({ hubName: hub.name, connectionString: hub.connectionString, service })
        : new RegistryRestClient({
            hubName: hub.name,
            connectionString: hub.connectionString,
            origin: hub.builtIn ? `https://${host.includes(':') ? `[${host}]` : host}:${port}` : `https://${hub.name}`,
            transport: hub.builtIn ? this.#builtInTransport : this.#externalTransport,
            timeoutMs: this.#timeoutMs,
          });
    this.#clients.set(cacheKey, client);
    return client;
  }

  async close(): Promise<void> {
    this.#clients.clear();
    await Promise.all([this.#builtInTransport.close(), this.#externalTransport.close()]);
  }
}

export interface RegistryRestClientOptions {
  hubName: string;
  /** `HostName=…;SharedAccessKeyName=…;SharedAccessKey=…` of a policy with RegistryWrite and ServiceConnect. */
  connectionString: string;
  /** `https://host[:port]` to connect to; the Host header and TLS server name are always the hub's host name. */
  origin: string;
  transport: HubTransport;
  timeoutMs?: number;
}

export interface HubResponse {
  status: number;
  text: string;
}

export class RegistryRestClient implements HubClient {
  readonly hubName: string;
  readonly connectionString: string;
  readonly #origin: string;
  readonly #transport: HubTransport;
  readonly #timeoutMs: number;
  readonly #credentials: { hostName: string; keyName: string; key: string } | undefined;
  #token: { value: string; expirySeconds: number } | undefined;

  constructor(options: RegistryRestClientOptions) {
    this.hubName = options.hubName;
    this.connectionString = options.connectionString;
    this.#origin = options.origin;
    this.#transport = options.transport;
    this.#timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.#credentials = parseConnectionString(options.connectionString, options.hubName);
  }

  async getDevice(deviceId: string): Promise<HubDeviceRecord | undefined> {
    const response = await this.#call('GET', devicePath('devices', deviceId));
    if (isDeviceNotFound(response)) return undefined;
    return deviceRecordOf(this.#expect(response, 200, DeviceResponse, 'GET device'));
  }

  /**
   * Create, or replace when it exists: PUT without If-Match creates (409 when the device exists), then PUT with
   * If-Match "*" replaces. A device deleted between the two is created again.
   */
  async putDevice(device: HubDevice): Promise<HubDeviceRecord & { created: boolean }> {
    const body = deviceBody(device);
    const path = devicePath('devices', device.deviceId);
    for (let attempt = 0; attempt < 3; attempt += 1) {
      const created = await this.#call('PUT', path, { body });
      if (created.status !== 409) return { ...deviceRecordOf(this.#expect(created, 200, DeviceResponse, 'create device')), created: true };
      const replaced = await this.#call('PUT', path, { body, ifMatch: '"*"' });
      if (!isDeviceNotFound(replaced)) return { ...deviceRecordOf(this.#expect(replaced, 200, DeviceResponse, 'update device')), created: false };
    }
    throw new HubError(this.hubName, `device '${device.deviceId}' kept changing between create and update`);
  }

  async deleteDevice(deviceId: string): Promise<boolean> {
    const response = await this.#call('DELETE', devicePath('devices', deviceId), { ifMatch: '"*"' });
    if (isDeviceNotFound(response)) return false;
    if (response.status !== 200 && response.status !== 204) throw this.#failure(response, 'delete device');
    return true;
  }

  async getTwin(deviceId: string): Promise<HubTwin | undefined> {
    const response = await this.#call('GET', devicePath('twins', deviceId));
    if (isDeviceNotFound(response)) return undefined;
    return twinOf(this.#expect(response, 200, TwinResponse, 'GET twin'));
  }

  async replaceTwin(deviceId: string, content: HubTwinContent): Promise<HubTwin> {
    const response = await this.#call('PUT', devicePath('twins', deviceId), {
      body: { deviceId, tags: content.tags, properties: { desired: content.desired } },
      ifMatch: '"*"',
    });
    return twinOf(this.#expect(response, 200, TwinResponse, 'replace twin'));
  }

  /** One authenticated round trip: GET of a device that does not exist (404 DeviceNotFound is the expected answer). */
  async measureLatency(): Promise<number> {
    const started = performance.now();
    const response = await this.#call('GET', devicePath('devices', `latency-probe-${randomUUID()}`));
    const elapsed = performance.now() - started;
    if (!isDeviceNotFound(response) && response.status !== 200) throw this.#failure(response, 'latency probe');
    return elapsed;
  }

  // ---- HTTP

  async #call(method: Dispatcher.HttpMethod, path: string, options: { body?: unknown; ifMatch?: string } = {}): Promise<HubResponse> {
    const url = new URL(path, 'https://hub.invalid');
    url.searchParams.set('api-version', HUB_API_VERSION);
    const headers: Record<string, string> = {
      host: this.#credentials?.hostName ?? this.hubName,
      authorization: this.#authorization(),
      accept: 'application/json',
      'request-id': randomUUID(),
      'user-agent': 'provisiond',
    };
    if (options.ifMatch !== undefined) headers['if-match'] = options.ifMatch;
    let body: string | undefined;
    if (options.body !== undefined) {
      body = JSON.stringify(options.body);
      headers['content-type'] = 'application/json; charset=utf-8';
    }
    try {
      return await this.#transport.send({
        origin: this.#origin,
        path: `${url.pathname}${url.search}`,
        method,
        headers,
        ...(body === undefined ? {} : { body }),
        timeoutMs: this.#timeoutMs,
      });
    } catch (error) {
      const reason = error instanceof Error ? `${error.message}${'code' in error ? ` (${String(error.code)})` : ''}` : String(error);
      throw new HubError(this.hubName, `cannot reach hub ${this.hubName} at ${this.#origin}: ${reason}`);
    }
  }

  /** The hub SAS token (`sr` = the hub's host name, as the SDKs sign it), cached until close to expiry. */
  #authorization(): string {
    const credentials = this.#credentials;
    if (credentials === undefined) throw new HubError(this.hubName, 'the hub connection string needs HostName, SharedAccessKeyName and SharedAccessKey');
    const nowSeconds = Math.floor(Date.now() / 1000);
    if (this.#token === undefined || this.#token.expirySeconds - nowSeconds < TOKEN_RENEW_MARGIN_SECONDS) {
      const expirySeconds = nowSeconds + TOKEN_LIFETIME_SECONDS;
      const value = createSasToken({ resource: credentials.hostName, keyBase64: credentials.key, keyName: credentials.keyName, expirySeconds });
      this.#token = { value, expirySeconds };
    }
    return this.#token.value;
  }

  #expect<T extends TSchema>(response: HubResponse, status: number, schema: Checked<T>, what: string): Static<T> {
    if (response.status !== status) throw this.#failure(response, what);
    let parsed: unknown;
    try {
      parsed = JSON.parse(response.text);
    } catch {
      throw new HubError(this.hubName, `${what}: the hub answered ${status} with a body that is not JSON`, response.status);
    }
    if (!schema.validate(parsed)) throw new HubError(this.hubName, `${what}: the hub's answer is not the expected shape`, response.status);
    return parsed as Static<T>;
  }

  #failure(response: HubResponse, what: string): HubError {
    const hubError = parseHubErrorBody(response.text);
    const detail = hubError === undefined ? response.text.slice(0, 300) || '(no body)' : `${hubError.code}: ${hubError.message}`;
    return new HubError(this.hubName, `${what}: ${response.status} ${detail}`, response.status);
  }
}

// ---- paths

function devicePath(collection: 'devices' | 'twins', deviceId: string): string {
  return `/${collection}/${encodeURIComponent(deviceId)}`;
}

function isDeviceNotFound(response: HubResponse): boolean {
  return response.status === 404 && parseHubErrorBody(response.text)?.code === 'DeviceNotFound';
}
