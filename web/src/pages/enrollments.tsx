import { useEffect, useId, useState, type FormEvent, type ReactNode } from 'react';
import { base64ToBytes, bytesToBase64 } from '../api/encoding';
import { quote, selectWhere } from '../api/client';
import type { AttestationMechanism, CertificateWithInfo, IndividualEnrollment, RegistrationState } from '../api/types';
import { RegistrationRecord } from '../components/registration-record';
import { Timeline } from '../components/timeline';
import {
  Badge,
  ConfirmDialog,
  CopyButton,
  DateTime,
  Empty,
  ErrorBanner,
  Fields,
  isConflict,
  JsonBlock,
  Lacks,
  Loading,
  Notice,
  PageHeader,
  Pager,
  Section,
} from '../components/ui';
import { useAction, useDebounced, useLoad, usePaged } from '../hooks';
import { Link, navigate, path } from '../router';
import { useSession } from '../session';
import { ALLOCATION_LABEL, ATTESTATION_LABEL, idOf, type AnyEnrollment, type EnrollmentKind } from './enrollment-kinds';

/** Keys from a create answer, shown once on the detail page it leads to (they are also there on request later). */
export const freshAttestations = new Map<string, AttestationMechanism>();

const PAGE_SIZE = 25;

export function EnrollmentListPage({ kind }: { kind: EnrollmentKind }) {
  const session = useSession();
  const [search, setSearch] = useState('');
  const [status, setStatus] = useState('');
  const [attestation, setAttestation] = useState('');
  const term = useDebounced(search.trim());
  const ids = { search: useId(), status: useId(), attestation: useId() };
  const query = selectWhere([
    term === '' ? undefined : `${kind.idField} LIKE ${quote(`${term}%`)}`,
    status === '' ? undefined : `provisioningStatus = ${quote(status)}`,
    attestation === '' ? undefined : `attestationType = ${quote(attestation)}`,
  ]);
  const paged = usePaged<AnyEnrollment>(`${kind.api}|${query}`, (continuation, signal) =>
    session.client.page<AnyEnrollment>([kind.api, 'query'], { query }, { pageSize: PAGE_SIZE, continuation, signal }),
  );
  const items = paged.data?.items ?? [];
  const filtered = query !== 'SELECT *';
  const canWrite = session.can('EnrollmentWrite');
  const individual = kind.idField === 'registrationId';

  return (
    <>
      <PageHeader
        title={kind.plural}
        subtitle={individual ? 'One device each, with its own credential.' : 'Many devices sharing a credential: a group key or a signing certificate.'}
        actions={
          canWrite ? (
            <Link className="button primary" to={`${kind.route}/new`}>
              New {kind.singular}
            </Link>
          ) : undefined
        }
      />
      {!canWrite && <Notice>Your policy lacks the EnrollmentWrite right: you can look, not change.</Notice>}
      <div className="card">
        <form className="filters" role="search" onSubmit={(event) => event.preventDefault()}>
          <div className="form-row grow">
            <label htmlFor={ids.search}>Search by {kind.idNoun}</label>
            <input id={ids.search} type="search" value={search} onChange={(event) => setSearch(event.target.value)} placeholder="Starts with…" spellCheck={false} />
          </div>
          <div className="form-row">
            <label htmlFor={ids.status}>Status</label>
            <select id={ids.status} value={status} onChange={(event) => setStatus(event.target.value)}>
              <option value="">Any</option>
              <option value="enabled">Enabled</option>
              <option value="disabled">Disabled</option>
            </select>
          </div>
          <div className="form-row">
            <label htmlFor={ids.attestation}>Attestation</label>
            <select id={ids.attestation} value={attestation} onChange={(event) => setAttestation(event.target.value)}>
              <option value="">Any</option>
              {kind.attestations.map((type) => (
                <option key={type} value={type}>
                  {ATTESTATION_LABEL[type]}
                </option>
              ))}
            </select>
          </div>
        </form>
        <ErrorBanner error={paged.error} onRetry={paged.reload} />
        {paged.data === undefined && paged.loading ? (
          <Loading label={`Loading ${kind.plural.toLowerCase()}…`} />
        ) : items.length === 0 && paged.error === undefined ? (
          filtered ? (
            <Empty title={`No ${kind.plural.toLowerCase()} match`}>Change the search or the filters.</Empty>
          ) : (
            <Empty title={`No ${kind.plural.toLowerCase()} yet`}>
              {canWrite ? (
                <Link to={`${kind.route}/new`}>Create the first {kind.singular}</Link>
              ) : (
                `Ask someone with the EnrollmentWrite right to create one.`
              )}
            </Empty>
          )
        ) : (
          <div className={`table-wrap ${paged.loading ? 'refreshing' : ''}`} aria-busy={paged.loading}>
            <table>
              <caption className="visually-hidden">{kind.plural}</caption>
              <thead>
                <tr>
                  <th scope="col">{kind.idLabel}</th>
                  {individual && (
                    <th scope="col" className="hide-narrow">
                      Device ID
                    </th>
                  )}
                  <th scope="col" className="hide-narrow">
                    Attestation
                  </th>
                  <th scope="col">Status</th>
                  {individual && <th scope="col">Registration</th>}
                  <th scope="col" className="hide-narrow">
                    Last updated
                  </th>
                </tr>
              </thead>
              <tbody>
                {items.map((entry) => {
                  const id = idOf(kind, entry);
                  const state = individual ? (entry as IndividualEnrollment).registrationState : undefined;
                  return (
                    <tr key={id}>
                      <td>
                        <Link to={path(kind.route.slice(1), id)}>{id}</Link>
                      </td>
                      {individual && <td className="hide-narrow">{(entry as IndividualEnrollment).deviceId ?? <span className="muted">—</span>}</td>}
                      <td className="hide-narrow">{ATTESTATION_LABEL[entry.attestation.type]}</td>
                      <td>
                        <Badge value={entry.provisioningStatus} />
                      </td>
                      {individual && (
                        <td>
                          {state === undefined ? (
                            <span className="muted">not registered</span>
                          ) : (
                            <>
                              <Badge value={state.status} /> {state.assignedHub !== undefined && <span className="small muted">{state.assignedHub}</span>}
                            </>
                          )}
                        </td>
                      )}
                      <td className="hide-narrow">
                        <DateTime value={entry.lastUpdatedDateTimeUtc} />
                      </td>
                    </tr>
                  );
                })}
              </tbody>
            </table>
          </div>
        )}
        <Pager paged={paged} count={items.length} />
      </div>
    </>
  );
}

export function EnrollmentDetailPage({ kind, id }: { kind: EnrollmentKind; id: string }) {
  const session = useSession();
  const loaded = useLoad((signal) => session.client.get<AnyEnrollment>([kind.api, id], { signal }), [kind.api, id]);
  const action = useAction();
  const [confirmDelete, setConfirmDelete] = useState(false);
  const [timelineKey, setTimelineKey] = useState(0);
  const canWrite = session.can('EnrollmentWrite');
  const entry = loaded.data;

  if (entry === undefined) {
    return (
      <>
        <PageHeader title={id} subtitle={<Link to={kind.route}>← {kind.plural}</Link>} />
        {loaded.loading ? <Loading /> : <ErrorBanner error={loaded.error} onRetry={loaded.reload} />}
      </>
    );
  }

  const toggle = async () => {
    const next = entry.provisioningStatus === 'enabled' ? 'disabled' : 'enabled';
    const updated = await action.run(() =>
      session.client.put<AnyEnrollment>([kind.api, id], { ...entry, provisioningStatus: next }, { headers: { 'if-match': entry.etag } }),
    );
    if (updated !== undefined) {
      loaded.reload();
      setTimelineKey((value) => value + 1);
    }
  };
  const remove = async () => {
    const done = await action.run(async () => {
      await session.client.delete([kind.api, id], { headers: { 'if-match': entry.etag } });
      return true;
    });
    if (done === true) navigate(kind.route);
  };
  const individual = kind.idField === 'registrationId';
  const state = individual ? (entry as IndividualEnrollment).registrationState : undefined;

  return (
    <>
      <PageHeader
        title={
          <>
            {idOf(kind, entry)} <Badge value={entry.provisioningStatus} />
          </>
        }
        subtitle={<Link to={kind.route}>← {kind.plural}</Link>}
        actions={
          canWrite ? (
            <>
              <Link className="button secondary" to={`${path(kind.route.slice(1), id)}/edit`}>
                Edit
              </Link>
              <button type="button" className="button secondary" onClick={() => void toggle()} disabled={action.busy}>
                {entry.provisioningStatus === 'enabled' ? 'Disable' : 'Enable'}
              </button>
              <button type="button" className="button danger" onClick={() => setConfirmDelete(true)}>
                Delete
              </button>
            </>
          ) : undefined
        }
      />
      {!confirmDelete && (
        <ErrorBanner
          error={action.error}
          {...(isConflict(action.error)
            ? {
                onRetry: () => {
                  action.clear();
                  loaded.reload();
                },
                retryLabel: 'Load the current version',
              }
            : {})}
        />
      )}
      {loaded.error !== undefined && <ErrorBanner error={loaded.error} onRetry={loaded.reload} />}
      <div className="grid-2">
        <Section title="Overview">
          <Fields
            rows={[
              [kind.idLabel, idOf(kind, entry)],
              individual && ['Device ID', (entry as IndividualEnrollment).deviceId],
              ['Attestation', ATTESTATION_LABEL[entry.attestation.type]],
              ['Provisioning', <Badge value={entry.provisioningStatus} key="status" />],
              ['Allocation', entry.allocationPolicy === undefined ? 'Instance default' : (ALLOCATION_LABEL[entry.allocationPolicy] ?? entry.allocationPolicy)],
              ['Hubs', entry.iotHubs === undefined || entry.iotHubs.length === 0 ? 'Every linked hub' : entry.iotHubs.join(', ')],
              entry.customAllocationDefinition !== undefined && ['Webhook', entry.customAllocationDefinition.webhookUrl],
              entry.credentialPolicyName !== undefined && ['Credential policy', entry.credentialPolicyName],
              ['IoT Edge', entry.capabilities?.iotEdge === true ? 'Yes' : 'No'],
              [
                'Reprovisioning',
                entry.reprovisionPolicy === undefined
                  ? undefined
                  : `${entry.reprovisionPolicy.updateHubAssignment ? 'moves to a new hub' : 'keeps its hub'}, ${entry.reprovisionPolicy.migrateDeviceData ? 'migrates data' : 'resets data'}`,
              ],
              ['Created', <DateTime value={entry.createdDateTimeUtc} key="created" />],
              ['Last updated', <DateTime value={entry.lastUpdatedDateTimeUtc} key="updated" />],
            ]}
          />
        </Section>
        <Section title="Credential">
          <Credential kind={kind} id={id} attestation={entry.attestation} />
        </Section>
      </div>
      {individual && (
        <Section
          title="Registration record"
          actions={
            state !== undefined && session.can('RegistrationStatusRead') ? (
              <button type="button" className="button secondary small" onClick={loaded.reload}>
                Refresh
              </button>
            ) : undefined
          }
        >
          {state === undefined ? (
            <Empty title="Not registered yet">
              <span>
                When the device registers
                <IdScope />, its record appears here.{' '}
                <button type="button" className="link-button" onClick={loaded.reload}>
                  Refresh
                </button>
              </span>
            </Empty>
          ) : (
            <RegistrationRecord record={state} />
          )}
        </Section>
      )}
      {!individual && entry.attestation.type === 'symmetricKey' && session.can('EnrollmentRead') && <GroupDeviceKey kind={kind} id={id} />}
      {!individual && <GroupRecords groupId={id} />}
      {entry.initialTwin !== undefined && (
        <Section title="Initial twin">
          <JsonBlock value={entry.initialTwin} label="Initial twin" />
        </Section>
      )}
      <Section
        title="Timeline"
        actions={
          <button type="button" className="button secondary small" onClick={() => setTimelineKey((value) => value + 1)}>
            Refresh
          </button>
        }
      >
        <Timeline subject={id} refreshKey={timelineKey} />
      </Section>
      {individual && session.canAll('EnrollmentRead', 'RegistrationStatusRead') && (
        <Section title="Customer data">
          <p>
            {session.canAll('EnrollmentWrite', 'RegistrationStatusWrite')
              ? 'Export everything provisiond holds about this device, or erase it.'
              : 'Export everything provisiond holds about this device.'}{' '}
            <Link to={`/data-requests?registrationId=${encodeURIComponent(id)}`}>Open a data request for {id}</Link>
          </p>
        </Section>
      )}
      <ConfirmDialog
        open={confirmDelete}
        title={`Delete ${kind.singular} ${id}?`}
        confirmLabel="Delete"
        danger
        busy={action.busy}
        error={action.error}
        onConfirm={() => void remove()}
        onClose={() => {
          setConfirmDelete(false);
          action.clear();
        }}
      >
        <p>
          {individual
            ? 'The enrollment and its registration record are deleted. The device stays in its hub; to remove everything about it, use a data request.'
            : 'The group and the registration records of every device registered through it are deleted. Devices stay in their hubs.'}
        </p>
      </ConfirmDialog>
    </>
  );
}

function IdScope() {
  const session = useSession();
  const scope = session.capabilities.instance?.idScope;
  return scope === undefined ? null : (
    <>
      {' '}
      with ID scope <code>{scope}</code>
    </>
  );
}

/** The credential: certificate details and TPM keys are public; symmetric keys and certificate text only on request. */
function Credential({ kind, id, attestation }: { kind: EnrollmentKind; id: string; attestation: AttestationMechanism }) {
  const session = useSession();
  const freshKey = `${kind.api}/${id.toLowerCase()}`;
  // The create answer's keys are shown straight away, once: coming back later asks for them again.
  const [fresh] = useState(() => freshAttestations.get(freshKey));
  useEffect(() => {
    freshAttestations.delete(freshKey);
  }, [freshKey]);
  const [secrets, setSecrets] = useState<AttestationMechanism | undefined>(fresh);
  const action = useAction();
  const show = async () => {
    const full = fresh ?? (await action.run(() => session.client.post<AttestationMechanism>([kind.api, id, 'attestationmechanism'])));
    if (full !== undefined) setSecrets(full);
  };
  const shown = secrets ?? attestation;
  const rows: Array<[string, ReactNode]> = [];
  if (attestation.type === 'symmetricKey') {
    const keys = secrets?.symmetricKey;
    if (keys !== undefined && keys !== null) {
      rows.push(['Primary key', <KeyText value={keys.primaryKey ?? ''} testId="primary-key" key="p" />]);
      rows.push(['Secondary key', <KeyText value={keys.secondaryKey ?? ''} testId="secondary-key" key="s" />]);
    }
  } else if (attestation.type === 'tpm') {
    rows.push(['Endorsement key', <KeyText value={shown.tpm?.endorsementKey ?? ''} key="ek" />]);
    if (shown.tpm?.storageRootKey) rows.push(['Storage root key', <KeyText value={shown.tpm.storageRootKey} key="srk" />]);
  } else if (attestation.type === 'x509') {
    const x509 = shown.x509;
    const certificates = x509?.clientCertificates ?? x509?.signingCertificates;
    const label = x509?.clientCertificates ? 'Client certificate' : 'Signing certificate';
    for (const [slot, value] of [['primary', certificates?.primary], ['secondary', certificates?.secondary]] as const) {
      if (value !== undefined && value !== null) rows.push([`${label} (${slot})`, <CertificateSummary certificate={value} key={slot} />]);
    }
    if (x509?.caReferences?.primary) rows.push(['CA certificate (primary)', x509.caReferences.primary]);
    if (x509?.caReferences?.secondary) rows.push(['CA certificate (secondary)', x509.caReferences.secondary]);
  }
  const hasSecrets = attestation.type === 'symmetricKey' || (attestation.type === 'x509' && !attestation.x509?.caReferences);
  return (
    <div>
      {fresh !== undefined && secrets === fresh && <Notice kind="success">Created. The keys below are also available later with Show keys.</Notice>}
      {rows.length > 0 && <Fields rows={rows} />}
      {hasSecrets && (
        <div className="actions">
          {secrets === undefined ? (
            <button type="button" className="button secondary" onClick={() => void show()} disabled={action.busy}>
              {action.busy ? 'Loading…' : attestation.type === 'symmetricKey' ? 'Show keys' : 'Show certificates'}
            </button>
          ) : (
            <button type="button" className="button secondary" onClick={() => setSecrets(undefined)}>
              {attestation.type === 'symmetricKey' ? 'Hide keys' : 'Hide certificates'}
            </button>
          )}
        </div>
      )}
      <ErrorBanner error={action.error} />
    </div>
  );
}

/**
 * A device of a symmetric-key group registers with a key derived from the group key (as in Azure DPS):
 * base64(HMAC-SHA256(base64decode(group key), registration ID)). Computed here, in the browser, from the group's
 * primary key; the same as `provisiond group device-key`.
 */
function GroupDeviceKey({ kind, id }: { kind: EnrollmentKind; id: string }) {
  const session = useSession();
  const inputId = useId();
  const [registrationId, setRegistrationId] = useState('');
  const [derived, setDerived] = useState<{ registrationId: string; key: string } | undefined>(undefined);
  const [problem, setProblem] = useState<string | undefined>(undefined);
  const action = useAction();
  const compute = async (event: FormEvent) => {
    event.preventDefault();
    const wanted = registrationId.trim();
    setDerived(undefined);
    if (!/^[A-Za-z0-9](?:[A-Za-z0-9\-._:]{0,126}[A-Za-z0-9])?$/.test(wanted)) {
      setProblem('A registration ID is up to 128 letters, digits, -, ., _ or :, starting and ending with a letter or digit.');
      return;
    }
    setProblem(undefined);
    const mechanism = await action.run(() => session.client.post<AttestationMechanism>([kind.api, id, 'attestationmechanism']));
    const groupKey = mechanism?.symmetricKey?.primaryKey;
    if (groupKey === undefined || groupKey === null) return;
    const hmac = await crypto.subtle.importKey('raw', base64ToBytes(groupKey), { name: 'HMAC', hash: 'SHA-256' }, false, ['sign']);
    const signature = await crypto.subtle.sign('HMAC', hmac, new TextEncoder().encode(wanted));
    setDerived({ registrationId: wanted, key: bytesToBase64(new Uint8Array(signature)) });
  };
  return (
    <Section title="Device keys">
      <p className="muted">
        Each device of this group registers with its own key, derived from the group key and its registration ID:{' '}
        <code>base64(HMAC-SHA256(base64decode(group key), registration ID))</code>.
      </p>
      <form className="filters" onSubmit={(event) => void compute(event)} noValidate>
        <div className="form-row grow">
          <label htmlFor={inputId}>Registration ID of the device</label>
          <input
            id={inputId}
            value={registrationId}
            onChange={(event) => setRegistrationId(event.target.value)}
            spellCheck={false}
            autoComplete="off"
            aria-invalid={problem !== undefined}
          />
        </div>
        <div className="form-row">
          <button type="submit" className="button secondary" disabled={action.busy}>
            {action.busy ? 'Computing…' : 'Compute device key'}
          </button>
        </div>
      </form>
      {problem !== undefined && (
        <div className="banner banner-error" role="alert">
          <div>{problem}</div>
        </div>
      )}
      <ErrorBanner error={action.error} />
      {derived !== undefined && <Fields rows={[[`Key of ${derived.registrationId}`, <KeyText value={derived.key} testId="device-key" key="k" />]]} />}
    </Section>
  );
}

function KeyText({ value, testId }: { value: string; testId?: string }) {
  return (
    <span className="secret">
      <code className="secret-value" {...(testId === undefined ? {} : { 'data-testid': testId })}>
        {value}
      </code>
      <CopyButton text={value} />
    </span>
  );
}

function CertificateSummary({ certificate }: { certificate: CertificateWithInfo }) {
  const info = certificate.info;
  return (
    <div className="small">
      {info !== undefined && info !== null && (
        <>
          <div>
            <strong>{info.subjectName}</strong> issued by {info.issuerName}
          </div>
          <div className="muted">
            SHA-256 <code className="wrap">{info.sha256Thumbprint}</code>
          </div>
          <div className="muted">
            Valid <DateTime value={info.notBeforeUtc} /> – <DateTime value={info.notAfterUtc} />
          </div>
        </>
      )}
      {certificate.certificate && <pre className="json">{certificate.certificate}</pre>}
    </div>
  );
}

/** The registration records of a group's devices, filterable by ID prefix and status. */
export function GroupRecords({ groupId }: { groupId: string }) {
  const session = useSession();
  const [search, setSearch] = useState('');
  const [status, setStatus] = useState('');
  const term = useDebounced(search.trim());
  const ids = { search: useId(), status: useId() };
  const allowed = session.can('RegistrationStatusRead');
  const query = selectWhere([term === '' ? undefined : `registrationId LIKE ${quote(`${term}%`)}`, status === '' ? undefined : `status = ${quote(status)}`]);
  const paged = usePaged<RegistrationState>(`${groupId}|${query}|${allowed}`, (continuation, signal) =>
    allowed
      ? session.client.page<RegistrationState>(['registrations', groupId, 'query'], { query }, { pageSize: PAGE_SIZE, continuation, signal })
      : Promise.resolve({ items: [], continuation: undefined }),
  );
  if (!allowed) {
    return (
      <Section title="Registration records">
        <Lacks right="RegistrationStatusRead" what="the list of registration records" />
      </Section>
    );
  }
  const items = paged.data?.items ?? [];
  return (
    <Section
      title="Registration records"
      actions={
        <button type="button" className="button secondary small" onClick={paged.reload}>
          Refresh
        </button>
      }
    >
      <form className="filters" role="search" onSubmit={(event) => event.preventDefault()}>
        <div className="form-row grow">
          <label htmlFor={ids.search}>Search by registration ID</label>
          <input id={ids.search} type="search" value={search} onChange={(event) => setSearch(event.target.value)} placeholder="Starts with…" spellCheck={false} />
        </div>
        <div className="form-row">
          <label htmlFor={ids.status}>Status</label>
          <select id={ids.status} value={status} onChange={(event) => setStatus(event.target.value)}>
            <option value="">Any</option>
            {['assigned', 'assigning', 'failed', 'disabled', 'unassigned'].map((value) => (
              <option key={value} value={value}>
                {value}
              </option>
            ))}
          </select>
        </div>
      </form>
      <ErrorBanner error={paged.error} onRetry={paged.reload} />
      {paged.data === undefined && paged.loading ? (
        <Loading label="Loading registration records…" />
      ) : items.length === 0 && paged.error === undefined ? (
        <Empty title={query === 'SELECT *' ? 'No device has registered through this group yet' : 'No records match'} />
      ) : (
        <RecordTable records={items} busy={paged.loading} />
      )}
      <Pager paged={paged} count={items.length} />
    </Section>
  );
}

export function RecordTable({ records, busy }: { records: RegistrationState[]; busy: boolean }) {
  return (
    <div className={`table-wrap ${busy ? 'refreshing' : ''}`} aria-busy={busy}>
      <table>
        <thead>
          <tr>
            <th scope="col">Registration ID</th>
            <th scope="col" className="hide-narrow">
              Device ID
            </th>
            <th scope="col">Status</th>
            <th scope="col">Hub</th>
            <th scope="col" className="hide-narrow">
              Last updated
            </th>
          </tr>
        </thead>
        <tbody>
          {records.map((record) => (
            <tr key={record.registrationId}>
              <td>
                <Link to={path('registrations', record.registrationId)}>{record.registrationId}</Link>
              </td>
              <td className="hide-narrow">{record.deviceId ?? <span className="muted">—</span>}</td>
              <td>
                <Badge value={record.status} />
                {record.status === 'failed' && record.errorMessage !== undefined && <div className="small failure-reason">{record.errorMessage}</div>}
              </td>
              <td>{record.assignedHub ?? <span className="muted">—</span>}</td>
              <td className="hide-narrow">
                <DateTime value={record.lastUpdatedDateTimeUtc} />
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}
