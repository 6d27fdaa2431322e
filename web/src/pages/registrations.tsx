import { useId, useState, type FormEvent } from 'react';
import { ApiError, quote, selectWhere } from '../api/client';
import type { EnrollmentGroup, IndividualEnrollment, RegistrationState } from '../api/types';
import { RegistrationRecord } from '../components/registration-record';
import { Timeline } from '../components/timeline';
import { ConfirmDialog, Empty, ErrorBanner, Lacks, Loading, PageHeader, Pager, Section } from '../components/ui';
import { useAction, useDebounced, useLoad, usePaged } from '../hooks';
import { Link, navigate, path } from '../router';
import { useSession } from '../session';
import { GroupRecords, RecordTable } from './enrollments';

/**
 * Registration records. The service API lists records per enrollment group; an individual enrollment carries its
 * record in `registrationState`, so the "individual enrollments" view reads the enrollment query.
 */
const INDIVIDUAL = '';

export function RegistrationsPage() {
  const session = useSession();
  const [lookup, setLookup] = useState('');
  const [source, setSource] = useState(INDIVIDUAL);
  const ids = { lookup: useId(), source: useId() };
  const groups = useLoad(
    (signal) =>
      session.can('EnrollmentRead')
        ? session.client.page<EnrollmentGroup>(['enrollmentGroups', 'query'], { query: 'SELECT *' }, { pageSize: 200, signal })
        : Promise.resolve({ items: [], continuation: undefined }),
    [],
  );
  if (!session.can('RegistrationStatusRead')) {
    return (
      <>
        <PageHeader title="Registration records" />
        <Lacks right="RegistrationStatusRead" what="the registration records" />
      </>
    );
  }
  const open = (event: FormEvent) => {
    event.preventDefault();
    if (lookup.trim() !== '') navigate(path('registrations', lookup.trim()));
  };
  return (
    <>
      <PageHeader title="Registration records" subtitle="Where each device was provisioned, and how its last registration went." />
      <div className="card">
        <form className="filters" onSubmit={open} role="search">
          <div className="form-row grow">
            <label htmlFor={ids.lookup}>Open a record by registration ID</label>
            <input id={ids.lookup} type="search" value={lookup} onChange={(event) => setLookup(event.target.value)} spellCheck={false} placeholder="e.g. sensor-1" />
          </div>
          <button type="submit" className="button secondary align-end">
            Open
          </button>
        </form>
      </div>
      <div className="card">
        <div className="form-row">
          <label htmlFor={ids.source}>Show the records of</label>
          <select id={ids.source} value={source} onChange={(event) => setSource(event.target.value)}>
            <option value={INDIVIDUAL}>Individual enrollments</option>
            {(groups.data?.items ?? []).map((group) => (
              <option key={group.enrollmentGroupId} value={group.enrollmentGroupId}>
                Group {group.enrollmentGroupId}
              </option>
            ))}
          </select>
        </div>
      </div>
      {source === INDIVIDUAL ? <IndividualRecords /> : <GroupRecords groupId={source} />}
    </>
  );
}

function IndividualRecords() {
  const session = useSession();
  const [search, setSearch] = useState('');
  const term = useDebounced(search.trim());
  const searchId = useId();
  const query = selectWhere([term === '' ? undefined : `registrationId LIKE ${quote(`${term}%`)}`]);
  const allowed = session.can('EnrollmentRead');
  const paged = usePaged<IndividualEnrollment>(`${query}|${allowed}`, (continuation, signal) =>
    allowed
      ? session.client.page<IndividualEnrollment>(['enrollments', 'query'], { query }, { pageSize: 50, continuation, signal })
      : Promise.resolve({ items: [], continuation: undefined }),
  );
  if (!allowed) {
    return (
      <Section title="Records of individual enrollments">
        <Lacks right="EnrollmentRead" what="the list of individual enrollments' records (open one by its ID above)" />
      </Section>
    );
  }
  const records = (paged.data?.items ?? []).flatMap((entry) => (entry.registrationState === undefined ? [] : [entry.registrationState]));
  return (
    <Section
      title="Records of individual enrollments"
      actions={
        <button type="button" className="button secondary small" onClick={paged.reload}>
          Refresh
        </button>
      }
    >
      <form className="filters" role="search" onSubmit={(event) => event.preventDefault()}>
        <div className="form-row grow">
          <label htmlFor={searchId}>Search by registration ID</label>
          <input id={searchId} type="search" value={search} onChange={(event) => setSearch(event.target.value)} spellCheck={false} placeholder="Starts with…" />
        </div>
      </form>
      <ErrorBanner error={paged.error} onRetry={paged.reload} />
      {paged.data === undefined && paged.loading ? (
        <Loading label="Loading registration records…" />
      ) : records.length === 0 && paged.error === undefined ? (
        <Empty title={term === '' ? 'No individually enrolled device has registered yet' : 'No records match'}>
          {paged.hasNext ? 'This page of enrollments has no records; look at the next page.' : undefined}
        </Empty>
      ) : (
        <RecordTable records={records} busy={paged.loading} />
      )}
      <Pager paged={paged} count={records.length} />
    </Section>
  );
}

export function RegistrationDetailPage({ id }: { id: string }) {
  const session = useSession();
  const loaded = useLoad((signal) => session.client.get<RegistrationState>(['registrations', id], { signal }), [id]);
  const [confirm, setConfirm] = useState(false);
  const action = useAction();
  const [timelineKey, setTimelineKey] = useState(0);
  const record = loaded.data;
  const remove = async () => {
    if (record === undefined) return;
    const done = await action.run(async () => {
      await session.client.delete(['registrations', id], record.etag === undefined ? {} : { headers: { 'if-match': record.etag } });
      return true;
    });
    if (done === true) navigate('/registrations');
  };
  return (
    <>
      <PageHeader
        title={id}
        subtitle={<Link to="/registrations">← Registration records</Link>}
        actions={
          record !== undefined && session.can('RegistrationStatusWrite') ? (
            <button type="button" className="button danger" onClick={() => setConfirm(true)}>
              Delete record
            </button>
          ) : undefined
        }
      />
      {record === undefined ? (
        loaded.loading ? (
          <Loading />
        ) : (
          <ErrorBanner error={loaded.error} onRetry={loaded.reload} />
        )
      ) : (
        <>
          <Section
            title="Registration record"
            actions={
              <button type="button" className="button secondary small" onClick={loaded.reload}>
                Refresh
              </button>
            }
          >
            <RegistrationRecord record={record} linkToRecord={false} />
            <EnrollmentLink id={id} />
          </Section>
        </>
      )}
      <Section
        title="Timeline"
        actions={
          <button type="button" className="button secondary small" onClick={() => setTimelineKey((value) => value + 1)}>
            Refresh
          </button>
        }
      >
        {loaded.error !== undefined && record === undefined ? <Empty title="No record; events logged for this ID are below." /> : null}
        <Timeline subject={id} refreshKey={timelineKey} />
      </Section>
      <ConfirmDialog
        open={confirm}
        title={`Delete the registration record of ${id}?`}
        confirmLabel="Delete record"
        danger
        busy={action.busy}
        error={action.error}
        onConfirm={() => void remove()}
        onClose={() => {
          setConfirm(false);
          action.clear();
        }}
      >
        <p>The device stays in its hub and can register again. To remove everything about the device, use a data request.</p>
      </ConfirmDialog>
    </>
  );
}

/** A record does not name its enrollment; an individual enrollment has the same ID, otherwise a group enrolled it. */
function EnrollmentLink({ id }: { id: string }) {
  const session = useSession();
  const allowed = session.can('EnrollmentRead');
  const loaded = useLoad(
    (signal) =>
      allowed
        ? session.client.get<IndividualEnrollment>(['enrollments', id], { signal }).then(
            () => true,
            (error: unknown) => {
              if (error instanceof ApiError && error.kind === 'notFound') return false;
              throw error;
            },
          )
        : Promise.resolve(undefined),
    [id, allowed],
  );
  if (loaded.data === undefined) return null;
  return <p>{loaded.data ? <Link to={path('enrollments', id)}>Its individual enrollment</Link> : 'This device registered through an enrollment group.'}</p>;
}
