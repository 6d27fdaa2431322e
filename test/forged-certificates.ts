import * as x509 from '@peculiar/x509';
import { webcrypto } from 'node:crypto';
import type { CertificateAndKey } from '../src/tls/x509-issuer.js';
// The issuer module sets @peculiar/x509's crypto provider (and loads reflect-metadata) on import.
import '../src/tls/x509-issuer.js';

const EC_P256 = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;

/**
 * A device certificate that claims `issuer` in every field a chain walk compares without cryptography — issuer name
 * and authority key identifier (= the issuer's subject key identifier) — but is signed by a key of the forger's own.
 * Only verifying the signature with the issuer's public key tells it apart from a genuine one.
 */
export async function forgeDeviceCertificate(issuer: CertificateAndKey, commonName: string): Promise<CertificateAndKey> {
  const issuerCert = new x509.X509Certificate(issuer.certPem);
  const forgerKeys = await webcrypto.subtle.generateKey(EC_P256, true, ['sign', 'verify']);
  const deviceKeys = await webcrypto.subtle.generateKey(EC_P256, true, ['sign', 'verify']);
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: '0a1b2c3d4e5f',
    subject: `CN=${commonName}`,
    issuer: issuerCert.subject,
    notBefore: new Date(Date.now() - 60_000),
    notAfter: new Date(Date.now() + 30 * 24 * 60 * 60 * 1000),
    signingAlgorithm: EC_P256,
    publicKey: deviceKeys.publicKey,
    signingKey: forgerKeys.privateKey,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth]),
      await x509.SubjectKeyIdentifierExtension.create(deviceKeys.publicKey),
      await x509.AuthorityKeyIdentifierExtension.create(issuerCert),
    ],
  });
  const pkcs8 = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', deviceKeys.privateKey)).toString('base64');
  const keyPem = `-----BEGIN PRIVATE KEY-----\n${pkcs8.match(/.{1,64}/g)?.join('\n') ?? ''}\n-----END PRIVATE KEY-----\n`;
  return { certPem: `${cert.toString('pem').trimEnd()}\n`, keyPem };
}
