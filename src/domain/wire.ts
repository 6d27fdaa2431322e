import { Type, type Static, type TSchema, type TUnsafe } from '@sinclair/typebox';

/**
 * Wire shapes of the DPS service API 2021-10-01 (dps-wire.md §3). One source for request validation, TypeScript
 * types and the OpenAPI document. Inputs tolerate unknown properties and `null` for optional members because the
 * SDKs send read-only fields back and some serialize unset members as null.
 */
/** A string enum as a plain JSON-schema `enum`, so a wrong value is reported as "must be one of …". */
export const StringEnum = <const T extends readonly string[]>(values: T, options: Record<string, unknown> = {}): TUnsafe<T[number]> =>
  Type.Unsafe<T[number]>({ type: 'string', enum: [...values], ...options });

/** Optional and nullable (JSON-schema `nullable`, so errors name the real type rather than an anyOf). */
const Nullable = <T extends TSchema>(schema: T) => Type.Optional(Type.Unsafe<Static<T> | null>({ ...schema, nullable: true }));
const DateTime = Type.String({ format: 'date-time' });
/** Free-form JSON object (`TwinCollection`, payloads). */
export const JsonObject = Type.Object({}, { additionalProperties: true });

export const ProvisioningStatus = StringEnum(['enabled', 'disabled']);
export const AllocationPolicy = StringEnum(['hashed', 'geoLatency', 'static', 'custom']);
export type AllocationPolicy = Static<typeof AllocationPolicy>;
export const AttestationType = StringEnum(['none', 'tpm', 'x509', 'symmetricKey']);
export type AttestationType = Static<typeof AttestationType>;

export const X509CertificateInfo = Type.Object({
  subjectName: Type.String(),
  sha1Thumbprint: Type.String(),
  sha256Thumbprint: Type.String(),
  issuerName: Type.String(),
  notBeforeUtc: DateTime,
  notAfterUtc: DateTime,
  serialNumber: Type.String(),
  version: Type.Integer(),
});
export type X509CertificateInfo = Static<typeof X509CertificateInfo>;

export const X509CertificateWithInfo = Type.Object({
  certificate: Nullable(Type.String({ maxLength: 65536 })),
  info: Nullable(X509CertificateInfo),
});
export const X509Certificates = Type.Object({
  primary: Nullable(X509CertificateWithInfo),
  secondary: Nullable(X509CertificateWithInfo),
});
export const X509CAReferences = Type.Object({
  primary: Nullable(Type.String({ maxLength: 256 })),
  secondary: Nullable(Type.String({ maxLength: 256 })),
});
export const X509Attestation = Type.Object({
  clientCertificates: Nullable(X509Certificates),
  signingCertificates: Nullable(X509Certificates),
  caReferences: Nullable(X509CAReferences),
});
export const TpmAttestation = Type.Object({
  endorsementKey: Type.String({ minLength: 1, maxLength: 8192 }),
  storageRootKey: Nullable(Type.String({ maxLength: 8192 })),
});
export const SymmetricKeyAttestation = Type.Object({
  primaryKey: Nullable(Type.String({ maxLength: 256 })),
  secondaryKey: Nullable(Type.String({ maxLength: 256 })),
});
export const AttestationMechanism = Type.Object({
  type: AttestationType,
  tpm: Nullable(TpmAttestation),
  x509: Nullable(X509Attestation),
  symmetricKey: Nullable(SymmetricKeyAttestation),
});
export type AttestationMechanismInput = Static<typeof AttestationMechanism>;

export const DeviceCapabilities = Type.Object({ iotEdge: Type.Boolean({ default: false }) });
export const InitialTwin = Type.Object({
  tags: Nullable(JsonObject),
  properties: Nullable(Type.Object({ desired: Nullable(JsonObject) })),
});
export const ReprovisionPolicy = Type.Object({
  updateHubAssignment: Type.Boolean({ default: true }),
  migrateDeviceData: Type.Boolean({ default: true }),
});
export const CustomAllocationDefinition = Type.Object({
  webhookUrl: Type.String({ minLength: 1, maxLength: 2048 }),
  apiVersion: Type.String({ minLength: 1, maxLength: 64 }),
});

const RegistrationStatus = StringEnum(['unassigned', 'assigning', 'assigned', 'failed', 'disabled']);
export type RegistrationStatus = Static<typeof RegistrationStatus>;
const Substatus = StringEnum(['initialAssignment', 'deviceDataMigrated', 'deviceDataReset', 'reprovisionedToInitialAssignment']);
export type Substatus = Static<typeof Substatus>;

export const DeviceRegistrationState = Type.Object({
  registrationId: Type.String(),
  createdDateTimeUtc: Type.Optional(DateTime),
  assignedHub: Type.Optional(Type.String()),
  deviceId: Type.Optional(Type.String()),
  status: RegistrationStatus,
  substatus: Type.Optional(Substatus),
  errorCode: Type.Optional(Type.Integer()),
  errorMessage: Type.Optional(Type.String()),
  lastUpdatedDateTimeUtc: Type.Optional(DateTime),
  etag: Type.Optional(Type.String()),
  payload: Type.Optional(JsonObject),
});
export type DeviceRegistrationState = Static<typeof DeviceRegistrationState>;

const enrollmentCommon = {
  attestation: AttestationMechanism,
  capabilities: Nullable(DeviceCapabilities),
  iotHubHostName: Nullable(Type.String({ maxLength: 256 })),
  initialTwin: Nullable(InitialTwin),
  etag: Nullable(Type.String()),
  provisioningStatus: Nullable(ProvisioningStatus),
  reprovisionPolicy: Nullable(ReprovisionPolicy),
  createdDateTimeUtc: Nullable(Type.String()),
  lastUpdatedDateTimeUtc: Nullable(Type.String()),
  allocationPolicy: Nullable(AllocationPolicy),
  iotHubs: Nullable(Type.Array(Type.String({ minLength: 1, maxLength: 256 }), { maxItems: 50 })),
  customAllocationDefinition: Nullable(CustomAllocationDefinition),
  credentialPolicyName: Nullable(Type.String({ maxLength: 64, description: 'The credential policy a CSR is issued under (2025-07-01-preview).' })),
};

/** IndividualEnrollment as a client sends it. */
export const IndividualEnrollmentInput = Type.Object({
  registrationId: Type.String({ minLength: 1, maxLength: 512 }),
  deviceId: Nullable(Type.String({ maxLength: 512 })),
  registrationState: Nullable(JsonObject),
  optionalDeviceInformation: Nullable(JsonObject),
  ...enrollmentCommon,
});
export type IndividualEnrollmentInput = Static<typeof IndividualEnrollmentInput>;

/** EnrollmentGroup as a client sends it. */
export const EnrollmentGroupInput = Type.Object({
  enrollmentGroupId: Type.String({ minLength: 1, maxLength: 512 }),
  ...enrollmentCommon,
});
export type EnrollmentGroupInput = Static<typeof EnrollmentGroupInput>;

/** Responses are documents with free-form members; their precise shape is documented, not filtered on the way out. */
export const IndividualEnrollment = Type.Object(
  {
    registrationId: Type.String(),
    deviceId: Type.Optional(Type.String()),
    registrationState: Type.Optional(DeviceRegistrationState),
    optionalDeviceInformation: Type.Optional(JsonObject),
    attestation: AttestationMechanism,
    capabilities: DeviceCapabilities,
    iotHubHostName: Type.Optional(Type.String()),
    initialTwin: Type.Optional(InitialTwin),
    etag: Type.String(),
    provisioningStatus: ProvisioningStatus,
    reprovisionPolicy: ReprovisionPolicy,
    createdDateTimeUtc: DateTime,
    lastUpdatedDateTimeUtc: DateTime,
    allocationPolicy: Type.Optional(AllocationPolicy),
    iotHubs: Type.Optional(Type.Array(Type.String())),
    customAllocationDefinition: Type.Optional(CustomAllocationDefinition),
    credentialPolicyName: Type.Optional(Type.String()),
  },
  { additionalProperties: true },
);
export const EnrollmentGroup = Type.Object(
  {
    enrollmentGroupId: Type.String(),
    attestation: AttestationMechanism,
    capabilities: DeviceCapabilities,
    iotHubHostName: Type.Optional(Type.String()),
    initialTwin: Type.Optional(InitialTwin),
    etag: Type.String(),
    provisioningStatus: ProvisioningStatus,
    reprovisionPolicy: ReprovisionPolicy,
    createdDateTimeUtc: DateTime,
    lastUpdatedDateTimeUtc: DateTime,
    allocationPolicy: Type.Optional(AllocationPolicy),
    iotHubs: Type.Optional(Type.Array(Type.String())),
    customAllocationDefinition: Type.Optional(CustomAllocationDefinition),
    credentialPolicyName: Type.Optional(Type.String()),
  },
  { additionalProperties: true },
);

export const QuerySpecification = Type.Object({ query: Type.String({ maxLength: 4096 }) });

/** The Node service SDK's typings spell it `updateIfMatchEtag`; both spellings mean the same mode. */
export const BulkMode = StringEnum(['create', 'update', 'updateIfMatchETag', 'updateIfMatchEtag', 'delete']);
export type BulkMode = Static<typeof BulkMode>;
export const BulkEnrollmentOperation = Type.Object({
  mode: BulkMode,
  enrollments: Type.Array(JsonObject),
});
export const BulkEnrollmentGroupOperation = Type.Object({
  mode: BulkMode,
  enrollmentGroups: Type.Array(JsonObject),
});
export const BulkEnrollmentOperationResult = Type.Object({
  isSuccessful: Type.Boolean(),
  errors: Type.Optional(
    Type.Array(
      Type.Object({
        registrationId: Type.Optional(Type.String()),
        enrollmentGroupId: Type.Optional(Type.String()),
        errorCode: Type.Integer(),
        errorStatus: Type.String(),
      }),
    ),
  ),
});

export const ErrorDetails = Type.Object({
  errorCode: Type.Integer(),
  trackingId: Type.String(),
  message: Type.String(),
  timestampUtc: DateTime,
  info: Type.Optional(Type.Record(Type.String(), Type.String())),
  /** The TPM challenge (401005) carries the activation blob and the key name (dps-wire.md §4.5). */
  authenticationKey: Type.Optional(Type.String()),
  keyName: Type.Optional(Type.String()),
});
