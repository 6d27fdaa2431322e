import { X509Certificate } from 'node:crypto';
import type { JsonMap, StoredCertificatePair, StoredEnrollment, StoredEnrollmentGroup } from '../../domain/enrollment.js';
import { ProvisioningError } from '../../domain/errors.js';
import { walkCertificateChain, type ChainAnchor, type ChainVerdict, type IndividualCandidate } from '../../domain/x509-chain.js';
import { certificateInfo, commonName } from '../../domain/x509.js';
import type { CaCertificateRecord, InstanceRecord, Store } from '../../store/store.js';
import type { AttestationDeps, DeviceMatch } from './device-match.js';

/** Every X.509 refusal looks the same on the wire (dps-wire.md §4.4); the precise reason goes to the server log. */
const invalidCertificate = (): ProvisioningError => new ProvisioningError('Unauthorized', 'Invalid certificate.');

/**
 * X.509 (dps-wire.md §4.4, §8.3): the TLS client certificate chain decides, walked from the leaf toward the root.
 * Individual devices get a self-signed-thumbprint identity on the hub (the enrollment's SHA-1 thumbprints, as DPS
 * writes them); group devices a certificateAuthority identity. The device ID of a group device is its CN.
 */
export async function authenticateX509(
  deps: AttestationDeps,
  instance: InstanceRecord,
  registrationId: string,
  chain: readonly X509Certificate[],
): Promise<DeviceMatch> {
  const store = deps.store;
  const [verdict, previous] = await Promise.all([
    walkX509Enrollments(store, instance, registrationId, chain, deps.now()),
    store.getRegistration(instance.id, registrationId),
  ]);
  if (!verdict.ok) {
    deps.logger.info({ idScope: instance.idScope, registrationId, reason: verdict.reason }, 'X.509 device refused');
    throw invalidCertificate();
  }
  const base = { instance, registrationId, attestationType: 'x509' as const, previous };
  const certificate = certificateInfo(verdict.leaf);
  const cn = commonName(verdict.leaf) ?? registrationId;
  const entry = verdict.entry;
  if (entry.kind === 'individual') {
    const attestation = entry.doc.attestation;
    const pair = attestation.type === 'x509' ? attestation.x509.clientCertificates : undefined;
    const primary = pair?.primary?.info.sha1Thumbprint ?? certificate.sha1Thumbprint;
    const secondary = pair?.secondary?.info.sha1Thumbprint;
    return {
      ...base,
      enrollment: entry,
      deviceId: entry.doc.deviceId ?? cn,
      hubAuthentication: { type: 'selfSigned', x509Thumbprint: { primaryThumbprint: primary, ...(secondary === undefined ? {} : { secondaryThumbprint: secondary }) } },
      resultSection: { x509: { certificateInfo: certificate } },
      runtimeContext: { x509: { certificateInfo: certificate } },
    };
  }
  const section: JsonMap = { certificateInfo: certificate, enrollmentGroupId: entry.doc.enrollmentGroupId };
  if (verdict.signer !== undefined) section.signingCertificateInfo = certificateInfo(verdict.signer);
  return {
    ...base,
    enrollment: entry,
    deviceId: cn,
    hubAuthentication: { type: 'certificateAuthority' },
    resultSection: { x509: section },
    runtimeContext: { x509: section },
  };
}

/**
 * Gathers what the X.509 chain walk (domain/x509-chain.ts) decides between, for one device of one instance: the
 * individual enrollment of the registration ID, and every X.509 enrollment group's trust anchors — its signing
 * certificates, or the instance's CA certificates its caReferences name (usable only once verified).
 */
export type X509Entry = { kind: 'individual'; doc: StoredEnrollment } | { kind: 'group'; doc: StoredEnrollmentGroup };

/** DPS allows 100 X.509 enrollment groups per instance (dps-wire.md §10); one page holds them all. */
const GROUP_PAGE = 1000;

export async function walkX509Enrollments(
  store: Store,
  instance: InstanceRecord,
  registrationId: string,
  chain: readonly X509Certificate[],
  now: Date,
): Promise<ChainVerdict<X509Entry>> {
  const [enrollment, groups, cas] = await Promise.all([
    store.getEnrollment(instance.id, registrationId),
    x509Groups(store, instance.id),
    store.listCaCertificates(instance.id),
  ]);
  const leaf = chain[0];
  let individual: IndividualCandidate<X509Entry> | undefined;
  if (enrollment !== undefined) {
    individual = individualCandidate(enrollment);
  } else if (leaf !== undefined) {
    // The leaf may be enrolled under another registration ID: say so rather than "no enrollment".
    const owner = await store.findCertificateOwner(instance.id, thumbprint256(leaf));
    if (owner?.kind === 'individual') {
      return { ok: false, reason: `the leaf certificate belongs to enrollment '${owner.id}', not to registration ID '${registrationId}'` };
    }
  }
  const casByName = new Map(cas.map((ca) => [ca.name.toLowerCase(), ca]));
  const anchors = groups.flatMap((group) => groupAnchors(group, casByName));
  return walkCertificateChain({ chain, registrationId, now, individual, anchors });
}

function individualCandidate(doc: StoredEnrollment): IndividualCandidate<X509Entry> {
  const label = `enrollment '${doc.registrationId}'`;
  const entry: X509Entry = { kind: 'individual', doc };
  const attestation = doc.attestation;
  if (attestation.type !== 'x509' || attestation.x509.clientCertificates === undefined) {
    return { entry, label, certificates: [], unusable: `${label} uses ${attestation.type} attestation, not X.509 client certificates` };
  }
  return { entry, label, certificates: certificatesOf(attestation.x509.clientCertificates) };
}

function groupAnchors(doc: StoredEnrollmentGroup, casByName: ReadonlyMap<string, CaCertificateRecord>): ChainAnchor<X509Entry>[] {
  if (doc.attestation.type !== 'x509') return [];
  const entry: X509Entry = { kind: 'group', doc };
  const { signingCertificates, caReferences } = doc.attestation.x509;
  const anchors: ChainAnchor<X509Entry>[] = [];
  if (signingCertificates !== undefined) {
    for (const certificate of certificatesOf(signingCertificates)) {
      anchors.push({ certificate, entry, label: `enrollment group '${doc.enrollmentGroupId}' (signing certificate)` });
    }
  }
  for (const name of [caReferences?.primary, caReferences?.secondary]) {
    if (name === undefined) continue;
    // A reference to a CA certificate that does not exist (any more) vouches for nothing.
    const ca = casByName.get(name.toLowerCase());
    if (ca === undefined) continue;
    const anchor: ChainAnchor<X509Entry> = {
      certificate: new X509Certificate(ca.certificate),
      entry,
      label: `enrollment group '${doc.enrollmentGroupId}' (CA certificate '${ca.name}')`,
    };
    if (!ca.isVerified) {
      anchor.unusable = `the chain reaches CA certificate '${ca.name}' of enrollment group '${doc.enrollmentGroupId}', which is not verified (proof of possession)`;
    }
    anchors.push(anchor);
  }
  return anchors;
}

function certificatesOf(pair: StoredCertificatePair): X509Certificate[] {
  return [pair.primary, pair.secondary].flatMap((slot) => (slot === undefined ? [] : [new X509Certificate(slot.certificate)]));
}

async function x509Groups(store: Store, instanceId: string): Promise<StoredEnrollmentGroup[]> {
  const groups: StoredEnrollmentGroup[] = [];
  let afterKey: string | undefined;
  do {
    const page = await store.queryEnrollmentGroups(instanceId, { filters: [{ field: 'attestationType', op: 'eq', values: ['x509'] }], afterKey, limit: GROUP_PAGE });
    groups.push(...page.items);
    afterKey = page.nextKey;
  } while (afterKey !== undefined);
  return groups;
}

function thumbprint256(cert: X509Certificate): string {
  return cert.fingerprint256.replaceAll(':', '');
}
