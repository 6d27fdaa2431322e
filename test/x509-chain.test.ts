import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { before, describe, test } from 'node:test';
import { proofOfPossessionProblem, walkCertificateChain, type ChainAnchor, type ChainWalkInput } from '../src/domain/x509-chain.js';
import {
  createDeviceCertificate,
  createIntermediateCertificate,
  createRootCertificate,
  createSelfSignedDeviceCertificate,
  createVerificationCertificate,
  type CertificateAndKey,
} from '../src/tls/x509-issuer.js';
import { forgeDeviceCertificate } from './forged-certificates.js';

/**
 * The chain walk (src/domain/x509-chain.ts) as a table: each case is a presented chain, the enrolled candidates and
 * the verdict, either the entry that decides or the words the refusal's reason must contain.
 */
const DAY = 24 * 60 * 60 * 1000;
const now = new Date();

interface Pki {
  root: CertificateAndKey;
  intermediate: CertificateAndKey;
  device: CertificateAndKey;
  otherRoot: CertificateAndKey;
  otherDevice: CertificateAndKey;
  expiredDevice: CertificateAndKey;
  futureDevice: CertificateAndKey;
  wrongCnDevice: CertificateAndKey;
  selfSigned: CertificateAndKey;
  expiredIntermediate: CertificateAndKey;
  deviceUnderExpired: CertificateAndKey;
  rootSignedDevice: CertificateAndKey;
  leafSignedDevice: CertificateAndKey;
  /** Same subject as the intermediate, other key: a forger's look-alike. */
  impostor: CertificateAndKey;
  /** Names the intermediate as issuer, by name and authority key identifier, but signed by another key. */
  forged: CertificateAndKey;
}
let pki: Pki;
const cert = (pair: CertificateAndKey): X509Certificate => new X509Certificate(pair.certPem);

before(async () => {
  const root = await createRootCertificate({ commonName: 'Test Root' });
  const intermediate = await createIntermediateCertificate(root, { commonName: 'Test Intermediate' });
  const otherRoot = await createRootCertificate({ commonName: 'Other Root' });
  const expiredIntermediate = await createIntermediateCertificate(root, {
    commonName: 'Expired Intermediate',
    notBefore: new Date(now.getTime() - 10 * DAY),
    notAfter: new Date(now.getTime() - DAY),
  });
  const device = await createDeviceCertificate(intermediate, { commonName: 'dev-1' });
  pki = {
    root,
    intermediate,
    device,
    otherRoot,
    otherDevice: await createDeviceCertificate(otherRoot, { commonName: 'dev-1' }),
    expiredDevice: await createDeviceCertificate(intermediate, {
      commonName: 'dev-1',
      notBefore: new Date(now.getTime() - 10 * DAY),
      notAfter: new Date(now.getTime() - DAY),
    }),
    futureDevice: await createDeviceCertificate(intermediate, { commonName: 'dev-1', notBefore: new Date(now.getTime() + DAY), days: 10 }),
    wrongCnDevice: await createDeviceCertificate(intermediate, { commonName: 'dev-2' }),
    selfSigned: await createSelfSignedDeviceCertificate({ commonName: 'dev-1' }),
    expiredIntermediate,
    deviceUnderExpired: await createDeviceCertificate(expiredIntermediate, { commonName: 'dev-1' }),
    rootSignedDevice: await createDeviceCertificate(root, { commonName: 'dev-1' }),
    leafSignedDevice: await createDeviceCertificate(device, { commonName: 'dev-1' }),
    impostor: await createIntermediateCertificate(otherRoot, { commonName: 'Test Intermediate' }),
    forged: await forgeDeviceCertificate(intermediate, 'dev-1'),
  };
});

type Entry = string;
const anchor = (pair: CertificateAndKey, entry: Entry, unusable?: string): ChainAnchor<Entry> => ({
  certificate: cert(pair),
  entry,
  label: `enrollment group '${entry}'`,
  ...(unusable === undefined ? {} : { unusable }),
});

interface Case {
  name: string;
  input: () => Omit<ChainWalkInput<Entry>, 'now' | 'registrationId'> & { registrationId?: string };
  /** The deciding entry, or a pattern the refusal reason must match. */
  expect: Entry | RegExp;
}

const cases: Case[] = [
  {
    name: 'self-signed leaf of an individual enrollment',
    input: () => ({ chain: [cert(pki.selfSigned)], individual: { entry: 'ind', label: "enrollment 'dev-1'", certificates: [cert(pki.selfSigned)] }, anchors: [] }),
    expect: 'ind',
  },
  {
    name: 'CA-signed leaf as the secondary certificate of an individual enrollment',
    input: () => ({
      chain: [cert(pki.device), cert(pki.intermediate)],
      individual: { entry: 'ind', label: "enrollment 'dev-1'", certificates: [cert(pki.selfSigned), cert(pki.device)] },
      anchors: [],
    }),
    expect: 'ind',
  },
  {
    name: 'an individual enrollment decides alone: another leaf is refused even when a group would take it',
    input: () => ({
      chain: [cert(pki.device), cert(pki.intermediate)],
      individual: { entry: 'ind', label: "enrollment 'dev-1'", certificates: [cert(pki.selfSigned)] },
      anchors: [anchor(pki.intermediate, 'grp')],
    }),
    expect: /neither the primary nor the secondary certificate of enrollment 'dev-1'/,
  },
  {
    name: 'an individual enrollment of another attestation type refuses',
    input: () => ({
      chain: [cert(pki.selfSigned)],
      individual: { entry: 'ind', label: "enrollment 'dev-1'", certificates: [], unusable: "enrollment 'dev-1' uses symmetricKey attestation" },
      anchors: [],
    }),
    expect: /uses symmetricKey attestation/,
  },
  {
    name: 'group by the presented intermediate',
    input: () => ({ chain: [cert(pki.device), cert(pki.intermediate)], anchors: [anchor(pki.intermediate, 'by-intermediate')] }),
    expect: 'by-intermediate',
  },
  {
    name: 'group by the intermediate, which the device did not send: its direct issuer may be the enrolled one',
    input: () => ({ chain: [cert(pki.device)], anchors: [anchor(pki.intermediate, 'by-intermediate')] }),
    expect: 'by-intermediate',
  },
  {
    name: 'group by the root, chain leaf + intermediate (the root not sent)',
    input: () => ({ chain: [cert(pki.device), cert(pki.intermediate)], anchors: [anchor(pki.root, 'by-root')] }),
    expect: 'by-root',
  },
  {
    name: 'group by the root, full chain including the root',
    input: () => ({ chain: [cert(pki.device), cert(pki.intermediate), cert(pki.root)], anchors: [anchor(pki.root, 'by-root')] }),
    expect: 'by-root',
  },
  {
    name: 'group by the root, but the chain omits the intermediate',
    input: () => ({ chain: [cert(pki.device)], anchors: [anchor(pki.root, 'by-root')] }),
    expect: /no enrollment names the leaf or a certificate of its chain/,
  },
  {
    name: 'the first entry walking up decides: the intermediate group, though the root group is listed first',
    input: () => ({ chain: [cert(pki.device), cert(pki.intermediate)], anchors: [anchor(pki.root, 'by-root'), anchor(pki.intermediate, 'by-intermediate')] }),
    expect: 'by-intermediate',
  },
  {
    name: 'an unverified CA does not decide; a usable anchor higher up does',
    input: () => ({
      chain: [cert(pki.device), cert(pki.intermediate)],
      anchors: [anchor(pki.intermediate, 'ca-ref', 'CA certificate is not verified'), anchor(pki.root, 'by-root')],
    }),
    expect: 'by-root',
  },
  {
    name: 'only an unverified CA: refused, and the reason says so',
    input: () => ({ chain: [cert(pki.device), cert(pki.intermediate)], anchors: [anchor(pki.root, 'ca-ref', "CA certificate 'root' is not verified")] }),
    expect: /CA certificate 'root' is not verified/,
  },
  {
    name: 'a device of an unrelated CA',
    input: () => ({ chain: [cert(pki.otherDevice)], anchors: [anchor(pki.root, 'by-root'), anchor(pki.intermediate, 'by-intermediate')] }),
    expect: /no enrollment names the leaf.*issued by CN=Other Root/,
  },
  {
    name: 'an expired leaf',
    input: () => ({ chain: [cert(pki.expiredDevice), cert(pki.intermediate)], anchors: [anchor(pki.intermediate, 'grp')] }),
    expect: /the leaf certificate \(CN=dev-1\) expired at/,
  },
  {
    name: 'a leaf not yet valid',
    input: () => ({ chain: [cert(pki.futureDevice), cert(pki.intermediate)], anchors: [anchor(pki.intermediate, 'grp')] }),
    expect: /is not valid before/,
  },
  {
    name: 'an expired leaf of an individual enrollment',
    input: () => ({ chain: [cert(pki.expiredDevice)], individual: { entry: 'ind', label: 'e', certificates: [cert(pki.expiredDevice)] }, anchors: [] }),
    expect: /expired at/,
  },
  {
    name: 'a CN that differs from the registration ID',
    input: () => ({ chain: [cert(pki.wrongCnDevice), cert(pki.intermediate)], anchors: [anchor(pki.intermediate, 'grp')] }),
    expect: /CN 'dev-2' differs from the registration ID 'dev-1'/,
  },
  {
    name: 'the CN compares case-insensitively, as registration IDs do',
    input: () => ({ registrationId: 'DEV-1', chain: [cert(pki.device), cert(pki.intermediate)], anchors: [anchor(pki.intermediate, 'grp')] }),
    expect: 'grp',
  },
  {
    name: 'an expired intermediate on the path',
    input: () => ({ chain: [cert(pki.deviceUnderExpired), cert(pki.expiredIntermediate)], anchors: [anchor(pki.root, 'by-root')] }),
    expect: /certificate 1 of the presented chain \(CN=Expired Intermediate\) expired/,
  },
  {
    name: 'an expired enrolled certificate',
    input: () => ({ chain: [cert(pki.deviceUnderExpired)], anchors: [anchor(pki.expiredIntermediate, 'grp')] }),
    expect: /the certificate of enrollment group 'grp' \(CN=Expired Intermediate\) expired/,
  },
  {
    name: 'a presented certificate that did not issue the one below it',
    input: () => ({ chain: [cert(pki.device), cert(pki.otherRoot)], anchors: [anchor(pki.otherRoot, 'other')] }),
    expect: /certificate 1 of the presented chain \(CN=Other Root\) did not issue CN=dev-1/,
  },
  {
    name: 'a look-alike intermediate (same name, other key) does not verify',
    input: () => ({ chain: [cert(pki.device), cert(pki.impostor)], anchors: [anchor(pki.impostor, 'impostor')] }),
    expect: /did not sign CN=dev-1 \(the signature does not verify\)|did not issue CN=dev-1/,
  },
  {
    name: 'a leaf with the right issuer name and authority key identifier but signed by another key',
    input: () => ({ chain: [cert(pki.forged), cert(pki.intermediate)], anchors: [anchor(pki.root, 'by-root')] }),
    expect: /did not sign CN=dev-1 \(the signature does not verify\)/,
  },
  {
    name: 'the same forged leaf under the enrolled intermediate itself, sent or not',
    input: () => ({ chain: [cert(pki.forged)], anchors: [anchor(pki.intermediate, 'by-intermediate')] }),
    expect: /did not sign CN=dev-1 \(the signature does not verify\)|no enrollment names the leaf/,
  },
  {
    name: 'a look-alike enrolled certificate is not the issuer of an unsent link',
    input: () => ({ chain: [cert(pki.device)], anchors: [anchor(pki.impostor, 'impostor')] }),
    expect: /no enrollment names the leaf/,
  },
  {
    name: 'a device certificate cannot act as a CA',
    input: () => ({ chain: [cert(pki.leafSignedDevice), cert(pki.device)], anchors: [anchor(pki.device, 'leaf-as-ca')] }),
    expect: /is not a CA certificate/,
  },
  {
    name: 'a device directly under the enrolled root',
    input: () => ({ chain: [cert(pki.rootSignedDevice)], anchors: [anchor(pki.root, 'by-root')] }),
    expect: 'by-root',
  },
  {
    name: 'no certificate at all',
    input: () => ({ chain: [], anchors: [anchor(pki.root, 'by-root')] }),
    expect: /no client certificate/,
  },
  {
    name: 'a self-signed leaf with no individual enrollment',
    input: () => ({ chain: [cert(pki.selfSigned)], anchors: [anchor(pki.root, 'by-root')] }),
    expect: /no enrollment names the leaf/,
  },
];

describe('walkCertificateChain', () => {
  for (const item of cases) {
    test(item.name, () => {
      const { registrationId, ...rest } = item.input();
      const verdict = walkCertificateChain({ ...rest, registrationId: registrationId ?? 'dev-1', now });
      if (typeof item.expect === 'string') {
        assert.equal(verdict.ok ? verdict.entry : `refused: ${verdict.reason}`, item.expect);
      } else {
        assert.equal(verdict.ok, false, `expected a refusal, got ${verdict.ok ? verdict.entry : ''}`);
        if (!verdict.ok) assert.match(verdict.reason, item.expect);
      }
    });
  }

  test('a group verdict names the enrolled certificate that vouched, and the leaf', () => {
    const verdict = walkCertificateChain({ chain: [cert(pki.device), cert(pki.intermediate)], registrationId: 'dev-1', now, anchors: [anchor(pki.root, 'by-root')] });
    assert.ok(verdict.ok);
    assert.ok(verdict.signer?.raw.equals(cert(pki.root).raw));
    assert.ok(verdict.leaf.raw.equals(cert(pki.device).raw));
  });
});

describe('proofOfPossessionProblem', () => {
  test('a certificate signed by the CA whose CN is the code proves possession', async () => {
    const verification = await createVerificationCertificate(pki.root, 'ABC123');
    assert.equal(proofOfPossessionProblem(cert(pki.root), cert(verification), 'ABC123', now), undefined);
    assert.equal(proofOfPossessionProblem(cert(pki.root), cert(verification), 'abc123', now), undefined, 'the code compares case-insensitively');
  });
  test('another CN, another signer, or an expired certificate does not', async () => {
    const other = await createVerificationCertificate(pki.otherRoot, 'ABC123');
    const wrongCode = await createVerificationCertificate(pki.root, 'XYZ');
    const expired = await createDeviceCertificate(pki.root, { commonName: 'ABC123', notBefore: new Date(now.getTime() - 3 * DAY), notAfter: new Date(now.getTime() - DAY) });
    assert.match(proofOfPossessionProblem(cert(pki.root), cert(wrongCode), 'ABC123', now) ?? '', /CN must be the verification code 'ABC123', not 'XYZ'/);
    assert.match(proofOfPossessionProblem(cert(pki.root), cert(other), 'ABC123', now) ?? '', /the CA certificate did not issue CN=ABC123/);
    assert.match(proofOfPossessionProblem(cert(pki.root), cert(expired), 'ABC123', now) ?? '', /expired/);
  });
});
