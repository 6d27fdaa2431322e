import { X509Certificate } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { isIP } from 'node:net';
import { createRootCertificate, createServerCertificate, type CertificateAndKey } from './x509-issuer.js';

/**
 * The development CA and server certificate created on first start under `<dataDir>/tls/`. Devices and SDKs trust
 * the CA (NODE_EXTRA_CA_CERTS); the server certificate is re-issued when the configured host names change or it
 * nears expiry. A CA placed there beforehand (ca.pem + ca.key) is used as-is.
 */
export interface TlsMaterial {
  caPath: string;
  ca: string;
  cert: string;
  key: string;
}

const DAY_MS = 24 * 60 * 60 * 1000;

function serverCertificateFits(certPem: string, caPem: string, hostNames: readonly string[]): boolean {
  const cert = new X509Certificate(certPem);
  if (!cert.checkIssued(new X509Certificate(caPem))) return false;
  if (new Date(cert.validTo).getTime() - Date.now() < 30 * DAY_MS) return false;
  return hostNames.every((name) => (isIP(name) === 0 ? cert.checkHost(name) !== undefined : cert.checkIP(name) !== undefined));
}

/** Write then rename: a reader (or a crash) never sees half a key or certificate. */
function writeAtomically(path: string, text: string, mode = 0o644): void {
  const temporary = `${path}.${process.pid}.tmp`;
  writeFileSync(temporary, text, { mode });
  renameSync(temporary, path);
}

export async function ensureTlsMaterial(dataDir: string, hostNames: readonly string[]): Promise<TlsMaterial> {
  const dir = join(dataDir, 'tls');
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const caPath = join(dir, 'ca.pem');
  const caKeyPath = join(dir, 'ca.key');
  const certPath = join(dir, 'server.pem');
  const keyPath = join(dir, 'server.key');
  let ca: CertificateAndKey;
  if (existsSync(caPath) && existsSync(caKeyPath)) {
    ca = { certPem: readFileSync(caPath, 'utf8'), keyPem: readFileSync(caKeyPath, 'utf8') };
  } else {
    ca = await createRootCertificate({ commonName: 'provisiond development CA', days: 3650 });
    writeAtomically(caKeyPath, ca.keyPem, 0o600);
    writeAtomically(caPath, ca.certPem);
  }
  const haveServer = existsSync(certPath) && existsSync(keyPath);
  if (!haveServer || !serverCertificateFits(readFileSync(certPath, 'utf8'), ca.certPem, hostNames)) {
    const server = await createServerCertificate(ca, hostNames, 825);
    writeAtomically(keyPath, server.keyPem, 0o600);
    writeAtomically(certPath, server.certPem);
  }
  return { caPath, ca: ca.certPem, cert: readFileSync(certPath, 'utf8'), key: readFileSync(keyPath, 'utf8') };
}
