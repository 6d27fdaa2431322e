import { InvalidArgumentError, Option, type Command } from 'commander';
import { AUDIT_CLASSES, AUDIT_OUTCOMES } from '../../domain/audit-class.js';
import { dpsTimestamp } from '../../domain/time.js';
import { formatTable, text } from '../output.js';
import type { CliIo } from '../program.js';
import { adminAction, apiPath, asArray, asObject, positiveInteger, runAdmin, type ConnectionFlags, type Json } from './common.js';

/**
 * `provisiond audit …`: the instance's system log (docs/customer-data.md): every service-API call, registration
 * attempt, hub write, webhook exchange and data request, newest first, each an access or a change. Needs
 * EnrollmentRead and RegistrationStatusRead. The server logs one event per query, not one per page it follows.
 */
interface QueryFlags extends ConnectionFlags {
  subject?: string;
  from?: string;
  to?: string;
  actor?: string;
  outcome?: string;
  kind?: string;
  class?: string;
  max?: number;
}

const KINDS = ['serviceApi', 'registration', 'hubWrite', 'webhook', 'dataRequest'];
/** The server's largest page of events. */
const MAX_PAGE = 1000;

export function registerAuditCommands(program: Command, io: CliIo): void {
  const root = program.command('audit').description('query the system log (audit events) of the instance');

  adminAction(
    root
      .command('query')
      .description('list audit events, newest first, filtered by subject, time, actor, outcome, kind and class (follows continuation)')
      .option('--subject <id>', 'a registration ID, device ID or enrollment group ID (any case)')
      .option('--from <time>', 'events at or after this time: ISO 8601, e.g. 2026-01-31 (midnight UTC) or 2026-01-31T08:00:00+01:00', isoTime)
      .option('--to <time>', 'events at or before this time (ISO 8601)', isoTime)
      .option('--actor <name>', "who acted: a policy name, 'device', or 'provisiond' (the server's own work)")
      .addOption(new Option('--outcome <outcome>', "only successes, failures, or reads that found nothing ('notFound', neutral)").choices([...AUDIT_OUTCOMES]))
      .addOption(new Option('--kind <kind>', 'only one kind of event').choices(KINDS))
      .addOption(new Option('--class <class>', "only changes (writes and attempts) or only accesses (reads)").choices([...AUDIT_CLASSES]))
      .option('--max <n>', 'stop after n events (default: follow continuation to the end)', positiveInteger),
    async (flags: QueryFlags) =>
      runAdmin(io, flags, async (context) => {
        const filter: Json = {};
        for (const name of ['subject', 'from', 'to', 'actor', 'outcome', 'kind', 'class'] as const) {
          if (flags[name] !== undefined) filter[name] = flags[name];
        }
        const events: Json[] = [];
        let continuation: string | undefined;
        do {
          const headers: Record<string, string> = {};
          if (flags.max !== undefined) headers['x-ms-max-item-count'] = String(Math.min(flags.max - events.length, MAX_PAGE));
          if (continuation !== undefined) headers['x-ms-continuation'] = continuation;
          const response = await context.client.request('POST', apiPath('auditEvents', 'query'), { headers, body: filter });
          events.push(...asArray(response.body).map(asObject));
          continuation = response.headers.get('x-ms-continuation') ?? undefined;
        } while (continuation !== undefined && continuation !== '' && (flags.max === undefined || events.length < flags.max));
        const shown = flags.max === undefined ? events : events.slice(0, flags.max);
        context.print(shown, () =>
          formatTable(
            ['TIME', 'CLASS', 'KIND', 'OPERATION', 'ACTOR', 'SUBJECT', 'OUTCOME', 'ERROR'],
            shown.map((event) => [
              text(event.timeUtc) ?? '',
              text(event.class) ?? '',
              text(event.kind) ?? '',
              text(event.operation) ?? '',
              text(event.actor) ?? '',
              subjectText(asObject(event.subject)),
              text(event.outcome) ?? '',
              errorText(event),
            ]),
            'no audit events',
          ),
        );
      }),
  );
}

/**
 * An ISO 8601 time as the log stores it (UTC, seven fractional digits), so that the server's comparison of time
 * strings is exact whatever offset or precision the user typed.
 */
function isoTime(value: string): string {
  const time = /^\d{4}-\d\d-\d\d([T ]\d\d:\d\d(:\d\d(\.\d+)?)?(Z|[+-]\d\d:?\d\d)?)?$/i.test(value.trim()) ? new Date(value.trim()) : undefined;
  if (time === undefined || Number.isNaN(time.getTime())) throw new InvalidArgumentError('it must be an ISO 8601 date or time, e.g. 2026-01-31 or 2026-01-31T08:00:00Z.');
  return dpsTimestamp(time);
}

function subjectText(subject: Json): string {
  // A query of the log names the ID it asked about as all three kinds (it matches any): shown once.
  if (subject.registrationId !== undefined && subject.registrationId === subject.deviceId && subject.deviceId === subject.enrollmentGroupId) {
    return `id=${text(subject.registrationId) ?? ''}`;
  }
  const parts: string[] = [];
  if (subject.registrationId !== undefined) parts.push(`registrationId=${text(subject.registrationId) ?? ''}`);
  if (subject.deviceId !== undefined) parts.push(`deviceId=${text(subject.deviceId) ?? ''}`);
  if (subject.enrollmentGroupId !== undefined) parts.push(`enrollmentGroupId=${text(subject.enrollmentGroupId) ?? ''}`);
  if (subject.hash !== undefined) parts.push(`hash=${(text(subject.hash) ?? '').slice(0, 12)}…`);
  return parts.length === 0 ? '-' : parts.join(',');
}

function errorText(event: Json): string {
  const parts = [text(event.errorCode), text(event.reason)].filter((part): part is string => part !== undefined && part !== '');
  return parts.length === 0 ? '-' : parts.join(' ');
}
