import type { Command } from 'commander';
import { formatFields, formatTable, text, yesNo } from '../output.js';
import type { CliIo } from '../program.js';
import { adminAction, apiPath, asArray, asObject, certificateText, runAdmin, type ConnectionFlags, type Json } from './common.js';

/**
 * `provisiond ca …`: the CA certificates of the instance and their proof of possession (docs/x509.md; needs
 * ServiceConfig). Enrollment groups name verified ones in `attestation.x509.caReferences`.
 */
interface EtagFlags extends ConnectionFlags {
  etag?: string;
}

export function registerCaCommands(program: Command, io: CliIo): void {
  const root = program.command('ca').description('upload CA certificates and prove possession of their keys (for enrollment groups by CA reference)');

  adminAction(
    root
      .command('upload')
      .argument('<name>', 'the name enrollment groups refer to (caReferences)')
      .argument('<certificate-file>', 'the CA certificate, PEM or DER (never the key)')
      .description('upload a CA certificate, or replace the one under this name; it starts unverified')
      .option('--etag <etag>', 'replace only if the etag still matches'),
    async (name: string, file: string, flags: EtagFlags) =>
      runAdmin(io, flags, async (context) => {
        const certificate = certificateText('<certificate-file>', file);
        const ca = asObject(await context.request('PUT', apiPath('certificates', name), { body: { certificate }, ...ifMatch(flags) }));
        context.print(ca, () =>
          [
            describeCa(ca),
            ca.isVerified === true ? '' : `\nnext: provisiond ca verification-code ${text(ca.name) ?? name}   (then sign a certificate with that CN and run provisiond ca verify)`,
          ].join(''),
        );
      }),
  );

  adminAction(root.command('list').description('list the CA certificates and whether each is verified'), async (flags: ConnectionFlags) =>
    runAdmin(io, flags, async (context) => {
      const items = asArray(await context.request('GET', apiPath('certificates'))).map(asObject);
      context.print(items, () =>
        formatTable(
          ['NAME', 'VERIFIED', 'SUBJECT', 'SHA-1 THUMBPRINT', 'EXPIRES'],
          items.map((ca) => {
            const info = asObject(ca.info);
            return [text(ca.name) ?? '', yesNo(ca.isVerified), text(info.subjectName) ?? '', text(info.sha1Thumbprint) ?? '', text(info.notAfterUtc) ?? ''];
          }),
          'no CA certificates',
        ),
      );
    }),
  );

  adminAction(
    root.command('show').argument('<name>').description('show one CA certificate').option('--pem', 'print only the certificate PEM'),
    async (name: string, flags: ConnectionFlags & { pem?: boolean }) =>
      runAdmin(io, flags, async (context) => {
        const ca = asObject(await context.request('GET', apiPath('certificates', name)));
        context.print(ca, () => (flags.pem === true ? (text(ca.certificate) ?? '').trimEnd() : describeCa(ca)));
      }),
  );

  adminAction(
    root
      .command('verification-code')
      .argument('<name>')
      .description('get a verification code: the CN of the certificate the CA must sign to prove possession of its key')
      .option('--etag <etag>', 'only if the etag still matches'),
    async (name: string, flags: EtagFlags) =>
      runAdmin(io, flags, async (context) => {
        const answer = asObject(await context.request('POST', apiPath('certificates', name, 'generateVerificationCode'), ifMatch(flags)));
        const code = text(answer.verificationCode) ?? '';
        context.print(answer, () =>
          formatFields(`verification code for '${text(answer.name) ?? name}'`, [
            ['code', code],
            ['etag', text(answer.etag)],
            ['next', `provisiond cert verification ${code} --ca <ca-file-prefix>; then provisiond ca verify ${text(answer.name) ?? name} verification-${code}.cert.pem`],
          ]),
        );
      }),
  );

  adminAction(
    root
      .command('verify')
      .argument('<name>')
      .argument('<verification-certificate-file>', 'a certificate signed by the CA whose CN is the verification code')
      .description('prove possession of the CA key; the CA becomes verified and usable by caReferences')
      .option('--etag <etag>', 'only if the etag still matches'),
    async (name: string, file: string, flags: EtagFlags) =>
      runAdmin(io, flags, async (context) => {
        const certificate = certificateText('<verification-certificate-file>', file);
        const ca = asObject(await context.request('POST', apiPath('certificates', name, 'verify'), { body: { certificate }, ...ifMatch(flags) }));
        context.print(ca, () => describeCa(ca));
      }),
  );

  adminAction(
    root.command('delete').argument('<name>').description('delete a CA certificate (groups that name it stop provisioning devices)').option('--etag <etag>', 'delete only if the etag still matches'),
    async (name: string, flags: EtagFlags) =>
      runAdmin(io, flags, async (context) => {
        await context.request('DELETE', apiPath('certificates', name), ifMatch(flags));
        context.print(undefined, () => `deleted CA certificate '${name}'`);
      }),
  );
}

/** PEM files are sent as they are; anything else (DER) as base64, which the server accepts too. */
function ifMatch(flags: EtagFlags): { headers?: Record<string, string> } {
  return flags.etag === undefined ? {} : { headers: { 'if-match': flags.etag } };
}

function describeCa(ca: Json): string {
  const info = asObject(ca.info);
  return formatFields(`CA certificate '${text(ca.name) ?? ''}'`, [
    ['verified', yesNo(ca.isVerified)],
    ['subject', text(info.subjectName)],
    ['issuer', text(info.issuerName)],
    ['SHA-1 thumbprint', text(info.sha1Thumbprint)],
    ['SHA-256 thumbprint', text(info.sha256Thumbprint)],
    ['valid', info.notBeforeUtc === undefined ? undefined : `${text(info.notBeforeUtc) ?? ''} to ${text(info.notAfterUtc) ?? ''}`],
    ['etag', text(ca.etag)],
    ['created', text(ca.createdDateTimeUtc)],
    ['last updated', text(ca.lastUpdatedDateTimeUtc)],
  ]);
}
