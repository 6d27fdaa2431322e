import type * as X509 from '@peculiar/x509';
import { createPrivateKey, createPublicKey, X509Certificate } from 'node:crypto';
import type { JsonMap } from '../../domain/enrollment.js';
import { ProvisioningError } from '../../domain/errors.js';
import { dpsTimestamp } from '../../domain/time.js';
import { certificateInfo, parseCertificate, toPem } from '../../domain/x509.js';
import { validityProblem } from '../../domain/x509-chain.js';
import type { InstanceRecord, IssuingCaRecord } from '../../store/store.js';
import type { ServiceDeps } from '../deps.js';

/**
 * @peculiar/x509 (with tsyringe, ~150 modules and several MiB of heap) is loaded on first use, not by every start
 * (issue 12, P6); x509-issuer.js sets its crypto provider when it loads.
 */
async function peculiar(): Promise<{ x509: typeof X509; issuer: typeof import('../../tls/x509-issuer.js') }> {
  const issuer = await import('../../tls/x509-issuer.js');
  return { x509: await import('@peculiar/x509'), issuer };
}

/**
 * The issuing CA of an instance (docs/certificate-issuance.md): its own key, separate from the development TLS CA.
 * Created on first need (a self-signed EC P-256 root, valid ten years) and kept in the store, so every node of a
 * cluster signs with the same one; or one the operator supplies (a root or an intermediate, with its chain). Its
 * private key is never shown. The CRL it signs lists every certificate an erase revoked.
 */
const CA_DAYS = 3650;
/** Relying parties fetch the CRL again after a day at the latest. */
const CRL_NEXT_UPDATE_MS = 24 * 60 * 60 * 1000;

export interface IssuingCaInput {
  certificate: string;
  /** PEM; PKCS#8, SEC1 or PKCS#1. */
  privateKey: string;
  /** PEM certificates above the CA up to the root, in order. */
  chain?: string[];
}

export class IssuingCaService {
  readonly #deps: ServiceDeps;

  constructor(deps: ServiceDeps) {
    this.#deps = deps;
  }

  /** The instance's issuing CA, created now if it has none: under a lock, so nodes starting together make one. */
  async ensure(instance: InstanceRecord): Promise<IssuingCaRecord> {
    const store = this.#deps.store;
    const existing = await store.getIssuingCa(instance.id);
    if (existing !== undefined) return existing;
    return store.withLock(`issuing-ca/${instance.id}`, async () => {
      const again = await store.getIssuingCa(instance.id);
      if (again !== undefined) return again;
      const made = await (await peculiar()).issuer.createRootCertificate({ commonName: `provisiond issuing CA ${instance.idScope}`, days: CA_DAYS });
      const record: IssuingCaRecord = { certificate: made.certPem, chain: [], privateKey: made.keyPem, source: 'generated', createdDateTimeUtc: dpsTimestamp(this.#deps.now()) };
      // Insert-if-absent: on a single-writer dialect the lock is per process, and the row decides.
      await store.putIssuingCa(instance.id, record, false);
      return (await store.getIssuingCa(instance.id)) ?? record;
    });
  }

  /** The CA as the control plane shows it: certificates and where the CRL is, never the key. */
  async view(instance: InstanceRecord): Promise<JsonMap> {
    return this.#view(instance, await this.ensure(instance));
  }

  /**
   * The operator's own issuing CA. Certificates issued by the one it replaces no longer authenticate (their issuer is
   * no longer the instance's CA), so a device holding one registers with its first credential again.
   */
  async supply(instance: InstanceRecord, input: IssuingCaInput): Promise<JsonMap> {
    const now = this.#deps.now();
    const invalid = (message: string): ProvisioningError => new ProvisioningError('InvalidIssuingCa', message);
    if (/PRIVATE KEY/.test(input.certificate)) throw invalid('certificate holds a private key; send the key in privateKey.');
    const certificate = parseCertificate(input.certificate);
    if (!certificate.ca) throw invalid('The certificate is not a CA certificate (basicConstraints CA:true).');
    const problem = validityProblem(certificate, now, 'The certificate');
    if (problem !== undefined) throw invalid(`${problem}.`);
    let key;
    try {
      key = createPrivateKey(input.privateKey);
    } catch {
      throw invalid('privateKey is not a PEM private key (PKCS#8, SEC1 or PKCS#1).');
    }
    const publicOfKey = createPublicKey(key).export({ type: 'spki', format: 'der' });
    if (!publicOfKey.equals(certificate.publicKey.export({ type: 'spki', format: 'der' }))) throw invalid('privateKey is not the key of the certificate.');
    const chain = (input.chain ?? []).map((pem) => parseCertificate(pem));
    let child = certificate;
    for (const [index, parent] of chain.entries()) {
      if (!parent.ca || !child.verify(parent.publicKey)) throw invalid(`chain[${index}] did not sign the certificate before it.`);
      child = parent;
    }
    try {
      const { x509, issuer } = await peculiar();
      await issuer.importIssuerKey(input.privateKey, new x509.X509Certificate(certificate.raw));
    } catch {
      throw invalid('privateKey cannot sign (RSA or ECDSA P-256/P-384/P-521 keys only).');
    }
    const record: IssuingCaRecord = {
      certificate: toPem(certificate),
      chain: chain.map((cert) => toPem(cert)),
      privateKey: key.export({ type: 'pkcs8', format: 'pem' }).toString(),
      source: 'operator',
      createdDateTimeUtc: dpsTimestamp(now),
    };
    await this.#deps.store.putIssuingCa(instance.id, record, true);
    return this.#view(instance, record);
  }

  /** The CRL (DER): every certificate of this CA an erase revoked, signed by the CA, next update in a day. */
  async crl(instance: InstanceRecord): Promise<Buffer> {
    const ca = await this.ensure(instance);
    const { x509, issuer } = await peculiar();
    const caCert = new x509.X509Certificate(ca.certificate);
    const signing = await issuer.importIssuerKey(ca.privateKey, caCert);
    const now = this.#deps.now();
    const revoked = await this.#deps.store.listRevokedCertificates(instance.id);
    const crl = await x509.X509CrlGenerator.create({
      issuer: caCert.subject,
      thisUpdate: now,
      nextUpdate: new Date(now.getTime() + CRL_NEXT_UPDATE_MS),
      signingAlgorithm: signing.algorithm,
      signingKey: signing.key,
      extensions: [await x509.AuthorityKeyIdentifierExtension.create(caCert)],
      entries: revoked.map((entry) => ({ serialNumber: entry.serialNumber, revocationDate: new Date(entry.revokedDateTimeUtc), reason: x509.X509CrlReason.cessationOfOperation })),
    });
    return Buffer.from(crl.rawData);
  }

  /** Where relying parties fetch the CRL: the device API host, `/crl/{idScope}.crl` (no credential needed). */
  crlUrl(instance: InstanceRecord): string | undefined {
    const host = this.#deps.config.hostNames[0];
    if (host === undefined) return undefined;
    const url = new URL(`https://${host}`);
    if (this.#deps.config.httpsPort !== 443) url.port = String(this.#deps.config.httpsPort);
    url.pathname = `/crl/${encodeURIComponent(instance.idScope)}.crl`;
    return url.toString();
  }

  #view(instance: InstanceRecord, ca: IssuingCaRecord): JsonMap {
    const crlUrl = this.crlUrl(instance);
    return {
      certificate: ca.certificate,
      info: certificateInfo(new X509Certificate(ca.certificate)),
      chain: ca.chain,
      source: ca.source,
      createdDateTimeUtc: ca.createdDateTimeUtc,
      ...(crlUrl === undefined ? {} : { crlUrl }),
    };
  }
}
