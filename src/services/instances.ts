import { randomUUID } from 'node:crypto';
import { ProvisioningError } from '../domain/errors.js';
import { isValidSymmetricKey, newIdScope, newSymmetricKey, truncate } from '../domain/ids.js';
import { dpsTimestamp } from '../domain/time.js';
import { redactUrl } from '../domain/enrollment.js';
import {
  ALL_RIGHTS,
  type AccessPolicyRecord,
  type InstanceRecord,
  type LinkedHubRecord,
  type Right,
  type Store,
} from '../store/store.js';
import type { ServiceDeps } from './deps.js';
import { DEFAULT_AUDIT_RETENTION_DAYS } from './audit-log.js';

/**
 * Instances (tenants) and their control plane: settings, access policies, linked hubs. Guarded by ServiceConfig at
 * the edge. The first instance of a deployment is created on first start; it is the deployment's operator instance,
 * whose ServiceConfig policies may create further instances.
 */
export const OWNER_POLICY = 'provisioningserviceowner';
const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9\-._]{0,63}$/;
/** Hub names are host names; external ones may carry a port (a hub behind a non-standard port, or a test double). */
const HUB_NAME_PATTERN = /^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:\d{1,5})?$/;
const HOST_PATTERN = /^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$|^\d{1,3}(\.\d{1,3}){3}$/;

export interface InstanceView {
  name: string;
  idScope: string;
  serviceHostNames: string[];
  allocationPolicy: InstanceRecord['allocationPolicy'];
  createdDateTimeUtc: string;
  auditRetentionDays: number;
  eventWebhookUrl: string | null;
}

export interface AccessPolicyView {
  keyName: string;
  rights: string;
}
export interface AccessPolicyWithKeys extends AccessPolicyView {
  primaryKey: string;
  secondaryKey: string;
}

export interface LinkedHubView {
  name: string;
  builtIn: boolean;
  connectionString?: string;
  allocationWeight: number;
  applyAllocationPolicy: boolean;
  location?: string;
}

export function instanceView(instance: InstanceRecord): InstanceView {
  return {
    name: instance.name,
    idScope: instance.idScope,
    serviceHostNames: [...instance.serviceHostNames],
    allocationPolicy: instance.allocationPolicy,
    createdDateTimeUtc: instance.createdDateTimeUtc,
    auditRetentionDays: instance.auditRetentionDays ?? DEFAULT_AUDIT_RETENTION_DAYS,
    // The webhook's URL is shown with its query values redacted (they often carry a key, e.g. `?code=`), as the
    // custom-allocation URL is; its signing secret is never shown.
    eventWebhookUrl: instance.eventWebhook === undefined ? null : redactUrl(instance.eventWebhook.url),
  };
}

/** Rights are written as DPS writes them: a comma+space separated list (dps-wire.md §2.1). */
export function formatRights(rights: readonly Right[]): string {
  return ALL_RIGHTS.filter((right) => rights.includes(right)).join(', ');
}

export function parseRights(value: unknown): Right[] {
  const parts = Array.isArray(value) ? value : typeof value === 'string' ? value.split(',') : undefined;
  if (parts === undefined) throw new ProvisioningError('InvalidAccessPolicy', `rights must be a list such as "EnrollmentRead, EnrollmentWrite".`);
  const rights: Right[] = [];
  for (const part of parts) {
    const name = typeof part === 'string' ? part.trim() : '';
    const right = ALL_RIGHTS.find((candidate) => candidate.toLowerCase() === name.toLowerCase());
    if (right === undefined) {
      throw new ProvisioningError('InvalidAccessPolicy', `'${String(part)}' is not a right; use ${ALL_RIGHTS.join(', ')}.`);
    }
    if (!rights.includes(right)) rights.push(right);
  }
  if (rights.length === 0) throw new ProvisioningError('InvalidAccessPolicy', 'A policy needs at least one right.');
  return rights;
}

function policyView(policy: AccessPolicyRecord): AccessPolicyView {
  return { keyName: policy.keyName, rights: formatRights(policy.rights) };
}
function policyWithKeys(policy: AccessPolicyRecord): AccessPolicyWithKeys {
  return { ...policyView(policy), primaryKey: policy.primaryKey, secondaryKey: policy.secondaryKey };
}

/** A hub connection string with its key hidden: GET never shows secrets. */
export function redactConnectionString(connectionString: string): string {
  return connectionString.replace(/(SharedAccessKey=)[^;]*/i, '$1****');
}

function hubView(hub: LinkedHubRecord, withSecrets: boolean): LinkedHubView {
  const view: LinkedHubView = {
    name: hub.name,
    builtIn: hub.builtIn,
    allocationWeight: hub.allocationWeight,
    applyAllocationPolicy: hub.applyAllocationPolicy,
  };
  if (!hub.builtIn || withSecrets) view.connectionString = withSecrets ? hub.connectionString : redactConnectionString(hub.connectionString);
  if (hub.location !== undefined) view.location = hub.location;
  return view;
}

export function parseConnectionString(text: string): Record<string, string> {
  const fields: Record<string, string> = {};
  for (const part of text.split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0) fields[part.slice(0, eq)] = part.slice(eq + 1);
  }
  return fields;
}

/** Creates (if needed) a hub hosted by provisiond and returns its owner connection string and its policies. */
export type EnsureBuiltInHub = (name: string) => Promise<{
  connectionString: string;
  policies: readonly { keyName: string; primaryKey: string; secondaryKey: string; rights: readonly string[] }[];
}>;

/** One shared access policy of a built-in hub, as IoT Hub's `listkeys` shows it, with its connection string. */
export interface HubPolicyKeys {
  keyName: string;
  rights: string;
  primaryKey: string;
  secondaryKey: string;
  connectionString: string;
}

export class InstanceService {
  readonly #deps: ServiceDeps;
  readonly #ensureBuiltInHub: EnsureBuiltInHub;

  constructor(deps: ServiceDeps, ensureBuiltInHub: EnsureBuiltInHub) {
    this.#deps = deps;
    this.#ensureBuiltInHub = ensureBuiltInHub;
  }

  /** On first start: the default instance with an owner policy. Returns the operator (first) instance. */
  async bootstrap(): Promise<{ instance: InstanceRecord; created: boolean }> {
    const existing = await this.#deps.store.listInstances();
    const first = existing.sort((a, b) => a.createdDateTimeUtc.localeCompare(b.createdDateTimeUtc))[0];
    if (first !== undefined) return { instance: first, created: false };
    const { instance } = await this.create({ name: 'default', serviceHostNames: [...this.#deps.config.hostNames] });
    return { instance, created: true };
  }

  async operatorInstance(): Promise<InstanceRecord> {
    const all = await this.#deps.store.listInstances();
    const first = all.sort((a, b) => a.createdDateTimeUtc.localeCompare(b.createdDateTimeUtc))[0];
    if (first === undefined) throw new ProvisioningError('InstanceNotFound', 'No instance exists yet.');
    return first;
  }

  async list(): Promise<InstanceView[]> {
    return (await this.#deps.store.listInstances()).map(instanceView);
  }

  async create(input: {
    name: string;
    serviceHostNames: string[];
    allocationPolicy?: InstanceRecord['allocationPolicy'];
  }): Promise<{ instance: InstanceRecord; ownerPolicy: AccessPolicyWithKeys }> {
    if (!NAME_PATTERN.test(input.name)) {
      throw new ProvisioningError('InvalidInstance', 'An instance name is 1-64 letters, digits, -, . or _.');
    }
    const hostNames = this.#checkHostNames(input.serviceHostNames);
    return this.#deps.store.transaction(async (store) => {
      const all = await store.listInstances();
      if (all.some((other) => other.name.toLowerCase() === input.name.toLowerCase())) {
        throw new ProvisioningError('Conflict', `An instance named '${input.name}' already exists.`);
      }
      for (const name of hostNames) {
        if ((await store.findInstanceByHostName(name)) !== undefined) {
          throw new ProvisioningError('Conflict', `The host name '${name}' already belongs to another instance.`);
        }
      }
      let idScope = newIdScope();
      while ((await store.findInstanceByIdScope(idScope)) !== undefined) idScope = newIdScope();
      const instance: InstanceRecord = {
        id: randomUUID(),
        name: input.name,
        idScope,
        serviceHostNames: hostNames,
        allocationPolicy: input.allocationPolicy ?? 'hashed',
        createdDateTimeUtc: dpsTimestamp(this.#deps.now()),
      };
      await store.insertInstance(instance);
      const owner: AccessPolicyRecord = {
        keyName: OWNER_POLICY,
        primaryKey: newSymmetricKey(),
        secondaryKey: newSymmetricKey(),
        rights: [...ALL_RIGHTS],
      };
      await store.putAccessPolicy(instance.id, owner);
      return { instance, ownerPolicy: policyWithKeys(owner) };
    });
  }

  async deleteByName(name: string, operator: InstanceRecord): Promise<void> {
    const target = (await this.#deps.store.listInstances()).find((instance) => instance.name.toLowerCase() === name.toLowerCase());
    if (target === undefined) throw new ProvisioningError('InstanceNotFound', `Instance '${name}' was not found.`);
    if (target.id === operator.id) throw new ProvisioningError('InvalidInstance', 'The operator instance cannot delete itself.');
    await this.#deps.store.transaction((store) => store.deleteInstance(target.id));
  }

  async update(
    instance: InstanceRecord,
    patch: { allocationPolicy?: unknown; serviceHostNames?: unknown; auditRetentionDays?: unknown; eventWebhook?: unknown },
  ): Promise<InstanceView> {
    // From the store, not the caller's copy: the instance's secrets must survive the write.
    const updated: InstanceRecord = { ...((await this.#deps.store.getInstance(instance.id)) ?? instance) };
    if (patch.auditRetentionDays !== undefined) {
      const days = patch.auditRetentionDays;
      if (typeof days !== 'number' || !Number.isInteger(days) || days < 1 || days > 3650) {
        throw new ProvisioningError('InvalidInstance', 'auditRetentionDays is a whole number of days from 1 to 3650.');
      }
      updated.auditRetentionDays = days;
    }
    if (patch.eventWebhook !== undefined) {
      if (patch.eventWebhook === null) {
        delete updated.eventWebhook;
      } else {
        const { url, secret } = patch.eventWebhook as { url?: unknown; secret?: unknown };
        let parsed: URL | undefined;
        try {
          parsed = typeof url === 'string' ? new URL(url) : undefined;
        } catch {
          parsed = undefined;
        }
        if (parsed === undefined || (parsed.protocol !== 'https:' && parsed.protocol !== 'http:')) {
          throw new ProvisioningError('InvalidInstance', 'eventWebhook.url must be an http or https URL.');
        }
        if (typeof secret !== 'string' || secret.length < 16 || secret.length > 256) {
          throw new ProvisioningError('InvalidInstance', 'eventWebhook.secret must be 16 to 256 characters; it signs every delivery.');
        }
        updated.eventWebhook = { url: parsed.toString(), secret };
      }
    }
    if (patch.allocationPolicy !== undefined) {
      if (patch.allocationPolicy !== 'hashed' && patch.allocationPolicy !== 'geoLatency' && patch.allocationPolicy !== 'static') {
        throw new ProvisioningError('InvalidInstance', "The default allocationPolicy is one of 'hashed', 'geoLatency' or 'static' (custom is set per enrollment).");
      }
      updated.allocationPolicy = patch.allocationPolicy;
    }
    if (patch.serviceHostNames !== undefined) {
      if (!Array.isArray(patch.serviceHostNames)) throw new ProvisioningError('InvalidInstance', 'serviceHostNames must be a list.');
      updated.serviceHostNames = this.#checkHostNames(patch.serviceHostNames as unknown[]);
    }
    await this.#deps.store.transaction(async (store) => {
      for (const name of updated.serviceHostNames) {
        const owner = await store.findInstanceByHostName(name);
        if (owner !== undefined && owner.id !== instance.id) {
          throw new ProvisioningError('Conflict', `The host name '${name}' already belongs to another instance.`);
        }
      }
      await store.updateInstance(updated);
    });
    return instanceView(updated);
  }

  #checkHostNames(names: unknown[]): string[] {
    if (names.length === 0 || names.length > 16) throw new ProvisioningError('InvalidInstance', 'An instance needs 1 to 16 service host names.');
    return names.map((name) => {
      const text = typeof name === 'string' ? name.toLowerCase() : '';
      if (!HOST_PATTERN.test(text) || text.length > 253) throw new ProvisioningError('InvalidInstance', `'${String(name)}' is not a valid host name.`);
      return text;
    });
  }

  // ---- access policies

  async listPolicies(instance: InstanceRecord): Promise<AccessPolicyView[]> {
    return (await this.#deps.store.listAccessPolicies(instance.id)).map(policyView);
  }

  async policyKeys(instance: InstanceRecord, keyName: string): Promise<AccessPolicyWithKeys> {
    return policyWithKeys(await this.#requirePolicy(this.#deps.store, instance, keyName));
  }

  async putPolicy(instance: InstanceRecord, keyName: string, body: Record<string, unknown>): Promise<AccessPolicyWithKeys> {
    if (!NAME_PATTERN.test(keyName)) throw new ProvisioningError('InvalidAccessPolicy', 'A policy name is 1-64 letters, digits, -, . or _.');
    const rights = parseRights(body.rights);
    const key = (name: 'primaryKey' | 'secondaryKey', kept: string | undefined): string => {
      const value = body[name];
      if (value === undefined || value === null || value === '') return kept ?? newSymmetricKey();
      if (typeof value !== 'string' || !isValidSymmetricKey(value)) {
        throw new ProvisioningError('InvalidSymmetricKey', `${name} must be base64 of 16 to 64 bytes.`);
      }
      return value;
    };
    return this.#deps.store.transaction(async (store) => {
      const existing = await store.getAccessPolicy(instance.id, keyName);
      const policy: AccessPolicyRecord = {
        keyName: existing?.keyName ?? keyName,
        primaryKey: key('primaryKey', existing?.primaryKey),
        secondaryKey: key('secondaryKey', existing?.secondaryKey),
        rights,
      };
      if (existing?.rights.includes('ServiceConfig') && !rights.includes('ServiceConfig')) await this.#keepOneOwner(store, instance, keyName);
      await store.putAccessPolicy(instance.id, policy);
      return policyWithKeys(policy);
    });
  }

  async regenerateKey(instance: InstanceRecord, keyName: string, keyType: unknown): Promise<AccessPolicyWithKeys> {
    if (keyType !== 'primary' && keyType !== 'secondary') {
      throw new ProvisioningError('InvalidAccessPolicy', "keyType must be 'primary' or 'secondary'.");
    }
    return this.#deps.store.transaction(async (store) => {
      const policy = await this.#requirePolicy(store, instance, keyName);
      const updated = { ...policy, [keyType === 'primary' ? 'primaryKey' : 'secondaryKey']: newSymmetricKey() };
      await store.putAccessPolicy(instance.id, updated);
      return policyWithKeys(updated);
    });
  }

  async deletePolicy(instance: InstanceRecord, keyName: string): Promise<void> {
    await this.#deps.store.transaction(async (store) => {
      const policy = await this.#requirePolicy(store, instance, keyName);
      if (policy.rights.includes('ServiceConfig')) await this.#keepOneOwner(store, instance, keyName);
      await store.deleteAccessPolicy(instance.id, keyName);
    });
  }

  /**
   * Losing the last ServiceConfig policy would lock the tenant out of its own instance. Reads through the caller's
   * transaction store: the SQLite dialect has one connection, so a read on the root store inside a transaction waits
   * for that transaction forever.
   */
  async #keepOneOwner(store: Store, instance: InstanceRecord, leaving: string): Promise<void> {
    const others = (await store.listAccessPolicies(instance.id)).filter(
      (policy) => policy.keyName.toLowerCase() !== leaving.toLowerCase() && policy.rights.includes('ServiceConfig'),
    );
    if (others.length === 0) throw new ProvisioningError('LastOwnerPolicy');
  }

  async #requirePolicy(store: Store, instance: InstanceRecord, keyName: string): Promise<AccessPolicyRecord> {
    const policy = await store.getAccessPolicy(instance.id, keyName);
    if (policy === undefined) throw new ProvisioningError('AccessPolicyNotFound', `Access policy '${keyName}' was not found.`);
    return policy;
  }

  // ---- linked hubs

  async listHubs(instance: InstanceRecord): Promise<LinkedHubView[]> {
    return (await this.#deps.store.listLinkedHubs(instance.id)).map((hub) => hubView(hub, false));
  }

  async getHub(instance: InstanceRecord, name: string): Promise<LinkedHubView> {
    const hub = await this.#deps.store.getLinkedHub(instance.id, name);
    if (hub === undefined) throw new ProvisioningError('LinkedHubNotFound', `Linked hub '${name}' was not found.`);
    return hubView(hub, false);
  }

  /**
   * The shared access policies of a linked built-in hub, with keys: the owner's and the narrower ones (registryRead,
   * registryReadWrite, service, device) for clients that should hold no more than they need. External hubs keep their
   * keys themselves.
   */
  async builtInHubKeys(instance: InstanceRecord, name: string): Promise<HubPolicyKeys[]> {
    const hub = await this.#deps.store.getLinkedHub(instance.id, name);
    if (hub === undefined) throw new ProvisioningError('LinkedHubNotFound', `Linked hub '${truncate(name)}' was not found.`);
    if (!hub.builtIn) throw new ProvisioningError('InvalidLinkedHub', `'${hub.name}' is an external hub; its keys are kept by that hub, not by provisiond.`);
    const { policies } = await this.#ensureBuiltInHub(hub.name);
    return policies.map((policy) => ({
      keyName: policy.keyName,
      rights: policy.rights.join(', '),
      primaryKey: policy.primaryKey,
      secondaryKey: policy.secondaryKey,
      connectionString: `HostName=${hub.name};SharedAccessKeyName=${policy.keyName};SharedAccessKey=${policy.primaryKey}`,
    }));
  }

  /** Links (or updates) a hub. An external hub needs a connection string whose HostName is the hub's name. */
  async putHub(instance: InstanceRecord, name: string, body: Record<string, unknown>): Promise<LinkedHubView> {
    const hostName = name.toLowerCase();
    // A DNS name is at most 253 characters (RFC 1035); the pattern alone would take any length.
    if (!HUB_NAME_PATTERN.test(hostName) || (hostName.split(':')[0] ?? '').length > 253) {
      throw new ProvisioningError('InvalidLinkedHub', `'${truncate(name)}' is not a valid hub host name.`);
    }
    const weight = body.allocationWeight ?? 1;
    if (typeof weight !== 'number' || !Number.isInteger(weight) || weight < 1 || weight > 1000) {
      throw new ProvisioningError('InvalidLinkedHub', 'allocationWeight is an integer from 1 to 1000.');
    }
    const apply = body.applyAllocationPolicy ?? true;
    if (typeof apply !== 'boolean') throw new ProvisioningError('InvalidLinkedHub', 'applyAllocationPolicy is true or false.');
    // PUT of an already linked hub keeps its kind unless the body names one: nothing is lost by omission.
    const builtIn = body.builtIn ?? (await this.#deps.store.getLinkedHub(instance.id, hostName))?.builtIn ?? false;
    if (typeof builtIn !== 'boolean') throw new ProvisioningError('InvalidLinkedHub', 'builtIn is true or false.');
    if (body.location !== undefined && typeof body.location !== 'string') throw new ProvisioningError('InvalidLinkedHub', 'location is a string.');
    // A built-in hub is created on first link; its owner connection string comes from the hub itself. Created before
    // the transaction: the hub store shares the SQLite connection, and using it inside the transaction deadlocks.
    const builtInConnectionString = builtIn ? (await this.#ensureBuiltInHub(hostName)).connectionString : undefined;
    return this.#deps.store.transaction(async (store) => {
      const existing = await store.getLinkedHub(instance.id, hostName);
      let connectionString = typeof body.connectionString === 'string' ? body.connectionString : undefined;
      if (connectionString === undefined || connectionString === redactConnectionString(existing?.connectionString ?? '')) {
        connectionString = existing?.connectionString;
      }
      if (builtInConnectionString !== undefined) connectionString = builtInConnectionString;
      if (connectionString === undefined) {
        throw new ProvisioningError('InvalidLinkedHub', 'An external hub needs connectionString (HostName=…;SharedAccessKeyName=…;SharedAccessKey=…).');
      }
      const fields = parseConnectionString(connectionString);
      if (fields.HostName?.toLowerCase() !== hostName || !fields.SharedAccessKeyName || !fields.SharedAccessKey || !isValidSymmetricKey(fields.SharedAccessKey)) {
        throw new ProvisioningError(
          'InvalidLinkedHub',
          `connectionString must be HostName=${hostName};SharedAccessKeyName=<policy>;SharedAccessKey=<base64 key>.`,
        );
      }
      const hub: LinkedHubRecord = { name: hostName, builtIn, connectionString, allocationWeight: weight, applyAllocationPolicy: apply };
      if (typeof body.location === 'string') hub.location = body.location;
      await store.putLinkedHub(instance.id, hub);
      return hubView(hub, false);
    });
  }

  async deleteHub(instance: InstanceRecord, name: string): Promise<void> {
    const removed = await this.#deps.store.deleteLinkedHub(instance.id, name);
    if (!removed) throw new ProvisioningError('LinkedHubNotFound', `Linked hub '${name}' was not found.`);
  }
}
