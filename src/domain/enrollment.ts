import { randomBytes } from 'node:crypto';
import { ProvisioningError } from './errors.js';
import { assertDeviceId, isValidSymmetricKey, newSymmetricKey } from './ids.js';
import type {
  AllocationPolicy,
  AttestationMechanismInput,
  EnrollmentGroupInput,
  IndividualEnrollmentInput,
  X509CertificateInfo,
} from './wire.js';
import { certificateInfo, parseCertificate, toPem } from './x509.js';

/**
 * Enrollments as provisiond stores them (with secrets and certificate text) and the rules that turn client input
 * into them and them into responses. Pure: no I/O.
 */
export interface StoredCertificate {
  certificate: string;
  info: X509CertificateInfo;
}
export interface StoredCertificatePair {
  primary?: StoredCertificate;
  secondary?: StoredCertificate;
}
export type StoredAttestation =
  | { type: 'symmetricKey'; symmetricKey: { primaryKey: string; secondaryKey: string } }
  | { type: 'tpm'; tpm: StoredTpmAttestation }
  | {
      type: 'x509';
      x509: {
        clientCertificates?: StoredCertificatePair;
        signingCertificates?: StoredCertificatePair;
        caReferences?: { primary?: string; secondary?: string };
      };
    };

export interface StoredTpmAttestation {
  endorsementKey: string;
  storageRootKey?: string;
  /**
   * Never shown: the HMAC key (base64) the TPM challenge hands the device and its SAS tokens are checked with
   * (dps-wire.md §4.5). Made with the enrollment and kept while its endorsement key stays the same.
   */
  registrationKey?: string;
}

export type JsonMap = Record<string, unknown>;
export interface InitialTwinDoc {
  tags?: JsonMap;
  properties?: { desired?: JsonMap };
}
export interface ReprovisionPolicyDoc {
  updateHubAssignment: boolean;
  migrateDeviceData: boolean;
}

interface EnrollmentCommon {
  attestation: StoredAttestation;
  capabilities: { iotEdge: boolean };
  iotHubHostName?: string;
  initialTwin?: InitialTwinDoc;
  etag: string;
  provisioningStatus: 'enabled' | 'disabled';
  reprovisionPolicy: ReprovisionPolicyDoc;
  createdDateTimeUtc: string;
  lastUpdatedDateTimeUtc: string;
  allocationPolicy?: AllocationPolicy;
  iotHubs?: string[];
  customAllocationDefinition?: { webhookUrl: string; apiVersion: string };
  /** The credential policy a CSR in the device's register request is issued under (2025-07-01-preview). */
  credentialPolicyName?: string;
}
export interface StoredEnrollment extends EnrollmentCommon {
  registrationId: string;
  deviceId?: string;
  optionalDeviceInformation?: JsonMap;
}
export interface StoredEnrollmentGroup extends EnrollmentCommon {
  enrollmentGroupId: string;
}

export type EnrollmentKind = 'individual' | 'group';

interface Stamp {
  etag: string;
  now: string;
}

/** Builds the stored enrollment from a PUT body. `existing` keeps what a GET-modify-PUT round trip cannot carry. */
export function buildEnrollment(
  input: IndividualEnrollmentInput,
  existing: StoredEnrollment | undefined,
  stamp: Stamp,
): StoredEnrollment {
  const doc: StoredEnrollment = {
    registrationId: input.registrationId,
    ...common(input, existing, 'individual', stamp),
  };
  if (typeof input.deviceId === 'string' && input.deviceId.length > 0) {
    assertDeviceId(input.deviceId);
    doc.deviceId = input.deviceId;
  }
  if (input.optionalDeviceInformation != null) doc.optionalDeviceInformation = input.optionalDeviceInformation;
  return orderEnrollment(doc);
}

export function buildEnrollmentGroup(
  input: EnrollmentGroupInput,
  existing: StoredEnrollmentGroup | undefined,
  stamp: Stamp,
): StoredEnrollmentGroup {
  return orderGroup({ enrollmentGroupId: input.enrollmentGroupId, ...common(input, existing, 'group', stamp) });
}

type CommonInput = Omit<EnrollmentGroupInput, 'enrollmentGroupId'>;

function common(
  input: CommonInput,
  existing: EnrollmentCommon | undefined,
  kind: EnrollmentKind,
  stamp: Stamp,
): EnrollmentCommon {
  const doc: EnrollmentCommon = {
    attestation: buildAttestation(input.attestation, existing?.attestation, kind),
    capabilities: { iotEdge: input.capabilities?.iotEdge ?? false },
    etag: stamp.etag,
    provisioningStatus: input.provisioningStatus ?? 'enabled',
    reprovisionPolicy: {
      updateHubAssignment: input.reprovisionPolicy?.updateHubAssignment ?? true,
      migrateDeviceData: input.reprovisionPolicy?.migrateDeviceData ?? true,
    },
    // createdDateTimeUtc is kept on update (dps-wire.md §2.3); clients send it back and it is ignored.
    createdDateTimeUtc: existing?.createdDateTimeUtc ?? stamp.now,
    lastUpdatedDateTimeUtc: stamp.now,
  };
  if (input.iotHubHostName != null && input.iotHubHostName !== '') doc.iotHubHostName = input.iotHubHostName.toLowerCase();
  if (input.initialTwin != null) doc.initialTwin = initialTwin(input.initialTwin);
  if (input.allocationPolicy != null) doc.allocationPolicy = input.allocationPolicy;
  if (input.credentialPolicyName != null && input.credentialPolicyName !== '') doc.credentialPolicyName = input.credentialPolicyName;
  if (input.iotHubs != null && input.iotHubs.length > 0) {
    doc.iotHubs = [...new Set(input.iotHubs.map((hub) => hub.toLowerCase()))];
  }
  if (input.customAllocationDefinition != null) {
    const definition = input.customAllocationDefinition;
    const keepUrl =
      existing?.customAllocationDefinition !== undefined &&
      redactUrl(existing.customAllocationDefinition.webhookUrl) === definition.webhookUrl;
    const webhookUrl = keepUrl && existing?.customAllocationDefinition ? existing.customAllocationDefinition.webhookUrl : definition.webhookUrl;
    assertWebhookUrl(webhookUrl);
    doc.customAllocationDefinition = { webhookUrl, apiVersion: definition.apiVersion };
  }
  if (doc.allocationPolicy === 'custom' && doc.customAllocationDefinition === undefined) {
    throw new ProvisioningError('InvalidAllocation', "allocationPolicy 'custom' needs customAllocationDefinition with webhookUrl and apiVersion.");
  }
  if (doc.allocationPolicy === 'static') {
    // DPS accepts `static` with no hub named (the official service SDK's own end-to-end suite creates such groups);
    // a device of such an entry goes to the instance's one linked hub taking part in allocation (allocation.ts).
    const hubs = doc.iotHubs ?? (doc.iotHubHostName === undefined ? [] : [doc.iotHubHostName]);
    if (hubs.length > 1) {
      throw new ProvisioningError('InvalidAllocation', "allocationPolicy 'static' takes at most one hub in iotHubs (or iotHubHostName).");
    }
  }
  return doc;
}

function initialTwin(input: NonNullable<CommonInput['initialTwin']>): InitialTwinDoc {
  const twin: InitialTwinDoc = {};
  if (input.tags != null) twin.tags = input.tags;
  const desired = input.properties?.desired;
  twin.properties = desired == null ? {} : { desired };
  return twin;
}

function assertWebhookUrl(url: string): void {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new ProvisioningError('InvalidAllocation', 'customAllocationDefinition.webhookUrl is not a valid URL.');
  }
  if (parsed.protocol !== 'https:' && parsed.protocol !== 'http:') {
    throw new ProvisioningError('InvalidAllocation', 'customAllocationDefinition.webhookUrl must be an http or https URL.');
  }
}

/** Query-string values of a webhook URL are usually function keys: GET shows `****` in their place. */
export function redactUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.search === '') return url;
    const redacted = new URLSearchParams();
    for (const name of parsed.searchParams.keys()) redacted.set(name, '****');
    parsed.search = redacted.toString().replaceAll('%2A', '*');
    return parsed.toString();
  } catch {
    return url;
  }
}

function invalidAttestation(message: string): ProvisioningError {
  return new ProvisioningError('InvalidAttestation', message);
}

export function buildAttestation(
  input: AttestationMechanismInput,
  existing: StoredAttestation | undefined,
  kind: EnrollmentKind,
): StoredAttestation {
  switch (input.type) {
    case 'symmetricKey': {
      const given = input.symmetricKey ?? {};
      const previous = existing?.type === 'symmetricKey' ? existing.symmetricKey : undefined;
      // Omitted keys are generated on create and kept on update: GET never shows keys, so a GET-modify-PUT must not
      // rotate them behind the owner's back.
      const key = (value: string | null | undefined, kept: string | undefined, name: string): string => {
        if (value == null || value === '') return kept ?? newSymmetricKey();
        if (!isValidSymmetricKey(value)) {
          throw new ProvisioningError('InvalidSymmetricKey', `attestation.symmetricKey.${name} must be base64 of 16 to 64 bytes.`);
        }
        return value;
      };
      return {
        type: 'symmetricKey',
        symmetricKey: {
          primaryKey: key(given.primaryKey, previous?.primaryKey, 'primaryKey'),
          secondaryKey: key(given.secondaryKey, previous?.secondaryKey, 'secondaryKey'),
        },
      };
    }
    case 'tpm': {
      if (kind === 'group') throw invalidAttestation('Enrollment groups do not support TPM attestation.');
      if (input.tpm == null) throw invalidAttestation("attestation.type is 'tpm' but attestation.tpm is missing.");
      const endorsementKey = input.tpm.endorsementKey;
      if (!isBase64(endorsementKey)) throw invalidAttestation('attestation.tpm.endorsementKey must be base64.');
      const tpm: StoredTpmAttestation = { endorsementKey };
      if (input.tpm.storageRootKey != null && input.tpm.storageRootKey !== '') {
        if (!isBase64(input.tpm.storageRootKey)) throw invalidAttestation('attestation.tpm.storageRootKey must be base64.');
        tpm.storageRootKey = input.tpm.storageRootKey;
      }
      const previous = existing?.type === 'tpm' ? existing.tpm : undefined;
      tpm.registrationKey = previous?.endorsementKey === endorsementKey && previous.registrationKey !== undefined ? previous.registrationKey : newTpmRegistrationKey();
      return { type: 'tpm', tpm };
    }
    case 'x509': {
      const x509 = input.x509;
      if (x509 == null) throw invalidAttestation("attestation.type is 'x509' but attestation.x509 is missing.");
      const previous = existing?.type === 'x509' ? existing.x509 : undefined;
      const present = (['clientCertificates', 'signingCertificates', 'caReferences'] as const).filter((name) => x509[name] != null);
      const allowed = kind === 'individual' ? ['clientCertificates'] : ['signingCertificates', 'caReferences'];
      if (present.length !== 1 || !allowed.includes(present[0] as string)) {
        throw invalidAttestation(
          kind === 'individual'
            ? 'An individual X.509 enrollment needs attestation.x509.clientCertificates (and nothing else).'
            : 'An X.509 enrollment group needs exactly one of attestation.x509.signingCertificates or attestation.x509.caReferences.',
        );
      }
      if (x509.caReferences != null) {
        const refs: { primary?: string; secondary?: string } = {};
        if (x509.caReferences.primary != null && x509.caReferences.primary !== '') refs.primary = x509.caReferences.primary;
        if (x509.caReferences.secondary != null && x509.caReferences.secondary !== '') refs.secondary = x509.caReferences.secondary;
        if (refs.primary === undefined) throw invalidAttestation('attestation.x509.caReferences.primary is required.');
        return { type: 'x509', x509: { caReferences: refs } };
      }
      const name = present[0] as 'clientCertificates' | 'signingCertificates';
      const pair = certificatePair(x509[name] ?? {}, previous?.[name], `attestation.x509.${name}`);
      return { type: 'x509', x509: { [name]: pair } };
    }
    case 'none':
      throw invalidAttestation("attestation.type must be 'symmetricKey', 'x509' or 'tpm'.");
  }
}

function isBase64(value: string): boolean {
  return value.length > 0 && value.length % 4 === 0 && /^[A-Za-z0-9+/]+={0,2}$/.test(value);
}

type CertInput = { certificate?: string | null; info?: { sha256Thumbprint?: string } | null } | null | undefined;

function certificatePair(
  input: { primary?: CertInput; secondary?: CertInput },
  previous: StoredCertificatePair | undefined,
  path: string,
): StoredCertificatePair {
  const pair: StoredCertificatePair = {};
  const primary = certificate(input.primary, previous, `${path}.primary`);
  const secondary = certificate(input.secondary, previous, `${path}.secondary`);
  if (primary === undefined) throw invalidAttestation(`${path}.primary.certificate is required.`);
  pair.primary = primary;
  if (secondary !== undefined) pair.secondary = secondary;
  return pair;
}

function certificate(input: CertInput, previous: StoredCertificatePair | undefined, path: string): StoredCertificate | undefined {
  if (input == null) return undefined;
  if (input.certificate != null && input.certificate !== '') {
    let cert;
    try {
      cert = parseCertificate(input.certificate);
    } catch (error) {
      if (error instanceof ProvisioningError) throw new ProvisioningError('InvalidCertificate', `${path}: ${error.message}`);
      throw error;
    }
    return { certificate: toPem(cert), info: certificateInfo(cert) };
  }
  // GET shows only `info`; an unchanged certificate comes back that way and is kept.
  const thumbprint = input.info?.sha256Thumbprint;
  const kept = [previous?.primary, previous?.secondary].find((slot) => slot !== undefined && slot.info.sha256Thumbprint === thumbprint);
  if (kept === undefined) throw invalidAttestation(`${path}.certificate is required.`);
  return kept;
}

/** The attestation as GET and query show it: no keys, no certificate text. */
export function publicAttestation(attestation: StoredAttestation): JsonMap {
  switch (attestation.type) {
    case 'symmetricKey':
      return { type: 'symmetricKey' };
    case 'tpm':
      return { type: 'tpm', tpm: tpmKeys(attestation.tpm) };
    case 'x509': {
      const x509: JsonMap = {};
      for (const [name, value] of Object.entries(attestation.x509)) {
        if (name === 'caReferences') {
          x509[name] = { ...value };
        } else {
          const pair: JsonMap = {};
          for (const [slot, cert] of Object.entries(value as StoredCertificatePair)) pair[slot] = { info: cert.info };
          x509[name] = pair;
        }
      }
      return { type: 'x509', x509 };
    }
  }
}

/** The attestation mechanism with its secrets (POST …/attestationmechanism). */
export function fullAttestation(attestation: StoredAttestation): JsonMap {
  // The TPM registration key is the server's half of the challenge: the device learns it only inside its TPM.
  if (attestation.type === 'tpm') return { type: 'tpm', tpm: tpmKeys(attestation.tpm) };
  return structuredClone(attestation) as unknown as JsonMap;
}

/** A TPM attestation as anyone outside the server sees it: the public keys only. */
function tpmKeys(tpm: StoredTpmAttestation): JsonMap {
  return { endorsementKey: tpm.endorsementKey, ...(tpm.storageRootKey === undefined ? {} : { storageRootKey: tpm.storageRootKey }) };
}

/** 32 random bytes: within the 64 a TPM keyed-hash key may have (domain/tpm.ts). */
export function newTpmRegistrationKey(): string {
  return randomBytes(32).toString('base64');
}

export type Visibility = 'public' | 'withSecrets';

function render(doc: EnrollmentCommon & JsonMap, visibility: Visibility): JsonMap {
  const out: JsonMap = { ...doc };
  out.attestation = visibility === 'public' ? publicAttestation(doc.attestation) : withKeysOnly(doc.attestation);
  if (doc.customAllocationDefinition !== undefined && visibility === 'public') {
    out.customAllocationDefinition = {
      ...doc.customAllocationDefinition,
      webhookUrl: redactUrl(doc.customAllocationDefinition.webhookUrl),
    };
  }
  return out;
}

/** PUT responses carry the keys (so a created enrollment's generated keys can be read once) but no certificate text. */
function withKeysOnly(attestation: StoredAttestation): JsonMap {
  return attestation.type === 'symmetricKey' ? fullAttestation(attestation) : publicAttestation(attestation);
}

export function renderEnrollment(doc: StoredEnrollment, visibility: Visibility, registrationState?: JsonMap): JsonMap {
  const out = render(doc as StoredEnrollment & JsonMap, visibility);
  return registrationState === undefined ? out : orderEnrollment({ ...out, registrationState } as unknown as StoredEnrollment) as unknown as JsonMap;
}

export function renderEnrollmentGroup(doc: StoredEnrollmentGroup, visibility: Visibility): JsonMap {
  return render(doc as StoredEnrollmentGroup & JsonMap, visibility);
}

const ENROLLMENT_ORDER = [
  'registrationId', 'deviceId', 'registrationState', 'optionalDeviceInformation', 'attestation', 'capabilities',
  'iotHubHostName', 'initialTwin', 'etag', 'provisioningStatus', 'reprovisionPolicy', 'createdDateTimeUtc',
  'lastUpdatedDateTimeUtc', 'allocationPolicy', 'iotHubs', 'customAllocationDefinition', 'credentialPolicyName',
];
const GROUP_ORDER = ['enrollmentGroupId', ...ENROLLMENT_ORDER.slice(4)];

function ordered<T extends object>(doc: T, order: readonly string[]): T {
  const source = doc as JsonMap;
  const out: JsonMap = {};
  for (const key of order) if (source[key] !== undefined) out[key] = source[key];
  return out as T;
}
const orderEnrollment = (doc: StoredEnrollment): StoredEnrollment => ordered(doc, ENROLLMENT_ORDER);
const orderGroup = (doc: StoredEnrollmentGroup): StoredEnrollmentGroup => ordered(doc, GROUP_ORDER);

/** Every certificate thumbprint an enrollment names (a certificate may appear in only one entry, dps-wire.md §4.4). */
export function certificateThumbprints(attestation: StoredAttestation): string[] {
  if (attestation.type !== 'x509') return [];
  const pairs = [attestation.x509.clientCertificates, attestation.x509.signingCertificates];
  return pairs.flatMap((pair) => [pair?.primary, pair?.secondary]).flatMap((cert) => (cert === undefined ? [] : [cert.info.sha256Thumbprint]));
}
