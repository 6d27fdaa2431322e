import type { Command } from 'commander';
import { formatFields, formatTable, text } from '../output.js';
import type { CliIo } from '../program.js';
import { adminAction, apiPath, asArray, asObject, certificateText, runAdmin, type ConnectionFlags, type Json } from './common.js';
import { readFileSync } from 'node:fs';

/**
 * `provisiond credential-policy …` and `provisiond issuing-ca …`: certificate issuance from CSRs
 * (docs/certificate-issuance.md; needs ServiceConfig). Enrollments name a policy with `--credential-policy`.
 */
interface PolicyFlags extends ConnectionFlags {
  keyType?: string[];
  validityDays?: string;
}

const collect = (value: string, previous: string[] | undefined): string[] => [...(previous ?? []), value];

export function registerCredentialPolicyCommands(program: Command, io: CliIo): void {
  const policy = program.command('credential-policy').description('credential policies: which CSR key types are issued a certificate, valid for how long');

  adminAction(
    policy
      .command('set')
      .argument('<name>')
      .description('create or replace a credential policy')
      .option('--key-type <type>', 'a key type accepted: ecP256, ecP384, rsa2048, rsa3072, rsa4096 (repeatable; default all)', collect)
      .option('--validity-days <days>', 'how long an issued certificate is valid (default 30)'),
    async (name: string, flags: PolicyFlags) =>
      runAdmin(io, flags, async (context) => {
        const body: Json = {};
        if (flags.keyType !== undefined) body.keyTypes = flags.keyType;
        if (flags.validityDays !== undefined) body.validityInDays = Number(flags.validityDays);
        const saved = asObject(await context.request('PUT', apiPath('credentialPolicies', name), { body }));
        context.print(saved, () => describePolicy(saved));
      }),
  );

  adminAction(policy.command('list').description('list the credential policies'), async (flags: ConnectionFlags) =>
    runAdmin(io, flags, async (context) => {
      const items = asArray(await context.request('GET', apiPath('credentialPolicies'))).map(asObject);
      context.print(items, () =>
        formatTable(
          ['NAME', 'KEY TYPES', 'VALIDITY (DAYS)'],
          items.map((item) => [text(item.name) ?? '', asArray(item.keyTypes).map(String).join(','), text(item.validityInDays) ?? '']),
          'no credential policies',
        ),
      );
    }),
  );

  adminAction(policy.command('show').argument('<name>').description('show one credential policy'), async (name: string, flags: ConnectionFlags) =>
    runAdmin(io, flags, async (context) => {
      const item = asObject(await context.request('GET', apiPath('credentialPolicies', name)));
      context.print(item, () => describePolicy(item));
    }),
  );

  adminAction(
    policy.command('delete').argument('<name>').description('delete a credential policy (CSRs of devices whose enrollment names it are refused)'),
    async (name: string, flags: ConnectionFlags) =>
      runAdmin(io, flags, async (context) => {
        await context.request('DELETE', apiPath('credentialPolicies', name));
        context.print(undefined, () => `deleted credential policy '${name}'`);
      }),
  );

  const ca = program.command('issuing-ca').description("the instance's issuing CA, which signs the certificates issued from CSRs");

  adminAction(
    ca.command('show').description('show the issuing CA (created on first use) and where its CRL is').option('--pem', 'print only the certificate PEM'),
    async (flags: ConnectionFlags & { pem?: boolean }) =>
      runAdmin(io, flags, async (context) => {
        const item = asObject(await context.request('GET', apiPath('issuingCa')));
        context.print(item, () => (flags.pem === true ? (text(item.certificate) ?? '').trimEnd() : describeIssuingCa(item)));
      }),
  );

  adminAction(
    ca
      .command('set')
      .argument('<certificate-file>', 'the CA certificate (PEM or DER)')
      .argument('<key-file>', 'its private key (PEM)')
      .description("use your own issuing CA; certificates issued by the previous one stop authenticating")
      .option('--chain <file>', 'a certificate above the CA, up to the root (repeatable, in order)', collect),
    async (certificateFile: string, keyFile: string, flags: ConnectionFlags & { chain?: string[] }) =>
      runAdmin(io, flags, async (context) => {
        const body: Json = {
          certificate: certificateText('<certificate-file>', certificateFile),
          privateKey: readFileSync(keyFile, 'utf8'),
          ...(flags.chain === undefined ? {} : { chain: flags.chain.map((file) => certificateText('--chain', file)) }),
        };
        const item = asObject(await context.request('PUT', apiPath('issuingCa'), { body }));
        context.print(item, () => describeIssuingCa(item));
      }),
  );
}

function describePolicy(item: Json): string {
  return formatFields(`credential policy '${text(item.name) ?? ''}'`, [
    ['key types', asArray(item.keyTypes).map(String).join(', ')],
    ['validity (days)', text(item.validityInDays)],
    ['etag', text(item.etag)],
    ['created', text(item.createdDateTimeUtc)],
    ['last updated', text(item.lastUpdatedDateTimeUtc)],
  ]);
}

function describeIssuingCa(item: Json): string {
  const info = asObject(item.info);
  return formatFields('issuing CA', [
    ['source', text(item.source)],
    ['subject', text(info.subjectName)],
    ['SHA-256 thumbprint', text(info.sha256Thumbprint)],
    ['valid', info.notBeforeUtc === undefined ? undefined : `${text(info.notBeforeUtc) ?? ''} to ${text(info.notAfterUtc) ?? ''}`],
    ['chain', `${asArray(item.chain).length} certificate(s) above it`],
    ['CRL', text(item.crlUrl)],
    ['created', text(item.createdDateTimeUtc)],
  ]);
}
