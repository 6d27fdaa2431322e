import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { CertificateAndKey } from './x509-issuer.js';

/**
 * The development CA created on first start under `<dataDir>/tls/` (ca.pem + ca.key): the zero-config issuer of the
 * server certificate, which devices and SDKs trust through NODE_EXTRA_CA_CERTS. A CA placed there beforehand is used
 * as it is. server-certificate.ts decides whether it is needed at all (not when the operator brings a certificate).
 */
export interface TlsMaterial {
  /** What to point NODE_EXTRA_CA_CERTS at. */
  caPath: string;
  ca: string;
  cert: string;
  key: string;
}

/** Write then rename: a reader (or a crash) never sees half a key or certificate. */
function writeAtomically(path: string, text: string, mode = 0o644): void {
  const temporary = `${path}.${process.pid}.tmp`;
  writeFileSync(temporary, text, { mode });
  renameSync(temporary, path);
}

export async function ensureDevCa(tlsDir: string): Promise<CertificateAndKey> {
  mkdirSync(tlsDir, { recursive: true, mode: 0o700 });
  const caPath = join(tlsDir, 'ca.pem');
  const caKeyPath = join(tlsDir, 'ca.key');
  if (existsSync(caPath) && existsSync(caKeyPath)) {
    return { certPem: readFileSync(caPath, 'utf8'), keyPem: readFileSync(caKeyPath, 'utf8') };
  }
  // @peculiar/x509 is loaded only to make certificates, not by every start that finds them made (issue 12, P6).
  const { createRootCertificate } = await import('./x509-issuer.js');
  const ca = await createRootCertificate({ commonName: 'provisiond development CA', days: 3650 });
  writeAtomically(caKeyPath, ca.keyPem, 0o600);
  writeAtomically(caPath, ca.certPem);
  return ca;
}
