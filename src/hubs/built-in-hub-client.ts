import { timingSafeEqual } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import type { BuiltInHubService } from './built-in-hubs.js';
import { HubError, type HubClient, type HubDevice, type HubDeviceRecord, type HubTwin, type PutDeviceHint, type HubTwinContent } from './hub-client.js';
import type { Store } from '../store/store.js';
import { HubApiError } from './hub-wire.js';
import { deviceBody, deviceRecordOf, parseConnectionString, twinOf } from './registry-shapes.js';

/**
 * A hub this process hosts, reached by a direct call to its registry service (issue 12): no HTTP request, JSON or
 * hub SAS token per write. It keeps the REST path's contract — the connection string's policy must exist on the hub,
 * hold the right the operation needs (RegistryWrite, ServiceConnect for twins) and its key be one of the policy's;
 * the same fences; failures as HubError with the hub's status and error code — so the registration flow still cannot
 * tell a built-in hub from Azure. Other clients (the SDKs, the CLI) keep using the hub's REST routes.
 */
export class BuiltInHubClient implements HubClient {
  readonly hubName: string;
  readonly connectionString: string;
  readonly #service: BuiltInHubService;
  readonly #credentials: { hostName: string; keyName: string; key: string } | undefined;

  constructor(options: { hubName: string; connectionString: string; service: BuiltInHubService }) {
    this.hubName = options.hubName;
    this.connectionString = options.connectionString;
    this.#service = options.service;
    this.#credentials = parseConnectionString(options.connectionString, options.hubName);
  }

  /**
   * This hub's client on a registration's transaction (issue 12): its devices live in the store's database, so the
   * identity, twin and old-identity writes join the transaction of the record and need no registration intent.
   */
  joining(transaction: Store): HubClient | undefined {
    const hubStore = transaction.builtInHubsInTransaction();
    if (hubStore === undefined) return undefined;
    return new BuiltInHubClient({ hubName: this.hubName, connectionString: this.connectionString, service: this.#service.on(hubStore) });
  }

  async getDevice(deviceId: string): Promise<HubDeviceRecord | undefined> {
    return this.#call('GET device', 'RegistryRead', async (hub) => deviceRecordOf(await this.#service.getDevice(hub, deviceId))).catch(orUndefinedWhenNotFound);
  }

  /**
   * Create, or replace when it exists (as RegistryRestClient: create without If-Match, then replace with `*`; the
   * replace first when the hint expects the identity). The policy is authorized once for both (one hub read, not one
   * per attempt: on PostgreSQL each is a round trip).
   */
  async putDevice(device: HubDevice, hint?: PutDeviceHint): Promise<HubDeviceRecord & { created: boolean }> {
    const body = deviceBody(device);
    let what = 'create device';
    const create = async (hub: string) => {
      what = 'create device';
      try {
        // Object.assign, not `{ ...record, created }`: a field added to a spread's copy costs a hidden class per object on
        // this V8 (domain/registration.ts renderInto).
        return Object.assign(deviceRecordOf(await this.#service.createOrUpdateDevice(hub, device.deviceId, body, undefined)), { created: true });
      } catch (error) {
        if (!(error instanceof HubApiError && error.code === 'DeviceAlreadyExists')) throw error;
        return undefined;
      }
    };
    const replace = async (hub: string) => {
      what = 'update device';
      const row = current;
      current = undefined;
      try {
        return Object.assign(deviceRecordOf(await this.#service.createOrUpdateDevice(hub, device.deviceId, body, '*', row)), { created: false });
      } catch (error) {
        if (!(error instanceof HubApiError && error.code === 'DeviceNotFound')) throw error;
        return undefined;
      }
    };
    const attempts = hint?.exists === true ? [replace, create] : [create, replace];
    // The caller's row of this very device, for the first replace only (once a swap failed, the row is read afresh).
    const prefetched = hint?.current;
    let current =
      prefetched?.row !== undefined && prefetched.hubName.toLowerCase() === this.hubName.toLowerCase() && prefetched.deviceId.toLowerCase() === device.deviceId.toLowerCase()
        ? prefetched.row
        : undefined;
    return this.#call(() => what, 'RegistryWrite', async (hub) => {
      for (let attempt = 0; attempt < 3; attempt += 1) {
        for (const put of attempts) {
          const written = await put(hub);
          if (written !== undefined) return written;
        }
      }
      what = 'put device';
      throw new Error(`device '${device.deviceId}' kept changing between create and update`);
    });
  }

  async deleteDevice(deviceId: string): Promise<boolean> {
    return this.#call('delete device', 'RegistryWrite', async (hub) => {
      await this.#service.deleteDevice(hub, deviceId, '*');
      return true;
    }).catch((error: unknown) => orUndefinedWhenNotFound(error) ?? false);
  }

  async getTwin(deviceId: string): Promise<HubTwin | undefined> {
    return this.#call('GET twin', 'ServiceConnect', async (hub) => twinOf(await this.#service.getTwin(hub, deviceId))).catch(orUndefinedWhenNotFound);
  }

  async replaceTwin(deviceId: string, content: HubTwinContent): Promise<HubTwin> {
    return this.#call('replace twin', 'ServiceConnect', async (hub) =>
      twinOf(await this.#service.replaceTwin(hub, deviceId, { tags: content.tags, properties: { desired: content.desired } }, '*')),
    );
  }

  /** A direct call has no network in between: the figure is the registry lookup's own time. */
  async measureLatency(): Promise<number> {
    const started = performance.now();
    await this.#call('latency probe', 'RegistryRead', async () => undefined);
    return performance.now() - started;
  }

  /** Authorizes the connection string's policy for `right` on the hub, runs `work`; failures become HubError. */
  async #call<T>(what: string | (() => string), right: 'RegistryRead' | 'RegistryWrite' | 'ServiceConnect', work: (hub: string) => Promise<T>): Promise<T> {
    const credentials = this.#credentials;
    if (credentials === undefined) throw new HubError(this.hubName, 'the hub connection string needs HostName, SharedAccessKeyName and SharedAccessKey');
    try {
      const hub = await this.#service.authorizePolicy(credentials.hostName, credentials.keyName, (keys) => keys.some((key) => sameKey(key, credentials.key)), right);
      return await work(hub.name);
    } catch (error) {
      const step = typeof what === 'string' ? what : what();
      if (error instanceof HubApiError) throw new HubError(this.hubName, `${step}: ${error.status} ${error.code}: ${error.message}`, error.status);
      throw new HubError(this.hubName, `${step}: ${error instanceof Error ? error.message : String(error)}`);
    }
  }
}

function orUndefinedWhenNotFound(error: unknown): undefined {
  if (error instanceof HubError && error.status === 404 && /DeviceNotFound/.test(error.message)) return undefined;
  throw error;
}

function sameKey(a: string, b: string): boolean {
  const left = Buffer.from(a);
  const right = Buffer.from(b);
  return left.length === right.length && timingSafeEqual(left, right);
}
