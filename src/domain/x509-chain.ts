import type { X509Certificate } from 'node:crypto';
import { commonName, formatName } from './x509.js';

/**
 * X.509 device attestation as DPS does it (dps-wire.md §4.4, §8.3, §12.12), as pure functions over node:crypto
 * certificates: which enrollment entry a presented chain proves, and whether a verification certificate proves
 * possession of a CA's key. The caller gathers the candidates from the store; nothing here does I/O.
 *
 * The walk goes from the leaf toward the root. The individual enrollment for the registration ID, when there is one,
 * decides alone (a disabled one blocks the device even under an enabled group). Otherwise the first enrollment group
 * found walking up decides: one whose signing certificate, or verified CA certificate, is a presented certificate or
 * the issuer of the last presented one. Every signature and validity period on the path is checked; a device must
 * present every certificate between its leaf and the enrolled one (DPS does not assume unsent intermediates).
 */
export interface ChainAnchor<E> {
  /** A signing certificate of an enrollment group, or a CA certificate one of its caReferences names. */
  certificate: X509Certificate;
  entry: E;
  /** Names the anchor in reasons, e.g. `enrollment group 'line-1' (signing certificate)`. */
  label: string;
  /** Set when the anchor may not vouch for devices (a CA certificate without proof of possession); says why. */
  unusable?: string;
}

export interface IndividualCandidate<E> {
  entry: E;
  label: string;
  /** The enrollment's client certificates (primary, secondary); empty when it is not an X.509 enrollment. */
  certificates: readonly X509Certificate[];
  /** Set when the enrollment cannot take certificates at all (another attestation type); says why. */
  unusable?: string;
}

export interface ChainWalkInput<E> {
  /** As the device presented it in the TLS handshake: the leaf first, then intermediates. */
  chain: readonly X509Certificate[];
  registrationId: string;
  now: Date;
  individual?: IndividualCandidate<E> | undefined;
  /** In the order ties at the same level are decided: the first usable anchor wins. */
  anchors: readonly ChainAnchor<E>[];
}

export type ChainVerdict<E> =
  | { ok: true; entry: E; leaf: X509Certificate; /** The enrolled certificate that vouched (groups only). */ signer?: X509Certificate }
  | { ok: false; reason: string };

export function walkCertificateChain<E>(input: ChainWalkInput<E>): ChainVerdict<E> {
  const { chain, now } = input;
  const leaf = chain[0];
  if (leaf === undefined) return refuse('the device presented no client certificate');
  const cn = commonName(leaf);
  if (cn === undefined) return refuse(`the leaf certificate (${describe(leaf)}) has no subject CN`);
  // The registration ID is the leaf's CN (dps-wire.md §4.4); IDs compare case-insensitively (§1).
  if (cn.toLowerCase() !== input.registrationId.toLowerCase()) {
    return refuse(`the leaf certificate's CN '${cn}' differs from the registration ID '${input.registrationId}'`);
  }
  const leafValidity = validityProblem(leaf, now, 'the leaf certificate');
  if (leafValidity !== undefined) return refuse(leafValidity);

  const individual = input.individual;
  if (individual !== undefined) {
    if (individual.unusable !== undefined) return refuse(individual.unusable);
    if (!individual.certificates.some((enrolled) => sameCertificate(enrolled, leaf))) {
      return refuse(`the leaf certificate (${thumbprintOf(leaf)}) is neither the primary nor the secondary certificate of ${individual.label}`);
    }
    return { ok: true, entry: individual.entry, leaf };
  }

  const notes: string[] = [];
  let child = leaf;
  for (let level = 1; ; level += 1) {
    const presented = chain[level];
    let candidates: ChainAnchor<E>[];
    if (presented !== undefined) {
      const link = issuerProblem(child, presented);
      if (link !== undefined) return refuse(`certificate ${level} of the presented chain (${describe(presented)}) ${link}`);
      const validity = validityProblem(presented, now, `certificate ${level} of the presented chain`);
      if (validity !== undefined) return refuse(validity);
      candidates = input.anchors.filter((anchor) => sameCertificate(anchor.certificate, presented));
    } else {
      // Past the presented chain: only the direct issuer of the last certificate may be an enrolled one.
      if (isSelfIssued(child)) break;
      candidates = input.anchors.filter((anchor) => issuerProblem(child, anchor.certificate) === undefined);
    }
    for (const candidate of candidates) if (candidate.unusable !== undefined) notes.push(candidate.unusable);
    const chosen = candidates.find((candidate) => candidate.unusable === undefined);
    if (chosen !== undefined) {
      const validity = validityProblem(chosen.certificate, now, `the certificate of ${chosen.label}`);
      if (validity !== undefined) return refuse(validity);
      return { ok: true, entry: chosen.entry, leaf, signer: chosen.certificate };
    }
    if (presented === undefined) break;
    child = presented;
  }
  const last = chain[chain.length - 1] ?? leaf;
  return refuse(
    notes.length > 0
      ? notes.join('; ')
      : `no enrollment names the leaf or a certificate of its chain (the chain ends at ${describe(last)}, issued by ${formatName(last.issuer)})`,
  );
}

/**
 * Proof of possession of a CA's private key (DPS "verify certificate"): a certificate whose subject CN is the
 * verification code the service handed out, signed by the CA, and valid now. Returns what is wrong, if anything.
 */
export function proofOfPossessionProblem(ca: X509Certificate, verification: X509Certificate, code: string, now: Date): string | undefined {
  const cn = commonName(verification);
  if (cn === undefined || cn.toLowerCase() !== code.toLowerCase()) {
    return `the verification certificate's CN must be the verification code '${code}', not '${cn ?? ''}'`;
  }
  const issuer = issuerProblem(verification, ca);
  if (issuer !== undefined) return `the CA certificate ${issuer}`;
  return validityProblem(verification, now, 'the verification certificate');
}

/** Why `issuer` did not sign `child`, or undefined when it did (names, CA flag, signature). */
export function issuerProblem(child: X509Certificate, issuer: X509Certificate): string | undefined {
  // OpenSSL's issuer check: names and key identifiers match, and the key usage allows signing certificates.
  if (!child.checkIssued(issuer)) {
    if (child.issuer !== issuer.subject) return `did not issue ${describe(child)} (its issuer is ${formatName(child.issuer)})`;
    if (!issuer.ca) return notCa(child);
    return `did not issue ${describe(child)} (key identifiers or key usage do not match)`;
  }
  if (!issuer.ca) return notCa(child);
  if (!child.verify(issuer.publicKey)) return `did not sign ${describe(child)} (the signature does not verify)`;
  return undefined;
}

export function validityProblem(cert: X509Certificate, now: Date, what: string): string | undefined {
  const notBefore = new Date(cert.validFrom);
  const notAfter = new Date(cert.validTo);
  if (now.getTime() < notBefore.getTime()) return `${what} (${describe(cert)}) is not valid before ${notBefore.toISOString()}`;
  if (now.getTime() > notAfter.getTime()) return `${what} (${describe(cert)}) expired at ${notAfter.toISOString()}`;
  return undefined;
}

export function isSelfIssued(cert: X509Certificate): boolean {
  return cert.subject === cert.issuer;
}

export function sameCertificate(a: X509Certificate, b: X509Certificate): boolean {
  return a.raw.equals(b.raw);
}

function notCa(child: X509Certificate): string {
  return `is not a CA certificate (basicConstraints CA:true), so it cannot sign ${describe(child)}`;
}

function describe(cert: X509Certificate): string {
  return formatName(cert.subject) || thumbprintOf(cert);
}

function thumbprintOf(cert: X509Certificate): string {
  return `SHA-256 ${cert.fingerprint256.replaceAll(':', '')}`;
}

function refuse<E>(reason: string): ChainVerdict<E> {
  return { ok: false, reason };
}
