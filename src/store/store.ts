import type { AuditClass, AuditOutcome } from '../domain/audit-class.js';
import type { StoredEnrollment, StoredEnrollmentGroup, JsonMap } from '../domain/enrollment.js';
import type { Filter } from '../domain/query.js';
import type { AllocationPolicy, RegistrationStatus, Substatus, X509CertificateInfo } from '../domain/wire.js';
import type { DialectCapabilities } from './dialects/dialect.js';
import type { BuiltInHubStore, HubDeviceRow } from './hub-store.js';

/**
 * The Store: everything provisiond keeps. One implementation over Kysely serves every dialect; the contract suite in
 * test/store-contract.ts is what any implementation must pass. Every record belongs to one instance, and no method
 * reads across instances.
 */
export type Right =
  | 'ServiceConfig'
  | 'EnrollmentRead'
  | 'EnrollmentWrite'
  | 'RegistrationStatusRead'
  | 'RegistrationStatusWrite'
  | 'DeviceConnect';
export const ALL_RIGHTS: readonly Right[] = [
  'ServiceConfig',
  'EnrollmentRead',
  'EnrollmentWrite',
  'RegistrationStatusRead',
  'RegistrationStatusWrite',
  'DeviceConnect',
];

export interface InstanceRecord {
  id: string;
  name: string;
  idScope: string;
  /** Host names the service API answers to for this instance (SAS `sr` / Host header). Lower-case. */
  serviceHostNames: string[];
  allocationPolicy: Exclude<AllocationPolicy, 'custom'>;
  createdDateTimeUtc: string;
  /** How long the system log keeps events (default 90 days). */
  auditRetentionDays?: number;
  /** Lifecycle events go here, signed with the secret. */
  eventWebhook?: { url: string; secret: string };
  /** Never shown: the subject-hash key and the receipt signing key. Created when first needed. */
  secrets?: { subjectHashKey: string; receiptPrivateKeyPem: string; receiptPublicKeyPem: string };
}

export interface AccessPolicyRecord {
  keyName: string;
  primaryKey: string;
  secondaryKey: string;
  rights: Right[];
}

export interface LinkedHubRecord {
  /** The hub's host name, as devices see it in `assignedHub`. Lower-case. */
  name: string;
  /** True for a hub provisiond hosts itself; false for an external hub reached with `connectionString`. */
  builtIn: boolean;
  /** External hubs: a connection string with RegistryWrite rights. Built-in hubs: their owner policy. */
  connectionString: string;
  allocationWeight: number;
  applyAllocationPolicy: boolean;
  location?: string;
}

export interface StoredRegistration {
  registrationId: string;
  createdDateTimeUtc: string;
  assignedHub?: string;
  deviceId?: string;
  status: RegistrationStatus;
  substatus?: Substatus;
  errorCode?: number;
  errorMessage?: string;
  lastUpdatedDateTimeUtc: string;
  etag: string;
  payload?: JsonMap;
  /** Internal: the group the device registered through (absent for individual enrollments). */
  enrollmentGroupId?: string;
  /** Internal: how the device proved itself. */
  attestationType?: 'symmetricKey' | 'x509' | 'tpm';
  /** Internal: every hub the device has been assigned to, for `reprovisionedToInitialAssignment`. */
  hubHistory?: string[];
}

/**
 * A CA certificate uploaded to an instance (what enrollment groups' caReferences name). It vouches for devices only
 * once verified by proof of possession: a certificate signed by it whose CN is `verificationCode`.
 */
export interface CaCertificateRecord {
  /** As the owner named it; looked up case-insensitively. */
  name: string;
  /** PEM. */
  certificate: string;
  info: X509CertificateInfo;
  isVerified: boolean;
  /** The code last handed out by generateVerificationCode, until a verification succeeds. */
  verificationCode?: string;
  etag: string;
  createdDateTimeUtc: string;
  lastUpdatedDateTimeUtc: string;
}

/**
 * The instance's issuing CA (docs/certificate-issuance.md): the certificate that signs the leaves issued from CSRs,
 * its private key (never shown), and — for a CA the operator supplied that is itself an intermediate — the
 * certificates above it up to the root.
 */
export interface IssuingCaRecord {
  /** PEM. */
  certificate: string;
  /** PEM, from the CA's issuer up to the root; empty when the CA is a root. */
  chain: string[];
  /** PKCS#8 PEM. */
  privateKey: string;
  source: 'generated' | 'operator';
  createdDateTimeUtc: string;
}

/** The key types a credential policy may accept in a CSR. */
export const CREDENTIAL_KEY_TYPES = ['ecP256', 'ecP384', 'rsa2048', 'rsa3072', 'rsa4096'] as const;
export type CredentialKeyType = (typeof CREDENTIAL_KEY_TYPES)[number];

/** A credential policy: what the issuing CA signs for the enrollments that name it (`credentialPolicyName`). */
export interface CredentialPolicyRecord {
  name: string;
  keyTypes: CredentialKeyType[];
  validityInDays: number;
  etag: string;
  createdDateTimeUtc: string;
  lastUpdatedDateTimeUtc: string;
}

/**
 * A certificate the issuing CA signed for a device. Customer data: an erase revokes it and drops what names the
 * device, keeping only what the CRL needs (serial number and revocation time).
 */
export interface IssuedCertificateRecord {
  /** Upper-case hex, as openssl prints it. */
  serialNumber: string;
  registrationId?: string;
  enrollmentGroupId?: string;
  credentialPolicyName?: string;
  /** Upper-case hex without colons. */
  sha256Thumbprint: string;
  sha1Thumbprint?: string;
  notBeforeUtc: string;
  notAfterUtc: string;
  issuedDateTimeUtc: string;
  revokedDateTimeUtc?: string;
}

/** A registration attempt a device polls (dps-wire.md §4). Stored, so any node can answer a poll. */
export interface StoredOperation {
  operationId: string;
  registrationId: string;
  status: 'assigning' | 'assigned' | 'failed' | 'disabled';
  createdDateTimeUtc: string;
  lastUpdatedDateTimeUtc: string;
  /** The DeviceRegistrationResult once terminal. */
  registrationState?: JsonMap;
}

/**
 * What a registration is about to write to a hub, stored before the first hub write and removed in the transaction
 * that records the outcome (issue 13.3). One left behind means the process died in between: a restart (or the periodic
 * sweep) settles it so that the hubs and the records agree.
 */
export interface RegistrationIntent {
  operationId: string;
  registrationId: string;
  createdDateTimeUtc: string;
  /** The hub and device ID being written. */
  targetHub: string;
  deviceId: string;
  /** The identity the registration removes once the new one is written: the old hub on a move, or an old device ID. */
  leave?: { hub: string; deviceId: string };
  /** The record as it will be when the write finishes (used to finish a registration whose old identity is gone). */
  assigned: StoredRegistration;
  /** The attestation part of the device's registrationState. */
  resultSection: JsonMap;
}

/** One entry of the system log. Never carries a secret. */
export interface AuditEvent {
  /** Begins with 12 hex digits of `timeUtc`'s milliseconds (services/audit-log.ts): a time filter searches by ID range. */
  eventId: string;
  timeUtc: string;
  kind: 'serviceApi' | 'registration' | 'hubWrite' | 'webhook' | 'dataRequest';
  operation: string;
  /** The access policy name, `device` for device calls, `provisiond` for the server's own work. */
  actor: string;
  source?: string;
  subject: { registrationId?: string; deviceId?: string; enrollmentGroupId?: string; hash?: string };
  /** Access or change (src/domain/audit-class.ts); the store fills it from `kind` and `operation` when absent. */
  class?: AuditClass;
  outcome: AuditOutcome;
  errorCode?: number;
  reason?: string;
  trackingId?: string;
  transport?: string;
  attestationType?: string;
  hub?: string;
  details?: JsonMap;
}

export interface AuditQuery {
  /** Matches registration ID, device ID or enrollment group ID. */
  subject?: string;
  from?: string;
  to?: string;
  actor?: string;
  outcome?: string;
  kind?: string;
  /** `access` or `change`. */
  eventClass?: string;
  /** Newest first: return events whose key sorts before this one. */
  beforeKey?: string | undefined;
  limit: number;
  /**
   * At most this many events (newest first, from `beforeKey`) are looked at for filters no index serves (outcome,
   * kind, actor, time): the page may come back short or empty, with `nextKey` where the search stopped. Without it
   * the search goes on until the page is full (internal callers whose filters are narrow).
   */
  scanLimit?: number;
}

export interface DataRequestRecord {
  requestId: string;
  /** The ID the request is about while it still names it (indexed, so an erase finds earlier requests about it). */
  subjectId?: string | undefined;
  /** Sorts requests newest first: reversed creation time + ID. */
  sortKey: string;
  status: string;
  type: string;
  doc: JsonMap;
}

export interface OutboxEvent {
  eventId: string;
  doc: JsonMap;
}

/**
 * A hub device provisiond created or assigned for a registration: the explicit subject→device link an erase follows
 * when the enrollment, the record and the log that once named the device are gone (issue 10, defect 2).
 */
export interface HubDeviceLink {
  registrationId: string;
  enrollmentGroupId?: string | undefined;
  hub: string;
  deviceId: string;
  /** When the link was made, or last changed (its group, an ID's case): a re-registration to the same device leaves it. */
  linkedDateTimeUtc: string;
}

/** The IDs a customer-data lookup is about; a row matches when it names any of them (case-insensitive). */
export interface SubjectIds {
  registrationIds: readonly string[];
  deviceIds: readonly string[];
  groupIds: readonly string[];
}

/** The kinds of ID a customer-data subject (and so an erase fence) can name. */
export type SubjectKind = 'registrationId' | 'deviceId' | 'enrollmentGroupId';

/** One ID an erase has fenced: writes about it are refused until the erase is final. */
export interface EraseFence {
  kind: SubjectKind;
  id: string;
  requestId: string;
  /** The ID's keyed hash (what the system log says instead of the ID while the fence stands). */
  subjectHash: string;
}

/** IDs a write is about; a fence on any of them refuses it. */
export interface FenceProbe {
  registrationIds?: readonly string[];
  deviceIds?: readonly string[];
  groupIds?: readonly string[];
}

/** A read an erase fence guards: the fence that stands (and nothing else), or what was read under the name `K`. */
/** What {@link Store.withRegistrationLock} read once the lock was held. */
export interface LockedReads {
  record: StoredRegistration | undefined;
  /** The built-in hub device row asked for, when it was read with the record (undefined row: no such device then). */
  hubDevice?: PrefetchedHubDevice;
}

/**
 * A built-in hub's device row as read moments before its write (under the device's lock, before the transaction): a
 * hub write may take it as the current row to compare-and-swap on — a stale one only fails the swap, and the write then
 * reads the row again, as it always does.
 */
export interface PrefetchedHubDevice {
  hubName: string;
  deviceId: string;
  row: HubDeviceRow | undefined;
}

/** What a device's first reads find: its individual enrollment, its record, and the group that record names. */
export interface DeviceReads {
  enrollment: StoredEnrollment | undefined;
  registration: StoredRegistration | undefined;
  group: StoredEnrollmentGroup | undefined;
  /**
   * The instance's symmetric-key groups counter ({@link Store.changeCounter} `groups/<instance ID>`) read with the rest
   * (PostgreSQL's {@link Store.findDeviceByIdScope}); undefined where it was not.
   */
  groupsVersion?: number;
}

/** One token to take from a shared bucket ({@link Store.takeRateToken}'s arguments). */
export interface RateToken {
  bucketKey: string;
  ratePerSecond: number;
  burst: number;
  nowMs: number;
}

export type Unfenced<K extends string, T> = { fence?: Pick<EraseFence, 'kind' | 'requestId' | 'subjectHash'> } & { [name in K]?: T };

export interface Page<T> {
  items: T[];
  /** Key of the last item when more may follow. */
  nextKey: string | undefined;
}

export interface ListQuery {
  filters: readonly Filter[];
  /** Return items whose key sorts after this one (keyset paging). */
  afterKey?: string | undefined;
  limit: number;
  /**
   * With filters no index serves: at most this many rows (in key order, after `afterKey`) are looked at, and the page
   * may come back short or empty with `nextKey` where the search stopped. Without it the search goes on until the
   * page is full (internal callers, which follow `nextKey` to the end anyway).
   */
  scanLimit?: number;
}

export const ENROLLMENT_FIELDS = ['registrationId', 'deviceId', 'provisioningStatus', 'attestationType'] as const;
export const GROUP_FIELDS = ['enrollmentGroupId', 'provisioningStatus', 'attestationType'] as const;
export const REGISTRATION_FIELDS = ['registrationId', 'deviceId', 'status', 'assignedHub', 'enrollmentGroupId'] as const;

export interface Store {
  /** What the database under the store can do (dialects/*.ts). */
  readonly capabilities: DialectCapabilities;
  /** Runs `work` atomically; inside it, use the store it is given. */
  transaction<T>(work: (store: Store) => Promise<T>): Promise<T>;
  /**
   * Runs `work` so that it either happens entirely or not at all. Inside a transaction: a savepoint, so a failing
   * item of a bulk call undoes only its own writes and the transaction goes on (a failed statement would otherwise
   * abort a PostgreSQL transaction). Outside one: a transaction of its own.
   */
  atomically<T>(work: (store: Store) => Promise<T>): Promise<T>;
  close(): Promise<void>;

  insertInstance(instance: InstanceRecord): Promise<void>;
  updateInstance(instance: InstanceRecord): Promise<void>;
  getInstance(id: string): Promise<InstanceRecord | undefined>;
  /**
   * The instance a device request names. Read with the shared config version (store/config-cache.ts), so the later
   * reads of the same request that pass the returned record ({@link Store.currentInstance}, {@link Store.linkedHubsOf})
   * can be answered from this node's memory while no node has changed an instance, linked hub or built-in hub since.
   */
  findInstanceByIdScope(idScope: string): Promise<InstanceRecord | undefined>;
  /** The instance as it is now, or at least as new as `instance` was when a device request read it. */
  currentInstance(instance: InstanceRecord): Promise<InstanceRecord | undefined>;
  findInstanceByHostName(hostName: string): Promise<InstanceRecord | undefined>;
  listInstances(): Promise<InstanceRecord[]>;
  deleteInstance(id: string): Promise<boolean>;

  listAccessPolicies(instanceId: string): Promise<AccessPolicyRecord[]>;
  getAccessPolicy(instanceId: string, keyName: string): Promise<AccessPolicyRecord | undefined>;
  putAccessPolicy(instanceId: string, policy: AccessPolicyRecord): Promise<void>;
  deleteAccessPolicy(instanceId: string, keyName: string): Promise<boolean>;

  listLinkedHubs(instanceId: string): Promise<LinkedHubRecord[]>;
  /** The instance's linked hubs, at least as new as `instance` was when a device request read it (see findInstanceByIdScope). */
  linkedHubsOf(instance: InstanceRecord): Promise<LinkedHubRecord[]>;
  getLinkedHub(instanceId: string, name: string): Promise<LinkedHubRecord | undefined>;
  putLinkedHub(instanceId: string, hub: LinkedHubRecord): Promise<void>;
  deleteLinkedHub(instanceId: string, name: string): Promise<boolean>;

  getEnrollment(instanceId: string, registrationId: string): Promise<StoredEnrollment | undefined>;
  /**
   * Etag-guarded writes: with `expectedEtag`, the write is one conditional statement that succeeds only while the
   * stored etag is still that one (compare-and-swap), and answers false when another write came first or the entry
   * is gone. Without it, put creates or replaces (true) and delete answers whether something was deleted. Put with
   * `null` only creates: false when the entry exists (the primary key decides, so of concurrent creators one wins).
   */
  putEnrollment(instanceId: string, enrollment: StoredEnrollment, expectedEtag?: string | null): Promise<boolean>;
  deleteEnrollment(instanceId: string, registrationId: string, expectedEtag?: string): Promise<boolean>;
  queryEnrollments(instanceId: string, query: ListQuery): Promise<Page<StoredEnrollment>>;
  /** The enrollments with these registration IDs (any case) that exist, in one round trip per 500. */
  getEnrollments(instanceId: string, registrationIds: readonly string[]): Promise<StoredEnrollment[]>;
  /**
   * Writes many enrollments with multi-row statements (bulk import). `create`: inserts only those whose registration
   * ID is free — the primary key decides, so of two writers creating one ID at once exactly one gets it — and answers
   * the lower-cased IDs it inserted. `replace`: creates or replaces every one and answers all their IDs.
   */
  writeEnrollments(instanceId: string, enrollments: readonly StoredEnrollment[], mode: 'create' | 'replace'): Promise<string[]>;

  getEnrollmentGroup(instanceId: string, groupId: string): Promise<StoredEnrollmentGroup | undefined>;
  /** Etag-guarded like putEnrollment; also bumps the instance's `groups` change counter (node caches). */
  putEnrollmentGroup(instanceId: string, group: StoredEnrollmentGroup, expectedEtag?: string | null): Promise<boolean>;
  deleteEnrollmentGroup(instanceId: string, groupId: string, expectedEtag?: string): Promise<boolean>;
  queryEnrollmentGroups(instanceId: string, query: ListQuery): Promise<Page<StoredEnrollmentGroup>>;

  /** Which enrollment entry, if any, already names this certificate (sha256 thumbprint). */
  findCertificateOwner(instanceId: string, sha256Thumbprint: string): Promise<{ kind: 'individual' | 'group'; id: string } | undefined>;

  listCaCertificates(instanceId: string): Promise<CaCertificateRecord[]>;
  getCaCertificate(instanceId: string, name: string): Promise<CaCertificateRecord | undefined>;
  /** Which CA certificate of the instance, if any, is this certificate (sha256 thumbprint, any case). */
  findCaCertificateByThumbprint(instanceId: string, sha256Thumbprint: string): Promise<CaCertificateRecord | undefined>;
  /** Creates or replaces by name (any case). */
  putCaCertificate(instanceId: string, certificate: CaCertificateRecord, expectedEtag?: string): Promise<boolean>;
  deleteCaCertificate(instanceId: string, name: string, expectedEtag?: string): Promise<boolean>;

  /** Certificate issuance (docs/certificate-issuance.md). */
  getIssuingCa(instanceId: string): Promise<IssuingCaRecord | undefined>;
  /** With `replace` false, writes only when the instance has no issuing CA yet and answers whether it wrote. */
  putIssuingCa(instanceId: string, ca: IssuingCaRecord, replace: boolean): Promise<boolean>;
  listCredentialPolicies(instanceId: string): Promise<CredentialPolicyRecord[]>;
  getCredentialPolicy(instanceId: string, name: string): Promise<CredentialPolicyRecord | undefined>;
  putCredentialPolicy(instanceId: string, policy: CredentialPolicyRecord): Promise<void>;
  deleteCredentialPolicy(instanceId: string, name: string): Promise<boolean>;
  putIssuedCertificate(instanceId: string, certificate: IssuedCertificateRecord): Promise<void>;
  /** The issued certificate with this SHA-256 thumbprint (any case), revoked or not. */
  findIssuedCertificate(instanceId: string, sha256Thumbprint: string): Promise<IssuedCertificateRecord | undefined>;
  /** Every certificate issued to this registration ID that an erase has not revoked yet, oldest first. */
  listIssuedCertificates(instanceId: string, registrationId: string): Promise<IssuedCertificateRecord[]>;
  /** Revokes every certificate of the registration ID and forgets the ID on them; returns how many. */
  revokeIssuedCertificates(instanceId: string, registrationId: string, revokedUtc: string): Promise<number>;
  /** Every revoked certificate of the instance (the CRL), by serial number. */
  listRevokedCertificates(instanceId: string): Promise<Array<{ serialNumber: string; revokedDateTimeUtc: string }>>;

  getRegistration(instanceId: string, registrationId: string): Promise<StoredRegistration | undefined>;
  /** The records of these registration IDs that exist (any case), in no particular order: one page of a query's worth. */
  getRegistrations(instanceId: string, registrationIds: readonly string[]): Promise<StoredRegistration[]>;
  putRegistration(instanceId: string, registration: StoredRegistration): Promise<void>;
  deleteRegistration(instanceId: string, registrationId: string, expectedEtag?: string): Promise<boolean>;
  queryRegistrations(instanceId: string, query: ListQuery): Promise<Page<StoredRegistration>>;
  /** Deletes the records of every device registered through the group; returns how many. */
  deleteRegistrationsOfGroup(instanceId: string, groupId: string): Promise<number>;

  putOperation(instanceId: string, operation: StoredOperation): Promise<void>;
  putRegistrationIntent(instanceId: string, intent: RegistrationIntent): Promise<void>;
  deleteRegistrationIntent(instanceId: string, operationId: string): Promise<void>;
  /** Intents of every instance created before the given time, oldest first. */
  listRegistrationIntents(createdBeforeUtc: string, limit: number): Promise<Array<RegistrationIntent & { instanceId: string }>>;
  /**
   * The instance's intents (customer data: an intent a crash left names its device). Intents live only while a
   * registration writes to a hub, so the table stays small and a scan of one instance's rows is cheap.
   */
  listRegistrationIntentsOf(instanceId: string): Promise<RegistrationIntent[]>;
  /** Deletes every operation of a registration ID; returns how many. */
  deleteOperationsOfRegistration(instanceId: string, registrationId: string): Promise<number>;
  countOperationsOfRegistration(instanceId: string, registrationId: string): Promise<number>;

  appendAuditEvent(instanceId: string, event: AuditEvent): Promise<void>;
  /** Appends many events with multi-row statements. */
  appendAuditEvents(instanceId: string, events: readonly AuditEvent[]): Promise<void>;
  /** Newest first. */
  queryAuditEvents(instanceId: string, query: AuditQuery): Promise<Page<AuditEvent>>;
  /** One event by its ID, if the log still holds it. */
  getAuditEvent(instanceId: string, eventId: string): Promise<AuditEvent | undefined>;
  /** Every event naming one of these registration IDs, device IDs or group IDs (case-insensitive). */
  findAuditEventsAbout(instanceId: string, subject: { registrationIds: string[]; deviceIds: string[]; groupIds: string[] }): Promise<AuditEvent[]>;
  replaceAuditEvents(instanceId: string, events: AuditEvent[]): Promise<void>;
  deleteAuditEvents(instanceId: string, eventIds: string[]): Promise<number>;
  /** Deletes the instance's events older than the cutoff, oldest first, at most `limit` of them; returns how many. */
  deleteAuditEventsBefore(instanceId: string, cutoffUtc: string, limit?: number): Promise<number>;

  putDataRequest(instanceId: string, request: DataRequestRecord): Promise<void>;
  getDataRequest(instanceId: string, requestId: string): Promise<DataRequestRecord | undefined>;
  queryDataRequests(instanceId: string, query: ListQuery): Promise<Page<DataRequestRecord>>;
  /** Requests of every instance in one of these states (resuming work after a restart). */
  listDataRequestsByStatus(statuses: string[]): Promise<Array<DataRequestRecord & { instanceId: string }>>;

  /** Data requests that name one of these IDs (any kind, case-insensitive) as their subject; by index. */
  findDataRequestsAbout(instanceId: string, ids: readonly string[]): Promise<DataRequestRecord[]>;

  /** Records a hub device written for a registration (idempotent: the same link again only updates it). */
  putHubDeviceLink(instanceId: string, link: HubDeviceLink): Promise<void>;
  /** Links naming any of these registration, device or group IDs. */
  findHubDeviceLinks(instanceId: string, ids: SubjectIds): Promise<HubDeviceLink[]>;
  /** Deletes the links naming any of these IDs; returns how many. */
  deleteHubDeviceLinks(instanceId: string, ids: SubjectIds): Promise<number>;

  appendOutboxEvent(instanceId: string, event: OutboxEvent): Promise<void>;
  /** Undelivered events whose data names one of these registration, device or group IDs; by index. */
  findOutboxEventsAbout(instanceId: string, ids: SubjectIds): Promise<OutboxEvent[]>;
  /** Oldest first. */
  listOutboxEvents(instanceId: string, limit: number): Promise<OutboxEvent[]>;
  deleteOutboxEvent(instanceId: string, eventId: string): Promise<void>;
  listInstancesWithOutboxEvents(): Promise<string[]>;
  getOperation(instanceId: string, operationId: string): Promise<StoredOperation | undefined>;
  /** Every operation of a registration ID (customer-data export and erase). */
  listOperationsOfRegistration(instanceId: string, registrationId: string): Promise<StoredOperation[]>;

  /**
   * Where one process writes the store (SQLite), a number that moves whenever it writes something that can change what
   * a poll of a finished operation answers, other than the registration that finished it: an erase fence written or
   * removed, operations deleted (an erase, the retention purge, an instance's removal). It moves once such a write has
   * run and again when its transaction ends. A registration reads it inside its own transaction; while it is still
   * that number, the operation it wrote is what the store holds and no fence stands on the device, so the poll can be
   * answered from memory. Undefined where other processes write the store too (PostgreSQL): a poll reads the store.
   */
  operationsEpoch(): number | undefined;

  /** Adds fences (an existing one for the same ID and request is kept). */
  putEraseFences(instanceId: string, fences: readonly EraseFence[]): Promise<void>;
  /** The first fence standing on any of these IDs (case-insensitive), if any. */
  findEraseFence(instanceId: string, probe: FenceProbe): Promise<Pick<EraseFence, 'kind' | 'requestId' | 'subjectHash'> | undefined>;
  /**
   * A fence check and the read it guards, at once: the first fence standing on any of the probe's IDs (and then
   * nothing else), else the document, if any. One statement for a device's own probe (one ID per kind): a poll's
   * operation, a registration admission's enrollment or group.
   */
  getOperationUnlessFenced(instanceId: string, operationId: string, probe: FenceProbe): Promise<Unfenced<'operation', StoredOperation>>;
  getEnrollmentUnlessFenced(instanceId: string, registrationId: string, probe: FenceProbe): Promise<Unfenced<'enrollment', StoredEnrollment>>;
  getEnrollmentGroupUnlessFenced(instanceId: string, groupId: string, probe: FenceProbe): Promise<Unfenced<'group', StoredEnrollmentGroup>>;
  /**
   * A device's first reads as one (issue 11): its individual enrollment and its registration record, if any, and the
   * enrollment group that record names (`group`, undefined when it names none or the group is gone).
   */
  getEnrollmentAndRegistration(instanceId: string, registrationId: string): Promise<DeviceReads>;
  /**
   * A device request's first reads: the instance by ID scope ({@link findInstanceByIdScope}) and, in it, what
   * {@link getEnrollmentAndRegistration} reads for the device — on PostgreSQL in one statement (issue 11). Undefined
   * when no instance has the ID scope.
   */
  findDeviceByIdScope(idScope: string, registrationId: string): Promise<{ instance: InstanceRecord; reads: DeviceReads } | undefined>;
  /** Lifts every fence of a request; returns how many. */
  deleteEraseFences(instanceId: string, requestId: string): Promise<number>;
  /**
   * Makes deleted bytes unrecoverable from the store's files where the dialect can: on SQLite, checkpoints the WAL
   * into the database and truncates it (deleted rows are already zeroed by `secure_delete`). A no-op elsewhere.
   */
  reclaimErasedSpace(): Promise<void>;
  /**
   * Deletes operations last updated before the given time, oldest first, at most `limit` of them (by the index on
   * `updated_at`, so a batch costs its own size, not the table's); returns how many.
   */
  deleteOperationsBefore(cutoffUtc: string, limit?: number): Promise<number>;

  // ---- state shared by every node on the database

  /**
   * Takes `count` tokens (default one) from a shared token bucket (created full with `burst` tokens, refilled at
   * `ratePerSecond`), in one statement, all or none; false when the bucket holds fewer. `nowMs` is the caller's clock.
   */
  takeRateToken(bucketKey: string, ratePerSecond: number, burst: number, nowMs: number, count?: number): Promise<boolean>;
  /** Deletes the named buckets (an erased device's poll budget); how many there were. */
  deleteRateBuckets(bucketKeys: readonly string[]): Promise<number>;
  /**
   * Deletes buckets last taken from before `beforeMs` — full again by then, the same as none (the purge: a bucket that
   * nothing takes from any more goes, and with it the device ID in its key): the first `limit` such buckets in key
   * order after `afterKey`. Returns how many went and the last key looked at (where the next batch goes on from), or
   * undefined when there are no more.
   */
  deleteRateBucketsIdleSince(beforeMs: number, limit: number, afterKey?: string): Promise<{ deleted: number; lastKey: string | undefined }>;
  /**
   * A poll's token and its read at once (issue 11: one statement on PostgreSQL for a device's own probe): `taken` as
   * {@link takeRateToken} answers, and only when it was taken, what {@link getOperationUnlessFenced} answers.
   */
  takeRateTokenAndGetOperationUnlessFenced(token: RateToken, instanceId: string, operationId: string, probe: FenceProbe): Promise<{ taken: boolean } & Unfenced<'operation', StoredOperation>>;
  /** Takes the named lease for `owner` until `nowMs + ttlMs` if it is free, expired or already `owner`'s. */
  claimLease(name: string, owner: string, ttlMs: number, nowMs: number): Promise<boolean>;
  /** Extends a lease `owner` holds; false when it lost it (expired and taken by another). */
  renewLease(name: string, owner: string, ttlMs: number, nowMs: number): Promise<boolean>;
  releaseLease(name: string, owner: string): Promise<void>;
  /** A counter that writes bump (e.g. `groups/<instanceId>`); 0 when never bumped. */
  changeCounter(name: string): Promise<number>;
  /**
   * An enrollment group and a change counter ({@link changeCounter}) read together, in one statement (on PostgreSQL
   * one round trip instead of two): how the symmetric-key group lookup confirms a match found in its cached list.
   */
  enrollmentGroupAndCounter(instanceId: string, groupId: string, counter: string): Promise<{ group: StoredEnrollmentGroup | undefined; version: number }>;
  /**
   * Runs `work` while holding the named lock against every node on the database (PostgreSQL advisory lock). On a
   * single-writer dialect there is no other node, and `work` just runs: callers serialize within their process.
   */
  withLock<T>(name: string, work: () => Promise<T>): Promise<T>;
  /**
   * {@link withLock}, and the device's registration record as read once the lock is held: on PostgreSQL in the lock's
   * own round trip (issue 11), so a registration's turn costs one round trip, not two. `hubDevice`: a built-in hub's
   * device row to read in the same statement (PostgreSQL only: elsewhere `work` gets none), for the hub write to
   * compare-and-swap on without a read of its own.
   */
  withRegistrationLock<T>(
    name: string,
    instanceId: string,
    registrationId: string,
    work: (reads: LockedReads) => Promise<T>,
    hubDevice?: { hubName: string; deviceId: string },
  ): Promise<T>;
  /**
   * After an erase: reclaims the space of deleted rows in these tables so their old versions leave the table
   * files (PostgreSQL VACUUM). A no-op where deleted rows leave nothing behind (see DialectCapabilities).
   */
  reclaimDeleted(tables: readonly StoreTable[]): Promise<void>;
  /**
   * Writes the operation unless one with its ID exists (a registration that finished first wrote it already); true
   * when this call wrote it.
   */
  insertOperationIfAbsent(instanceId: string, operation: StoredOperation): Promise<boolean>;
  /**
   * Inside a transaction: the built-in hubs' store on it, so a registration's built-in hub writes commit and roll back
   * with its record (issue 12). Undefined outside a transaction.
   */
  builtInHubsInTransaction(): BuiltInHubStore | undefined;
}

/** Tables an erase may name to reclaimDeleted. */
export type StoreTable =
  | 'enrollments'
  | 'enrollment_groups'
  | 'enrollment_certificates'
  | 'registrations'
  | 'operations'
  | 'audit_events'
  | 'data_requests'
  | 'event_outbox'
  | 'hub_devices'
  | 'hub_device_links'
  | 'registration_intents'
  | 'issued_certificates';

export const DATA_REQUEST_FIELDS = ['type', 'status'] as const;

/** The change counter ({@link Store.changeCounter}) that every enrollment-group write of an instance bumps. */
export function groupsCounterOf(instanceId: string): string {
  return `${GROUPS_COUNTER_PREFIX}${instanceId}`;
}
/** What {@link groupsCounterOf} puts before the instance ID (statements that name the counter in SQL use it too). */
export const GROUPS_COUNTER_PREFIX = 'groups/';
