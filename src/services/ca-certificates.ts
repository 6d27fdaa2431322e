import { randomBytes, X509Certificate } from 'node:crypto';
import type { JsonMap } from '../domain/enrollment.js';
import { ProvisioningError } from '../domain/errors.js';
import { etagMatches, newEtag } from '../domain/etag.js';
import { dpsTimestamp } from '../domain/time.js';
import { certificateInfo, parseCertificate, toPem } from '../domain/x509.js';
import { proofOfPossessionProblem, validityProblem } from '../domain/x509-chain.js';
import type { CaCertificateRecord, InstanceRecord, Store } from '../store/store.js';
import type { ServiceDeps } from './deps.js';

/**
 * CA certificates of an instance, with proof of possession as DPS does it: upload the CA certificate, ask for a
 * verification code, upload a certificate signed by the CA whose CN is that code; only then is the CA verified and
 * may an enrollment group's caReferences name it for devices (dps-wire.md §3 X509CAReferences, §4.4). A changed
 * certificate under the same name starts unverified again.
 */
const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9\-._]{0,63}$/;

export interface CaCertificateInput {
  certificate: string;
  isVerified?: boolean;
}

/** The certificate as the service API shows it: public material only (there is no private material to hide). */
export function caCertificateView(record: CaCertificateRecord): JsonMap {
  return {
    name: record.name,
    certificate: record.certificate,
    info: record.info,
    isVerified: record.isVerified,
    etag: record.etag,
    createdDateTimeUtc: record.createdDateTimeUtc,
    lastUpdatedDateTimeUtc: record.lastUpdatedDateTimeUtc,
  };
}

export class CaCertificateService {
  readonly #deps: ServiceDeps;

  constructor(deps: ServiceDeps) {
    this.#deps = deps;
  }

  async list(instance: InstanceRecord): Promise<JsonMap[]> {
    return (await this.#deps.store.listCaCertificates(instance.id)).map(caCertificateView);
  }

  async get(instance: InstanceRecord, name: string): Promise<JsonMap> {
    return caCertificateView(await this.#require(instance, name));
  }

  /** PUT: create, or replace the certificate under this name (If-Match optional). The same certificate stays verified. */
  async upload(instance: InstanceRecord, name: string, input: CaCertificateInput, ifMatch: string | undefined): Promise<JsonMap> {
    assertName(name);
    if (input.isVerified === true) {
      throw new ProvisioningError(
        'CaVerificationFailed',
        'A CA certificate cannot be uploaded as verified: generate a verification code and upload a certificate signed by the CA whose CN is the code.',
      );
    }
    const cert = parseCertificate(input.certificate);
    if (!cert.ca) throw new ProvisioningError('InvalidCertificate', 'The certificate is not a CA certificate (basicConstraints CA:true).');
    const expired = validityProblem(cert, this.#deps.now(), 'The certificate');
    if (expired !== undefined) throw new ProvisioningError('InvalidCertificate', `${expired}.`);
    const info = certificateInfo(cert);
    return this.#deps.store.transaction(async (store) => {
      const existing = await store.getCaCertificate(instance.id, name);
      checkIfMatch(ifMatch, existing, name);
      const twin = await store.findCaCertificateByThumbprint(instance.id, info.sha256Thumbprint);
      if (twin !== undefined && twin.name.toLowerCase() !== name.toLowerCase()) {
        throw new ProvisioningError('Conflict', `This certificate is already uploaded as '${twin.name}'.`);
      }
      const now = dpsTimestamp(this.#deps.now());
      const unchanged = existing !== undefined && existing.info.sha256Thumbprint === info.sha256Thumbprint;
      const record: CaCertificateRecord = {
        name: existing?.name ?? name,
        certificate: toPem(cert),
        info,
        isVerified: unchanged && existing.isVerified,
        etag: newEtag(),
        createdDateTimeUtc: existing?.createdDateTimeUtc ?? now,
        lastUpdatedDateTimeUtc: now,
      };
      if (unchanged && !existing.isVerified && existing.verificationCode !== undefined) record.verificationCode = existing.verificationCode;
      await guardedPut(store, instance.id, record, ifMatch, existing);
      return caCertificateView(record);
    });
  }

  async delete(instance: InstanceRecord, name: string, ifMatch: string | undefined): Promise<void> {
    await this.#deps.store.transaction(async (store) => {
      const existing = await store.getCaCertificate(instance.id, name);
      if (existing === undefined) throw notFound(name);
      checkIfMatch(ifMatch, existing, name);
      const deleted = await store.deleteCaCertificate(instance.id, name, ifMatch === undefined ? undefined : existing.etag);
      if (ifMatch !== undefined && !deleted) throw new ProvisioningError('PreconditionFailed');
    });
  }

  /** A fresh code for the CN of the verification certificate; it replaces any earlier one. */
  async generateVerificationCode(instance: InstanceRecord, name: string, ifMatch: string | undefined): Promise<JsonMap> {
    return this.#deps.store.transaction(async (store) => {
      const existing = await store.getCaCertificate(instance.id, name);
      if (existing === undefined) throw notFound(name);
      checkIfMatch(ifMatch, existing, name);
      const record: CaCertificateRecord = {
        ...existing,
        // 48 hex digits: fits a CN (64 characters at most) and cannot be guessed.
        verificationCode: randomBytes(24).toString('hex').toUpperCase(),
        etag: newEtag(),
        lastUpdatedDateTimeUtc: dpsTimestamp(this.#deps.now()),
      };
      await guardedPut(store, instance.id, record, ifMatch, existing);
      return { ...caCertificateView(record), verificationCode: record.verificationCode };
    });
  }

  /** Proof of possession: the verification certificate must be signed by the CA and carry the code as its CN. */
  async verify(instance: InstanceRecord, name: string, input: { certificate: string }, ifMatch: string | undefined): Promise<JsonMap> {
    const verification = parseCertificate(input.certificate);
    return this.#deps.store.transaction(async (store) => {
      const existing = await store.getCaCertificate(instance.id, name);
      if (existing === undefined) throw notFound(name);
      checkIfMatch(ifMatch, existing, name);
      if (existing.verificationCode === undefined) {
        throw new ProvisioningError(
          'CaVerificationFailed',
          existing.isVerified
            ? `The CA certificate '${existing.name}' is already verified; generate a new verification code to verify it again.`
            : `No verification code is pending for '${existing.name}': call generateVerificationCode first.`,
        );
      }
      const problem = proofOfPossessionProblem(new X509Certificate(existing.certificate), verification, existing.verificationCode, this.#deps.now());
      if (problem !== undefined) throw new ProvisioningError('CaVerificationFailed', `Verification of '${existing.name}' failed: ${problem}.`);
      const { verificationCode: _used, ...rest } = existing;
      const record: CaCertificateRecord = { ...rest, isVerified: true, etag: newEtag(), lastUpdatedDateTimeUtc: dpsTimestamp(this.#deps.now()) };
      await guardedPut(store, instance.id, record, ifMatch, existing);
      return caCertificateView(record);
    });
  }

  async #require(instance: InstanceRecord, name: string): Promise<CaCertificateRecord> {
    const record = await this.#deps.store.getCaCertificate(instance.id, name);
    if (record === undefined) throw notFound(name);
    return record;
  }
}

function assertName(name: string): void {
  if (!NAME_PATTERN.test(name)) {
    throw new ProvisioningError(
      'InvalidCaCertificateName',
      `The CA certificate name '${name.slice(0, 80)}' is invalid: use 1-64 letters, digits, '-', '.' or '_', starting with a letter or digit.`,
    );
  }
}

/**
 * With If-Match, the write compare-and-swaps on the etag checkIfMatch accepted, so of concurrent writers holding one
 * etag (on any node) exactly one wins and the others get 412.
 */
async function guardedPut(store: Store, instanceId: string, record: CaCertificateRecord, ifMatch: string | undefined, existing: CaCertificateRecord | undefined): Promise<void> {
  const written = await store.putCaCertificate(instanceId, record, ifMatch === undefined || existing === undefined ? undefined : existing.etag);
  if (!written) throw new ProvisioningError('PreconditionFailed');
}

function checkIfMatch(ifMatch: string | undefined, existing: CaCertificateRecord | undefined, name: string): void {
  if (ifMatch === undefined) return;
  // If-Match names a version of an existing certificate: on a missing one it cannot match (RFC 7232 §3.1).
  if (existing === undefined) throw new ProvisioningError('PreconditionFailed', `'${name}' does not exist, so If-Match cannot match.`);
  if (!etagMatches(ifMatch, existing.etag)) throw new ProvisioningError('PreconditionFailed');
}

function notFound(name: string): ProvisioningError {
  return new ProvisioningError('CaCertificateNotFound', `The CA certificate '${name}' was not found.`);
}
