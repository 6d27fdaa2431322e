import { useEffect, useId, useRef, useState, type FormEvent } from 'react';
import { ApiError, quote, selectWhere, type ApiClient } from '../api/client';
import { formatBytes } from '../api/encoding';
import { isSignedReceipt, verifyReceipt, type ReceiptCheck } from '../api/receipt';
import type { DataRequest, ExportBundle, PlaceCount, ReceiptSigningKey, SignedReceipt, SubjectInput } from '../api/types';
import {
  Badge,
  ConfirmDialog,
  DateTime,
  downloadFile,
  Empty,
  ErrorBanner,
  Fields,
  Lacks,
  Loading,
  Notice,
  PageHeader,
  Pager,
  Progress,
  Section,
} from '../components/ui';
import { useAction, useLoad, usePaged } from '../hooks';
import { Link, navigate, path, useLocation } from '../router';
import { useSession } from '../session';

/**
 * Customer-data requests (docs/customer-data-api.md): preview every place a device's data lives, export it as a
 * downloaded JSON file, erase it after a typed confirmation, follow the job, and check the signed receipt.
 */
type SubjectKind = 'registrationId' | 'deviceId';
const SUBJECT_LABEL: Record<SubjectKind, string> = { registrationId: 'Registration ID', deviceId: 'Device ID' };

function newRequestId(type: string): string {
  const stamp = new Date().toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
  const random = Array.from(crypto.getRandomValues(new Uint8Array(4)), (byte) => byte.toString(16).padStart(2, '0')).join('');
  return `portal-${type}-${stamp}-${random}`;
}

function subjectOf(kind: SubjectKind, id: string): SubjectInput {
  return kind === 'registrationId' ? { registrationId: id } : { deviceId: id };
}

const POLL_MS = 1000;

/** Polls a request until it is no longer running. */
async function untilSettled(client: ApiClient, request: DataRequest, onUpdate: (request: DataRequest) => void, signal?: AbortSignal): Promise<DataRequest> {
  let current = request;
  while (current.status === 'running') {
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    if (signal?.aborted === true) return current;
    current = await client.get<DataRequest>(['dataRequests', current.requestId]);
    onUpdate(current);
  }
  return current;
}

function placeLabel(place: string): string {
  const hub = /^hub:(.+)\/devices$/.exec(place);
  if (hub !== null) return `Device identity and twin on hub ${hub[1]}`;
  const names: Record<string, string> = {
    enrollments: 'Individual enrollment',
    enrollmentGroups: 'Enrollment group',
    registrations: 'Registration records',
    operations: 'Registration operations',
    registrationIntents: 'Unfinished registrations (interrupted hub writes)',
    hubDeviceLinks: 'Hub devices provisiond created for the subject',
    issuedCertificates: 'Certificates issued from CSRs',
    auditEvents: 'System log events',
    webhookExchanges: 'Custom allocation webhook exchanges',
    dataRequests: 'Earlier data requests about the subject',
    lifecycleEventOutbox: 'Undelivered lifecycle events',
    // Requests stored before the places were one list (issue 10) name the device's group membership this way.
    'enrollmentGroups (membership)': 'Enrollment group membership',
  };
  return names[place] ?? place;
}

export function PlaceTable({ title, places, showItems, testId }: { title: string; places: PlaceCount[] | undefined; showItems?: boolean; testId?: string }) {
  if (places === undefined || places.length === 0) return null;
  return (
    <div className="table-wrap" {...(testId === undefined ? {} : { 'data-testid': testId })}>
      <table>
        <caption>{title}</caption>
        <thead>
          <tr>
            <th scope="col">Where</th>
            <th scope="col" className="numeric">
              Count
            </th>
            {showItems === true && <th scope="col">Items</th>}
          </tr>
        </thead>
        <tbody>
          {places.map((place) => (
            <tr key={place.place}>
              <td>
                {place.name ?? placeLabel(place.place)}
                {place.reason !== undefined && <div className="small failure-reason">{place.reason}</div>}
              </td>
              <td className="numeric">{place.count}</td>
              {showItems === true && <td className="small">{(place.items ?? []).join(', ') || <span className="muted">—</span>}</td>}
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

export function DataRequestsPage() {
  const session = useSession();
  const location = useLocation();
  const canExport = session.canAll('EnrollmentRead', 'RegistrationStatusRead');
  const canErase = session.canAll('EnrollmentWrite', 'RegistrationStatusWrite');
  const initialKind: SubjectKind = location.search.has('deviceId') ? 'deviceId' : 'registrationId';
  const [kind, setKind] = useState<SubjectKind>(initialKind);
  const [subject, setSubject] = useState(location.search.get('registrationId') ?? location.search.get('deviceId') ?? '');
  const [includeSecrets, setIncludeSecrets] = useState(false);
  const [preview, setPreview] = useState<{ subject: string; kind: SubjectKind; request: DataRequest; searched?: PlaceCount[] } | undefined>(undefined);
  const [exported, setExported] = useState<{ request: DataRequest; fileName: string; bytes: number; bundle: ExportBundle } | undefined>(undefined);
  const [running, setRunning] = useState<DataRequest | undefined>(undefined);
  const [confirmErase, setConfirmErase] = useState(false);
  const [historyKey, setHistoryKey] = useState(0);
  const action = useAction();
  const eraseAction = useAction();
  const ids = { subject: useId(), secrets: useId() };
  const id = subject.trim();

  if (!canExport && !canErase) {
    return (
      <>
        <PageHeader title="Customer data" />
        <Lacks right="EnrollmentRead and RegistrationStatusRead" what="customer data" />
      </>
    );
  }

  const start = async (body: Record<string, unknown>, type: string): Promise<DataRequest> => {
    const created = await session.client.put<DataRequest>(['dataRequests', newRequestId(type)], body);
    setRunning(created);
    const settled = await untilSettled(session.client, created, setRunning);
    setRunning(undefined);
    setHistoryKey((value) => value + 1);
    return settled;
  };

  const runPreview = async (event?: FormEvent) => {
    event?.preventDefault();
    if (id === '') return;
    setExported(undefined);
    setPreview(undefined);
    // With the erase rights a dry run lists every item that would go; without them, an export's manifest says where
    // the data was found.
    const found = await action.run(async () => {
      if (canErase) return { request: await start({ type: 'erase', subject: subjectOf(kind, id), dryRun: true }, 'preview') };
      const request = await start({ type: 'export', subject: subjectOf(kind, id), includeSecrets: false }, 'preview');
      if (request.status !== 'completed') return { request };
      const bundle = await session.client.get<ExportBundle>(['dataRequests', request.requestId, 'bundle']);
      return { request, searched: bundle.manifest.searched };
    });
    if (found !== undefined) setPreview({ subject: id, kind, ...found });
  };

  const runExport = async () => {
    if (id === '') return;
    setExported(undefined);
    const result = await action.run(async () => {
      const request = await start({ type: 'export', subject: subjectOf(kind, id), includeSecrets }, 'export');
      if (request.status !== 'completed') throw new Error(request.error ?? `The export ended ${request.status}.`);
      const response = await session.client.raw('GET', ['dataRequests', request.requestId, 'bundle']);
      const fileName = `provisiond-export-${id}-${request.requestId}.json`;
      downloadFile(fileName, response.text);
      return { request, fileName, bytes: new Blob([response.text]).size, bundle: JSON.parse(response.text) as ExportBundle };
    });
    if (result !== undefined) setExported(result);
  };

  const openErase = async () => {
    if (id === '') return;
    if (preview === undefined || preview.subject !== id || preview.kind !== kind) await runPreview();
    setConfirmErase(true);
  };

  const runErase = async () => {
    const created = await eraseAction.run(() =>
      session.client.put<DataRequest>(['dataRequests', newRequestId('erase')], { type: 'erase', subject: subjectOf(kind, id), dryRun: false }),
    );
    if (created !== undefined) {
      setConfirmErase(false);
      navigate(path('data-requests', created.requestId));
    }
  };

  const previewRequest = preview?.subject === id && preview.kind === kind ? preview.request : undefined;
  const previewPlaces = previewRequest === undefined ? undefined : previewRequest.type === 'erase' ? previewRequest.result : undefined;

  return (
    <>
      <PageHeader title="Customer data" subtitle="Export or erase everything provisiond holds about one device." />
      <Section title="Data request">
        <form onSubmit={(event) => void runPreview(event)} className="form">
          <fieldset className="inline-choice">
            <legend>Find the device by</legend>
            {(Object.keys(SUBJECT_LABEL) as SubjectKind[]).map((value) => (
              <label key={value}>
                <input type="radio" name="subjectKind" checked={kind === value} onChange={() => setKind(value)} /> {SUBJECT_LABEL[value]}
              </label>
            ))}
          </fieldset>
          <div className="form-row">
            <label htmlFor={ids.subject}>{SUBJECT_LABEL[kind]}</label>
            <input id={ids.subject} name="subject" value={subject} onChange={(event) => setSubject(event.target.value)} spellCheck={false} autoComplete="off" required />
          </div>
          <label className="checkbox">
            <input id={ids.secrets} type="checkbox" checked={includeSecrets} onChange={(event) => setIncludeSecrets(event.target.checked)} />
            Include secrets in the export (symmetric keys, hub device keys)
          </label>
          <div className="actions">
            <button type="submit" className="button secondary" disabled={id === '' || action.busy}>
              Preview
            </button>
            <button type="button" className="button primary" onClick={() => void runExport()} disabled={id === '' || action.busy || !canExport}>
              Export as a file
            </button>
            {canErase && (
              <button type="button" className="button danger" onClick={() => void openErase()} disabled={id === '' || action.busy}>
                Erase…
              </button>
            )}
          </div>
          {!canErase && <p className="hint">Erasing needs the EnrollmentWrite and RegistrationStatusWrite rights, which your policy lacks.</p>}
        </form>
        {running !== undefined && (
          <div className="running" role="status" aria-live="polite">
            <Loading label={`${running.type === 'export' ? 'Exporting' : running.dryRun ? 'Looking everywhere' : 'Erasing'}… (${running.requestId})`} />
            {running.progress !== undefined && <Progress done={running.progress.done} total={running.progress.total} label="Request progress" />}
          </div>
        )}
        <ErrorBanner error={action.error} />
      </Section>

      {previewRequest !== undefined && (
        <Section title={`Where the data of ${previewRequest.subject.id ?? id} lives`}>
          {previewPlaces !== undefined ? (
            <>
              <PlaceTable title="Would be deleted" places={previewPlaces.deleted} showItems testId="preview-deleted" />
              <PlaceTable title="Would be pseudonymized" places={previewPlaces.pseudonymized} showItems />
              <PlaceTable title="Could not be reached" places={previewPlaces.failures} />
              {totalCount(previewPlaces.deleted) === 0 && (
                <Empty title="Nothing of this device is left to delete">
                  {totalCount(previewPlaces.pseudonymized) > 0 ? 'Only system log entries that name it remain; an erasure pseudonymizes them.' : undefined}
                </Empty>
              )}
            </>
          ) : (
            <>
              <PlaceTable title="Found" places={preview?.searched} testId="preview-searched" />
              {totalCount(preview?.searched) === 0 && <Empty title="Nothing found for this device" />}
            </>
          )}
        </Section>
      )}

      {exported !== undefined && (
        <Section title="Export downloaded">
          <Notice kind="success">
            Saved <strong data-testid="export-file-name">{exported.fileName}</strong> ({formatBytes(exported.bytes)}).
          </Notice>
          <ExportSummary bundle={exported.bundle} />
          <button
            type="button"
            className="button secondary"
            onClick={() => void session.client.raw('GET', ['dataRequests', exported.request.requestId, 'bundle']).then((response) => downloadFile(exported.fileName, response.text))}
          >
            Download again
          </button>
        </Section>
      )}

      <History refreshKey={historyKey} />

      <ConfirmDialog
        open={confirmErase}
        title={`Erase every trace of ${id}?`}
        confirmLabel="Erase"
        danger
        busy={eraseAction.busy}
        error={eraseAction.error}
        typeToConfirm={id}
        onConfirm={() => void runErase()}
        onClose={() => {
          setConfirmErase(false);
          eraseAction.clear();
        }}
      >
        <p>
          This deletes the enrollment, the registration records and the device identities on every linked hub, and pseudonymizes the system log. It cannot be undone;
          export first if the data is needed. A signed receipt records what was erased.
        </p>
        {previewPlaces !== undefined && <PlaceTable title="What will go" places={[...(previewPlaces.deleted ?? []), ...(previewPlaces.pseudonymized ?? [])]} />}
      </ConfirmDialog>
    </>
  );
}

function totalCount(places: PlaceCount[] | undefined): number {
  return (places ?? []).reduce((sum, place) => sum + place.count, 0);
}

function ExportSummary({ bundle }: { bundle: ExportBundle }) {
  return (
    <>
      <Fields
        rows={[
          ['Individual enrollment', bundle.individualEnrollment === null ? 'none' : 'included'],
          ['Enrollment groups', String(bundle.enrollmentGroups?.length ?? 0)],
          ['Registration records', String(bundle.registrationRecords?.length ?? 0)],
          ['Hub device identities', String(bundle.hubDevices?.length ?? 0)],
          ['Webhook exchanges', String(bundle.webhookExchanges?.length ?? 0)],
          ['System log events', String(bundle.auditEvents?.length ?? 0)],
        ]}
      />
      <PlaceTable title="Places searched" places={bundle.manifest?.searched} />
    </>
  );
}

function History({ refreshKey }: { refreshKey: number }) {
  const session = useSession();
  const [type, setType] = useState('');
  const typeId = useId();
  const query = selectWhere([type === '' ? undefined : `type = ${quote(type)}`]);
  const allowed = session.canAll('EnrollmentRead', 'RegistrationStatusRead');
  const paged = usePaged<DataRequest>(`${query}|${refreshKey}|${allowed}`, (continuation, signal) =>
    allowed
      ? session.client.page<DataRequest>(['dataRequests', 'query'], type === '' ? undefined : { query }, { pageSize: 20, continuation, signal })
      : Promise.resolve({ items: [], continuation: undefined }),
  );
  if (!allowed) return null;
  const items = paged.data?.items ?? [];
  return (
    <Section
      title="Past requests"
      actions={
        <>
          <label htmlFor={typeId} className="visually-hidden">
            Type
          </label>
          <select id={typeId} value={type} onChange={(event) => setType(event.target.value)} className="small-select">
            <option value="">Every type</option>
            <option value="export">Exports</option>
            <option value="erase">Erasures</option>
          </select>
          <button type="button" className="button secondary small" onClick={paged.reload}>
            Refresh
          </button>
        </>
      }
    >
      <ErrorBanner error={paged.error} onRetry={paged.reload} />
      {paged.data === undefined && paged.loading ? (
        <Loading label="Loading past requests…" />
      ) : items.length === 0 && paged.error === undefined ? (
        <Empty title="No data requests yet" />
      ) : (
        <div className={`table-wrap ${paged.loading ? 'refreshing' : ''}`}>
          <table data-testid="data-request-history">
            <thead>
              <tr>
                <th scope="col">Request</th>
                <th scope="col">Type</th>
                <th scope="col">Subject</th>
                <th scope="col">Status</th>
                <th scope="col" className="hide-narrow">
                  Created
                </th>
              </tr>
            </thead>
            <tbody>
              {items.map((request) => (
                <tr key={request.requestId}>
                  <td>
                    <Link to={path('data-requests', request.requestId)}>{request.requestId}</Link>
                  </td>
                  <td>
                    {request.type}
                    {request.dryRun ? ' (dry run)' : ''}
                  </td>
                  <td>
                    <SubjectText request={request} />
                  </td>
                  <td>
                    <Badge value={request.status} />
                  </td>
                  <td className="hide-narrow">
                    <DateTime value={request.createdDateTimeUtc} />
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      <Pager paged={paged} count={items.length} />
    </Section>
  );
}

function SubjectText({ request }: { request: DataRequest }) {
  const label = SUBJECT_LABEL[request.subject.kind as SubjectKind] ?? request.subject.kind;
  if (request.subject.id !== undefined) {
    return (
      <span>
        {label} <strong>{request.subject.id}</strong>
      </span>
    );
  }
  return (
    <span title="After an erasure only a keyed hash of the subject is kept.">
      {label} (erased; hash <code>{(request.subject.hash ?? '').slice(0, 12)}…</code>)
    </span>
  );
}

export function DataRequestDetailPage({ requestId }: { requestId: string }) {
  const session = useSession();
  const loaded = useLoad((signal) => session.client.get<DataRequest>(['dataRequests', requestId], { signal }), [requestId]);
  const [live, setLive] = useState<DataRequest | undefined>(undefined);
  const request = live ?? loaded.data;
  const action = useAction();

  useEffect(() => {
    if (loaded.data === undefined || loaded.data.status !== 'running') return;
    const controller = new AbortController();
    void untilSettled(session.client, loaded.data, setLive, controller.signal).catch(() => undefined);
    return () => controller.abort();
  }, [loaded.data, session.client]);

  if (request === undefined) {
    return (
      <>
        <PageHeader title={requestId} subtitle={<Link to="/data-requests">← Customer data</Link>} />
        {loaded.loading ? <Loading /> : <ErrorBanner error={loaded.error} onRetry={loaded.reload} />}
      </>
    );
  }

  const retry = async () => {
    const retried = await action.run(() => session.client.post<DataRequest>(['dataRequests', requestId, 'retry']));
    if (retried !== undefined) {
      setLive(retried);
      await untilSettled(session.client, retried, setLive);
    }
  };
  const downloadBundle = () =>
    action.run(async () => {
      const response = await session.client.raw('GET', ['dataRequests', requestId, 'bundle']);
      downloadFile(`provisiond-export-${request.subject.id ?? 'subject'}-${requestId}.json`, response.text);
    });
  const result = request.result;
  const title = `${request.type === 'export' ? 'Export' : request.dryRun ? 'Erase preview' : 'Erasure'} ${requestId}`;

  return (
    <>
      <PageHeader title={title} subtitle={<Link to="/data-requests">← Customer data</Link>} />
      <Section title="Status">
        <div className="status-line">
          <Badge value={request.status} />
          {request.status === 'running' && <Loading label="Working…" />}
        </div>
        {request.progress !== undefined && <Progress done={request.progress.done} total={request.progress.total} label="Request progress" />}
        {request.error !== undefined && (
          <div className="banner banner-error" role="alert">
            <div>{request.error}</div>
          </div>
        )}
        <Fields
          rows={[
            ['Type', `${request.type}${request.dryRun ? ' (dry run)' : ''}`],
            ['Subject', <SubjectText request={request} key="subject" />],
            request.type === 'export' && ['Secrets', request.includeSecrets ? 'included' : 'redacted'],
            ['Created', <DateTime value={request.createdDateTimeUtc} key="created" />],
            ['Last updated', <DateTime value={request.lastUpdatedDateTimeUtc} key="updated" />],
          ]}
        />
        <div className="actions">
          {request.type === 'export' && request.status === 'completed' && (
            <button type="button" className="button primary" onClick={() => void downloadBundle()} disabled={action.busy}>
              Download export
            </button>
          )}
          {request.type === 'erase' && request.status === 'partiallyCompleted' && session.canAll('EnrollmentWrite', 'RegistrationStatusWrite') && (
            <button type="button" className="button primary" onClick={() => void retry()} disabled={action.busy}>
              Retry the erasure
            </button>
          )}
        </div>
        <ErrorBanner error={action.error} />
      </Section>
      {result !== undefined && (
        <Section title={request.dryRun ? 'What would be erased' : 'Result'}>
          <PlaceTable title={request.dryRun ? 'Would be deleted' : 'Deleted'} places={result.deleted} showItems={request.dryRun} testId="result-deleted" />
          <PlaceTable title={request.dryRun ? 'Would be pseudonymized' : 'Pseudonymized'} places={result.pseudonymized} showItems={request.dryRun} />
          <PlaceTable title="Failures" places={result.failures} />
          <PlaceTable title="Searched" places={result.searched} />
        </Section>
      )}
      {request.type === 'erase' && !request.dryRun && request.status === 'completed' && <ReceiptPanel requestId={requestId} />}
    </>
  );
}

/** Downloads the signed receipt and checks it against the server's published key; also checks a receipt file. */
function ReceiptPanel({ requestId }: { requestId: string }) {
  const session = useSession();
  const [check, setCheck] = useState<{ source: string; result: ReceiptCheck } | undefined>(undefined);
  const action = useAction();
  const fileInput = useRef<HTMLInputElement>(null);

  const checkReceipt = async (signed: SignedReceipt, source: string) => {
    const published = await session.client.get<ReceiptSigningKey>(['receiptSigningKey']);
    setCheck({ source, result: await verifyReceipt(signed, published) });
  };
  const download = () =>
    action.run(async () => {
      const response = await session.client.raw('GET', ['dataRequests', requestId, 'receipt']);
      const fileName = `provisiond-receipt-${requestId}.json`;
      downloadFile(fileName, response.text);
      const signed: unknown = JSON.parse(response.text);
      if (!isSignedReceipt(signed)) throw new Error('The server sent a receipt in an unexpected shape.');
      await checkReceipt(signed, fileName);
    });
  const checkFile = (file: File | undefined) =>
    action.run(async () => {
      if (file === undefined) return;
      let signed: unknown;
      try {
        signed = JSON.parse(await file.text());
      } catch {
        throw new ApiError(400, `${file.name} is not JSON.`);
      }
      if (!isSignedReceipt(signed)) throw new ApiError(400, `${file.name} is not a provisiond receipt (it needs "receipt" and "signature").`);
      await checkReceipt(signed, file.name);
    });

  return (
    <Section title="Receipt">
      <p>The receipt lists what was erased, names the subject only by a keyed hash, and is signed by this instance's key.</p>
      <div className="actions">
        <button type="button" className="button primary" onClick={() => void download()} disabled={action.busy}>
          Download and verify the receipt
        </button>
        <button type="button" className="button secondary" onClick={() => fileInput.current?.click()} disabled={action.busy}>
          Verify a receipt file…
        </button>
        <input
          ref={fileInput}
          type="file"
          accept=".json,application/json"
          hidden
          aria-label="Receipt file to verify"
          onChange={(event) => {
            void checkFile(event.target.files?.[0]);
            event.target.value = '';
          }}
        />
      </div>
      <ErrorBanner error={action.error} />
      {check !== undefined && (
        <div data-testid="receipt-verdict">
          {check.result.verdict === 'verified' ? (
            <Notice kind="success">
              <strong>Verified</strong>: {check.source} is signed by this server's receipt key <code>{check.result.keyId}</code>.
            </Notice>
          ) : check.result.verdict === 'mismatch' ? (
            <div className="banner banner-error" role="alert">
              <div>
                <strong>Signature does not match</strong>: {check.source} — {check.result.reason}.
              </div>
            </div>
          ) : (
            <Notice kind="warning">{check.result.reason}.</Notice>
          )}
        </div>
      )}
    </Section>
  );
}
