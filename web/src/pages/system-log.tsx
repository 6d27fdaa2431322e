import { Fragment, useId, useState, type FormEvent } from 'react';
import type { AuditClass, AuditEvent, AuditKind, AuditQuery } from '../api/types';
import { eventTitle, failureReason, OutcomeBadge, queryAuditEvents, repeatsText } from '../components/timeline';
import { DateTime, Empty, ErrorBanner, JsonBlock, Lacks, Loading, PageHeader, Pager } from '../components/ui';
import { usePaged } from '../hooks';
import { Link, path, useLocation } from '../router';
import { useSession } from '../session';

/**
 * The system log: audit events of every kind, newest first, filtered by subject, time range, class (access or
 * change), outcome, kind and actor (POST /auditEvents/query). The filters apply when the form is submitted, so typing
 * does not fire a query per key. Reading the log is itself logged once per query (docs/customer-data.md).
 */
const KINDS: Array<[AuditKind, string]> = [
  ['registration', 'Device registrations'],
  ['serviceApi', 'Service API calls'],
  ['hubWrite', 'Hub writes'],
  ['webhook', 'Allocation webhooks'],
  ['dataRequest', 'Data requests'],
];

/** `datetime-local` values are local time without a zone; the API takes UTC instants. */
function toUtc(local: string): string | undefined {
  if (local === '') return undefined;
  const date = new Date(local);
  return Number.isNaN(date.getTime()) ? undefined : date.toISOString();
}

export function SystemLogPage() {
  const session = useSession();
  const location = useLocation();
  const [draft, setDraft] = useState({ subject: location.search.get('subject') ?? '', from: '', to: '', outcome: '', kind: '', eventClass: '', actor: '' });
  const [filter, setFilter] = useState<AuditQuery>(() => (draft.subject === '' ? {} : { subject: draft.subject }));
  const [expanded, setExpanded] = useState<string | undefined>(undefined);
  const ids = { subject: useId(), from: useId(), to: useId(), outcome: useId(), kind: useId(), eventClass: useId(), actor: useId() };
  const allowed = session.canAll('EnrollmentRead', 'RegistrationStatusRead');
  const paged = usePaged<AuditEvent>(`${JSON.stringify(filter)}|${allowed}`, (continuation, signal) =>
    allowed ? queryAuditEvents(session.client, filter, 50, continuation, signal) : Promise.resolve({ items: [], continuation: undefined }),
  );

  if (!allowed) {
    return (
      <>
        <PageHeader title="System log" />
        <Lacks right="EnrollmentRead and RegistrationStatusRead" what="the system log" />
      </>
    );
  }

  const apply = (event: FormEvent) => {
    event.preventDefault();
    const next: AuditQuery = {};
    const subject = draft.subject.trim();
    if (subject !== '') next.subject = subject;
    const from = toUtc(draft.from);
    const to = toUtc(draft.to);
    if (from !== undefined) next.from = from;
    if (to !== undefined) next.to = to;
    if (draft.outcome === 'success' || draft.outcome === 'failure' || draft.outcome === 'notFound') next.outcome = draft.outcome;
    if (draft.kind !== '') next.kind = draft.kind as AuditKind;
    if (draft.eventClass !== '') next.class = draft.eventClass as AuditClass;
    if (draft.actor.trim() !== '') next.actor = draft.actor.trim();
    setFilter(next);
  };
  const clear = () => {
    setDraft({ subject: '', from: '', to: '', outcome: '', kind: '', eventClass: '', actor: '' });
    setFilter({});
  };
  const set = (key: keyof typeof draft) => (event: { target: { value: string } }) => setDraft((previous) => ({ ...previous, [key]: event.target.value }));
  const events = paged.data?.items ?? [];
  const filtered = Object.keys(filter).length > 0;

  return (
    <>
      <PageHeader title="System log" subtitle="Changes (registrations, service API writes, hub writes, erasures) and accesses (who read what, exports)." />
      <div className="card">
        <form className="filters wrap" onSubmit={apply} role="search" aria-label="Filter the system log">
          <div className="form-row grow">
            <label htmlFor={ids.subject}>Subject (registration, device or group ID)</label>
            <input id={ids.subject} type="search" value={draft.subject} onChange={set('subject')} spellCheck={false} />
          </div>
          <div className="form-row">
            <label htmlFor={ids.from}>From</label>
            <input id={ids.from} type="datetime-local" value={draft.from} onChange={set('from')} />
          </div>
          <div className="form-row">
            <label htmlFor={ids.to}>To</label>
            <input id={ids.to} type="datetime-local" value={draft.to} onChange={set('to')} />
          </div>
          <div className="form-row">
            <label htmlFor={ids.outcome}>Outcome</label>
            <select id={ids.outcome} value={draft.outcome} onChange={set('outcome')}>
              <option value="">Any</option>
              <option value="success">Success</option>
              <option value="failure">Failure</option>
              <option value="notFound">Not found (reads)</option>
            </select>
          </div>
          <div className="form-row">
            <label htmlFor={ids.eventClass}>Class</label>
            <select id={ids.eventClass} value={draft.eventClass} onChange={set('eventClass')}>
              <option value="">Any</option>
              <option value="change">Changes</option>
              <option value="access">Accesses (reads)</option>
            </select>
          </div>
          <div className="form-row">
            <label htmlFor={ids.kind}>Kind</label>
            <select id={ids.kind} value={draft.kind} onChange={set('kind')}>
              <option value="">Any</option>
              {KINDS.map(([value, label]) => (
                <option key={value} value={value}>
                  {label}
                </option>
              ))}
            </select>
          </div>
          <div className="form-row">
            <label htmlFor={ids.actor}>Actor</label>
            <input id={ids.actor} value={draft.actor} onChange={set('actor')} placeholder="policy or device" spellCheck={false} />
          </div>
          <div className="filter-buttons">
            <button type="submit" className="button primary">
              Apply
            </button>
            <button type="button" className="button secondary" onClick={clear}>
              Clear
            </button>
          </div>
        </form>
      </div>
      <div className="card">
        <ErrorBanner error={paged.error} onRetry={paged.reload} />
        {paged.data === undefined && paged.loading ? (
          <Loading label="Loading the system log…" />
        ) : events.length === 0 && paged.error === undefined && paged.hasNext ? (
          // A page of a filter looks at a bounded stretch of the log (docs/customer-data.md "The system log").
          <Empty title="No match in this stretch of the log">Next → searches older events.</Empty>
        ) : events.length === 0 && paged.error === undefined ? (
          <Empty title={filtered ? 'No events match' : 'The log is empty'}>{filtered ? 'Widen the time range or clear the filters.' : undefined}</Empty>
        ) : (
          <div className={`table-wrap ${paged.loading ? 'refreshing' : ''}`}>
            <table data-testid="audit-events">
              <thead>
                <tr>
                  <th scope="col">Time</th>
                  <th scope="col" className="col-wide">
                    Event
                  </th>
                  <th scope="col">Subject</th>
                  <th scope="col">Outcome</th>
                  <th scope="col" className="hide-narrow">
                    Actor
                  </th>
                  <th scope="col">
                    <span className="visually-hidden">Details</span>
                  </th>
                </tr>
              </thead>
              <tbody>
                {events.map((event) => (
                  <Fragment key={event.eventId}>
                    <tr className={event.outcome === 'failure' ? 'row-failed' : event.outcome === 'notFound' ? 'row-neutral' : ''}>
                      <td className="nowrap">
                        <DateTime value={event.timeUtc} />
                      </td>
                      <td>
                        {eventTitle(event)}
                        <div className="small muted">{[event.class, event.kind, event.transport, repeatsText(event)].filter(Boolean).join(' · ')}</div>
                      </td>
                      <td>
                        <SubjectLinks event={event} />
                      </td>
                      <td>
                        <OutcomeBadge event={event} />
                        {event.outcome === 'failure' && (
                          <div className="small failure-reason">
                            {failureReason(event)}
                            {event.errorCode !== undefined && ` (${event.errorCode})`}
                          </div>
                        )}
                      </td>
                      <td className="hide-narrow">{event.actor}</td>
                      <td>
                        <button
                          type="button"
                          className="link-button small"
                          aria-expanded={expanded === event.eventId}
                          onClick={() => setExpanded((current) => (current === event.eventId ? undefined : event.eventId))}
                        >
                          {expanded === event.eventId ? 'Hide' : 'Details'}
                        </button>
                      </td>
                    </tr>
                    {expanded === event.eventId && (
                      <tr>
                        <td colSpan={6}>
                          <JsonBlock value={event} label="Event details" />
                        </td>
                      </tr>
                    )}
                  </Fragment>
                ))}
              </tbody>
            </table>
          </div>
        )}
        <Pager paged={paged} count={events.length} />
      </div>
    </>
  );
}

function SubjectLinks({ event }: { event: AuditEvent }) {
  const subject = event.subject;
  if (subject === undefined) return <span className="muted">—</span>;
  // A query of the log names the ID it asked about as all three kinds (it matches any of them).
  if (subject.registrationId !== undefined && subject.registrationId === subject.deviceId && subject.deviceId === subject.enrollmentGroupId) {
    return (
      <span>
        {subject.registrationId}
        <div className="small muted">log queried about this ID</div>
      </span>
    );
  }
  if (subject.registrationId !== undefined) {
    return (
      <span>
        <Link to={path('registrations', subject.registrationId)}>{subject.registrationId}</Link>
        {subject.enrollmentGroupId !== undefined && <div className="small muted">group {subject.enrollmentGroupId}</div>}
      </span>
    );
  }
  if (subject.enrollmentGroupId !== undefined) return <Link to={path('groups', subject.enrollmentGroupId)}>group {subject.enrollmentGroupId}</Link>;
  if (subject.deviceId !== undefined) return <span>{subject.deviceId}</span>;
  if (subject.hash !== undefined) return <span className="muted">erased subject ({subject.hash.slice(0, 10)}…)</span>;
  return <span className="muted">—</span>;
}
