import { createPublicKey, randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { setTimeout as delay } from 'node:timers/promises';
import { CommanderError, type Command } from 'commander';
import { verifyReceipt } from '../../domain/receipt.js';
import { CliError } from '../api-client.js';
import { formatFields, formatTable, text, type Row } from '../output.js';
import type { CliIo } from '../program.js';
import {
  addListOptions,
  adminAction,
  apiPath,
  asArray,
  asObject,
  queryAll,
  readFileArgument,
  runAdmin,
  selectQuery,
  type AdminContext,
  type ConnectionFlags,
  type Json,
  type ListFlags,
} from './common.js';

/**
 * `provisiond data …`: customer-data requests through the service API (docs/customer-data.md): export everything
 * about one device as a JSON bundle, erase it everywhere with a signed receipt, and check receipts offline. A request
 * is a server-side job, so each command creates it, then polls it until it is no longer `running`; stopping the CLI
 * stops the waiting, never the job. Exit codes: 0 done, 1 refused or failed, 2 partially completed (retry it).
 */
type SubjectKind = 'registrationId' | 'deviceId' | 'enrollmentGroupId';

interface SubjectFlags {
  registrationId?: string;
  deviceId?: string;
  enrollmentGroupId?: string;
}

interface ExportFlags extends ConnectionFlags, SubjectFlags {
  includeSecrets?: boolean;
  requestId?: string;
  output?: string;
}

interface EraseFlags extends ConnectionFlags, SubjectFlags {
  dryRun?: boolean;
  requestId?: string;
  receipt?: string;
  yes?: boolean;
}

interface OutputFlags extends ConnectionFlags {
  output?: string;
}

const SUBJECT_OPTIONS: Record<SubjectKind, string> = {
  registrationId: '--registration-id',
  deviceId: '--device-id',
  enrollmentGroupId: '--enrollment-group-id',
};
const POLL_INTERVAL_MS = 1000;
/** While waiting, progress goes to stderr at most this often. */
const PROGRESS_EVERY_MS = 10_000;
/** A dry run lists every item with --json; the human summary shows this many per place. */
const ITEMS_SHOWN = 10;
/** What `partiallyCompleted` exits with: some places were done, some must be retried. */
const EXIT_PARTIAL = 2;
/** What a request that found nothing about its subject exits with: it completed, but it is not a fulfilled request. */
const EXIT_NOTHING_FOUND = 3;

export function registerDataCommands(program: Command, io: CliIo): void {
  const root = program.command('data').description('export or erase everything about a device (customer-data requests), and check erase receipts');

  adminAction(
    subjectOptions(root.command('export').description('export everything about a device as one JSON bundle (to stdout, or --output)'), ['registrationId', 'deviceId'])
      .option('--include-secrets', 'include symmetric keys and hub device keys (redacted by default)')
      .option('--request-id <id>', 'the data request ID (generated when omitted; the same ID and options again reuse the request)')
      .option('--output <file>', 'write the bundle to this file (mode 0600) instead of stdout'),
    async (flags: ExportFlags) =>
      runAdmin(io, flags, async (context) => {
        const subject = subjectOf(flags, ['registrationId', 'deviceId']);
        const requestId = flags.requestId ?? newRequestId('export');
        const body: Json = { type: 'export', subject: { [subject.kind]: subject.id }, includeSecrets: flags.includeSecrets === true };
        const request = await waitForRequest(io, context, asObject(await context.request('PUT', apiPath('dataRequests', requestId), { body })));
        if (request.status === 'failed') throw new CliError(`the export failed: ${text(request.error) ?? 'no reason given'} (data request '${requestId}')`);
        const bundle = await context.request('GET', apiPath('dataRequests', requestId, 'bundle'));
        const json = `${JSON.stringify(bundle, null, 2)}\n`;
        if (flags.output === undefined) {
          // The bundle is the output, so `> bundle.json` works; everything else goes to stderr.
          io.out(json);
        } else {
          writeOutput('--output', flags.output, json, 0o600);
          context.print(request, () =>
            [
              `wrote the export bundle of ${subjectLabel(subject.kind, subject.id)} to ${flags.output ?? ''} (data request '${requestId}')`,
              ...placeLines('found', asObject(request.result).searched, false),
            ].join('\n'),
          );
        }
        warnIfNothingFound(io, request, subjectLabel(subject.kind, subject.id));
        if (request.status === 'partiallyCompleted') {
          exitPartial(io, `the export is incomplete: ${text(request.error) ?? 'some places could not be searched'}; run it again with a new --request-id once they are reachable`);
        }
      }),
  );

  adminAction(
    subjectOptions(
      root.command('erase').description('erase everything about a device or enrollment group, with a signed receipt (asks for confirmation)'),
      ['registrationId', 'deviceId', 'enrollmentGroupId'],
    )
      .option('--dry-run', 'change nothing; list what an erase would delete or pseudonymize')
      .option('--request-id <id>', 'the data request ID (generated when omitted; the same ID and options again reuse the request)')
      .option('--receipt <file>', 'write the signed receipt to this file when the erase completes')
      .option('--yes', 'do not ask for confirmation (required when stdin is not a terminal)'),
    async (flags: EraseFlags) =>
      runAdmin(io, flags, async (context) => {
        const subject = subjectOf(flags, ['registrationId', 'deviceId', 'enrollmentGroupId']);
        const dryRun = flags.dryRun === true;
        if (dryRun && flags.receipt !== undefined) throw new CliError('a dry run changes nothing and has no receipt: leave out --receipt');
        if (!dryRun && flags.yes !== true) await confirmErase(io, subject.kind, subject.id);
        const requestId = flags.requestId ?? newRequestId(dryRun ? 'dryrun' : 'erase');
        const body: Json = { type: 'erase', subject: { [subject.kind]: subject.id }, dryRun };
        const request = await waitForRequest(io, context, asObject(await context.request('PUT', apiPath('dataRequests', requestId), { body })));
        await finishErase(io, context, request, flags.json === true, subjectLabel(subject.kind, subject.id), flags.receipt);
      }),
  );

  adminAction(
    root.command('retry').argument('<request-id>').description('run a partially completed erase again (after fixing what failed, e.g. an unreachable hub)'),
    async (requestId: string, flags: ConnectionFlags) =>
      runAdmin(io, flags, async (context) => {
        const request = await waitForRequest(io, context, asObject(await context.request('POST', apiPath('dataRequests', requestId, 'retry'))));
        await finishErase(io, context, request, flags.json === true, requestSubjectLabel(request), undefined);
      }),
  );

  adminAction(root.command('show').argument('<request-id>').description('show a data request: status, progress and result'), async (requestId: string, flags: ConnectionFlags) =>
    runAdmin(io, flags, async (context) => {
      const request = asObject(await context.request('GET', apiPath('dataRequests', requestId)));
      context.print(request, () => describeRequest(request));
    }),
  );

  adminAction(addListOptions(root.command('requests').description('list past data requests, newest first')), async (flags: ListFlags) =>
    runAdmin(io, flags, async (context) => {
      const query = flags.where === undefined ? undefined : selectQuery('dataRequests', flags.where);
      const items = (await queryAll(context, apiPath('dataRequests', 'query'), query, flags)).map(asObject);
      context.print(items, () =>
        formatTable(
          ['REQUEST ID', 'TYPE', 'STATUS', 'SUBJECT', 'CREATED'],
          items.map((item) => [
            text(item.requestId) ?? '',
            `${text(item.type) ?? ''}${item.dryRun === true ? ' (dry run)' : ''}`,
            text(item.status) ?? '',
            requestSubjectLabel(item),
            text(item.createdDateTimeUtc) ?? '',
          ]),
          'no data requests',
        ),
      );
    }),
  );

  adminAction(
    root
      .command('receipt')
      .argument('<request-id>')
      .description('get the signed receipt of a completed erase (to stdout, or --output)')
      .option('--output <file>', 'write the receipt to this file'),
    async (requestId: string, flags: OutputFlags) =>
      runAdmin(io, flags, async (context) => {
        const receipt = asObject(await context.request('GET', apiPath('dataRequests', requestId, 'receipt')));
        if (flags.output === undefined) {
          io.out(`${JSON.stringify(receipt, null, 2)}\n`);
          return;
        }
        writeOutput('--output', flags.output, `${JSON.stringify(receipt, null, 2)}\n`);
        context.print(receipt, () => `wrote the receipt of data request '${requestId}' to ${flags.output ?? ''}; check it with 'provisiond data verify-receipt ${flags.output ?? ''}'`);
      }),
  );

  adminAction(
    root
      .command('verify-receipt')
      .argument('<file>', 'a receipt from data erase --receipt or data receipt')
      .description('check an erase receipt offline: the Ed25519 signature over its content; --public-key pins the signing key')
      .option('--public-key <file>', 'PEM public key the receipt must be signed by (from provisiond data signing-key)'),
    async (file: string, flags: ConnectionFlags & { publicKey?: string }) => {
      const document = parseReceiptFile(file);
      let pinned: { pem: string; source: string } | undefined;
      if (flags.publicKey !== undefined) pinned = { pem: readPublicKey(flags.publicKey), source: flags.publicKey };
      // Offline unless asked: only an explicit --connection-string (not the environment) fetches the instance's key.
      if (flags.connectionString !== undefined) {
        if (pinned !== undefined) throw new CliError('--public-key and --connection-string both choose the key to trust: give one of them');
        await runAdmin(io, flags, async (context) => {
          const key = asObject(await context.request('GET', apiPath('receiptSigningKey')));
          const pem = text(key.publicKeyPem);
          if (pem === undefined) throw new CliError(`${context.client.origin} answered without a publicKeyPem`);
          pinned = { pem, source: `the current signing key of ${context.client.origin}` };
        });
      }
      const check = document === undefined ? ({ valid: false, reason: 'the file is not JSON' } as const) : verifyReceipt(document, pinned?.pem);
      if (flags.json === true) {
        io.out(`${JSON.stringify(check.valid ? { ...check, pinned: pinned !== undefined } : check, null, 2)}\n`);
      } else if (check.valid) {
        const receipt = asObject(asObject(document).receipt);
        const trust = pinned === undefined ? 'the key the receipt carries; pin it with --public-key' : `the trusted key from ${pinned.source}`;
        io.out(
          `${formatFields(`valid: signed by key ${check.keyId} (Ed25519, ${trust})`, [
            ['request', text(receipt.requestId)],
            ['instance', text(receipt.instance)],
            ['subject', receipt.subjectKind === undefined ? undefined : `${text(receipt.subjectKind) ?? ''} with keyed hash ${text(receipt.subjectHash) ?? '?'}`],
            ['completed', text(receipt.completedDateTimeUtc)],
            ['deleted', countsText(receipt.deleted)],
            ['pseudonymized', countsText(receipt.pseudonymized)],
          ])}\n`,
        );
      } else {
        io.out(`invalid: ${check.reason}\n`);
      }
      if (!check.valid) throw new CommanderError(1, 'provisiond.invalidReceipt', check.reason);
    },
  );

  adminAction(
    root
      .command('signing-key')
      .description("print the instance's public key that signs erase receipts (PEM), to pin with verify-receipt --public-key")
      .option('--output <file>', 'write the PEM to this file'),
    async (flags: OutputFlags) =>
      runAdmin(io, flags, async (context) => {
        const key = asObject(await context.request('GET', apiPath('receiptSigningKey')));
        const pem = text(key.publicKeyPem);
        if (pem === undefined) throw new CliError(`${context.client.origin} answered without a publicKeyPem`);
        if (flags.output === undefined) {
          context.print(key, () => pem.trimEnd());
          return;
        }
        writeOutput('--output', flags.output, `${pem.trimEnd()}\n`);
        context.print(key, () => `wrote the receipt signing key ${text(key.keyId) ?? ''} (${text(key.algorithm) ?? 'Ed25519'}) to ${flags.output ?? ''}`);
      }),
  );
}

function subjectOptions(command: Command, kinds: readonly SubjectKind[]): Command {
  const help: Record<SubjectKind, [string, string]> = {
    registrationId: ['--registration-id <id>', 'the subject: a registration ID (its enrollment, record, hub device and log)'],
    deviceId: ['--device-id <id>', 'the subject: an IoT Hub device ID (every registration that became this device)'],
    enrollmentGroupId: ['--enrollment-group-id <id>', 'the subject: an enrollment group, with every device registered through it'],
  };
  for (const kind of kinds) command.option(...help[kind]);
  return command;
}

function subjectOf(flags: SubjectFlags, kinds: readonly SubjectKind[]): { kind: SubjectKind; id: string } {
  const given = kinds.filter((kind) => flags[kind] !== undefined);
  const [kind] = given;
  if (given.length !== 1 || kind === undefined) throw new CliError(`name the subject with exactly one of ${kinds.map((k) => SUBJECT_OPTIONS[k]).join(', ')}`);
  return { kind, id: flags[kind] ?? '' };
}

/** `erase-20260131T080000Z-1a2b3c`: sorts by time, readable in lists, and unique enough for one instance. */
function newRequestId(prefix: string): string {
  const stamp = new Date().toISOString().replace(/\.\d{3}Z$/, 'Z').replace(/[-:]/g, '');
  return `${prefix}-${stamp}-${randomBytes(3).toString('hex')}`;
}

function subjectLabel(kind: string, id: string): string {
  return `${kind} '${id}'`;
}

/** After an erase completes, the request knows its subject only by the keyed hash. */
function requestSubjectLabel(request: Json): string {
  const subject = asObject(request.subject);
  const kind = text(subject.kind) ?? '?';
  const id = text(subject.id);
  return id === undefined ? `${kind} (erased, hash ${(text(subject.hash) ?? '').slice(0, 12)}…)` : subjectLabel(kind, id);
}

async function confirmErase(io: CliIo, kind: SubjectKind, id: string): Promise<void> {
  const what = kind === 'enrollmentGroupId' ? `enrollment group '${id}' and every device registered through it` : subjectLabel(kind, id);
  if (io.prompt === undefined) {
    throw new CliError(`erasing ${what} cannot be undone: pass --yes to confirm (stdin is not a terminal), or see what would go with --dry-run`);
  }
  const answer = await io.prompt(
    `This erases ${what} everywhere: enrollments, registration records, hub devices and twins; the system log keeps only a keyed hash. It cannot be undone.\nType '${id}' to confirm: `,
  );
  if (answer.trim() !== id) throw new CliError('not confirmed: nothing was erased');
}

/** Polls a request until it is no longer `running`; says on stderr that it is waiting, and how far it got. */
async function waitForRequest(io: CliIo, context: AdminContext, created: Json): Promise<Json> {
  let request = created;
  const requestId = text(created.requestId) ?? '';
  let reportedAt: number | undefined;
  while (request.status === 'running') {
    const now = Date.now();
    if (reportedAt === undefined) {
      io.err(`waiting for data request '${requestId}' (${progressText(request)}); Ctrl-C stops the waiting, not the request: see 'provisiond data show ${requestId}'\n`);
      reportedAt = now;
    } else if (now - reportedAt >= PROGRESS_EVERY_MS) {
      io.err(`  still running: ${progressText(request)}\n`);
      reportedAt = now;
    }
    await delay(POLL_INTERVAL_MS);
    request = asObject(await context.request('GET', apiPath('dataRequests', requestId)));
  }
  return request;
}

function progressText(request: Json): string {
  const progress = asObject(request.progress);
  return progress.total === undefined || progress.total === 0 ? 'starting' : `${text(progress.done) ?? '0'} of ${text(progress.total) ?? '?'} items done`;
}

/** Prints the outcome of an erase (or a dry run), writes or points to the receipt, and exits 2 when partial. */
async function finishErase(io: CliIo, context: AdminContext, request: Json, json: boolean, subject: string, receiptFile: string | undefined): Promise<void> {
  const requestId = text(request.requestId) ?? '';
  if (request.status === 'failed') throw new CliError(`the erase failed: ${text(request.error) ?? 'no reason given'} (data request '${requestId}')`);
  let receiptLine: string | undefined;
  if (request.status === 'completed' && request.dryRun !== true) {
    if (receiptFile === undefined) {
      receiptLine = `receipt: get it with 'provisiond data receipt ${requestId} --output receipt.json'`;
    } else {
      const receipt = asObject(await context.request('GET', apiPath('dataRequests', requestId, 'receipt')));
      writeOutput('--receipt', receiptFile, `${JSON.stringify(receipt, null, 2)}\n`);
      const keyId = text(asObject(receipt.signature).keyId) ?? '?';
      receiptLine = `receipt: written to ${receiptFile} (signed by key ${keyId}); check it with 'provisiond data verify-receipt ${receiptFile}'`;
    }
  }
  context.print(request, () => {
    const result = asObject(request.result);
    if (request.dryRun === true) {
      return [
        `dry run of erasing ${subject}: nothing was changed (data request '${requestId}'). An erase would`,
        ...placeLines('delete', result.deleted, true),
        ...placeLines('pseudonymize', result.pseudonymized, true),
      ].join('\n');
    }
    const status = request.status === 'partiallyCompleted' ? 'partially completed' : (text(request.status) ?? '');
    return [
      `erase of ${subject}: ${status} (data request '${requestId}')`,
      ...placeLines('deleted', result.deleted, false),
      ...placeLines('pseudonymized', result.pseudonymized, false),
      ...failureLines(result.failures),
      ...(receiptLine === undefined ? [] : [receiptLine]),
    ].join('\n');
  });
  if (request.status === 'partiallyCompleted') {
    exitPartial(io, `the erase is not complete; fix what failed, then run 'provisiond data retry ${requestId}'`);
  }
  warnIfNothingFound(io, request, subject);
}

/** An unknown subject: the request completed, but found nothing — say so on stderr and exit 3. */
function warnIfNothingFound(io: CliIo, request: Json, subject: string): void {
  if (asObject(request.result).nothingFound !== true) return;
  const message = `nothing found for ${subject}: no place holds data about it (check the ID and its kind)`;
  io.err(`provisiond: warning: ${message}\n`);
  throw new CommanderError(EXIT_NOTHING_FOUND, 'provisiond.nothingFound', message);
}

function exitPartial(io: CliIo, message: string): never {
  io.err(`provisiond: ${message}\n`);
  // A CommanderError carries the exit code; main.ts prints nothing more for it.
  throw new CommanderError(EXIT_PARTIAL, 'provisiond.partiallyCompleted', message);
}

/** `  title:` then one aligned line per place: count, and (dry run) the items or why they could not be checked. */
function placeLines(title: string, value: unknown, withItems: boolean): string[] {
  const entries = asArray(value).map(asObject);
  if (entries.length === 0) return [];
  const places = entries.map((entry) => text(entry.name) ?? text(entry.place) ?? '?');
  const width = Math.max(...places.map((place) => place.length));
  const lines = entries.map((entry, index) => {
    const cells = [`    ${(places[index] ?? '').padEnd(width)}  ${text(entry.count) ?? '0'}`];
    const items = asArray(entry.items).map(String);
    if (withItems && items.length > 0) {
      const more = items.length > ITEMS_SHOWN ? ` … and ${items.length - ITEMS_SHOWN} more (--json lists them all)` : '';
      cells.push(`${items.slice(0, ITEMS_SHOWN).join(', ')}${more}`);
    }
    if (entry.error !== undefined) cells.push(`(could not be checked: ${text(entry.error) ?? ''})`);
    return cells.join('  ');
  });
  return [`  ${title}:`, ...lines];
}

function failureLines(value: unknown): string[] {
  const failures = asArray(value).map(asObject);
  if (failures.length === 0) return [];
  return ['  failed:', ...failures.map((failure) => `    ${text(failure.place) ?? '?'}: ${text(failure.reason) ?? 'no reason given'}`)];
}

/** `registrations 1, enrollments 1` from a receipt's counts. */
function countsText(value: unknown): string | undefined {
  const entries = asArray(value).map(asObject);
  if (entries.length === 0) return undefined;
  return entries.map((entry) => `${text(entry.place) ?? '?'} ${text(entry.count) ?? '0'}`).join(', ');
}

function describeRequest(request: Json): string {
  const subject = asObject(request.subject);
  const progress = asObject(request.progress);
  const requestId = text(request.requestId) ?? '';
  const type = `${text(request.type) ?? ''}${request.dryRun === true ? ' (dry run)' : ''}${request.includeSecrets === true ? ' (with secrets)' : ''}`;
  const rows: Row[] = [
    ['type', type],
    ['status', text(request.status)],
    ['subject', requestSubjectLabel(request)],
    ['subject hash', text(subject.hash)],
    ['requested by', text(request.requestedBy)],
    ['progress', progress.total === undefined ? undefined : `${text(progress.done) ?? '0'} of ${text(progress.total) ?? '?'} items`],
    ['created', text(request.createdDateTimeUtc)],
    ['last updated', text(request.lastUpdatedDateTimeUtc)],
    ['error', text(request.error)],
    ['receipt', request.hasReceipt === true ? `provisiond data receipt ${requestId} --output receipt.json` : undefined],
    ['bundle', bundleHint(request)],
  ];
  const result = asObject(request.result);
  const dryRun = request.dryRun === true;
  return [
    formatFields(`data request '${requestId}'`, rows),
    ...placeLines('searched', result.searched, false),
    ...placeLines(dryRun ? 'would delete' : 'deleted', result.deleted, dryRun),
    ...placeLines(dryRun ? 'would pseudonymize' : 'pseudonymized', result.pseudonymized, dryRun),
    ...failureLines(result.failures),
  ].join('\n');
}

/** An export's bundle is fetched by running the same export again: the same ID and body reuse the request. */
function bundleHint(request: Json): string | undefined {
  const subject = asObject(request.subject);
  const option = SUBJECT_OPTIONS[text(subject.kind) as SubjectKind] as string | undefined;
  const id = text(subject.id);
  if (request.type !== 'export' || request.status === 'running' || request.status === 'failed' || option === undefined || id === undefined) return undefined;
  return `provisiond data export ${option} ${id} --request-id ${text(request.requestId) ?? ''}${request.includeSecrets === true ? ' --include-secrets' : ''}`;
}

function writeOutput(option: string, file: string, content: string, mode?: number): void {
  try {
    writeFileSync(file, content, mode === undefined ? {} : { mode });
  } catch (error) {
    throw new CliError(`${option}: cannot write ${file}: ${(error as Error).message}`);
  }
}

/** The receipt document, or undefined when the file is not JSON (an invalid receipt, not a usage error). */
function parseReceiptFile(file: string): unknown {
  const content = readFileArgument('<file>', file).toString('utf8');
  try {
    return JSON.parse(content) as unknown;
  } catch {
    return undefined;
  }
}

/** A PEM public key, or the JSON that `data signing-key --json` prints; normalised to SPKI PEM. */
function readPublicKey(file: string): string {
  const content = readFileArgument('--public-key', file).toString('utf8');
  let pem = content;
  if (content.trimStart().startsWith('{')) {
    try {
      pem = text(asObject(JSON.parse(content) as unknown).publicKeyPem) ?? '';
    } catch {
      pem = content;
    }
  }
  try {
    return createPublicKey(pem).export({ type: 'spki', format: 'pem' }).toString();
  } catch {
    throw new CliError(`--public-key: ${file} holds no PEM public key (-----BEGIN PUBLIC KEY-----)`);
  }
}
