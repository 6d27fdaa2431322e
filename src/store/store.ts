import type { StoredEnrollment, StoredEnrollmentGroup, JsonMap } from '../domain/enrollment.js';
import type { Filter } from '../domain/query.js';
import type { AllocationPolicy, RegistrationStatus, Substatus } from '../domain/wire.js';

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
}

export const ENROLLMENT_FIELDS = ['registrationId', 'deviceId', 'provisioningStatus', 'attestationType'] as const;
export const GROUP_FIELDS = ['enrollmentGroupId', 'provisioningStatus', 'attestationType'] as const;
export const REGISTRATION_FIELDS = ['registrationId', 'deviceId', 'status', 'assignedHub', 'enrollmentGroupId'] as const;

export interface Store {
  /** Runs `work` atomically; inside it, use the store it is given. */
  transaction<T>(work: (store: Store) => Promise<T>): Promise<T>;
  close(): Promise<void>;

  insertInstance(instance: InstanceRecord): Promise<void>;
  updateInstance(instance: InstanceRecord): Promise<void>;
  getInstance(id: string): Promise<InstanceRecord | undefined>;
  findInstanceByIdScope(idScope: string): Promise<InstanceRecord | undefined>;
  findInstanceByHostName(hostName: string): Promise<InstanceRecord | undefined>;
  listInstances(): Promise<InstanceRecord[]>;
  deleteInstance(id: string): Promise<boolean>;

  listAccessPolicies(instanceId: string): Promise<AccessPolicyRecord[]>;
  getAccessPolicy(instanceId: string, keyName: string): Promise<AccessPolicyRecord | undefined>;
  putAccessPolicy(instanceId: string, policy: AccessPolicyRecord): Promise<void>;
  deleteAccessPolicy(instanceId: string, keyName: string): Promise<boolean>;

  listLinkedHubs(instanceId: string): Promise<LinkedHubRecord[]>;
  getLinkedHub(instanceId: string, name: string): Promise<LinkedHubRecord | undefined>;
  putLinkedHub(instanceId: string, hub: LinkedHubRecord): Promise<void>;
  deleteLinkedHub(instanceId: string, name: string): Promise<boolean>;

  getEnrollment(instanceId: string, registrationId: string): Promise<StoredEnrollment | undefined>;
  putEnrollment(instanceId: string, enrollment: StoredEnrollment): Promise<void>;
  deleteEnrollment(instanceId: string, registrationId: string): Promise<boolean>;
  queryEnrollments(instanceId: string, query: ListQuery): Promise<Page<StoredEnrollment>>;

  getEnrollmentGroup(instanceId: string, groupId: string): Promise<StoredEnrollmentGroup | undefined>;
  putEnrollmentGroup(instanceId: string, group: StoredEnrollmentGroup): Promise<void>;
  deleteEnrollmentGroup(instanceId: string, groupId: string): Promise<boolean>;
  queryEnrollmentGroups(instanceId: string, query: ListQuery): Promise<Page<StoredEnrollmentGroup>>;

  /** Which enrollment entry, if any, already names this certificate (sha256 thumbprint). */
  findCertificateOwner(instanceId: string, sha256Thumbprint: string): Promise<{ kind: 'individual' | 'group'; id: string } | undefined>;

  getRegistration(instanceId: string, registrationId: string): Promise<StoredRegistration | undefined>;
  putRegistration(instanceId: string, registration: StoredRegistration): Promise<void>;
  deleteRegistration(instanceId: string, registrationId: string): Promise<boolean>;
  queryRegistrations(instanceId: string, query: ListQuery): Promise<Page<StoredRegistration>>;
  /** Deletes the records of every device registered through the group; returns how many. */
  deleteRegistrationsOfGroup(instanceId: string, groupId: string): Promise<number>;

  putOperation(instanceId: string, operation: StoredOperation): Promise<void>;
  getOperation(instanceId: string, operationId: string): Promise<StoredOperation | undefined>;
  /** Deletes operations last updated before the given time; returns how many. */
  deleteOperationsBefore(cutoffUtc: string): Promise<number>;
}
