import { useId, useState } from 'react';
import type { AuditEvent, AuditQuery } from '../api/types';
import { usePaged } from '../hooks';
import { useSession } from '../session';
import { Badge, DateTime, Empty, ErrorBanner, JsonBlock, Lacks, Loading, Pager } from './ui';

/**
 * What happened to one subject, from the system log: registrations (with why one failed), service API writes, hub
 * writes, data requests. Newest first, as the log answers. Changes only unless the reader asks for the reads too
 * (who looked at the device, the console's own reads among them).
 */
export function queryAuditEvents(client: ReturnType<typeof useSession>['client'], filter: AuditQuery, pageSize: number, continuation: string | undefined, signal: AbortSignal) {
  return client.page<AuditEvent>(['auditEvents', 'query'], filter, { pageSize, continuation, signal });
}

export function Timeline({ subject, refreshKey = 0 }: { subject: string; refreshKey?: number }) {
  const session = useSession();
  const allowed = session.canAll('EnrollmentRead', 'RegistrationStatusRead');
  const [withReads, setWithReads] = useState(false);
  const readsId = useId();
  const filter: AuditQuery = withReads ? { subject } : { subject, class: 'change' };
  const paged = usePaged<AuditEvent>(`${subject}|${refreshKey}|${allowed}|${withReads}`, (continuation, signal) =>
    allowed ? queryAuditEvents(session.client, filter, 20, continuation, signal) : Promise.resolve({ items: [], continuation: undefined }),
  );
  if (!allowed) return <Lacks right="EnrollmentRead and RegistrationStatusRead" what="the timeline" />;
  if (paged.data === undefined && paged.loading) return <Loading label="Loading the timeline…" />;
  const events = paged.data?.items ?? [];
  return (
    <div>
      <label className="checkbox small" htmlFor={readsId}>
        <input id={readsId} type="checkbox" checked={withReads} onChange={(event) => setWithReads(event.target.checked)} /> Show reads
      </label>
      <ErrorBanner error={paged.error} onRetry={paged.reload} />
      {events.length === 0 && paged.error === undefined ? (
        <Empty title="Nothing logged yet">Registrations, changes and data requests for {subject} appear here{withReads ? ', and who read its data' : ''}.</Empty>
      ) : (
        <ol className="timeline" aria-label={`Timeline of ${subject}`} data-testid="timeline">
          {events.map((event) => (
            <TimelineEvent key={event.eventId} event={event} />
          ))}
        </ol>
      )}
      <Pager paged={paged} count={events.length} />
    </div>
  );
}

const NOUNS: Record<string, string> = {
  IndividualEnrollment: 'Enrollment',
  EnrollmentGroup: 'Enrollment group',
  DeviceRegistrationState: 'Registration record',
  DataRequest: 'Data request',
  AuditEvent: 'System log',
  AccessPolicy: 'Access policy',
  LinkedHub: 'Linked hub',
  Certificate: 'CA certificate',
  Instance: 'Instance',
  Instances: 'Instances',
};
const VERBS: Record<string, string> = {
  Get: 'read',
  CreateOrUpdate: 'created or updated',
  Create: 'created',
  Update: 'updated',
  Delete: 'deleted',
  Query: 'queried',
  List: 'listed',
  GetAttestationMechanism: 'keys read',
  RunBulkOperation: 'bulk operation',
  GetBundle: 'export downloaded',
  GetReceipt: 'receipt downloaded',
  GetSigningKey: 'signing key read',
  Retry: 'retried',
  ListKeys: 'keys read',
  RegenerateKey: 'key regenerated',
  GenerateVerificationCode: 'verification code generated',
  Verify: 'verified',
};
const OPERATIONS: Record<string, string> = {
  register: 'Device registration',
  export: 'Data export',
  erase: 'Erasure',
  customAllocation: 'Custom allocation webhook',
};

/**
 * Why a failed event failed. An erase keeps the event (pseudonymized) but drops its reason, which could name the
 * device: say so rather than suggest nothing was ever recorded.
 */
export function failureReason(event: AuditEvent): string {
  if (event.reason !== undefined) return event.reason;
  if (event.subject?.hash !== undefined) return 'reason removed when the device\'s data was erased';
  return 'no reason recorded';
}

/** `IndividualEnrollment_Get` → "Enrollment read"; `register` → "Device registration"; otherwise the words. */
export function eventTitle(event: AuditEvent): string {
  const [noun, verb] = event.operation.split('_');
  if (noun !== undefined && verb !== undefined && NOUNS[noun] !== undefined) return `${NOUNS[noun]} ${VERBS[verb] ?? verb}`;
  const known = OPERATIONS[event.operation];
  if (known !== undefined) return known;
  const words = event.operation.replace(/([a-z])([A-Z])/g, '$1 $2').replace(/[_.]/g, ' ').toLowerCase();
  return words.charAt(0).toUpperCase() + words.slice(1);
}

/** The outcome as a person reads it: a read that found nothing is neutral, not a failure. */
export function OutcomeBadge({ event }: { event: AuditEvent }) {
  return event.outcome === 'notFound' ? <Badge value="notFound" label="not found" /> : <Badge value={event.outcome} />;
}

function TimelineEvent({ event }: { event: AuditEvent }) {
  const [open, setOpen] = useState(false);
  const failed = event.outcome === 'failure';
  const tone = failed ? 'failed' : event.class === 'access' ? 'neutral' : '';
  return (
    <li className={`timeline-event ${tone}`}>
      <div className="timeline-dot" aria-hidden="true" />
      <div className="timeline-body">
        <div className="timeline-line">
          <strong>{eventTitle(event)}</strong>
          <OutcomeBadge event={event} />
          <span className="muted small">
            <DateTime value={event.timeUtc} />
          </span>
        </div>
        <div className="small muted">
          {[event.class, event.kind, event.actor === '' ? undefined : `by ${event.actor}`, repeatsText(event), event.transport, event.attestationType, event.hub === undefined ? undefined : `hub ${event.hub}`, event.source]
            .filter(Boolean)
            .join(' · ')}
        </div>
        {failed && (
          <div className="failure-reason">
            Why it failed: {failureReason(event)}
            {event.errorCode !== undefined && <span className="muted"> (error {event.errorCode})</span>}
          </div>
        )}
        <button type="button" className="link-button small" aria-expanded={open} onClick={() => setOpen((value) => !value)}>
          {open ? 'Hide details' : 'Details'}
        </button>
        {open && <JsonBlock value={event} label="Event details" />}
      </div>
    </li>
  );
}

/** A folded read: how many more times the same reader read the subject, until when. */
export function repeatsText(event: AuditEvent): string | undefined {
  const repeats = event.details?.repeats;
  return typeof repeats === 'number' && repeats > 0 ? `read ${repeats + 1} times in a row` : undefined;
}
