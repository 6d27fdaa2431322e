import { createHash, createPrivateKey, X509Certificate } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { ensureDevCa, type TlsMaterial } from './dev-ca.js';

/**
 * Which certificate the listeners serve, and where it comes from:
 *
 * - **operator**: a certificate and key the operator put in place — `tlsCertFile`/`tlsKeyFile`, or
 *   `<dataDir>/tls/server.pem` + `server.key` that provisiond did not write. Used exactly as they are, never
 *   replaced: devices with a fixed trust store can only ever trust what the operator chose.
 * - **devCa**: the zero-config default, a server certificate issued by the data directory's development CA. Only this
 *   one is re-issued (host names changed, expiry near). provisiond records the fingerprint of every certificate it
 *   writes in `server.issued`, so it can tell its own file from one the operator dropped over it.
 */
export interface ServerCertificateOptions {
  dataDir: string;
  hostNames: readonly string[];
  tlsCertFile?: string | undefined;
  tlsKeyFile?: string | undefined;
}

export type CertificateSource = 'devCa' | 'operator';

export interface ServedCertificate extends TlsMaterial {
  source: CertificateSource;
  certPath: string;
  keyPath: string;
  /** Problems an operator should hear about at start (and on every reload); the certificate is served anyway. */
  warnings: string[];
  subject: string;
  issuer: string;
  validTo: Date;
  fingerprint256: string;
}

export class CertificateError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CertificateError';
  }
}

const DAY_MS = 24 * 60 * 60 * 1000;
const WARN_EXPIRY_DAYS = 30;
/** The marker provisiond writes beside a server certificate it issued itself. */
const ISSUED_MARKER = 'server.issued';

export async function loadServerCertificate(options: ServerCertificateOptions, now: Date = new Date()): Promise<ServedCertificate> {
  const dir = join(options.dataDir, 'tls');
  if (options.tlsCertFile !== undefined || options.tlsKeyFile !== undefined) {
    if (options.tlsCertFile === undefined || options.tlsKeyFile === undefined) {
      throw new CertificateError('tlsCertFile and tlsKeyFile go together: set both or neither');
    }
    return served('operator', options.tlsCertFile, options.tlsKeyFile, options, now, operatorCa(options.tlsCertFile));
  }
  const certPath = join(dir, 'server.pem');
  const keyPath = join(dir, 'server.key');
  const markerPath = join(dir, ISSUED_MARKER);
  const present = existsSync(certPath) && existsSync(keyPath);
  if (present && !issuedByUs(certPath, markerPath, dir)) {
    return served('operator', certPath, keyPath, options, now, operatorCa(certPath));
  }
  const ca = await ensureDevCa(dir);
  if (!present || !devCertificateFits(readFileSync(certPath, 'utf8'), ca.certPem, options.hostNames, now)) {
    // Loaded only to make a certificate (issue 12, P6).
    const { createServerCertificate } = await import('./x509-issuer.js');
    const server = await createServerCertificate(ca, options.hostNames, 825);
    writeFileSync(keyPath, server.keyPem, { mode: 0o600 });
    writeFileSync(certPath, server.certPem);
    writeFileSync(markerPath, `${fingerprintOf(server.certPem)}\n`);
  }
  return served('devCa', certPath, keyPath, options, now, { caPath: join(dir, 'ca.pem'), ca: ca.certPem });
}

/**
 * What `provisiond info` says about the served certificate, read without creating or renewing anything (a running
 * server may hold the data directory): the operator's file, else the one in `<dataDir>/tls/`.
 */
export function describeServerCertificate(options: ServerCertificateOptions): { source: CertificateSource; path: string; subject: string; issuer: string; validTo: string } {
  const dir = join(options.dataDir, 'tls');
  const certPath = options.tlsCertFile ?? join(dir, 'server.pem');
  const source: CertificateSource =
    options.tlsCertFile !== undefined || (existsSync(certPath) && !issuedByUs(certPath, join(dir, ISSUED_MARKER), dir)) ? 'operator' : 'devCa';
  if (!existsSync(certPath)) return { source, path: certPath, subject: '', issuer: '', validTo: '' };
  const leaf = new X509Certificate(readFileSync(certPath, 'utf8'));
  return { source, path: certPath, subject: leaf.subject.replaceAll('\n', ', '), issuer: leaf.issuer.replaceAll('\n', ', '), validTo: new Date(leaf.validTo).toISOString() };
}

function served(
  source: CertificateSource,
  certPath: string,
  keyPath: string,
  options: ServerCertificateOptions,
  now: Date,
  trust: { caPath: string; ca: string },
): ServedCertificate {
  const cert = readPem(certPath, 'certificate');
  const key = readPem(keyPath, 'key');
  let leaf: X509Certificate;
  try {
    leaf = new X509Certificate(cert);
  } catch (error) {
    throw new CertificateError(`${certPath} is not a PEM certificate: ${(error as Error).message}`);
  }
  let matches: boolean;
  try {
    matches = leaf.checkPrivateKey(createPrivateKey(key));
  } catch (error) {
    throw new CertificateError(`${keyPath} is not a PEM private key: ${(error as Error).message}`);
  }
  if (!matches) throw new CertificateError(`the key in ${keyPath} does not belong to the certificate in ${certPath}`);
  const validTo = new Date(leaf.validTo);
  return {
    source,
    certPath,
    keyPath,
    cert,
    key,
    ...trust,
    warnings: certificateWarnings(leaf, certPath, options.hostNames, now),
    subject: leaf.subject.replaceAll('\n', ', '),
    issuer: leaf.issuer.replaceAll('\n', ', '),
    validTo,
    fingerprint256: leaf.fingerprint256,
  };
}

/** What an operator must fix before devices notice: names the certificate does not cover, and a near or past expiry. */
export function certificateWarnings(leaf: X509Certificate, certPath: string, hostNames: readonly string[], now: Date): string[] {
  const warnings: string[] = [];
  const uncovered = hostNames.filter((name) => !covers(leaf, name));
  if (uncovered.length > 0) {
    warnings.push(`the server certificate ${certPath} does not cover the configured host name(s) ${uncovered.join(', ')}: devices connecting by that name will refuse it`);
  }
  const daysLeft = (new Date(leaf.validTo).getTime() - now.getTime()) / DAY_MS;
  if (daysLeft <= 0) warnings.push(`the server certificate ${certPath} expired on ${new Date(leaf.validTo).toISOString()}: devices will refuse it`);
  else if (daysLeft < WARN_EXPIRY_DAYS) {
    warnings.push(`the server certificate ${certPath} expires in ${Math.floor(daysLeft)} day(s), on ${new Date(leaf.validTo).toISOString()}: renew it and send SIGHUP`);
  }
  return warnings;
}

function covers(cert: X509Certificate, name: string): boolean {
  return isIP(name) === 0 ? cert.checkHost(name) !== undefined : cert.checkIP(name) !== undefined;
}

/**
 * provisiond's own certificate: the marker holds its fingerprint. A data directory from before the marker existed
 * counts its certificate as provisiond's when the development CA there issued it.
 */
function issuedByUs(certPath: string, markerPath: string, dir: string): boolean {
  const certPem = readFileSync(certPath, 'utf8');
  if (existsSync(markerPath)) return readFileSync(markerPath, 'utf8').trim() === fingerprintOf(certPem);
  const caPath = join(dir, 'ca.pem');
  if (!existsSync(caPath) || !existsSync(join(dir, 'ca.key'))) return false;
  try {
    const ca = new X509Certificate(readFileSync(caPath, 'utf8'));
    return ca.subject === 'CN=provisiond development CA' && new X509Certificate(certPem).checkIssued(ca);
  } catch {
    return false;
  }
}

function devCertificateFits(certPem: string, caPem: string, hostNames: readonly string[], now: Date): boolean {
  const cert = new X509Certificate(certPem);
  if (!cert.checkIssued(new X509Certificate(caPem))) return false;
  if (new Date(cert.validTo).getTime() - now.getTime() < WARN_EXPIRY_DAYS * DAY_MS) return false;
  return hostNames.every((name) => covers(cert, name));
}

/**
 * For an operator's certificate there is no CA of ours to point NODE_EXTRA_CA_CERTS at; the certificate file is the
 * closest thing (a chain file that ends with its root works as a trust bundle as it is).
 */
function operatorCa(certPath: string): { caPath: string; ca: string } {
  return { caPath: certPath, ca: readFileSync(certPath, 'utf8') };
}

function readPem(path: string, what: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (error) {
    throw new CertificateError(`cannot read the server ${what} ${path}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
  }
}

function fingerprintOf(certPem: string): string {
  return createHash('sha256').update(new X509Certificate(certPem).raw).digest('hex');
}
