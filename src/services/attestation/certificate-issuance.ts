import type { CredentialPolicyRecord } from '../../store/store.js';
import type { ServiceDeps } from '../deps.js';
import { checkCsr, issueCertificate, type CheckedCsr, type IssuedCertificate } from './csr.js';
import type { DeviceMatch } from './device-match.js';
import type { IssuingCaService } from './issuing-ca.js';

/**
 * The registration flow's view of certificate issuance (docs/certificate-issuance.md): `check` when the register
 * request arrives (a bad CSR is a 400 before any operation exists), `issue` as the flow's step before the hub write,
 * and the device's hub identity that the issued certificate authenticates.
 */
export class CertificateIssuance {
  readonly #deps: ServiceDeps;
  readonly #ca: IssuingCaService;

  constructor(deps: ServiceDeps, ca: IssuingCaService) {
    this.#deps = deps;
    this.#ca = ca;
  }

  async check(match: DeviceMatch, csr: string): Promise<CheckedCsr> {
    const name = match.enrollment.doc.credentialPolicyName;
    const policy: CredentialPolicyRecord | undefined = name === undefined ? undefined : await this.#deps.store.getCredentialPolicy(match.instance.id, name);
    return checkCsr(csr, match, policy);
  }

  async issue(match: DeviceMatch, checked: CheckedCsr): Promise<IssuedCertificate> {
    const ca = await this.#ca.ensure(match.instance);
    return issueCertificate(
      ca,
      checked,
      { registrationId: match.registrationId, enrollmentGroupId: match.enrollment.kind === 'group' ? match.enrollment.doc.enrollmentGroupId : undefined },
      { now: this.#deps.now(), crlUrl: this.#ca.crlUrl(match.instance) },
    );
  }
}

/**
 * The device asked for a certificate to use: its hub identity becomes the issued certificate's (self-signed
 * thumbprint, as IoT Hub checks an individual X.509 device), so it connects to its hub with the certificate at once.
 */
export function withIssuedCredential(match: DeviceMatch, issued: IssuedCertificate | undefined): DeviceMatch {
  if (issued === undefined || issued.record.sha1Thumbprint === undefined) return match;
  return { ...match, hubAuthentication: { type: 'selfSigned', x509Thumbprint: { primaryThumbprint: issued.record.sha1Thumbprint } } };
}
