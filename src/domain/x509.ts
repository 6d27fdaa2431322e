import { X509Certificate, createHash } from 'node:crypto';
import { ProvisioningError } from './errors.js';
import { dpsTimestamp } from './time.js';
import type { X509CertificateInfo } from './wire.js';

/**
 * Certificates arrive as PEM, base64 of PEM or base64 of DER (dps-wire.md §3, X509CertificateWithInfo). Private key
 * material is refused outright so it can never be stored or echoed.
 */
export function parseCertificate(text: string): X509Certificate {
  if (/PRIVATE KEY/.test(text)) {
    throw new ProvisioningError('InvalidCertificate', 'The certificate text contains a private key; send only the certificate.');
  }
  let der: Buffer | undefined;
  const trimmed = text.trim();
  if (trimmed.startsWith('-----BEGIN')) {
    der = pemToDer(trimmed);
  } else if (/^[A-Za-z0-9+/=\s]+$/.test(trimmed)) {
    const decoded = Buffer.from(trimmed.replace(/\s+/g, ''), 'base64');
    const asText = decoded.toString('latin1');
    const isPem = asText.trimStart().startsWith('-----BEGIN');
    // Base64 of PEM may carry a key after the certificate, or be only a key: refused like PEM text.
    if (isPem && asText.includes('PRIVATE KEY')) {
      throw new ProvisioningError('InvalidCertificate', 'The certificate text contains a private key; send only the certificate.');
    }
    der = isPem ? pemToDer(asText) : decoded;
  }
  if (der === undefined || der.length === 0) {
    throw new ProvisioningError('InvalidCertificate', 'The certificate must be PEM, base64 of PEM or base64 of DER.');
  }
  try {
    return new X509Certificate(der);
  } catch {
    throw new ProvisioningError('InvalidCertificate', 'The certificate could not be parsed as X.509.');
  }
}

function pemToDer(pem: string): Buffer | undefined {
  const match = /-----BEGIN CERTIFICATE-----([\s\S]+?)-----END CERTIFICATE-----/.exec(pem);
  if (match === null || match[1] === undefined) {
    if (/PRIVATE KEY/.test(pem)) {
      throw new ProvisioningError('InvalidCertificate', 'The certificate text contains a private key; send only the certificate.');
    }
    return undefined;
  }
  return Buffer.from(match[1].replace(/\s+/g, ''), 'base64');
}

/** Distinguished names the way DPS shows them: `CN=device, O=Org`. */
export function formatName(name: string): string {
  return name.split('\n').filter((part) => part.length > 0).join(', ');
}

export function thumbprints(cert: X509Certificate): { sha1: string; sha256: string } {
  return {
    sha1: createHash('sha1').update(cert.raw).digest('hex').toUpperCase(),
    sha256: createHash('sha256').update(cert.raw).digest('hex').toUpperCase(),
  };
}

/** The X.509 version from the DER: tbsCertificate starts with an explicit [0] tag only for v2/v3. */
function certificateVersion(der: Buffer): number {
  let offset = 0;
  const skipHeader = (): void => {
    offset += 1;
    const first = der[offset] ?? 0;
    offset += first & 0x80 ? 1 + (first & 0x7f) : 1;
  };
  skipHeader(); // Certificate SEQUENCE
  skipHeader(); // tbsCertificate SEQUENCE
  if (der[offset] !== 0xa0) return 1;
  skipHeader(); // [0]
  // INTEGER tag, length 1, value
  return (der[offset + 2] ?? 0) + 1;
}

export function certificateInfo(cert: X509Certificate): X509CertificateInfo {
  const { sha1, sha256 } = thumbprints(cert);
  return {
    subjectName: formatName(cert.subject),
    sha1Thumbprint: sha1,
    sha256Thumbprint: sha256,
    issuerName: formatName(cert.issuer),
    notBeforeUtc: dpsTimestamp(new Date(cert.validFrom)),
    notAfterUtc: dpsTimestamp(new Date(cert.validTo)),
    serialNumber: cert.serialNumber.toUpperCase(),
    version: certificateVersion(cert.raw),
  };
}

/** The subject's common name, if any. */
export function commonName(cert: X509Certificate): string | undefined {
  for (const part of cert.subject.split('\n')) {
    if (part.startsWith('CN=')) return part.slice(3);
  }
  return undefined;
}

export function toPem(cert: X509Certificate): string {
  return cert.toString();
}
