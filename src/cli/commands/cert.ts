import { X509Certificate } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Command } from 'commander';
import { isValidId } from '../../domain/ids.js';
import { formatName } from '../../domain/x509.js';
import type { CertificateAndKey } from '../../tls/x509-issuer.js';
import { CliError } from '../api-client.js';
import { formatFields } from '../output.js';
import type { CliIo } from '../program.js';
import { positiveInteger } from './common.js';

/**
 * `provisiond cert …`: test certificates for trying X.509 attestation in minutes (docs/x509.md). Local only — no
 * server, no connection string. Each certificate is written as `<name>.cert.pem` and `<name>.key.pem` (mode 0600);
 * below a root also `<name>.chain.pem`, the certificate followed by the intermediates above it (the root left out):
 * what a device presents in the TLS handshake. An issuer is named by its file prefix (`--ca ./certs/my-root` reads
 * `./certs/my-root.cert.pem` and `./certs/my-root.key.pem`); one made elsewhere (openssl, RSA or ECDSA) works too.
 */
interface OutputFlags {
  dir: string;
  days?: number;
  force?: boolean;
}
interface IssuedFlags extends OutputFlags {
  ca?: string;
}

/** The issuer pulls in an X.509 library; only these commands load it, so every other command starts faster. */
const loadIssuer = () => import('../../tls/x509-issuer.js');

/** The CN of an X.509 device is its registration ID, which X.509 limits to 64 characters (dps-wire.md §3). */
const MAX_CN = 64;

export function registerCertCommands(program: Command, io: CliIo): void {
  const root = program.command('cert').description('create test certificates (root, intermediate, device, verification) as PEM files');
  const outputOptions = (command: Command, days: number): Command =>
    command
      .option('--dir <dir>', 'where to write the files', '.')
      .option('--days <n>', `validity in days (default ${days})`, positiveInteger)
      .option('--force', 'overwrite existing files');

  outputOptions(root.command('root').argument('<name>', 'file prefix and CN').description('create a self-signed root CA certificate'), 3650).action(
    async (name: string, flags: OutputFlags) => {
      assertName(name);
      const issued = await (await loadIssuer()).createRootCertificate({ commonName: name, days: flags.days ?? 3650 });
      const files = write(flags, name, issued, undefined);
      io.out(`${describe(`root CA '${name}'`, issued, files)}\n`);
    },
  );

  outputOptions(
    root
      .command('intermediate')
      .argument('<name>', 'file prefix and CN')
      .description('create an intermediate CA certificate signed by --ca')
      .requiredOption('--ca <prefix>', 'the issuing CA: reads <prefix>.cert.pem and <prefix>.key.pem'),
    1825,
  ).action(async (name: string, flags: IssuedFlags) => {
    assertName(name);
    const issuer = readIssuer(flags.ca ?? '');
    const issued = await (await loadIssuer()).createIntermediateCertificate(issuer.pair, { commonName: name, days: flags.days ?? 1825 });
    const files = write(flags, name, issued, issuer);
    io.out(`${describe(`intermediate CA '${name}'`, issued, files)}\n`);
  });

  outputOptions(
    root
      .command('device')
      .argument('<registration-id>', 'the device certificate CN, which is its registration ID')
      .description('create a device certificate (CN = registration ID) signed by --ca, or --self-signed')
      .option('--ca <prefix>', 'the issuing CA: reads <prefix>.cert.pem and <prefix>.key.pem')
      .option('--self-signed', 'a self-signed device certificate (individual enrollments only)'),
    365,
  ).action(async (registrationId: string, flags: IssuedFlags & { selfSigned?: boolean }) => {
    if (!isValidId(registrationId) || registrationId.length > MAX_CN) {
      throw new CliError(`'${registrationId}' is not a registration ID for X.509: use 1-${MAX_CN} letters, digits, '-', '.', '_' or ':', starting and ending with a letter or digit`);
    }
    if ((flags.ca === undefined) === (flags.selfSigned !== true)) throw new CliError('give either --ca <prefix> or --self-signed');
    const days = flags.days ?? 365;
    const issuer = flags.ca === undefined ? undefined : readIssuer(flags.ca);
    const issued =
      issuer === undefined
        ? await (await loadIssuer()).createSelfSignedDeviceCertificate({ commonName: registrationId, days })
        : await (await loadIssuer()).createDeviceCertificate(issuer.pair, { commonName: registrationId, days });
    const files = write(flags, registrationId, issued, issuer);
    const present = files.chain ?? files.cert;
    io.out(
      `${describe(`device certificate '${registrationId}'`, issued, files)}\n` +
        `the device presents ${present} with the key ${files.key}, e.g. new X509Security('${registrationId}', { cert: <${present}>, key: <${files.key}> })\n`,
    );
  });

  outputOptions(
    root
      .command('verification')
      .argument('<verification-code>', 'from provisiond ca verification-code')
      .description('create the proof-of-possession certificate for a CA: CN = the verification code, signed by --ca')
      .requiredOption('--ca <prefix>', 'the CA being verified: reads <prefix>.cert.pem and <prefix>.key.pem'),
    30,
  ).action(async (code: string, flags: IssuedFlags) => {
    if (!/^[A-Za-z0-9]{1,64}$/.test(code)) throw new CliError(`'${code}' does not look like a verification code (letters and digits, at most 64)`);
    const issuer = readIssuer(flags.ca ?? '');
    const issued = await (await loadIssuer()).createVerificationCertificate(issuer.pair, code);
    const files = write(flags, `verification-${code}`, issued, undefined);
    io.out(`${describe(`verification certificate for '${formatName(issuer.cert.subject)}'`, issued, files)}\n`);
  });
}

interface Issuer {
  pair: CertificateAndKey;
  cert: X509Certificate;
  /** The issuer's own chain file, when it has one (it is an intermediate). */
  chainPem: string | undefined;
}

function readIssuer(prefix: string): Issuer {
  const read = (file: string): string => {
    try {
      return readFileSync(file, 'utf8');
    } catch (error) {
      throw new CliError(`--ca ${prefix}: cannot read ${file}: ${(error as Error).message}`);
    }
  };
  const certPem = read(`${prefix}.cert.pem`);
  const keyPem = read(`${prefix}.key.pem`);
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(certPem);
  } catch {
    throw new CliError(`--ca ${prefix}: ${prefix}.cert.pem is not a PEM certificate`);
  }
  if (!cert.ca) throw new CliError(`--ca ${prefix}: ${formatName(cert.subject)} is not a CA certificate (basicConstraints CA:true)`);
  const chainFile = `${prefix}.chain.pem`;
  return { pair: { certPem, keyPem }, cert, chainPem: existsSync(chainFile) ? readFileSync(chainFile, 'utf8') : undefined };
}

interface Written {
  cert: string;
  key: string;
  chain?: string;
}

function write(flags: OutputFlags, name: string, issued: CertificateAndKey, issuer: Issuer | undefined): Written {
  mkdirSync(flags.dir, { recursive: true });
  const files: Written = { cert: join(flags.dir, `${name}.cert.pem`), key: join(flags.dir, `${name}.key.pem`) };
  let chain: string | undefined;
  if (issuer !== undefined) {
    files.chain = join(flags.dir, `${name}.chain.pem`);
    // Everything between this certificate and the root: the issuer too, unless it is the (self-issued) root.
    const above = issuer.cert.subject === issuer.cert.issuer ? '' : (issuer.chainPem ?? issuer.pair.certPem);
    chain = `${issued.certPem.trimEnd()}\n${above}`.trimEnd() + '\n';
  }
  const targets = [files.cert, files.key, ...(files.chain === undefined ? [] : [files.chain])];
  const existing = targets.filter((file) => existsSync(file));
  if (existing.length > 0 && flags.force !== true) throw new CliError(`${existing.join(', ')} already exist(s); use --force to overwrite`);
  writeFileSync(files.cert, issued.certPem);
  writeFileSync(files.key, issued.keyPem, { mode: 0o600 });
  if (files.chain !== undefined && chain !== undefined) writeFileSync(files.chain, chain);
  return files;
}

function describe(title: string, issued: CertificateAndKey, files: Written): string {
  const cert = new X509Certificate(issued.certPem);
  return formatFields(title, [
    ['subject', formatName(cert.subject)],
    ['issuer', formatName(cert.issuer)],
    ['valid until', new Date(cert.validTo).toISOString()],
    ['SHA-256 thumbprint', cert.fingerprint256.replaceAll(':', '')],
    ['certificate', files.cert],
    ['key', files.key],
    ['chain', files.chain],
  ]);
}

function assertName(name: string): void {
  if (!/^[A-Za-z0-9][A-Za-z0-9\-._]{0,63}$/.test(name)) {
    throw new CliError(`'${name}' is not a usable name: use 1-64 letters, digits, '-', '.' or '_', starting with a letter or digit`);
  }
}
