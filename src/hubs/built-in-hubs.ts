import { randomBytes } from 'node:crypto';
import type { JsonMap } from '../domain/enrollment.js';
import { etagMatches } from '../domain/etag.js';
import { assertDeviceId, isValidSymmetricKey } from '../domain/ids.js';
import { isExpired, parseSasToken, resourceCoversPath, signedByOneOf } from '../domain/sas.js';
import { dpsTimestamp } from '../domain/time.js';
import { randomBase64, randomBelow, randomHex } from '../domain/random-pool.js';
import {
  ALL_HUB_RIGHTS,
  DeviceFencedError,
  type BuiltInHubRecord,
  type BuiltInHubStore,
  type HubAccessPolicy,
  type HubRight,
  type StoredHubAuthentication,
  type StoredHubDevice,
  type HubDeviceRow,
  type StoredTwin,
} from '../store/hub-store.js';
import { HubApiError, type DeviceInput, type RegistryStatistics, type TwinInput, type WireDevice, type WireTwin } from './hub-wire.js';

/**
 * The IoT hubs provisiond hosts itself. Each is a device registry with IoT Hub's semantics for the subset DPS and the
 * SDKs use (sdk-clients.md §3, dps-wire.md §4.6): identities (`PUT/GET/DELETE /devices/{id}`), twins
 * (`GET/PATCH/PUT /twins/{id}`) and the device query. A device's identity and twin are one stored document; every
 * write is a compare-and-swap on that document, so concurrent writers never lose each other's changes on any node.
 */

export const HUB_OWNER_POLICY = 'iothubowner';
/**
 * The shared access policies every IoT hub starts with (Azure docs, "Control access to IoT Hub with shared access
 * signatures"), so a registry reader or a twin service gets a key that can do only that.
 */
export const DEFAULT_HUB_POLICIES: readonly { keyName: string; rights: readonly HubRight[] }[] = [
  { keyName: HUB_OWNER_POLICY, rights: ALL_HUB_RIGHTS },
  { keyName: 'service', rights: ['ServiceConnect'] },
  { keyName: 'device', rights: ['DeviceConnect'] },
  { keyName: 'registryRead', rights: ['RegistryRead'] },
  { keyName: 'registryReadWrite', rights: ['RegistryRead', 'RegistryWrite'] },
];
/** What IoT Hub shows for times that never happened (a device that never connected). */
const NEVER = '0001-01-01T00:00:00Z';
/** IoT Hub's limits: twin collections nest at most 10 levels; keys are at most 1 KB. */
const MAX_TWIN_DEPTH = 10;
const MAX_KEY_BYTES = 1024;
const DEFAULT_PAGE_SIZE = 100;
const MAX_PAGE_SIZE = 1000;
const MAX_WRITE_ATTEMPTS = 10;
const THUMBPRINT = /^(?:[0-9A-Fa-f]{40}|[0-9A-Fa-f]{64})$/;
/** `SELECT * FROM devices [WHERE deviceId = '<id>']`, the device query the SDKs and the registration flow send. */
const DEVICE_QUERY = /^\s*select\s+\*\s+from\s+devices(?:\s+where\s+deviceid\s*=\s*(?:'((?:[^']|'')*)'|"((?:[^"]|"")*)"))?\s*$/i;

export interface BuiltInHub {
  name: string;
  /** The owner policy's connection string, for linking the hub and for registry clients. */
  connectionString: string;
  /** Every shared access policy of the hub, with its keys. */
  policies: HubAccessPolicy[];
}

export interface BuiltInHubDetails extends BuiltInHub {
  createdDateTimeUtc: string;
}

export interface DeviceQueryRequest {
  query: string;
  maxItemCount?: string | undefined;
  continuation?: string | undefined;
}

export interface DeviceQueryResult {
  items: WireTwin[];
  /** Present when more pages follow. */
  continuation: string | undefined;
}

export interface BuiltInHubDeps {
  hubStore: BuiltInHubStore;
  now: () => Date;
}

export class BuiltInHubService {
  readonly #store: BuiltInHubStore;
  readonly #now: () => Date;

  constructor(deps: BuiltInHubDeps) {
    this.#store = deps.hubStore;
    this.#now = deps.now;
  }

  /**
   * The same hubs, written on `hubStore` — the built-in hub store joined to a registration's transaction (issue 12):
   * the same checks, etags, generation IDs, revisions and fences, committed or rolled back with the record.
   */
  on(hubStore: BuiltInHubStore): BuiltInHubService {
    return new BuiltInHubService({ hubStore, now: this.#now });
  }

  // ---- hubs

  /**
   * Creates the hub with IoT Hub's default policies unless it exists; either way returns its owner connection string.
   * A hub made before the narrower policies existed gets the ones it lacks; its own policies and keys are kept.
   */
  async ensureHub(name: string): Promise<BuiltInHub> {
    const hubName = name.toLowerCase();
    const existing = await this.#store.getHub(hubName);
    if (existing !== undefined) {
      const missing = DEFAULT_HUB_POLICIES.filter((policy) => !existing.policies.some((held) => held.keyName === policy.keyName)).map(newPolicy);
      if (missing.length === 0) return view(existing);
      await this.#store.updateHub({ ...existing, policies: [...existing.policies, ...missing] });
      return view((await this.#store.getHub(hubName)) ?? existing);
    }
    await this.#store.insertHub({ name: hubName, createdDateTimeUtc: dpsTimestamp(this.#now()), policies: DEFAULT_HUB_POLICIES.map(newPolicy) });
    // Read back: when another node created it first, its keys are the ones that count.
    const created = await this.#store.getHub(hubName);
    if (created === undefined) throw new Error(`built-in hub ${hubName} vanished while being created`);
    return view(created);
  }

  async getHub(name: string): Promise<BuiltInHubDetails | undefined> {
    const hub = await this.#store.getHub(name);
    return hub === undefined ? undefined : { ...view(hub), createdDateTimeUtc: hub.createdDateTimeUtc };
  }

  async listHubs(): Promise<BuiltInHub[]> {
    return (await this.#store.listHubs()).map(view);
  }

  /** Deletes the hub and every device identity and twin in it. */
  async deleteHub(name: string): Promise<boolean> {
    return this.#store.deleteHub(name);
  }

  /**
   * The hub a request addresses (by its Host name) and proof the caller may act on it: a hub SAS token
   * (`sr=<hub host>[/path]`, `skn=<policy>`) signed by one of the policy's keys over the raw `sr`, unexpired, and a
   * policy that grants `right`. The token's path, if any, is not a restriction: the signer holds a hub-wide key.
   */
  /**
   * A hub policy token is valid for its `sr` and everything under it, as on IoT Hub: `hub/devices/dev-a` reaches
   * `/devices/dev-a` only, `hub/devices` every device, the bare host name the whole hub.
   */
  async authorize(hostName: string, authorization: string | undefined, right: HubRight | undefined, requestPath: string): Promise<BuiltInHubRecord> {
    const hub = await this.#store.getHub(hostName);
    if (hub === undefined) throw new HubApiError('IotHubNotFound', `No IoT hub is hosted at '${truncate(hostName)}'.`);
    const token = parseSasToken(authorization);
    if (token === undefined || token.keyName === undefined) throw unauthorized();
    if (isExpired(token, this.#now().getTime())) throw unauthorized();
    const resourceHost = hostWithoutPort(token.resource.split('/')[0] ?? '').toLowerCase();
    if (resourceHost !== hub.name || !resourceCoversPath(token.resource, requestPath)) throw unauthorized();
    const policy = hub.policies.find((candidate) => candidate.keyName === token.keyName);
    if (policy === undefined || !signedByOneOf(token, [policy.primaryKey, policy.secondaryKey])) throw unauthorized();
    if (right !== undefined && !grants(policy.rights, right)) {
      throw new HubApiError('IotHubUnauthorizedAccess', `Unauthorized: this operation needs the ${right} right.`);
    }
    return hub;
  }

  /**
   * The same check as authorize() for a caller holding a policy key itself rather than a token (BuiltInHubClient, the
   * registration flow's direct call): the hub exists, the policy exists, one of its keys passes `holdsKey`, and it grants
   * `right`.
   */
  async authorizePolicy(hostName: string, keyName: string, holdsKey: (keys: readonly string[]) => boolean, right: HubRight): Promise<BuiltInHubRecord> {
    const hub = await this.#store.getHub(hostWithoutPort(hostName).toLowerCase());
    if (hub === undefined) throw new HubApiError('IotHubNotFound', `No IoT hub is hosted at '${truncate(hostName)}'.`);
    const policy = hub.policies.find((candidate) => candidate.keyName === keyName);
    if (policy === undefined || !holdsKey([policy.primaryKey, policy.secondaryKey])) throw unauthorized();
    if (!grants(policy.rights, right)) throw new HubApiError('IotHubUnauthorizedAccess', `Unauthorized: this operation needs the ${right} right.`);
    return hub;
  }

  // ---- device identities

  async getDevice(hubName: string, deviceId: string): Promise<WireDevice> {
    return renderDevice(await this.#require(hubName, deviceId));
  }

  /** The first `top` identities in device ID order (GET /devices; IoT Hub caps it at 1000). */
  async listDevices(hubName: string, top: number | undefined): Promise<WireDevice[]> {
    const limit = top === undefined ? MAX_PAGE_SIZE : Math.min(Math.max(top, 1), MAX_PAGE_SIZE);
    const page = await this.#store.queryDevices(hubName, { limit });
    return page.items.map(renderDevice);
  }

  /**
   * PUT /devices/{id}. Without If-Match it creates, and an existing device is a 409 DeviceAlreadyExists; with If-Match
   * (`*` or the device's etag) it replaces the identity of an existing device, and keeps its twin and generation ID.
   * `current`: the device's row as the caller read it moments ago, for the first compare-and-swap (see #update).
   */
  async createOrUpdateDevice(hubName: string, deviceId: string, input: DeviceInput, ifMatch: string | undefined, current?: HubDeviceRow): Promise<WireDevice> {
    checkDeviceId(deviceId);
    if (input.deviceId !== deviceId) {
      throw new HubApiError('ArgumentInvalid', `The deviceId in the body ('${truncate(input.deviceId)}') does not match the one in the path ('${truncate(deviceId)}').`);
    }
    const authentication = authenticationOf(input.authentication ?? undefined);
    const status = input.status ?? 'enabled';
    const statusReason = input.statusReason ?? null;
    if (statusReason !== null && statusReason.length > 128) throw new HubApiError('ArgumentInvalid', 'statusReason is at most 128 characters.');
    const capabilities = { iotEdge: input.capabilities?.iotEdge ?? false };

    if (ifMatch === undefined) {
      const now = dpsTimestamp(this.#now());
      const device: StoredHubDevice = {
        deviceId,
        generationId: newGenerationId(this.#now()),
        etag: newDeviceEtag(undefined),
        status,
        statusReason,
        statusUpdatedTime: NEVER,
        createdDateTimeUtc: now,
        authentication,
        capabilities,
        twin: newTwin(now),
      };
      if (!(await fenced(() => this.#store.insertDevice(hubName, device, newRevision())))) {
        throw new HubApiError('DeviceAlreadyExists', `A device with ID '${truncate(deviceId)}' is already registered.`);
      }
      return renderDevice(device);
    }
    const updated = await this.#update(
      hubName,
      deviceId,
      ifMatch,
      'device',
      (device) => ({
        ...device,
        etag: newDeviceEtag(device.etag),
        status,
        statusReason,
        statusUpdatedTime: status === device.status ? device.statusUpdatedTime : dpsTimestamp(this.#now()),
        authentication,
        capabilities,
      }),
      // (Only for `*`: an etag is compared with the row as it is now, never as a caller read it.)
      ifMatch === '*' ? current : undefined,
    );
    return renderDevice(updated);
  }

  /** DELETE /devices/{id}: the identity and its twin; If-Match `*`, absent, or the device's etag. */
  async deleteDevice(hubName: string, deviceId: string, ifMatch: string | undefined): Promise<void> {
    for (let attempt = 0; attempt < MAX_WRITE_ATTEMPTS; attempt += 1) {
      const row = await this.#store.getDevice(hubName, deviceId);
      if (row === undefined) throw deviceNotFound(deviceId);
      if (ifMatch === undefined || etagMatches(ifMatch, '*')) {
        if (await this.#store.deleteDevice(hubName, deviceId)) return;
        continue;
      }
      if (!etagMatches(ifMatch, row.device.etag)) throw preconditionFailed('device');
      if (await this.#store.deleteDevice(hubName, deviceId, row.revision)) return;
    }
    throw conflictingWrites();
  }

  async statistics(hubName: string): Promise<RegistryStatistics> {
    const { enabled, disabled } = await this.#store.countDevices(hubName);
    return { totalDeviceCount: enabled + disabled, enabledDeviceCount: enabled, disabledDeviceCount: disabled };
  }

  // ---- twins

  async getTwin(hubName: string, deviceId: string): Promise<WireTwin> {
    return renderTwin(await this.#require(hubName, deviceId));
  }

  /**
   * PATCH /twins/{id}: merges tags and desired properties (a `null` member removes the key), increments the twin's
   * version and, when desired properties change, their `$version`. If-Match names the twin's etag.
   */
  async updateTwin(hubName: string, deviceId: string, patch: TwinInput, ifMatch: string | undefined): Promise<WireTwin> {
    const { tags, desired } = twinContentOf(patch, 'patch');
    const updated = await this.#update(hubName, deviceId, ifMatch, 'twin', (current) => {
      const twin = structuredClone(current.twin);
      const time = dpsTimestamp(this.#now());
      if (tags === null) twin.tags = {};
      else if (tags !== undefined) mergeCollection(twin.tags, undefined, tags, { $lastUpdated: time });
      if (desired !== undefined) {
        twin.desiredVersion += 1;
        const stamp = { $lastUpdated: time, $lastUpdatedVersion: twin.desiredVersion };
        if (desired === null) {
          twin.desired = {};
          twin.desiredMetadata = {};
        } else {
          mergeCollection(twin.desired, twin.desiredMetadata, desired, stamp);
        }
        Object.assign(twin.desiredMetadata, stamp);
      }
      twin.version += 1;
      twin.etag = newTwinEtag(twin.etag);
      return { ...current, twin };
    });
    return renderTwin(updated);
  }

  /** PUT /twins/{id}: tags and desired properties become exactly these; reported properties stay the device's. */
  async replaceTwin(hubName: string, deviceId: string, replacement: TwinInput, ifMatch: string | undefined): Promise<WireTwin> {
    const { tags, desired } = twinContentOf(replacement, 'replacement');
    const updated = await this.#update(hubName, deviceId, ifMatch, 'twin', (current) => {
      const twin = structuredClone(current.twin);
      const time = dpsTimestamp(this.#now());
      twin.desiredVersion += 1;
      const stamp = { $lastUpdated: time, $lastUpdatedVersion: twin.desiredVersion };
      // Merging into empty collections drops `null` members, which mean nothing in a replacement.
      twin.tags = {};
      mergeCollection(twin.tags, undefined, tags ?? {}, stamp);
      twin.desired = {};
      twin.desiredMetadata = { ...stamp };
      mergeCollection(twin.desired, twin.desiredMetadata, desired ?? {}, stamp);
      twin.version += 1;
      twin.etag = newTwinEtag(twin.etag);
      return { ...current, twin };
    });
    return renderTwin(updated);
  }

  /** POST /devices/query: the twins of the hub's devices in device ID order, paged with an opaque continuation. */
  async queryDevices(hubName: string, request: DeviceQueryRequest): Promise<DeviceQueryResult> {
    const match = DEVICE_QUERY.exec(request.query);
    if (match === null) {
      throw new HubApiError('ArgumentInvalid', `The query '${truncate(request.query)}' is not supported: use SELECT * FROM devices [WHERE deviceId = '<id>'].`);
    }
    const single = match[1] !== undefined ? match[1].replaceAll("''", "'") : match[2] !== undefined ? match[2].replaceAll('""', '"') : undefined;
    const limit = pageSize(request.maxItemCount);
    const afterKey = request.continuation === undefined || request.continuation === '' ? undefined : decodeContinuation(request.continuation);
    const page = await this.#store.queryDevices(hubName, { deviceId: single, afterKey, limit });
    return { items: page.items.map(renderTwin), continuation: page.nextKey === undefined ? undefined : encodeContinuation(page.nextKey) };
  }

  // ---- internals

  async #require(hubName: string, deviceId: string): Promise<StoredHubDevice> {
    const row = await this.#store.getDevice(hubName, deviceId);
    if (row === undefined) throw deviceNotFound(deviceId);
    return row.device;
  }

  /**
   * Read, check If-Match against the device's or the twin's etag, change, and write only if nobody wrote in between;
   * otherwise start over (If-Match is then checked against the newer document).
   */
  async #update(
    hubName: string,
    deviceId: string,
    ifMatch: string | undefined,
    etagOf: 'device' | 'twin',
    change: (current: StoredHubDevice) => StoredHubDevice,
    /**
     * The row as the caller read it moments ago (on PostgreSQL in the device lock's round trip): the first attempt
     * swaps on it without a read. Stale, its swap fails like any lost race, and the next attempt reads the row.
     */
    prefetched?: HubDeviceRow,
  ): Promise<StoredHubDevice> {
    for (let attempt = 0; attempt < MAX_WRITE_ATTEMPTS; attempt += 1) {
      const row = attempt === 0 && prefetched !== undefined ? prefetched : await this.#store.getDevice(hubName, deviceId);
      if (row === undefined) throw deviceNotFound(deviceId);
      const etag = etagOf === 'device' ? row.device.etag : row.device.twin.etag;
      if (ifMatch !== undefined && !etagMatches(ifMatch, etag)) throw preconditionFailed(etagOf);
      const next = change(row.device);
      if (await fenced(() => this.#store.replaceDevice(hubName, next, row.revision, newRevision()))) return next;
    }
    throw conflictingWrites();
  }
}

// ---- hubs and auth

/** A device write the erase fence refused is IoT Hub-style 409 `DeviceBeingErased`. */
async function fenced<T>(write: () => Promise<T>): Promise<T> {
  try {
    return await write();
  } catch (error) {
    if (error instanceof DeviceFencedError) throw new HubApiError('DeviceBeingErased', error.message.replaceAll(';', ','));
    throw error;
  }
}

function view(hub: BuiltInHubRecord): BuiltInHub {
  const owner = hub.policies.find((policy) => policy.keyName === HUB_OWNER_POLICY) ?? hub.policies[0];
  const connectionString =
    owner === undefined ? '' : `HostName=${hub.name};SharedAccessKeyName=${owner.keyName};SharedAccessKey=${owner.primaryKey}`;
  return { name: hub.name, connectionString, policies: hub.policies.map((policy) => ({ ...policy, rights: [...policy.rights] })) };
}

function newPolicy(policy: { keyName: string; rights: readonly HubRight[] }): HubAccessPolicy {
  return { keyName: policy.keyName, primaryKey: newHubKey(), secondaryKey: newHubKey(), rights: [...policy.rights] };
}

/** IoT Hub generates 32-byte keys for policies and devices. */
function newHubKey(): string {
  return randomBytes(32).toString('base64');
}

function grants(rights: readonly HubRight[], right: HubRight): boolean {
  return rights.includes(right) || (right === 'RegistryRead' && rights.includes('RegistryWrite'));
}

function unauthorized(): HubApiError {
  return new HubApiError('IotHubUnauthorizedAccess', 'Unauthorized');
}

/** `host`, `host:port`, `[v6]:port` → the host. */
export function hostWithoutPort(host: string): string {
  if (host.startsWith('[')) {
    const end = host.indexOf(']');
    return end < 0 ? host : host.slice(1, end);
  }
  const colon = host.lastIndexOf(':');
  return colon > 0 && host.indexOf(':') === colon ? host.slice(0, colon) : host;
}

// ---- identities

function checkDeviceId(deviceId: string): void {
  try {
    assertDeviceId(deviceId);
  } catch (error) {
    throw new HubApiError('ArgumentInvalid', error instanceof Error ? error.message : 'The device ID is invalid.');
  }
}

const given = (value: string | null | undefined): string | undefined => (typeof value === 'string' && value !== '' ? value : undefined);

/**
 * The stored authentication for an identity as sent: `type` defaults the way the SDK normalises it (thumbprint →
 * selfSigned, else sas); a sas identity without keys gets new ones, as IoT Hub generates them.
 */
function authenticationOf(input: NonNullable<DeviceInput['authentication']> | undefined): StoredHubAuthentication {
  const primaryKey = given(input?.symmetricKey?.primaryKey);
  const secondaryKey = given(input?.symmetricKey?.secondaryKey);
  const primaryThumbprint = given(input?.x509Thumbprint?.primaryThumbprint);
  const secondaryThumbprint = given(input?.x509Thumbprint?.secondaryThumbprint);
  const hasKeys = primaryKey !== undefined || secondaryKey !== undefined;
  const hasThumbprints = primaryThumbprint !== undefined || secondaryThumbprint !== undefined;
  const type = input?.type ?? (hasThumbprints ? 'selfSigned' : 'sas');
  const noKeys = { primaryKey: null, secondaryKey: null };
  const noThumbprints = { primaryThumbprint: null, secondaryThumbprint: null };
  switch (type) {
    case 'sas': {
      if (hasThumbprints) throw new HubApiError('ArgumentInvalid', 'A sas identity has no x509Thumbprint.');
      for (const key of [primaryKey, secondaryKey]) {
        if (key !== undefined && !isValidSymmetricKey(key)) {
          throw new HubApiError('ArgumentInvalid', 'A symmetric key must be base64 of 16 to 64 bytes.');
        }
      }
      return { type, symmetricKey: { primaryKey: primaryKey ?? newHubKey(), secondaryKey: secondaryKey ?? newHubKey() }, x509Thumbprint: noThumbprints };
    }
    case 'selfSigned': {
      if (hasKeys) throw new HubApiError('ArgumentInvalid', 'A selfSigned identity has no symmetricKey.');
      if (primaryThumbprint === undefined) throw new HubApiError('ArgumentInvalid', 'A selfSigned identity needs x509Thumbprint.primaryThumbprint.');
      for (const thumbprint of [primaryThumbprint, secondaryThumbprint]) {
        if (thumbprint !== undefined && !THUMBPRINT.test(thumbprint)) {
          throw new HubApiError('ArgumentInvalid', 'A thumbprint is 40 (SHA-1) or 64 (SHA-256) hexadecimal digits.');
        }
      }
      return { type, symmetricKey: noKeys, x509Thumbprint: { primaryThumbprint, secondaryThumbprint: secondaryThumbprint ?? null } };
    }
    case 'certificateAuthority':
    case 'none': {
      if (hasKeys || hasThumbprints) throw new HubApiError('ArgumentInvalid', `A ${type} identity has neither symmetricKey nor x509Thumbprint.`);
      return { type, symmetricKey: noKeys, x509Thumbprint: noThumbprints };
    }
  }
}

/** IoT Hub generation IDs are .NET tick counts; a random sub-millisecond part keeps re-created devices distinct. */
function newGenerationId(now: Date): string {
  return String(BigInt(now.getTime()) * 10_000n + 621_355_968_000_000_000n + BigInt(randomBelow(10_000)));
}

/** IoT Hub device etags are base64 of a decimal number; a fresh one on every write. */
function newDeviceEtag(previous: string | undefined): string {
  for (;;) {
    const etag = Buffer.from(String(1 + randomBelow(2 ** 31 - 2))).toString('base64');
    if (etag !== previous) return etag;
  }
}

/** Twin etags are base64 of eight bytes (`AAAAAAAAAAE=` in IoT Hub); a fresh one on every write. */
function newTwinEtag(previous: string | undefined): string {
  for (;;) {
    const etag = randomBase64(8);
    if (etag !== previous) return etag;
  }
}

function newRevision(): string {
  return randomHex(12);
}

function newTwin(time: string): StoredTwin {
  return {
    etag: newTwinEtag(undefined),
    version: 1,
    tags: {},
    desired: {},
    desiredVersion: 1,
    desiredMetadata: { $lastUpdated: time, $lastUpdatedVersion: 1 },
    reported: {},
    reportedVersion: 1,
    reportedMetadata: { $lastUpdated: time },
  };
}

function deviceNotFound(deviceId: string): HubApiError {
  return new HubApiError('DeviceNotFound', `Device '${truncate(deviceId)}' is not registered.`);
}

function preconditionFailed(what: 'device' | 'twin'): HubApiError {
  return new HubApiError('PreconditionFailed', `The If-Match etag does not match the ${what}'s current etag.`);
}

function conflictingWrites(): HubApiError {
  return new HubApiError('PreconditionFailed', 'The device was changed by concurrent requests; retry.');
}

function truncate(text: string, max = 80): string {
  return text.length <= max ? text : `${text.slice(0, max)}…`;
}

// ---- rendering (exactly the members and order IoT Hub returns)

function renderDevice(device: StoredHubDevice): WireDevice {
  return {
    deviceId: device.deviceId,
    generationId: device.generationId,
    etag: device.etag,
    connectionState: 'Disconnected',
    status: device.status,
    statusReason: device.statusReason,
    connectionStateUpdatedTime: NEVER,
    statusUpdatedTime: device.statusUpdatedTime,
    lastActivityTime: NEVER,
    cloudToDeviceMessageCount: 0,
    authentication: {
      symmetricKey: { ...device.authentication.symmetricKey },
      x509Thumbprint: { ...device.authentication.x509Thumbprint },
      type: device.authentication.type,
    },
    capabilities: { iotEdge: device.capabilities.iotEdge },
  };
}

function renderTwin(device: StoredHubDevice): WireTwin {
  const { twin } = device;
  return {
    deviceId: device.deviceId,
    etag: twin.etag,
    deviceEtag: device.etag,
    status: device.status,
    ...(device.statusReason === null ? {} : { statusReason: device.statusReason }),
    statusUpdateTime: device.statusUpdatedTime,
    connectionState: 'Disconnected',
    lastActivityTime: NEVER,
    cloudToDeviceMessageCount: 0,
    authenticationType: device.authentication.type,
    x509Thumbprint: { ...device.authentication.x509Thumbprint },
    modelId: '',
    version: twin.version,
    tags: twin.tags,
    properties: {
      desired: { ...twin.desired, $metadata: twin.desiredMetadata, $version: twin.desiredVersion },
      reported: { ...twin.reported, $metadata: twin.reportedMetadata, $version: twin.reportedVersion },
    },
    capabilities: { iotEdge: device.capabilities.iotEdge },
  };
}

// ---- twin collections

function isJsonObject(value: unknown): value is JsonMap {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * Tags and desired properties from a patch or a replacement, checked against IoT Hub's rules: keys are non-empty,
 * at most 1 KB, without `.`, `$`, spaces or control characters; at most 10 levels deep. `$metadata` and `$version`
 * at the top of desired properties are read-only members a client may echo back and are ignored. Reported properties
 * belong to the device: a patch may not set them (a replacement's are ignored, as it echoes a read twin).
 */
function twinContentOf(input: TwinInput, kind: 'patch' | 'replacement'): { tags: JsonMap | null | undefined; desired: JsonMap | null | undefined } {
  const properties = input.properties ?? undefined;
  if (kind === 'patch' && isJsonObject(properties?.reported) && Object.keys(properties.reported).some((key) => !key.startsWith('$'))) {
    throw new HubApiError('ArgumentInvalid', 'Reported properties are set by the device, not through the service API.');
  }
  const tags = input.tags;
  let desired = properties?.desired;
  if (isJsonObject(desired)) {
    const { $metadata: _metadata, $version: _version, ...rest } = desired;
    desired = rest;
  }
  if (isJsonObject(tags)) checkCollection(tags, 'tags', 1);
  if (isJsonObject(desired)) checkCollection(desired, 'properties.desired', 1);
  return { tags, desired };
}

function checkCollection(collection: JsonMap, path: string, depth: number): void {
  for (const [key, value] of Object.entries(collection)) {
    // `__proto__` would re-parent the stored object instead of becoming a member.
    if (key === '' || key === '__proto__' || /[.$ \u0000-\u001f\u007f-\u009f]/.test(key) || Buffer.byteLength(key) > MAX_KEY_BYTES) {
      throw new HubApiError('ArgumentInvalid', `The key '${truncate(key)}' in ${path} is invalid: keys are 1 KB at most, without '.', '$', spaces or control characters.`);
    }
    checkValue(value, `${path}.${key}`, depth);
  }
}

function checkValue(value: unknown, path: string, depth: number): void {
  if (depth > MAX_TWIN_DEPTH) throw new HubApiError('ArgumentInvalid', `${truncate(path)} nests deeper than ${MAX_TWIN_DEPTH} levels.`);
  if (Array.isArray(value)) {
    for (const item of value) checkValue(item, `${path}[]`, depth + 1);
  } else if (isJsonObject(value)) {
    checkCollection(value, path, depth + 1);
  }
}

type Stamp = { $lastUpdated: string; $lastUpdatedVersion?: number };

/**
 * Merges `patch` into `target` (JSON merge patch: `null` removes, objects merge, anything else replaces) and keeps
 * `metadata` — IoT Hub's `$metadata` tree, one `{$lastUpdated, $lastUpdatedVersion}` per member — in step.
 */
function mergeCollection(target: JsonMap, metadata: JsonMap | undefined, patch: JsonMap, stamp: Stamp): void {
  for (const [key, value] of Object.entries(patch)) {
    if (value === null) {
      delete target[key];
      if (metadata !== undefined) delete metadata[key];
    } else if (isJsonObject(value)) {
      const existing = target[key];
      const child: JsonMap = isJsonObject(existing) ? existing : {};
      const existingMetadata = metadata?.[key];
      const childMetadata: JsonMap | undefined = metadata === undefined ? undefined : isJsonObject(existing) && isJsonObject(existingMetadata) ? existingMetadata : {};
      mergeCollection(child, childMetadata, value, stamp);
      target[key] = child;
      if (metadata !== undefined && childMetadata !== undefined) metadata[key] = Object.assign(childMetadata, stamp);
    } else {
      target[key] = structuredClone(value);
      if (metadata !== undefined) metadata[key] = { ...stamp };
    }
  }
}

// ---- paging

function pageSize(header: string | undefined): number {
  if (header === undefined || header === '') return DEFAULT_PAGE_SIZE;
  if (!/^\d{1,9}$/.test(header.trim()) || Number(header) < 1) {
    throw new HubApiError('ArgumentInvalid', 'x-ms-max-item-count must be a positive integer.');
  }
  return Math.min(Number(header), MAX_PAGE_SIZE);
}

function encodeContinuation(afterKey: string): string {
  return Buffer.from(JSON.stringify({ after: afterKey })).toString('base64url');
}

function decodeContinuation(token: string): string {
  try {
    const parsed: unknown = JSON.parse(Buffer.from(token, 'base64url').toString('utf8'));
    if (isJsonObject(parsed) && typeof parsed.after === 'string') return parsed.after;
  } catch {
    // Falls through to the error below.
  }
  throw new HubApiError('ArgumentInvalid', 'The continuation token is invalid.');
}
