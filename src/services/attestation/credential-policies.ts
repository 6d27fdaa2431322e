import type { JsonMap } from '../../domain/enrollment.js';
import { ProvisioningError } from '../../domain/errors.js';
import { newEtag } from '../../domain/etag.js';
import { dpsTimestamp } from '../../domain/time.js';
import { CREDENTIAL_KEY_TYPES, type CredentialKeyType, type CredentialPolicyRecord, type InstanceRecord } from '../../store/store.js';
import type { ServiceDeps } from '../deps.js';

/**
 * Credential policies (docs/certificate-issuance.md): what the issuing CA signs for the enrollments that name one in
 * `credentialPolicyName` — which CSR key types it accepts and how many days an issued certificate is valid. DPS links
 * an Azure Device Registry policy by name; provisiond keeps its own, managed through the control plane.
 */
const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9\-._]{0,63}$/;
const DEFAULT_KEY_TYPES: CredentialKeyType[] = ['ecP256', 'ecP384', 'rsa2048', 'rsa3072', 'rsa4096'];
const DEFAULT_VALIDITY_DAYS = 30;
const MAX_VALIDITY_DAYS = 3650;

export interface CredentialPolicyInput {
  keyTypes?: string[];
  validityInDays?: number;
}

export function credentialPolicyView(record: CredentialPolicyRecord): JsonMap {
  return {
    name: record.name,
    keyTypes: record.keyTypes,
    validityInDays: record.validityInDays,
    etag: record.etag,
    createdDateTimeUtc: record.createdDateTimeUtc,
    lastUpdatedDateTimeUtc: record.lastUpdatedDateTimeUtc,
  };
}

export class CredentialPolicyService {
  readonly #deps: ServiceDeps;

  constructor(deps: ServiceDeps) {
    this.#deps = deps;
  }

  async list(instance: InstanceRecord): Promise<JsonMap[]> {
    return (await this.#deps.store.listCredentialPolicies(instance.id)).map(credentialPolicyView);
  }

  async get(instance: InstanceRecord, name: string): Promise<JsonMap> {
    const record = await this.#deps.store.getCredentialPolicy(instance.id, name);
    if (record === undefined) throw notFound(name);
    return credentialPolicyView(record);
  }

  /** PUT: create or replace. Omitted fields take the defaults: every key type, 30 days. */
  async put(instance: InstanceRecord, name: string, input: CredentialPolicyInput): Promise<JsonMap> {
    const invalid = (message: string): ProvisioningError => new ProvisioningError('InvalidCredentialPolicy', message);
    if (!NAME_PATTERN.test(name)) {
      throw invalid(`The credential policy name '${name.slice(0, 80)}' is invalid: use 1-64 letters, digits, '-', '.' or '_', starting with a letter or digit.`);
    }
    const keyTypes = input.keyTypes ?? DEFAULT_KEY_TYPES;
    if (keyTypes.length === 0) throw invalid('keyTypes must name at least one key type.');
    const unknown = keyTypes.filter((type) => !(CREDENTIAL_KEY_TYPES as readonly string[]).includes(type));
    if (unknown.length > 0) throw invalid(`Unknown key types: ${unknown.join(', ')}; use ${CREDENTIAL_KEY_TYPES.join(', ')}.`);
    const validityInDays = input.validityInDays ?? DEFAULT_VALIDITY_DAYS;
    if (!Number.isInteger(validityInDays) || validityInDays < 1 || validityInDays > MAX_VALIDITY_DAYS) {
      throw invalid(`validityInDays must be a whole number from 1 to ${MAX_VALIDITY_DAYS}.`);
    }
    return this.#deps.store.transaction(async (store) => {
      const existing = await store.getCredentialPolicy(instance.id, name);
      const now = dpsTimestamp(this.#deps.now());
      const record: CredentialPolicyRecord = {
        name: existing?.name ?? name,
        keyTypes: [...new Set(keyTypes as CredentialKeyType[])],
        validityInDays,
        etag: newEtag(),
        createdDateTimeUtc: existing?.createdDateTimeUtc ?? now,
        lastUpdatedDateTimeUtc: now,
      };
      await store.putCredentialPolicy(instance.id, record);
      return credentialPolicyView(record);
    });
  }

  /**
   * Deleting a policy stops issuance for the enrollments that name it (their devices' CSRs get 400
   * CredentialPolicyUnknown); certificates already issued stay valid until they expire or an erase revokes them.
   */
  async delete(instance: InstanceRecord, name: string): Promise<void> {
    if (!(await this.#deps.store.deleteCredentialPolicy(instance.id, name))) throw notFound(name);
  }
}

function notFound(name: string): ProvisioningError {
  return new ProvisioningError('CredentialPolicyNotFound', `The credential policy '${name}' was not found.`);
}
