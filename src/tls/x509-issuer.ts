import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { createPrivateKey, webcrypto } from 'node:crypto';
import { isIP } from 'node:net';

x509.cryptoProvider.set(webcrypto as never);
type CryptoKey = webcrypto.CryptoKey;
type CryptoKeyPair = webcrypto.CryptoKeyPair;

/**
 * Certificates for trying X.509 attestation: roots, intermediates, device (leaf) certificates whose CN is the
 * registration ID, and proof-of-possession (verification) certificates. Used by `provisiond cert` and by the tests.
 * New keys are ECDSA P-256; an issuer may also be an RSA or ECDSA key made elsewhere (e.g. with openssl).
 */
export interface CertificateAndKey {
  certPem: string;
  /** PKCS#8 PEM. */
  keyPem: string;
}

export interface CertificateSpec {
  commonName: string;
  /** Defaults: valid from one minute ago for `days` (default 365) days. */
  notBefore?: Date;
  notAfter?: Date;
  days?: number;
}

const EC_P256 = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
const DAY_MS = 24 * 60 * 60 * 1000;

export async function createRootCertificate(spec: CertificateSpec): Promise<CertificateAndKey> {
  return selfSigned(spec, async (keys) => [...caExtensions(), await x509.SubjectKeyIdentifierExtension.create(keys.publicKey)]);
}

export async function createIntermediateCertificate(issuer: CertificateAndKey, spec: CertificateSpec): Promise<CertificateAndKey> {
  return issue(issuer, spec, caExtensions());
}

/** A device certificate: CN = registration ID, for TLS client authentication. */
export async function createDeviceCertificate(issuer: CertificateAndKey, spec: CertificateSpec): Promise<CertificateAndKey> {
  return issue(issuer, spec, deviceExtensions());
}

/** A self-signed device certificate (individual enrollments only). */
export async function createSelfSignedDeviceCertificate(spec: CertificateSpec): Promise<CertificateAndKey> {
  return selfSigned(spec, async () => deviceExtensions());
}

/** A TLS server certificate for these host names (DNS names or IP addresses), CN = the first. */
export async function createServerCertificate(issuer: CertificateAndKey, hostNames: readonly string[], days: number): Promise<CertificateAndKey> {
  return issue(issuer, { commonName: hostNames[0] ?? 'localhost', days }, serverExtensions(hostNames));
}

async function selfSigned(spec: CertificateSpec, extensions: (keys: CryptoKeyPair) => Promise<x509.Extension[]>): Promise<CertificateAndKey> {
  const keys = await webcrypto.subtle.generateKey(EC_P256, true, ['sign', 'verify']);
  const { notBefore, notAfter } = period(spec);
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serial(),
    name: distinguishedName(spec.commonName),
    notBefore,
    notAfter,
    signingAlgorithm: EC_P256,
    keys,
    extensions: await extensions(keys),
  });
  return pemPair(cert, keys.privateKey);
}

/** A proof-of-possession certificate for a CA: CN = the verification code, signed by the CA's key. */
export async function createVerificationCertificate(ca: CertificateAndKey, verificationCode: string): Promise<CertificateAndKey> {
  return issue(ca, { commonName: verificationCode, days: 30 }, deviceExtensions());
}

async function issue(issuer: CertificateAndKey, spec: CertificateSpec, extensions: x509.Extension[]): Promise<CertificateAndKey> {
  const issuerCert = new x509.X509Certificate(issuer.certPem);
  const signing = await importIssuerKey(issuer.keyPem, issuerCert);
  const keys = await webcrypto.subtle.generateKey(EC_P256, true, ['sign', 'verify']);
  const { notBefore, notAfter } = period(spec);
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serial(),
    subject: distinguishedName(spec.commonName),
    issuer: issuerCert.subject,
    notBefore,
    notAfter,
    signingAlgorithm: signing.algorithm,
    publicKey: keys.publicKey,
    signingKey: signing.key,
    extensions: [
      ...extensions,
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      await x509.AuthorityKeyIdentifierExtension.create(issuerCert),
    ],
  });
  return pemPair(cert, keys.privateKey);
}

function caExtensions(): x509.Extension[] {
  return [
    new x509.BasicConstraintsExtension(true, undefined, true),
    new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign | x509.KeyUsageFlags.digitalSignature, true),
  ];
}

function deviceExtensions(): x509.Extension[] {
  return [
    new x509.BasicConstraintsExtension(false, undefined, true),
    new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
    new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth]),
  ];
}

function serverExtensions(hostNames: readonly string[]): x509.Extension[] {
  return [
    new x509.BasicConstraintsExtension(false, undefined, true),
    new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment, true),
    new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
    new x509.SubjectAlternativeNameExtension(hostNames.map((name) => (isIP(name) === 0 ? { type: 'dns' as const, value: name } : { type: 'ip' as const, value: name }))),
  ];
}

/** A CN with the characters a distinguished name string reserves escaped. */
function distinguishedName(commonName: string): string {
  return `CN=${commonName.replace(/([,+"\\<>;=#])/g, '\\$1')}`;
}

function period(spec: CertificateSpec): { notBefore: Date; notAfter: Date } {
  const notBefore = spec.notBefore ?? new Date(Date.now() - 60_000);
  const notAfter = spec.notAfter ?? new Date(notBefore.getTime() + 60_000 + (spec.days ?? 365) * DAY_MS);
  return { notBefore, notAfter };
}

function serial(): string {
  return Buffer.from(webcrypto.getRandomValues(new Uint8Array(16))).toString('hex').replace(/^[89a-f]/, '1');
}

/** PEM text ends with a newline, so files and chains can be concatenated as they are. */
async function pemPair(cert: x509.X509Certificate, key: CryptoKey): Promise<CertificateAndKey> {
  const pkcs8 = await webcrypto.subtle.exportKey('pkcs8', key);
  return { certPem: `${cert.toString('pem').trimEnd()}\n`, keyPem: `${x509.PemConverter.encode(pkcs8, 'PRIVATE KEY').trimEnd()}\n` };
}

/** The issuer's key in any PEM form node:crypto reads (PKCS#8, SEC1, PKCS#1), with the matching signature algorithm. */
export async function importIssuerKey(keyPem: string, issuerCert: x509.X509Certificate): Promise<{ key: CryptoKey; algorithm: webcrypto.Algorithm }> {
  const pkcs8 = createPrivateKey(keyPem).export({ type: 'pkcs8', format: 'der' });
  const publicAlgorithm = issuerCert.publicKey.algorithm as webcrypto.Algorithm & { namedCurve?: string };
  if (publicAlgorithm.name === 'ECDSA') {
    const namedCurve = publicAlgorithm.namedCurve ?? 'P-256';
    const hash = namedCurve === 'P-384' ? 'SHA-384' : namedCurve === 'P-521' ? 'SHA-512' : 'SHA-256';
    const key = await webcrypto.subtle.importKey('pkcs8', pkcs8, { name: 'ECDSA', namedCurve }, false, ['sign']);
    return { key, algorithm: { name: 'ECDSA', hash } as webcrypto.Algorithm };
  }
  const algorithm = { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' };
  const key = await webcrypto.subtle.importKey('pkcs8', pkcs8, algorithm, false, ['sign']);
  return { key, algorithm };
}
