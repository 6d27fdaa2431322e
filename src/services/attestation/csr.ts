import type * as X509 from '@peculiar/x509';
import { createPublicKey, randomBytes, X509Certificate } from 'node:crypto';
import { ProvisioningError } from '../../domain/errors.js';
import { dpsTimestamp } from '../../domain/time.js';
import { thumbprints } from '../../domain/x509.js';
import type { CredentialKeyType, CredentialPolicyRecord, IssuedCertificateRecord, IssuingCaRecord } from '../../store/store.js';
import type { DeviceMatch } from './device-match.js';

/**
 * @peculiar/x509 (with tsyringe, ~150 modules and several MiB of heap) is loaded on first use, not by every start
 * (issue 12, P6); x509-issuer.js sets its crypto provider when it loads.
 */
async function peculiar(): Promise<{ x509: typeof X509; issuer: typeof import('../../tls/x509-issuer.js') }> {
  const issuer = await import('../../tls/x509-issuer.js');
  return { x509: await import('@peculiar/x509'), issuer };
}

/**
 * Certificate issuance from a CSR (DPS api-version 2025-07-01-preview, dps-wire.md §0 and §4.1; docs/
 * certificate-issuance.md). A device that proved itself (symmetric key, X.509 or TPM) sends `csr`: base64 DER
 * PKCS#10 whose CN is its registration ID. The CSR is checked when the register request arrives (a bad one is a 400
 * at once, before any operation exists); the certificate is signed by the instance's issuing CA once the device is
 * assigned, and `registrationState.issuedCertificateChain` carries leaf, intermediates and root as base64 DER.
 * Only the public parts of a CSR are ever read; nothing of it is logged.
 */

/** A CSR that passed every check, with the policy it will be issued under. */
export interface CheckedCsr {
  request: X509.Pkcs10CertificateRequest;
  keyType: CredentialKeyType;
  policy: CredentialPolicyRecord;
}

const DAY_MS = 24 * 60 * 60 * 1000;

/**
 * The CSR checks, in the order a device can fix them: the enrollment must name a credential policy that exists; the
 * CSR must be base64 DER PKCS#10 whose signature verifies with its own key, whose CN is the registration ID, and whose
 * key type the policy accepts.
 */
export async function checkCsr(csr: string, match: DeviceMatch, policy: CredentialPolicyRecord | undefined): Promise<CheckedCsr> {
  const policyName = match.enrollment.doc.credentialPolicyName;
  const entry = match.enrollment.kind === 'individual' ? `enrollment '${match.enrollment.doc.registrationId}'` : `enrollment group '${match.enrollment.doc.enrollmentGroupId}'`;
  if (policyName === undefined) {
    throw new ProvisioningError('NoCredentialPolicy', `The ${entry} names no credentialPolicyName, so no certificate can be issued for a CSR.`);
  }
  if (policy === undefined) {
    throw new ProvisioningError('CredentialPolicyUnknown', `The ${entry} names credential policy '${policyName}', which does not exist.`);
  }
  const request = parseCsr((await peculiar()).x509, csr);
  if (!(await request.verify())) throw new ProvisioningError('CsrSignatureInvalid');
  const names = request.subjectName.getField('CN');
  if (names.length !== 1 || names[0]?.toLowerCase() !== match.registrationId.toLowerCase()) {
    throw new ProvisioningError(
      'CsrSubjectMismatch',
      `The CN of the CSR must be the registration ID '${match.registrationId}'${names.length === 0 ? '; it has no CN' : names.length > 1 ? '; it has more than one CN' : ''}.`,
    );
  }
  const keyType = csrKeyType(request);
  if (keyType === undefined || !policy.keyTypes.includes(keyType)) {
    throw new ProvisioningError(
      'CsrKeyTypeRefused',
      `Credential policy '${policy.name}' accepts ${policy.keyTypes.join(', ')}; the CSR's key is ${keyType ?? 'of a type provisiond does not issue for'}.`,
    );
  }
  return { request, keyType, policy };
}

/** Base64 DER only, as DPS takes it: PEM (with its header) is refused with a message that says so. */
function parseCsr(x509: typeof X509, csr: string): X509.Pkcs10CertificateRequest {
  const text = csr.trim();
  if (text.startsWith('-----BEGIN')) {
    throw new ProvisioningError('InvalidCsr', 'csr must be base64 DER without a PEM header (-----BEGIN CERTIFICATE REQUEST-----).');
  }
  if (text === '' || !/^[A-Za-z0-9+/]+={0,2}$/.test(text)) throw new ProvisioningError('InvalidCsr', 'csr is not base64.');
  try {
    return new x509.Pkcs10CertificateRequest(Buffer.from(text, 'base64'));
  } catch {
    throw new ProvisioningError('InvalidCsr');
  }
}

/** The key type names of credential policies: EC by curve, RSA by modulus length. */
function csrKeyType(request: X509.Pkcs10CertificateRequest): CredentialKeyType | undefined {
  let key;
  try {
    key = createPublicKey({ key: Buffer.from(request.publicKey.rawData), format: 'der', type: 'spki' });
  } catch {
    return undefined;
  }
  const details = key.asymmetricKeyDetails;
  if (key.asymmetricKeyType === 'ec') {
    if (details?.namedCurve === 'prime256v1') return 'ecP256';
    if (details?.namedCurve === 'secp384r1') return 'ecP384';
    return undefined;
  }
  if (key.asymmetricKeyType === 'rsa') {
    const bits = details?.modulusLength;
    return bits === 2048 ? 'rsa2048' : bits === 3072 ? 'rsa3072' : bits === 4096 ? 'rsa4096' : undefined;
  }
  return undefined;
}

/** What issuing answers: the chain for the device and the record the instance keeps. */
export interface IssuedCertificate {
  /** Base64 DER, leaf first, then the CA's chain up to the root (issuedCertificateChain). */
  chain: string[];
  record: IssuedCertificateRecord;
}

/**
 * Signs the leaf: subject CN = registration ID (nothing else of the CSR's subject is copied), the CSR's public key,
 * client authentication only, valid from a minute ago for the policy's days, with the CRL's URL when one is known.
 */
export async function issueCertificate(
  ca: IssuingCaRecord,
  checked: CheckedCsr,
  subject: { registrationId: string; enrollmentGroupId: string | undefined },
  options: { now: Date; crlUrl: string | undefined },
): Promise<IssuedCertificate> {
  const { x509, issuer } = await peculiar();
  const caCert = new x509.X509Certificate(ca.certificate);
  const signing = await issuer.importIssuerKey(ca.privateKey, caCert);
  const notBefore = new Date(options.now.getTime() - 60_000);
  const notAfter = new Date(options.now.getTime() + checked.policy.validityInDays * DAY_MS);
  const publicKey = await checked.request.publicKey.export();
  const usages = x509.KeyUsageFlags.digitalSignature | (checked.keyType.startsWith('rsa') ? x509.KeyUsageFlags.keyEncipherment : 0);
  const leaf = await x509.X509CertificateGenerator.create({
    serialNumber: newSerialNumber(),
    subject: new x509.Name([{ CN: [subject.registrationId] }]),
    issuer: caCert.subject,
    notBefore,
    notAfter,
    signingAlgorithm: signing.algorithm,
    publicKey,
    signingKey: signing.key,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(usages, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth]),
      await x509.SubjectKeyIdentifierExtension.create(publicKey),
      await x509.AuthorityKeyIdentifierExtension.create(caCert),
      ...(options.crlUrl === undefined ? [] : [new x509.CRLDistributionPointsExtension([options.crlUrl])]),
    ],
  });
  const node = new X509Certificate(Buffer.from(leaf.rawData));
  const prints = thumbprints(node);
  const record: IssuedCertificateRecord = {
    serialNumber: node.serialNumber.toUpperCase(),
    registrationId: subject.registrationId,
    ...(subject.enrollmentGroupId === undefined ? {} : { enrollmentGroupId: subject.enrollmentGroupId }),
    credentialPolicyName: checked.policy.name,
    sha256Thumbprint: prints.sha256,
    sha1Thumbprint: prints.sha1,
    notBeforeUtc: dpsTimestamp(new Date(node.validFrom)),
    notAfterUtc: dpsTimestamp(new Date(node.validTo)),
    issuedDateTimeUtc: dpsTimestamp(options.now),
  };
  const chain = [Buffer.from(leaf.rawData), ...[ca.certificate, ...ca.chain].map((pem) => new X509Certificate(pem).raw)].map((der) => der.toString('base64'));
  return { chain, record };
}

/** 16 random bytes, positive (RFC 5280 §4.1.2.2: at most 20 octets, non-negative). */
export function newSerialNumber(): string {
  return randomBytes(16).toString('hex').replace(/^[89a-f]/, '1');
}
