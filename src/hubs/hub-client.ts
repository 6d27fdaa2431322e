import type { JsonMap } from '../domain/enrollment.js';
import type { LinkedHubRecord, PrefetchedHubDevice, Store } from '../store/store.js';

/**
 * How provisiond talks to an IoT hub: the registry REST API subset DPS uses (device identity and twin). An external
 * hub is reached over REST (RegistryRestClient), a built-in hub of this process by direct call with the same contract
 * (BuiltInHubClient), so the registration flow cannot tell them apart.
 */
export type HubAuthentication =
  | { type: 'sas'; symmetricKey: { primaryKey: string; secondaryKey: string } }
  | { type: 'selfSigned'; x509Thumbprint: { primaryThumbprint: string; secondaryThumbprint?: string } }
  | { type: 'certificateAuthority' };

export interface HubDevice {
  deviceId: string;
  authentication: HubAuthentication;
  capabilities: { iotEdge: boolean };
  status: 'enabled' | 'disabled';
}

/**
 * What the caller knows of the hub before a put: `exists` when the identity is expected there (a re-registration to
 * the hub and device ID of the device's record), so the replace is tried first and a re-registration does not pay a
 * failed create first (issue 12). Only an order: either attempt that misses falls through to the other. The built-in
 * hub's client takes it; the REST client keeps the create first (what a real hub does with `If-Match: *` on a device
 * it lacks is its business, and the create's 409 is the documented answer).
 */
export interface PutDeviceHint {
  exists?: boolean;
  /**
   * A built-in hub's row of the device, read by the caller moments ago (Store.withRegistrationLock): the replace
   * compares-and-swaps on it instead of reading it first (a stale row only fails the swap). Other hubs ignore it.
   */
  current?: PrefetchedHubDevice;
}

export interface HubDeviceRecord extends HubDevice {
  etag: string;
  generationId: string;
}

export interface HubTwinContent {
  tags: JsonMap;
  desired: JsonMap;
}

export interface HubTwin extends HubTwinContent {
  reported: JsonMap;
  etag: string;
}

export class HubError extends Error {
  readonly status: number | undefined;
  readonly hubName: string;
  constructor(hubName: string, message: string, status?: number) {
    super(message);
    this.name = 'HubError';
    this.hubName = hubName;
    this.status = status;
  }
}

export interface HubClient {
  readonly hubName: string;
  getDevice(deviceId: string): Promise<HubDeviceRecord | undefined>;
  /** Creates the identity, or replaces it (authentication, capabilities, status) when it exists; says which. */
  putDevice(device: HubDevice, hint?: PutDeviceHint): Promise<HubDeviceRecord & { created: boolean }>;
  deleteDevice(deviceId: string): Promise<boolean>;
  getTwin(deviceId: string): Promise<HubTwin | undefined>;
  /** Sets the twin's tags and desired properties to exactly these (reported properties are the device's). */
  replaceTwin(deviceId: string, content: HubTwinContent): Promise<HubTwin>;
  /** Milliseconds for one round trip to the hub's registry (geoLatency allocation). */
  measureLatency(): Promise<number>;
  /**
   * A hub whose devices live in the store's own database (a built-in hub): the client whose writes join `transaction`,
   * so they commit with the registration's record (issue 12). Absent (or undefined) for a hub reached over the network.
   */
  joining?(transaction: Store): HubClient | undefined;
}

export interface HubClientFactory {
  forHub(hub: LinkedHubRecord): HubClient;
  close(): Promise<void>;
}
