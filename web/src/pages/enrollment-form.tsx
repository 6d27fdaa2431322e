import { useId, useState, type FormEvent, type ReactNode } from 'react';
import { base64ToBytes, certificateFileText, isBase64Key, randomKey } from '../api/encoding';
import type { AllocationPolicy, AttestationMechanism, AttestationType, CaCertificate, CertificateWithInfo, IndividualEnrollment, LinkedHub } from '../api/types';
import { ErrorBanner, isConflict, Loading, Notice, PageHeader, Section } from '../components/ui';
import { useAction, useLoad } from '../hooks';
import { Link, navigate, path } from '../router';
import { useSession } from '../session';
import { CredentialPolicyPicker } from './certificate-issuance';
import { ALLOCATION_LABEL, ATTESTATION_LABEL, idOf, idProblem, type AnyEnrollment, type EnrollmentKind } from './enrollment-kinds';
import { freshAttestations } from './enrollments';

/**
 * Create and edit forms for both enrollment kinds and every attestation they take. An edit sends the fetched document
 * back with the changes (PUT replaces the entry; secrets not resent are kept, see docs/service-api.md) and the etag
 * it was read with, so a concurrent change is a 412 rather than a lost update.
 */
type KeyMode = 'generate' | 'keep' | 'manual';
type X509Mode = 'certificates' | 'caReferences';

interface Upload {
  fileName: string;
  text: string;
}

interface FormState {
  id: string;
  deviceId: string;
  attestationType: AttestationType;
  keyMode: KeyMode;
  primaryKey: string;
  secondaryKey: string;
  x509Mode: X509Mode;
  primaryCertificate: Upload | undefined;
  secondaryCertificate: Upload | undefined;
  caPrimary: string;
  caSecondary: string;
  endorsementKey: string;
  storageRootKey: string;
  provisioningStatus: 'enabled' | 'disabled';
  allocationPolicy: AllocationPolicy | '';
  iotHubs: string[];
  webhookUrl: string;
  webhookApiVersion: string;
  credentialPolicyName: string;
  iotEdge: boolean;
  updateHubAssignment: boolean;
  migrateDeviceData: boolean;
  tags: string;
  desired: string;
}

export function EnrollmentFormPage({ kind, id }: { kind: EnrollmentKind; id?: string }) {
  const session = useSession();
  const loaded = useLoad((signal) => (id === undefined ? Promise.resolve(undefined) : session.client.get<AnyEnrollment>([kind.api, id], { signal })), [kind.api, id]);
  const title = id === undefined ? `New ${kind.singular}` : `Edit ${id}`;
  const back = id === undefined ? kind.route : path(kind.route.slice(1), id);
  if (id !== undefined && loaded.data === undefined) {
    return (
      <>
        <PageHeader title={title} subtitle={<Link to={back}>← Back</Link>} />
        {loaded.loading ? <Loading /> : <ErrorBanner error={loaded.error} onRetry={loaded.reload} />}
      </>
    );
  }
  return <EnrollmentForm kind={kind} original={loaded.data} title={title} back={back} />;
}

function initialState(kind: EnrollmentKind, original: AnyEnrollment | undefined): FormState {
  const attestation = original?.attestation;
  const x509 = attestation?.x509;
  return {
    id: original === undefined ? '' : idOf(kind, original),
    deviceId: (original as IndividualEnrollment | undefined)?.deviceId ?? '',
    attestationType: attestation?.type ?? 'symmetricKey',
    keyMode: attestation?.type === 'symmetricKey' ? 'keep' : 'generate',
    primaryKey: '',
    secondaryKey: '',
    x509Mode: x509?.caReferences ? 'caReferences' : 'certificates',
    primaryCertificate: undefined,
    secondaryCertificate: undefined,
    caPrimary: x509?.caReferences?.primary ?? '',
    caSecondary: x509?.caReferences?.secondary ?? '',
    endorsementKey: attestation?.tpm?.endorsementKey ?? '',
    storageRootKey: attestation?.tpm?.storageRootKey ?? '',
    provisioningStatus: original?.provisioningStatus ?? 'enabled',
    allocationPolicy: original?.allocationPolicy ?? '',
    iotHubs: original?.iotHubs ?? [],
    webhookUrl: original?.customAllocationDefinition?.webhookUrl ?? '',
    webhookApiVersion: original?.customAllocationDefinition?.apiVersion ?? '2021-10-01',
    credentialPolicyName: original?.credentialPolicyName ?? '',
    iotEdge: original?.capabilities?.iotEdge ?? false,
    updateHubAssignment: original?.reprovisionPolicy?.updateHubAssignment ?? true,
    migrateDeviceData: original?.reprovisionPolicy?.migrateDeviceData ?? true,
    tags: original?.initialTwin?.tags ? JSON.stringify(original.initialTwin.tags, null, 2) : '',
    desired: original?.initialTwin?.properties?.desired ? JSON.stringify(original.initialTwin.properties.desired, null, 2) : '',
  };
}

function EnrollmentForm({ kind, original: loadedOriginal, title, back }: { kind: EnrollmentKind; original: AnyEnrollment | undefined; title: string; back: string }) {
  const session = useSession();
  // The version the edits apply to; replaced by the current one after an etag conflict.
  const [original, setOriginal] = useState(loadedOriginal);
  const [reapplied, setReapplied] = useState<string | undefined>(undefined);
  const [state, setState] = useState<FormState>(() => initialState(kind, loadedOriginal));
  const [problems, setProblems] = useState<Record<string, string>>({});
  const action = useAction();
  const set = <K extends keyof FormState>(key: K, value: FormState[K]) => setState((previous) => ({ ...previous, [key]: value }));
  const creating = original === undefined;
  const individual = kind.idField === 'registrationId';
  const originalType = original?.attestation.type;

  const submit = async (event: FormEvent) => {
    event.preventDefault();
    const built = buildBody(kind, state, original);
    setProblems(built.problems);
    if (Object.keys(built.problems).length > 0) {
      document.querySelector<HTMLElement>('[aria-invalid="true"]')?.focus();
      return;
    }
    const id = state.id.trim();
    const saved = await action.run(() =>
      session.client.put<AnyEnrollment>([kind.api, id], built.body, original === undefined ? {} : { headers: { 'if-match': original.etag } }),
    );
    if (saved === undefined) return;
    if (saved.attestation.symmetricKey?.primaryKey) freshAttestations.set(`${kind.api}/${id.toLowerCase()}`, saved.attestation);
    navigate(path(kind.route.slice(1), idOf(kind, saved)));
  };

  /**
   * After a 412: load the current version and carry over only the fields this person changed, so someone else's
   * change to the other fields is kept; the form then waits for them to review and save.
   */
  const reloadAndReapply = async () => {
    if (original === undefined) return;
    const current = await action.run(() => session.client.get<AnyEnrollment>([kind.api, idOf(kind, original)]));
    if (current === undefined) return;
    const before = initialState(kind, original);
    const merged: Record<string, unknown> = { ...initialState(kind, current) };
    for (const [key, value] of Object.entries(state)) {
      if (JSON.stringify(value) !== JSON.stringify(before[key as keyof FormState])) merged[key] = value;
    }
    setState(merged as unknown as FormState);
    setOriginal(current);
    setReapplied(current.lastUpdatedDateTimeUtc ?? '');
  };

  const ids = {
    id: useId(),
    deviceId: useId(),
    primaryKey: useId(),
    secondaryKey: useId(),
    caPrimary: useId(),
    caSecondary: useId(),
    ek: useId(),
    srk: useId(),
    allocation: useId(),
    webhook: useId(),
    webhookVersion: useId(),
    credentialPolicy: useId(),
    tags: useId(),
    desired: useId(),
  };
  const problem = (key: string) => problems[key];
  const invalid = (key: string) => ({ 'aria-invalid': problem(key) !== undefined, 'aria-describedby': problem(key) === undefined ? undefined : `${key}-problem` });

  return (
    <>
      <PageHeader title={title} subtitle={<Link to={back}>← Back</Link>} />
      <form className="form" onSubmit={(event) => void submit(event)} noValidate>
        <Section title="Identity">
          <div className="form-row">
            <label htmlFor={ids.id}>{kind.idLabel}</label>
            <input
              id={ids.id}
              name="id"
              value={state.id}
              onChange={(event) => set('id', event.target.value)}
              readOnly={!creating}
              required
              autoComplete="off"
              spellCheck={false}
              autoFocus={creating}
              {...invalid('id')}
            />
            <Problem id="id-problem" text={problem('id')} />
          </div>
          {individual && (
            <div className="form-row">
              <label htmlFor={ids.deviceId}>
                Device ID <span className="muted">(optional; the registration ID when empty)</span>
              </label>
              <input id={ids.deviceId} name="deviceId" value={state.deviceId} onChange={(event) => set('deviceId', event.target.value)} autoComplete="off" spellCheck={false} />
            </div>
          )}
        </Section>

        <Section title="Attestation">
          <fieldset className="choice">
            <legend>How devices prove who they are</legend>
            {kind.attestations.map((type) => (
              <label key={type} className={`choice-card ${state.attestationType === type ? 'selected' : ''}`}>
                <input
                  type="radio"
                  name="attestationType"
                  value={type}
                  checked={state.attestationType === type}
                  onChange={() => setState((previous) => ({ ...previous, attestationType: type, keyMode: type === originalType ? previous.keyMode : 'generate' }))}
                />
                <span>{ATTESTATION_LABEL[type]}</span>
              </label>
            ))}
          </fieldset>

          {state.attestationType === 'symmetricKey' && (
            <>
              <fieldset className="inline-choice">
                <legend>Keys</legend>
                {originalType === 'symmetricKey' && (
                  <label>
                    <input type="radio" name="keyMode" checked={state.keyMode === 'keep'} onChange={() => set('keyMode', 'keep')} /> Keep the current keys
                  </label>
                )}
                <label>
                  <input type="radio" name="keyMode" checked={state.keyMode === 'generate'} onChange={() => set('keyMode', 'generate')} />{' '}
                  {originalType === 'symmetricKey' ? 'Generate new keys' : 'Generate keys'}
                </label>
                <label>
                  <input
                    type="radio"
                    name="keyMode"
                    checked={state.keyMode === 'manual'}
                    onChange={() => setState((previous) => ({ ...previous, keyMode: 'manual', primaryKey: previous.primaryKey || randomKey(), secondaryKey: previous.secondaryKey || randomKey() }))}
                  />{' '}
                  Enter keys
                </label>
              </fieldset>
              {state.keyMode === 'generate' && (
                <p className="hint">
                  64-byte random keys are generated {originalType === 'symmetricKey' ? 'in this browser and replace the current ones' : 'by the server'}; you can see them on the next page.
                </p>
              )}
              {state.keyMode === 'manual' && (
                <>
                  <KeyInput id={ids.primaryKey} label="Primary key" value={state.primaryKey} onChange={(value) => set('primaryKey', value)} problem={problem('primaryKey')} />
                  <KeyInput id={ids.secondaryKey} label="Secondary key" value={state.secondaryKey} onChange={(value) => set('secondaryKey', value)} problem={problem('secondaryKey')} />
                </>
              )}
            </>
          )}

          {state.attestationType === 'x509' && (
            <>
              {!individual && (
                <fieldset className="inline-choice">
                  <legend>Devices chain up to</legend>
                  <label>
                    <input type="radio" name="x509Mode" checked={state.x509Mode === 'certificates'} onChange={() => set('x509Mode', 'certificates')} /> A signing
                    certificate uploaded here
                  </label>
                  <label>
                    <input type="radio" name="x509Mode" checked={state.x509Mode === 'caReferences'} onChange={() => set('x509Mode', 'caReferences')} /> A verified CA
                    certificate of the instance
                  </label>
                </fieldset>
              )}
              {(individual || state.x509Mode === 'certificates') && (
                <>
                  <CertificateUpload
                    label={individual ? 'Device certificate (primary)' : 'Signing certificate (primary)'}
                    current={currentCertificate(original, individual, 'primary')}
                    upload={state.primaryCertificate}
                    onUpload={(upload) => set('primaryCertificate', upload)}
                    problem={problem('primaryCertificate')}
                  />
                  <CertificateUpload
                    label={individual ? 'Device certificate (secondary, optional)' : 'Signing certificate (secondary, optional)'}
                    current={currentCertificate(original, individual, 'secondary')}
                    upload={state.secondaryCertificate}
                    onUpload={(upload) => set('secondaryCertificate', upload)}
                    problem={undefined}
                  />
                </>
              )}
              {!individual && state.x509Mode === 'caReferences' && (
                <CaReferences state={state} set={set} ids={ids} problem={problem('caPrimary')} />
              )}
            </>
          )}

          {state.attestationType === 'tpm' && (
            <>
              <div className="form-row">
                <label htmlFor={ids.ek}>Endorsement key (base64)</label>
                <textarea id={ids.ek} rows={4} value={state.endorsementKey} onChange={(event) => set('endorsementKey', event.target.value)} spellCheck={false} {...invalid('endorsementKey')} />
                <Problem id="endorsementKey-problem" text={problem('endorsementKey')} />
              </div>
              <div className="form-row">
                <label htmlFor={ids.srk}>
                  Storage root key <span className="muted">(optional)</span>
                </label>
                <textarea id={ids.srk} rows={3} value={state.storageRootKey} onChange={(event) => set('storageRootKey', event.target.value)} spellCheck={false} />
              </div>
            </>
          )}
        </Section>

        <Section title="Provisioning">
          <label className="checkbox">
            <input type="checkbox" checked={state.provisioningStatus === 'enabled'} onChange={(event) => set('provisioningStatus', event.target.checked ? 'enabled' : 'disabled')} />
            Enabled — devices may register
          </label>
          <label className="checkbox">
            <input type="checkbox" checked={state.iotEdge} onChange={(event) => set('iotEdge', event.target.checked)} />
            IoT Edge device{individual ? '' : 's'}
          </label>
          <div className="form-row">
            <label htmlFor={ids.allocation}>Allocation policy</label>
            <select id={ids.allocation} value={state.allocationPolicy} onChange={(event) => set('allocationPolicy', event.target.value as AllocationPolicy | '')}>
              <option value="">Instance default{session.capabilities.instance === undefined ? '' : ` (${session.capabilities.instance.allocationPolicy})`}</option>
              {Object.entries(ALLOCATION_LABEL).map(([value, label]) => (
                <option key={value} value={value}>
                  {label}
                </option>
              ))}
            </select>
          </div>
          {state.allocationPolicy === 'custom' && (
            <div className="grid-2 tight">
              <div className="form-row">
                <label htmlFor={ids.webhook}>Webhook URL</label>
                <input id={ids.webhook} type="url" value={state.webhookUrl} onChange={(event) => set('webhookUrl', event.target.value)} {...invalid('webhookUrl')} />
                <Problem id="webhookUrl-problem" text={problem('webhookUrl')} />
              </div>
              <div className="form-row">
                <label htmlFor={ids.webhookVersion}>Webhook API version</label>
                <input id={ids.webhookVersion} value={state.webhookApiVersion} onChange={(event) => set('webhookApiVersion', event.target.value)} />
              </div>
            </div>
          )}
          <HubPicker selected={state.iotHubs} onChange={(hubs) => set('iotHubs', hubs)} problem={problem('iotHubs')} />
          <CredentialPolicyPicker id={ids.credentialPolicy} value={state.credentialPolicyName} onChange={(name) => set('credentialPolicyName', name)} />
          <fieldset className="inline-choice">
            <legend>When a device registers again</legend>
            <label className="checkbox">
              <input type="checkbox" checked={state.updateHubAssignment} onChange={(event) => set('updateHubAssignment', event.target.checked)} />
              Re-apply the allocation (may move the device to another hub)
            </label>
            <label className="checkbox">
              <input type="checkbox" checked={state.migrateDeviceData} onChange={(event) => set('migrateDeviceData', event.target.checked)} />
              Migrate the device's twin when it moves
            </label>
          </fieldset>
        </Section>

        <Section title="Initial twin">
          <div className="grid-2 tight">
            <div className="form-row">
              <label htmlFor={ids.tags}>
                Tags <span className="muted">(JSON object, optional)</span>
              </label>
              <textarea id={ids.tags} rows={4} value={state.tags} onChange={(event) => set('tags', event.target.value)} spellCheck={false} placeholder='{"site": "line-1"}' {...invalid('tags')} />
              <Problem id="tags-problem" text={problem('tags')} />
            </div>
            <div className="form-row">
              <label htmlFor={ids.desired}>
                Desired properties <span className="muted">(JSON object, optional)</span>
              </label>
              <textarea id={ids.desired} rows={4} value={state.desired} onChange={(event) => set('desired', event.target.value)} spellCheck={false} placeholder='{"telemetryIntervalS": 30}' {...invalid('desired')} />
              <Problem id="desired-problem" text={problem('desired')} />
            </div>
          </div>
        </Section>

        <ErrorBanner
          error={action.error}
          {...(isConflict(action.error) && original !== undefined
            ? { onRetry: () => void reloadAndReapply(), retryLabel: 'Load the current version and reapply my changes' }
            : {})}
        />
        {reapplied !== undefined && action.error === undefined && (
          <Notice>
            Loaded the current version{reapplied === '' ? '' : ` (saved ${new Date(reapplied).toLocaleString()})`} and applied your changes to it. Review
            them and save again.
          </Notice>
        )}
        {Object.keys(problems).length > 0 && (
          <div className="banner banner-error" role="alert">
            <div>Some fields need attention: {Object.values(problems).join(' ')}</div>
          </div>
        )}
        <div className="form-footer">
          <Link className="button secondary" to={back}>
            Cancel
          </Link>
          <button type="submit" className="button primary" disabled={action.busy}>
            {action.busy ? 'Saving…' : creating ? `Create ${kind.singular}` : 'Save changes'}
          </button>
        </div>
      </form>
    </>
  );
}

function Problem({ id, text }: { id: string; text: string | undefined }) {
  if (text === undefined) return null;
  return (
    <p className="field-problem" id={id}>
      {text}
    </p>
  );
}

function KeyInput({ id, label, value, onChange, problem }: { id: string; label: string; value: string; onChange: (value: string) => void; problem: string | undefined }) {
  const problemId = `${id}-problem`;
  return (
    <div className="form-row">
      <label htmlFor={id}>{label}</label>
      <div className="input-with-button">
        <input
          id={id}
          value={value}
          onChange={(event) => onChange(event.target.value)}
          spellCheck={false}
          autoComplete="off"
          className="mono"
          aria-invalid={problem !== undefined}
          {...(problem === undefined ? {} : { 'aria-describedby': problemId })}
        />
        <button type="button" className="button secondary small" onClick={() => onChange(randomKey())}>
          Generate
        </button>
      </div>
      <Problem id={problemId} text={problem} />
    </div>
  );
}

function currentCertificate(original: AnyEnrollment | undefined, individual: boolean, slot: 'primary' | 'secondary'): CertificateWithInfo | undefined {
  const x509 = original?.attestation.x509;
  const certificates = individual ? x509?.clientCertificates : x509?.signingCertificates;
  return certificates?.[slot] ?? undefined;
}

function CertificateUpload({
  label,
  current,
  upload,
  onUpload,
  problem,
}: {
  label: string;
  current: CertificateWithInfo | undefined;
  upload: Upload | undefined;
  onUpload: (upload: Upload | undefined) => void;
  problem: string | undefined;
}) {
  const id = useId();
  const [readError, setReadError] = useState<string | undefined>(undefined);
  const onFile = async (file: File | undefined) => {
    setReadError(undefined);
    if (file === undefined) {
      onUpload(undefined);
      return;
    }
    if (file.size > 64 * 1024) {
      setReadError('That file is larger than a certificate can be (64 KB).');
      return;
    }
    const text = await certificateFileText(file);
    if (/PRIVATE KEY/.test(text)) {
      setReadError('That file holds a private key. Upload only the certificate; the private key stays on the device.');
      return;
    }
    onUpload({ fileName: file.name, text });
  };
  const shownProblem = readError ?? problem;
  return (
    <div className="form-row">
      <label htmlFor={id}>{label}</label>
      {current?.info && upload === undefined && (
        <p className="hint">
          Current: <strong>{current.info.subjectName}</strong>, SHA-256 <code className="wrap">{current.info.sha256Thumbprint.slice(0, 16)}…</code>. Choose a file to
          replace it.
        </p>
      )}
      <input
        id={id}
        type="file"
        accept=".pem,.cer,.crt,.der"
        onChange={(event) => void onFile(event.target.files?.[0])}
        aria-invalid={shownProblem !== undefined}
        {...(shownProblem === undefined ? {} : { 'aria-describedby': `${id}-problem` })}
      />
      {upload !== undefined && <p className="hint">Will upload {upload.fileName}.</p>}
      <Problem id={`${id}-problem`} text={shownProblem} />
    </div>
  );
}

function CaReferences({
  state,
  set,
  ids,
  problem,
}: {
  state: FormState;
  set: <K extends keyof FormState>(key: K, value: FormState[K]) => void;
  ids: { caPrimary: string; caSecondary: string };
  problem: string | undefined;
}) {
  const session = useSession();
  const canList = session.can('ServiceConfig');
  const loaded = useLoad((signal) => (canList ? session.client.get<CaCertificate[]>(['certificates'], { signal }) : Promise.resolve([])), [canList]);
  const verified = (loaded.data ?? []).filter((certificate) => certificate.isVerified);
  const field = (id: string, label: string, value: string, onChange: (value: string) => void, optional: boolean): ReactNode => (
    <div className="form-row">
      <label htmlFor={id}>{label}</label>
      {canList ? (
        <select id={id} value={value} onChange={(event) => onChange(event.target.value)}>
          <option value="">{optional ? 'None' : 'Choose a verified CA certificate'}</option>
          {verified.map((certificate) => (
            <option key={certificate.name} value={certificate.name}>
              {certificate.name} — {certificate.info.subjectName}
            </option>
          ))}
        </select>
      ) : (
        <input id={id} value={value} onChange={(event) => onChange(event.target.value)} spellCheck={false} placeholder="CA certificate name" />
      )}
    </div>
  );
  return (
    <>
      {canList && loaded.data !== undefined && verified.length === 0 && (
        <p className="hint">
          No verified CA certificate yet. <Link to="/settings/certificates">Upload one and prove possession</Link> first.
        </p>
      )}
      {field(ids.caPrimary, 'CA certificate (primary)', state.caPrimary, (value) => set('caPrimary', value), false)}
      <Problem id="caPrimary-problem" text={problem} />
      {field(ids.caSecondary, 'CA certificate (secondary)', state.caSecondary, (value) => set('caSecondary', value), true)}
    </>
  );
}

function HubPicker({ selected, onChange, problem }: { selected: string[]; onChange: (hubs: string[]) => void; problem: string | undefined }) {
  const session = useSession();
  const canList = session.can('ServiceConfig');
  const loaded = useLoad((signal) => (canList ? session.client.get<LinkedHub[]>(['linkedHubs'], { signal }) : Promise.resolve([])), [canList]);
  const textId = useId();
  if (!canList) {
    return (
      <div className="form-row">
        <label htmlFor={textId}>
          Hubs <span className="muted">(host names, comma-separated; empty = every linked hub)</span>
        </label>
        <input
          id={textId}
          value={selected.join(', ')}
          onChange={(event) =>
            onChange(
              event.target.value
                .split(',')
                .map((hub) => hub.trim())
                .filter((hub) => hub !== ''),
            )
          }
          spellCheck={false}
        />
        <Problem id="iotHubs-problem" text={problem} />
      </div>
    );
  }
  const hubs = loaded.data ?? [];
  return (
    <fieldset className="inline-choice">
      <legend>Hubs devices may be assigned to (none checked = every linked hub)</legend>
      {loaded.loading && <Loading label="Loading linked hubs…" />}
      {hubs.map((hub) => (
        <label className="checkbox" key={hub.name}>
          <input
            type="checkbox"
            checked={selected.some((name) => name.toLowerCase() === hub.name.toLowerCase())}
            onChange={(event) => onChange(event.target.checked ? [...selected, hub.name] : selected.filter((name) => name.toLowerCase() !== hub.name.toLowerCase()))}
          />
          {hub.name} {hub.builtIn && <span className="muted small">(built in)</span>}
        </label>
      ))}
      <Problem id="iotHubs-problem" text={problem} />
    </fieldset>
  );
}

function parseJsonObject(text: string): Record<string, unknown> | undefined | string {
  if (text.trim() === '') return undefined;
  try {
    const value: unknown = JSON.parse(text);
    if (value === null || typeof value !== 'object' || Array.isArray(value)) return 'must be a JSON object, like {"site": "line-1"}.';
    return value as Record<string, unknown>;
  } catch (error) {
    return `is not valid JSON (${(error as Error).message}).`;
  }
}

/** The PUT body: the fetched document (on edit) with every field of the form applied, and the problems found. */
function buildBody(kind: EnrollmentKind, state: FormState, original: AnyEnrollment | undefined): { body: Record<string, unknown>; problems: Record<string, string> } {
  const problems: Record<string, string> = {};
  const id = state.id.trim();
  const idIssue = idProblem(kind, id);
  if (idIssue !== undefined) problems.id = idIssue;
  const body: Record<string, unknown> = { ...(original ?? {}), [kind.idField]: id };
  delete body.registrationState;
  const individual = kind.idField === 'registrationId';
  if (individual) {
    if (state.deviceId.trim() === '') delete body.deviceId;
    else body.deviceId = state.deviceId.trim();
  }

  const attestation: AttestationMechanism = { type: state.attestationType };
  const originalAttestation = original?.attestation;
  if (state.attestationType === 'symmetricKey') {
    if (state.keyMode === 'keep' && originalAttestation?.type === 'symmetricKey') {
      // Sent without keys, the stored keys are kept.
    } else if (state.keyMode === 'generate' && originalAttestation?.type !== 'symmetricKey') {
      // Omitted keys are generated on create.
    } else {
      const primary = state.keyMode === 'manual' ? state.primaryKey.trim() : randomKey();
      const secondary = state.keyMode === 'manual' ? state.secondaryKey.trim() : randomKey();
      if (!isBase64Key(primary)) problems.primaryKey = 'The primary key must be base64 of 16 to 64 bytes.';
      if (!isBase64Key(secondary)) problems.secondaryKey = 'The secondary key must be base64 of 16 to 64 bytes.';
      attestation.symmetricKey = { primaryKey: primary, secondaryKey: secondary };
    }
  } else if (state.attestationType === 'x509') {
    if (!individual && state.x509Mode === 'caReferences') {
      if (state.caPrimary.trim() === '') problems.caPrimary = 'Choose the primary CA certificate.';
      attestation.x509 = { caReferences: { primary: state.caPrimary.trim(), ...(state.caSecondary.trim() === '' ? {} : { secondary: state.caSecondary.trim() }) } };
    } else {
      const slot = (upload: Upload | undefined, which: 'primary' | 'secondary') =>
        upload !== undefined ? { certificate: upload.text } : (currentCertificate(original, individual, which) ?? undefined);
      const primary = slot(state.primaryCertificate, 'primary');
      const secondary = slot(state.secondaryCertificate, 'secondary');
      if (primary === undefined) problems.primaryCertificate = 'Choose the primary certificate file (PEM or DER).';
      const certificates = { ...(primary === undefined ? {} : { primary }), ...(secondary === undefined ? {} : { secondary }) };
      attestation.x509 = individual ? { clientCertificates: certificates } : { signingCertificates: certificates };
    }
  } else if (state.attestationType === 'tpm') {
    const ek = state.endorsementKey.replace(/\s+/g, '');
    if (ek === '') problems.endorsementKey = 'Enter the TPM endorsement key.';
    else if (!isBase64Loose(ek)) problems.endorsementKey = 'The endorsement key must be base64.';
    const srk = state.storageRootKey.replace(/\s+/g, '');
    attestation.tpm = { endorsementKey: ek, ...(srk === '' ? {} : { storageRootKey: srk }) };
  }
  body.attestation = attestation;

  body.provisioningStatus = state.provisioningStatus;
  body.capabilities = { iotEdge: state.iotEdge };
  body.reprovisionPolicy = { updateHubAssignment: state.updateHubAssignment, migrateDeviceData: state.migrateDeviceData };
  if (state.allocationPolicy === '') delete body.allocationPolicy;
  else body.allocationPolicy = state.allocationPolicy;
  if (state.allocationPolicy === 'custom') {
    if (!/^https?:\/\/\S+$/.test(state.webhookUrl.trim())) problems.webhookUrl = 'Enter the webhook URL (http or https).';
    body.customAllocationDefinition = { webhookUrl: state.webhookUrl.trim(), apiVersion: state.webhookApiVersion.trim() || '2021-10-01' };
  } else delete body.customAllocationDefinition;
  if (state.allocationPolicy === 'static' && state.iotHubs.length !== 1) problems.iotHubs = 'Static allocation needs exactly one hub.';
  if (state.credentialPolicyName.trim() === '') delete body.credentialPolicyName;
  else body.credentialPolicyName = state.credentialPolicyName.trim();
  if (state.iotHubs.length === 0) delete body.iotHubs;
  else body.iotHubs = state.iotHubs;
  delete body.iotHubHostName;

  const tags = parseJsonObject(state.tags);
  const desired = parseJsonObject(state.desired);
  if (typeof tags === 'string') problems.tags = `Tags ${tags}`;
  if (typeof desired === 'string') problems.desired = `Desired properties ${desired}`;
  if (tags === undefined && desired === undefined) delete body.initialTwin;
  else
    body.initialTwin = {
      ...(typeof tags === 'object' ? { tags } : {}),
      ...(typeof desired === 'object' ? { properties: { desired } } : {}),
    };
  for (const readOnly of ['etag', 'createdDateTimeUtc', 'lastUpdatedDateTimeUtc']) delete body[readOnly];
  return { body, problems };
}

function isBase64Loose(text: string): boolean {
  try {
    return base64ToBytes(text).length > 0;
  } catch {
    return false;
  }
}
