import { webcrypto } from 'node:crypto';
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';

x509.cryptoProvider.set(webcrypto as never);

/** The key types the CSR tests use (credential-policy names). */
export type CsrKeyType = 'ecP256' | 'ecP384' | 'rsa2048';
type KeyGenParams = webcrypto.EcKeyGenParams | webcrypto.RsaHashedKeyGenParams;
const ALGORITHMS: Record<CsrKeyType, KeyGenParams> = {
  ecP256: { name: 'ECDSA', namedCurve: 'P-256' },
  ecP384: { name: 'ECDSA', namedCurve: 'P-384' },
  rsa2048: { name: 'RSASSA-PKCS1-v1_5', modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]), hash: 'SHA-256' },
};

/** A device's key pair and its CSR (base64 DER, CN = the given name), as a device would make them. */
export async function makeCsr(commonName: string, keyType: CsrKeyType = 'ecP256'): Promise<{ csr: string; keyPem: string; publicKeyDer: Buffer }> {
  const algorithm = ALGORITHMS[keyType];
  const keys = (await webcrypto.subtle.generateKey(algorithm, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  const request = await x509.Pkcs10CertificateRequestGenerator.create({
    name: `CN=${commonName}`,
    keys,
    signingAlgorithm: algorithm.name === 'ECDSA' ? { name: 'ECDSA', hash: keyType === 'ecP384' ? 'SHA-384' : 'SHA-256' } : algorithm,
  });
  const pkcs8 = await webcrypto.subtle.exportKey('pkcs8', keys.privateKey);
  const spki = await webcrypto.subtle.exportKey('spki', keys.publicKey);
  return { csr: Buffer.from(request.rawData).toString('base64'), keyPem: x509.PemConverter.encode(pkcs8, 'PRIVATE KEY'), publicKeyDer: Buffer.from(spki) };
}
