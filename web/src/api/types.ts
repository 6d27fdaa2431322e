/**
 * Wire shapes the portal reads, as docs/service-api.md and docs/customer-data-api.md describe them. Answers are
 * trusted to have these shapes (the server validates and renders them); optional members are optional here too.
 */
export type AttestationType = 'symmetricKey' | 'x509' | 'tpm' | 'none';
export type ProvisioningStatus = 'enabled' | 'disabled';
export type AllocationPolicy = 'hashed' | 'geoLatency' | 'static' | 'custom';

export interface CertificateInfo {
  subjectName: string;
  sha1Thumbprint: string;
  sha256Thumbprint: string;
  issuerName: string;
  notBeforeUtc: string;
  notAfterUtc: string;
  serialNumber: string;
  version: number;
}

export interface CertificateWithInfo {
  certificate?: string | null;
  info?: CertificateInfo | null;
}

export interface X509Certificates {
  primary?: CertificateWithInfo | null;
  secondary?: CertificateWithInfo | null;
}

export interface AttestationMechanism {
  type: AttestationType;
  symmetricKey?: { primaryKey?: string | null; secondaryKey?: string | null } | null;
  x509?: {
    clientCertificates?: X509Certificates | null;
    signingCertificates?: X509Certificates | null;
    caReferences?: { primary?: string | null; secondary?: string | null } | null;
  } | null;
  tpm?: { endorsementKey: string; storageRootKey?: string | null } | null;
}

export type RegistrationStatus = 'unassigned' | 'assigning' | 'assigned' | 'failed' | 'disabled';

export interface RegistrationState {
  registrationId: string;
  createdDateTimeUtc?: string;
  assignedHub?: string;
  deviceId?: string;
  status: RegistrationStatus;
  substatus?: string;
  errorCode?: number;
  errorMessage?: string;
  lastUpdatedDateTimeUtc?: string;
  etag?: string;
  payload?: Record<string, unknown>;
}

export interface InitialTwin {
  tags?: Record<string, unknown> | null;
  properties?: { desired?: Record<string, unknown> | null } | null;
}

interface EnrollmentCommon {
  attestation: AttestationMechanism;
  capabilities?: { iotEdge: boolean };
  iotHubHostName?: string;
  initialTwin?: InitialTwin;
  etag: string;
  provisioningStatus: ProvisioningStatus;
  reprovisionPolicy?: { updateHubAssignment: boolean; migrateDeviceData: boolean };
  createdDateTimeUtc: string;
  lastUpdatedDateTimeUtc: string;
  allocationPolicy?: AllocationPolicy;
  iotHubs?: string[];
  customAllocationDefinition?: { webhookUrl: string; apiVersion: string };
  /** The credential policy a device's CSR is issued under (2025-07-01-preview). */
  credentialPolicyName?: string;
}

export interface IndividualEnrollment extends EnrollmentCommon {
  registrationId: string;
  deviceId?: string;
  registrationState?: RegistrationState;
  optionalDeviceInformation?: Record<string, unknown>;
}

export interface EnrollmentGroup extends EnrollmentCommon {
  enrollmentGroupId: string;
}

export interface Instance {
  name: string;
  idScope: string;
  serviceHostNames: string[];
  allocationPolicy: string;
  createdDateTimeUtc: string;
  auditRetentionDays?: number;
  /** Where lifecycle events go; the secret that signs them is never shown. */
  eventWebhookUrl?: string | null;
}

export interface AccessPolicy {
  keyName: string;
  rights: string;
  primaryKey?: string;
  secondaryKey?: string;
}

export interface LinkedHub {
  name: string;
  builtIn: boolean;
  connectionString?: string;
  allocationWeight: number;
  applyAllocationPolicy: boolean;
  location?: string;
}

export interface CaCertificate {
  name: string;
  certificate: string;
  info: CertificateInfo;
  isVerified: boolean;
  etag: string;
  createdDateTimeUtc: string;
  lastUpdatedDateTimeUtc: string;
  verificationCode?: string;
}

export type SubjectInput = { registrationId: string } | { deviceId: string } | { enrollmentGroupId: string };
export type DataRequestStatus = 'running' | 'completed' | 'partiallyCompleted' | 'failed';

export interface PlaceCount {
  place: string;
  /** The place's human name (the server sends it; older servers did not). */
  name?: string;
  count: number;
  items?: string[];
  reason?: string;
}

export interface DataRequest {
  requestId: string;
  type: 'export' | 'erase';
  subject: { kind: string; id?: string; hash?: string };
  dryRun: boolean;
  includeSecrets: boolean;
  status: DataRequestStatus;
  createdDateTimeUtc: string;
  lastUpdatedDateTimeUtc: string;
  progress?: { done: number; total: number };
  error?: string;
  result?: {
    dryRun?: boolean;
    deleted?: PlaceCount[];
    pseudonymized?: PlaceCount[];
    failures?: PlaceCount[];
    searched?: PlaceCount[];
  } & Record<string, unknown>;
}

export interface ExportBundle {
  manifest: { requestId: string; subject: { kind: string; id: string }; generatedDateTimeUtc: string; searched: PlaceCount[] };
  individualEnrollment: Record<string, unknown> | null;
  enrollmentGroups: Array<Record<string, unknown>>;
  registrationRecords: Array<Record<string, unknown>>;
  hubDevices: Array<{ hub: string; device: Record<string, unknown>; twin?: Record<string, unknown> }>;
  webhookExchanges: Array<Record<string, unknown>>;
  auditEvents: Array<Record<string, unknown>>;
}

export interface SignedReceipt {
  receipt: Record<string, unknown> & { requestId?: string; completedDateTimeUtc?: string };
  signature: { algorithm: string; keyId: string; publicKeyPem?: string; value: string };
}

export interface ReceiptSigningKey {
  keyId: string;
  algorithm: string;
  publicKeyPem: string;
}

export type AuditKind = 'serviceApi' | 'registration' | 'hubWrite' | 'webhook' | 'dataRequest';
/** Access: a read (service-API reads and queries, exports); change: everything that writes or tries to. */
export type AuditClass = 'access' | 'change';
/** `notFound`: a read that found nothing, neutral. */
export type AuditOutcome = 'success' | 'failure' | 'notFound';

export interface AuditEvent {
  eventId: string;
  timeUtc: string;
  kind: AuditKind | string;
  class: AuditClass;
  operation: string;
  actor: string;
  source?: string;
  subject?: { registrationId?: string; deviceId?: string; enrollmentGroupId?: string; hash?: string };
  outcome: AuditOutcome;
  errorCode?: number;
  reason?: string;
  trackingId?: string;
  transport?: string;
  attestationType?: string;
  hub?: string;
  details?: Record<string, unknown>;
}

export interface AuditQuery {
  subject?: string;
  from?: string;
  to?: string;
  actor?: string;
  outcome?: AuditOutcome;
  kind?: AuditKind;
  class?: AuditClass;
}

/** The CSR key types a credential policy can accept (docs/certificate-issuance.md). */
export const CREDENTIAL_KEY_TYPES = ['ecP256', 'ecP384', 'rsa2048', 'rsa3072', 'rsa4096'] as const;
export type CredentialKeyType = (typeof CREDENTIAL_KEY_TYPES)[number];

export interface CredentialPolicy {
  name: string;
  keyTypes: CredentialKeyType[];
  validityInDays: number;
  etag: string;
  createdDateTimeUtc: string;
  lastUpdatedDateTimeUtc: string;
}

/** The instance's issuing CA as the server shows it: never its key. */
export interface IssuingCa {
  certificate: string;
  info: CertificateInfo;
  chain: string[];
  source: 'generated' | 'operator';
  createdDateTimeUtc: string;
  crlUrl?: string;
}
