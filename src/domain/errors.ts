/**
 * The one error catalog. Every error provisiond puts on the wire is an entry here: a six-digit DPS `errorCode`
 * whose first three digits are the HTTP status (dps-wire.md §1.1, §11), and a default message. Transports render a
 * ProvisioningError in one place each (HTTP body + `x-ms-error-code`, MQTT topic status, AMQP rejection).
 */
export const errorCatalog = Object.freeze({
  BadRequest: { errorCode: 400001, message: 'The request is invalid.' },
  InvalidJson: { errorCode: 400002, message: 'The request body is not valid JSON.' },
  SchemaViolation: { errorCode: 400004, message: 'The request body does not match the schema.' },
  MissingApiVersion: { errorCode: 400005, message: 'The api-version query parameter is required.' },
  UnsupportedApiVersion: { errorCode: 400006, message: 'The api-version is not supported.' },
  InvalidRegistrationId: { errorCode: 400007, message: 'The registration ID is invalid.' },
  InvalidEnrollmentGroupId: { errorCode: 400008, message: 'The enrollment group ID is invalid.' },
  IdMismatch: { errorCode: 400009, message: 'The ID in the body does not match the ID in the path.' },
  InvalidAttestation: { errorCode: 400010, message: 'The attestation mechanism is invalid.' },
  InvalidSymmetricKey: { errorCode: 400011, message: 'A symmetric key must be base64 of 16 to 64 bytes.' },
  InvalidCertificate: { errorCode: 400012, message: 'The certificate could not be parsed.' },
  InvalidQuery: { errorCode: 400013, message: 'The query is not supported.' },
  InvalidContinuationToken: { errorCode: 400014, message: 'The continuation token is invalid.' },
  BulkTooLarge: { errorCode: 400015, message: 'The bulk operation has too many items.' },
  InvalidAllocation: { errorCode: 400016, message: 'The allocation settings are invalid.' },
  InvalidHeader: { errorCode: 400017, message: 'A request header is invalid.' },
  InvalidAccessPolicy: { errorCode: 400018, message: 'The access policy is invalid.' },
  InvalidLinkedHub: { errorCode: 400019, message: 'The linked hub is invalid.' },
  InvalidInstance: { errorCode: 400020, message: 'The instance settings are invalid.' },
  InvalidDeviceId: { errorCode: 400021, message: 'The device ID is invalid.' },
  InvalidCaCertificateName: { errorCode: 400022, message: 'The CA certificate name is invalid.' },
  CaVerificationFailed: { errorCode: 400023, message: 'The verification certificate does not prove possession of the CA private key.' },
  InvalidCsr: { errorCode: 400024, message: 'The csr is not a base64 DER PKCS#10 certificate signing request.' },
  CsrSignatureInvalid: { errorCode: 400025, message: 'The signature of the certificate signing request does not verify with its public key.' },
  CsrSubjectMismatch: { errorCode: 400026, message: 'The CN of the certificate signing request must be the registration ID.' },
  CsrKeyTypeRefused: { errorCode: 400027, message: 'The credential policy does not accept the key type of the certificate signing request.' },
  NoCredentialPolicy: { errorCode: 400028, message: 'The enrollment names no credential policy, so no certificate can be issued.' },
  CsrNotAccepted: { errorCode: 400029, message: 'A csr is not accepted on this request.' },
  CredentialPolicyUnknown: { errorCode: 400030, message: 'The credential policy named does not exist.' },
  InvalidCredentialPolicy: { errorCode: 400031, message: 'The credential policy is invalid.' },
  InvalidIssuingCa: { errorCode: 400032, message: 'The issuing CA certificate or key is invalid.' },
  CustomAllocationFailed: { errorCode: 400208, message: 'The custom allocation webhook did not return a usable answer.' },
  NoHubAvailable: { errorCode: 400209, message: 'No linked hub can be assigned to the device.' },
  EnrollmentDisabled: { errorCode: 401004, message: 'The enrollment is disabled; the device is not provisioned.' },
  Unauthorized: { errorCode: 401002, message: 'Unauthorized' },
  TpmChallenge: { errorCode: 401005, message: 'Authorization required, resend request using supplied key' },
  NotFound: { errorCode: 404001, message: 'The resource was not found.' },
  EnrollmentNotFound: { errorCode: 404201, message: 'The enrollment was not found.' },
  RegistrationNotFound: { errorCode: 404202, message: 'The device registration was not found.' },
  EnrollmentGroupNotFound: { errorCode: 404203, message: 'The enrollment group was not found.' },
  OperationNotFound: { errorCode: 404204, message: 'The operation was not found.' },
  AccessPolicyNotFound: { errorCode: 404205, message: 'The access policy was not found.' },
  LinkedHubNotFound: { errorCode: 404206, message: 'The linked hub was not found.' },
  InstanceNotFound: { errorCode: 404207, message: 'The provisioning service instance was not found.' },
  CaCertificateNotFound: { errorCode: 404208, message: 'The CA certificate was not found.' },
  DataRequestNotFound: { errorCode: 404209, message: 'The data request was not found.' },
  DataRequestResultUnavailable: { errorCode: 404210, message: 'The data request has no such result.' },
  CredentialPolicyNotFound: { errorCode: 404211, message: 'The credential policy was not found.' },
  MethodNotAllowed: { errorCode: 405001, message: 'The method is not allowed on this resource.' },
  Conflict: { errorCode: 409001, message: 'The resource already exists.' },
  CertificateInUse: { errorCode: 409002, message: 'A certificate can be specified in only one enrollment entry.' },
  LastOwnerPolicy: { errorCode: 409003, message: 'The last policy with the ServiceConfig right cannot be removed.' },
  SubjectBeingErased: { errorCode: 409210, message: 'A data request is erasing this device; it cannot be written until the erase is final.' },
  PreconditionFailed: { errorCode: 412002, message: 'The etag does not match the current resource.' },
  EntryExists: { errorCode: 412003, message: 'The entry exists, and If-None-Match: * creates only.' },
  PayloadTooLarge: { errorCode: 413001, message: 'The request body is too large.' },
  UnsupportedMediaType: { errorCode: 415001, message: 'The request content type is not supported.' },
  Throttled: { errorCode: 429001, message: 'Too many requests; retry after the indicated time.' },
  InternalError: { errorCode: 500001, message: 'An internal error occurred.' },
  HubWriteFailed: { errorCode: 500208, message: 'Writing the device to its IoT hub failed.' },
  RegistrationInterrupted: { errorCode: 500209, message: 'The registration was interrupted by a server restart; register again.' },
} as const);

export type ErrorName = keyof typeof errorCatalog;

export class ProvisioningError extends Error {
  readonly errorName: ErrorName;
  readonly errorCode: number;
  readonly info: Readonly<Record<string, string>> | undefined;

  constructor(name: ErrorName, message?: string, info?: Record<string, string>) {
    const entry = errorCatalog[name];
    super(message ?? entry.message);
    this.name = 'ProvisioningError';
    this.errorName = name;
    this.errorCode = entry.errorCode;
    this.info = info;
  }

  get httpStatus(): number {
    return Math.floor(this.errorCode / 1000);
  }
}

/** The DPS error envelope (`ProvisioningServiceErrorDetails`, dps-wire.md §1.1). */
export interface ErrorBody {
  errorCode: number;
  trackingId: string;
  message: string;
  timestampUtc: string;
  info?: Record<string, string>;
  /** TPM challenge only (dps-wire.md §4.5). */
  authenticationKey?: string;
  keyName?: string;
}

/**
 * The TPM challenge (dps-wire.md §4.5): a 401 whose body carries the activation blob and `keyName: registration`;
 * the device activates it in its TPM and resends the request signed with the key inside.
 */
export class TpmChallenge extends ProvisioningError {
  readonly authenticationKey: string;

  constructor(authenticationKey: string) {
    super('TpmChallenge');
    this.authenticationKey = authenticationKey;
  }
}

export function errorBody(error: ProvisioningError, trackingId: string, timestampUtc: string): ErrorBody {
  const body: ErrorBody = { errorCode: error.errorCode, trackingId, message: error.message, timestampUtc };
  if (error.info !== undefined) body.info = { ...error.info };
  if (error instanceof TpmChallenge) {
    body.authenticationKey = error.authenticationKey;
    body.keyName = 'registration';
  }
  return body;
}
