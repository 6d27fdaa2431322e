import { useId, useRef, useState, type FormEvent } from 'react';
import { RIGHTS } from '../api/client';
import { bytesToBase64, certificateFileText } from '../api/encoding';
import { parseRights } from '../api/rights';
import type { AccessPolicy, CaCertificate, Instance, LinkedHub } from '../api/types';
import {
  Badge,
  ConfirmDialog,
  CopyButton,
  DateTime,
  Dialog,
  Empty,
  ErrorBanner,
  Fields,
  Lacks,
  Loading,
  Notice,
  PageHeader,
  Section,
} from '../components/ui';
import { ItemTable, RemovalDialog, editAction, useRemoval, type ItemColumn } from '../components/item-table';
import { useAction, useLoad } from '../hooks';
import { Link, navigate, path } from '../router';
import { useSession } from '../session';

/**
 * Instance settings (the control plane, ServiceConfig): the instance itself, linked hubs, access policies and CA
 * certificates with their proof of possession.
 */
function RequiresServiceConfig({ title }: { title: string }) {
  return (
    <>
      <PageHeader title={title} />
      <Lacks right="ServiceConfig" what="the instance settings" />
    </>
  );
}

export function InstancePage() {
  const session = useSession();
  const loaded = useLoad((signal) => session.client.get<Instance>(['instance'], { signal }), []);
  const [editing, setEditing] = useState(false);
  const [allocation, setAllocation] = useState('hashed');
  const [hosts, setHosts] = useState('');
  const [retention, setRetention] = useState('90');
  const [webhookUrl, setWebhookUrl] = useState('');
  const [webhookSecret, setWebhookSecret] = useState('');
  // A secret made here is shown once after saving: the server never shows it again.
  const [generatedSecret, setGeneratedSecret] = useState<string | undefined>(undefined);
  const action = useAction();
  const ids = { allocation: useId(), hosts: useId(), retention: useId(), webhookUrl: useId(), webhookSecret: useId() };
  if (!session.can('ServiceConfig')) return <RequiresServiceConfig title="Instance" />;
  const instance = loaded.data;
  const edit = () => {
    if (instance === undefined) return;
    setAllocation(instance.allocationPolicy);
    setHosts(instance.serviceHostNames.join('\n'));
    setRetention(String(instance.auditRetentionDays ?? 90));
    setWebhookUrl(instance.eventWebhookUrl ?? '');
    setWebhookSecret('');
    setGeneratedSecret(undefined);
    setEditing(true);
  };
  const save = async (event: FormEvent) => {
    event.preventDefault();
    const serviceHostNames = hosts
      .split(/[\s,]+/)
      .map((host) => host.trim())
      .filter((host) => host !== '');
    const patch: Record<string, unknown> = { allocationPolicy: allocation, serviceHostNames, auditRetentionDays: Number(retention) };
    const url = webhookUrl.trim();
    const current = instance?.eventWebhookUrl ?? '';
    let generated: string | undefined;
    if (url === '' && current !== '') patch.eventWebhook = null;
    else if (url !== '' && (url !== current || webhookSecret !== '')) {
      if (webhookSecret === '') generated = bytesToBase64(crypto.getRandomValues(new Uint8Array(32))).replace(/=+$/, '');
      patch.eventWebhook = { url, secret: generated ?? webhookSecret };
    }
    const saved = await action.run(() => session.client.patch<Instance>(['instance'], patch));
    if (saved !== undefined) {
      setGeneratedSecret(generated);
      setEditing(false);
      loaded.reload();
    }
  };
  return (
    <>
      <PageHeader
        title="Instance"
        subtitle="The DPS instance this policy belongs to."
        actions={
          instance !== undefined && !editing ? (
            <button type="button" className="button secondary" onClick={edit}>
              Edit
            </button>
          ) : undefined
        }
      />
      <ErrorBanner error={loaded.error} onRetry={loaded.reload} />
      {generatedSecret !== undefined && !editing && (
        <Notice kind="success">
          Webhook signing secret, shown only now — give it to the receiver: <CodeWithCopy value={generatedSecret} />
        </Notice>
      )}
      {instance === undefined ? (
        loaded.loading && <Loading />
      ) : editing ? (
        <Section title="Edit the instance">
          <form className="form" onSubmit={(event) => void save(event)}>
            <div className="form-row">
              <label htmlFor={ids.allocation}>Default allocation policy</label>
              <select id={ids.allocation} value={allocation} onChange={(event) => setAllocation(event.target.value)}>
                <option value="hashed">Evenly weighted distribution (hashed)</option>
                <option value="geoLatency">Lowest latency (geoLatency)</option>
                <option value="static">Static configuration (static)</option>
              </select>
            </div>
            <div className="form-row">
              <label htmlFor={ids.hosts}>Service host names (one per line)</label>
              <textarea id={ids.hosts} rows={3} value={hosts} onChange={(event) => setHosts(event.target.value)} spellCheck={false} />
              <p className="hint">Service API callers reach this instance by these names; removing the one you signed in with ends this session's access.</p>
            </div>
            <div className="form-row">
              <label htmlFor={ids.retention}>System log retention (days)</label>
              <input id={ids.retention} type="number" min={1} max={3650} value={retention} onChange={(event) => setRetention(event.target.value)} />
              <p className="hint">Events older than this are deleted (1 to 3650 days).</p>
            </div>
            <div className="form-row">
              <label htmlFor={ids.webhookUrl}>Lifecycle event webhook URL</label>
              <input id={ids.webhookUrl} type="url" value={webhookUrl} onChange={(event) => setWebhookUrl(event.target.value)} spellCheck={false} placeholder="https://hooks.example.com/provisiond" />
              <p className="hint">Receives a signed POST for each enrollment change, registration and data request. Empty: no events.</p>
            </div>
            <div className="form-row">
              <label htmlFor={ids.webhookSecret}>Webhook signing secret</label>
              <input id={ids.webhookSecret} type="password" value={webhookSecret} onChange={(event) => setWebhookSecret(event.target.value)} autoComplete="new-password" spellCheck={false} />
              <p className="hint">16 to 256 characters; the receiver checks each delivery's x-provisiond-signature with it. Leave empty to keep the current one, or, for a new URL, to have one generated and shown once.</p>
            </div>
            <ErrorBanner error={action.error} />
            <div className="form-footer">
              <button type="button" className="button secondary" onClick={() => setEditing(false)}>
                Cancel
              </button>
              <button type="submit" className="button primary" disabled={action.busy}>
                {action.busy ? 'Saving…' : 'Save'}
              </button>
            </div>
          </form>
        </Section>
      ) : (
        <Section title={instance.name}>
          <Fields
            rows={[
              ['ID scope', <CodeWithCopy value={instance.idScope} key="scope" />],
              ['Global device endpoint', <CodeWithCopy value={window.location.hostname} key="endpoint" />],
              ['Service host names', instance.serviceHostNames.join(', ')],
              ['Default allocation policy', instance.allocationPolicy],
              ['System log retention', instance.auditRetentionDays === undefined ? undefined : `${instance.auditRetentionDays} days`],
              ['Lifecycle event webhook', instance.eventWebhookUrl ?? 'None'],
              ['Created', <DateTime value={instance.createdDateTimeUtc} key="created" />],
              ['Signed in as', session.client.credentials.keyName],
            ]}
          />
        </Section>
      )}
    </>
  );
}

function CodeWithCopy({ value }: { value: string }) {
  return (
    <span className="secret">
      <code>{value}</code>
      <CopyButton text={value} />
    </span>
  );
}

const HUB_COLUMNS: ReadonlyArray<ItemColumn<LinkedHub>> = [
  { header: 'Host name', cell: (hub) => hub.name },
  { header: 'Kind', cell: (hub) => (hub.builtIn ? 'Built in' : 'External') },
  { header: 'Weight', className: 'numeric', cell: (hub) => hub.allocationWeight },
  { header: 'Allocation', className: 'hide-narrow', cell: (hub) => (hub.applyAllocationPolicy ? 'Included' : 'Excluded') },
  { header: 'Location', className: 'hide-narrow', cell: (hub) => hub.location ?? <span className="muted">—</span> },
];

export function LinkedHubsPage() {
  const session = useSession();
  const loaded = useLoad((signal) => session.client.get<LinkedHub[]>(['linkedHubs'], { signal }), []);
  const [editing, setEditing] = useState<LinkedHub | 'new' | undefined>(undefined);
  const removal = useRemoval('linkedHubs', 'Unlink', loaded.reload);
  if (!session.can('ServiceConfig')) return <RequiresServiceConfig title="Linked hubs" />;
  return (
    <>
      <PageHeader
        title="Linked hubs"
        subtitle="The IoT hubs devices can be assigned to."
        actions={
          <button type="button" className="button primary" onClick={() => setEditing('new')}>
            Link a hub
          </button>
        }
      />
      <div className="card">
        <ItemTable
          loaded={loaded}
          columns={HUB_COLUMNS}
          nameOf={(hub) => hub.name}
          empty={{ title: 'No hub is linked', text: 'Devices cannot be provisioned until a hub is linked.' }}
          action={editAction((hub: LinkedHub) => setEditing(hub))}
          removal={removal}
        />
      </div>
      {editing !== undefined && (
        <HubDialog
          hub={editing === 'new' ? undefined : editing}
          onClose={() => setEditing(undefined)}
          onSaved={() => {
            setEditing(undefined);
            loaded.reload();
          }}
        />
      )}
      <RemovalDialog removal={removal} title={(name) => `Unlink ${name}?`}>
        <p>New registrations will no longer be assigned to this hub. Devices already there stay there.</p>
      </RemovalDialog>
    </>
  );
}

function HubDialog({ hub, onClose, onSaved }: { hub: LinkedHub | undefined; onClose: () => void; onSaved: () => void }) {
  const session = useSession();
  const [name, setName] = useState(hub?.name ?? '');
  const [builtIn, setBuiltIn] = useState(hub?.builtIn ?? false);
  const [connectionString, setConnectionString] = useState(hub?.connectionString ?? '');
  const [weight, setWeight] = useState(String(hub?.allocationWeight ?? 1));
  const [apply, setApply] = useState(hub?.applyAllocationPolicy ?? true);
  const [location, setLocation] = useState(hub?.location ?? '');
  const action = useAction();
  const ids = { name: useId(), cs: useId(), weight: useId(), location: useId() };
  const save = async () => {
    const hostName = builtIn ? name.trim() : (/HostName=([^;]+)/i.exec(connectionString)?.[1] ?? name).trim();
    const body = {
      builtIn,
      ...(builtIn ? {} : { connectionString: connectionString.trim() }),
      allocationWeight: Number(weight),
      applyAllocationPolicy: apply,
      ...(location.trim() === '' ? {} : { location: location.trim() }),
    };
    const saved = await action.run(() => session.client.put<LinkedHub>(['linkedHubs', hostName], body));
    if (saved !== undefined) onSaved();
  };
  return (
    <Dialog
      open
      title={hub === undefined ? 'Link a hub' : `Edit ${hub.name}`}
      onClose={onClose}
      footer={
        <>
          <button type="button" className="button secondary" onClick={onClose}>
            Cancel
          </button>
          <button type="button" className="button primary" onClick={() => void save()} disabled={action.busy || (builtIn ? name.trim() === '' : connectionString.trim() === '')}>
            {action.busy ? 'Saving…' : 'Save'}
          </button>
        </>
      }
    >
      <label className="checkbox">
        <input type="checkbox" checked={builtIn} onChange={(event) => setBuiltIn(event.target.checked)} disabled={hub !== undefined} />
        Host the hub inside provisiond (built in)
      </label>
      {builtIn ? (
        <div className="form-row">
          <label htmlFor={ids.name}>Hub host name</label>
          <input id={ids.name} value={name} onChange={(event) => setName(event.target.value)} readOnly={hub !== undefined} spellCheck={false} />
        </div>
      ) : (
        <div className="form-row">
          <label htmlFor={ids.cs}>Hub connection string</label>
          <textarea
            id={ids.cs}
            rows={3}
            value={connectionString}
            onChange={(event) => setConnectionString(event.target.value)}
            spellCheck={false}
            placeholder="HostName=my-hub.azure-devices.net;SharedAccessKeyName=iothubowner;SharedAccessKey=…"
          />
          {hub !== undefined && <p className="hint">The key shows as ****; sent back unchanged, the stored key is kept.</p>}
        </div>
      )}
      <div className="grid-2 tight">
        <div className="form-row">
          <label htmlFor={ids.weight}>Allocation weight (1–1000)</label>
          <input id={ids.weight} type="number" min={1} max={1000} value={weight} onChange={(event) => setWeight(event.target.value)} />
        </div>
        <div className="form-row">
          <label htmlFor={ids.location}>Location (optional)</label>
          <input id={ids.location} value={location} onChange={(event) => setLocation(event.target.value)} />
        </div>
      </div>
      <label className="checkbox">
        <input type="checkbox" checked={apply} onChange={(event) => setApply(event.target.checked)} />
        Apply the allocation policy to this hub
      </label>
      <ErrorBanner error={action.error} />
    </Dialog>
  );
}

const POLICY_COLUMNS = (you: string): ReadonlyArray<ItemColumn<AccessPolicy>> => [
  {
    header: 'Name',
    cell: (policy) => (
      <>
        {policy.keyName}
        {policy.keyName.toLowerCase() === you.toLowerCase() && <span className="muted small"> (you)</span>}
      </>
    ),
  },
  {
    header: 'Rights',
    cell: (policy) => (
      <div className="chips">
        {parseRights(policy.rights).map((right) => (
          <span className="chip" key={right}>
            {right}
          </span>
        ))}
      </div>
    ),
  },
];

export function AccessPoliciesPage() {
  const session = useSession();
  const loaded = useLoad((signal) => session.client.get<AccessPolicy[]>(['accessPolicies'], { signal }), []);
  const [creating, setCreating] = useState(false);
  const [keys, setKeys] = useState<AccessPolicy | undefined>(undefined);
  const removal = useRemoval('accessPolicies', 'Delete', loaded.reload);
  const action = useAction();
  if (!session.can('ServiceConfig')) return <RequiresServiceConfig title="Access policies" />;
  // The row's own action: the policy's keys, read with listKeys (a GET never carries them).
  const showKeys = async (policy: AccessPolicy) => {
    const withKeys = await action.run(() => session.client.post<AccessPolicy>(['accessPolicies', policy.keyName, 'listKeys']));
    if (withKeys !== undefined) setKeys(withKeys);
  };
  return (
    <>
      <PageHeader
        title="Access policies"
        subtitle="Keys for the service API, each with its rights."
        actions={
          <button type="button" className="button primary" onClick={() => setCreating(true)}>
            New policy
          </button>
        }
      />
      <ErrorBanner error={action.error} />
      <div className="card">
        <ItemTable
          loaded={loaded}
          columns={POLICY_COLUMNS(session.client.credentials.keyName)}
          nameOf={(policy) => policy.keyName}
          empty={{ title: 'No access policy', text: 'Create one to give a client its own keys and rights.' }}
          action={{ label: 'Keys', describe: (name) => `Show the keys of ${name}`, run: (policy) => void showKeys(policy) }}
          removal={removal}
        />
      </div>
      {creating && (
        <PolicyDialog
          onClose={() => setCreating(false)}
          onSaved={(policy) => {
            setCreating(false);
            setKeys(policy);
            loaded.reload();
          }}
        />
      )}
      {keys !== undefined && <PolicyKeysDialog policy={keys} onClose={() => setKeys(undefined)} onChanged={setKeys} />}
      <RemovalDialog removal={removal} title={(name) => `Delete the policy ${name}?`}>
        <p>Every client using this policy's keys loses access at once.</p>
      </RemovalDialog>
    </>
  );
}

function PolicyDialog({ onClose, onSaved }: { onClose: () => void; onSaved: (policy: AccessPolicy) => void }) {
  const session = useSession();
  const [name, setName] = useState('');
  const [rights, setRights] = useState<string[]>(['EnrollmentRead', 'RegistrationStatusRead']);
  const action = useAction();
  const nameId = useId();
  const save = async () => {
    const saved = await action.run(() => session.client.put<AccessPolicy>(['accessPolicies', name.trim()], { rights }));
    if (saved !== undefined) onSaved(saved);
  };
  return (
    <Dialog
      open
      title="New access policy"
      onClose={onClose}
      footer={
        <>
          <button type="button" className="button secondary" onClick={onClose}>
            Cancel
          </button>
          <button type="button" className="button primary" onClick={() => void save()} disabled={action.busy || name.trim() === '' || rights.length === 0}>
            {action.busy ? 'Creating…' : 'Create'}
          </button>
        </>
      }
    >
      <div className="form-row">
        <label htmlFor={nameId}>Name</label>
        <input id={nameId} value={name} onChange={(event) => setName(event.target.value)} spellCheck={false} autoComplete="off" />
      </div>
      <fieldset className="inline-choice">
        <legend>Rights</legend>
        {RIGHTS.map((right) => (
          <label className="checkbox" key={right}>
            <input
              type="checkbox"
              checked={rights.includes(right)}
              onChange={(event) => setRights((previous) => (event.target.checked ? [...previous, right] : previous.filter((value) => value !== right)))}
            />
            {right}
          </label>
        ))}
      </fieldset>
      <ErrorBanner error={action.error} />
    </Dialog>
  );
}

function PolicyKeysDialog({ policy, onClose, onChanged }: { policy: AccessPolicy; onClose: () => void; onChanged: (policy: AccessPolicy) => void }) {
  const session = useSession();
  const action = useAction();
  const host = session.client.credentials.hostName;
  const regenerate = async (keyType: 'primary' | 'secondary') => {
    const changed = await action.run(() => session.client.post<AccessPolicy>(['accessPolicies', policy.keyName, 'regenerateKey'], { keyType }));
    if (changed !== undefined) onChanged(changed);
  };
  const connection = (key: string | undefined) => `HostName=${host};SharedAccessKeyName=${policy.keyName};SharedAccessKey=${key ?? ''}`;
  return (
    <Dialog
      open
      title={`Keys of ${policy.keyName}`}
      onClose={onClose}
      footer={
        <button type="button" className="button primary" onClick={onClose}>
          Close
        </button>
      }
    >
      <Fields
        rows={[
          ['Rights', policy.rights],
          ['Primary key', <CodeWithCopy value={policy.primaryKey ?? ''} key="p" />],
          ['Secondary key', <CodeWithCopy value={policy.secondaryKey ?? ''} key="s" />],
          ['Connection string (primary)', <CodeWithCopy value={connection(policy.primaryKey)} key="cp" />],
          ['Connection string (secondary)', <CodeWithCopy value={connection(policy.secondaryKey)} key="cs" />],
        ]}
      />
      <div className="actions">
        <button type="button" className="button secondary small" onClick={() => void regenerate('primary')} disabled={action.busy}>
          Regenerate primary
        </button>
        <button type="button" className="button secondary small" onClick={() => void regenerate('secondary')} disabled={action.busy}>
          Regenerate secondary
        </button>
      </div>
      <ErrorBanner error={action.error} />
    </Dialog>
  );
}

export function CertificatesPage() {
  const session = useSession();
  const loaded = useLoad((signal) => session.client.get<CaCertificate[]>(['certificates'], { signal }), []);
  const [uploading, setUploading] = useState(false);
  if (!session.can('ServiceConfig')) return <RequiresServiceConfig title="CA certificates" />;
  const certificates = loaded.data ?? [];
  return (
    <>
      <PageHeader
        title="CA certificates"
        subtitle="Enrollment groups may trust a CA once you prove you hold its key."
        actions={
          <button type="button" className="button primary" onClick={() => setUploading(true)}>
            Upload a CA certificate
          </button>
        }
      />
      <div className="card">
        <ErrorBanner error={loaded.error} onRetry={loaded.reload} />
        {loaded.data === undefined && loaded.loading ? (
          <Loading />
        ) : certificates.length === 0 && loaded.error === undefined ? (
          <Empty title="No CA certificate yet">Upload one to let an enrollment group accept every device certificate it signs.</Empty>
        ) : (
          <div className="table-wrap">
            <table>
              <thead>
                <tr>
                  <th scope="col">Name</th>
                  <th scope="col">Subject</th>
                  <th scope="col">Status</th>
                  <th scope="col" className="hide-narrow">
                    Expires
                  </th>
                </tr>
              </thead>
              <tbody>
                {certificates.map((certificate) => (
                  <tr key={certificate.name}>
                    <td>
                      <Link to={path('settings', 'certificates', certificate.name)}>{certificate.name}</Link>
                    </td>
                    <td>{certificate.info.subjectName}</td>
                    <td>
                      <Badge value={certificate.isVerified ? 'verified' : 'unverified'} />
                    </td>
                    <td className="hide-narrow">
                      <DateTime value={certificate.info.notAfterUtc} />
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
      </div>
      {uploading && (
        <UploadCertificateDialog
          onClose={() => setUploading(false)}
          onSaved={(certificate) => {
            setUploading(false);
            navigate(path('settings', 'certificates', certificate.name));
          }}
        />
      )}
    </>
  );
}

function UploadCertificateDialog({ onClose, onSaved }: { onClose: () => void; onSaved: (certificate: CaCertificate) => void }) {
  const session = useSession();
  const [name, setName] = useState('');
  const [text, setText] = useState<string | undefined>(undefined);
  const [fileProblem, setFileProblem] = useState<string | undefined>(undefined);
  const action = useAction();
  const ids = { name: useId(), file: useId() };
  const onFile = async (file: File | undefined) => {
    setFileProblem(undefined);
    setText(undefined);
    if (file === undefined) return;
    const content = await certificateFileText(file);
    if (/PRIVATE KEY/.test(content)) {
      setFileProblem('That file holds a private key. Upload only the CA certificate.');
      return;
    }
    setText(content);
    if (name === '') setName(file.name.replace(/\.(pem|cer|crt|der)$/i, '').replace(/[^A-Za-z0-9\-._]/g, '-').slice(0, 64));
  };
  const save = async () => {
    if (text === undefined) return;
    const saved = await action.run(() => session.client.put<CaCertificate>(['certificates', name.trim()], { certificate: text }));
    if (saved !== undefined) onSaved(saved);
  };
  return (
    <Dialog
      open
      title="Upload a CA certificate"
      onClose={onClose}
      footer={
        <>
          <button type="button" className="button secondary" onClick={onClose}>
            Cancel
          </button>
          <button type="button" className="button primary" onClick={() => void save()} disabled={action.busy || text === undefined || name.trim() === ''}>
            {action.busy ? 'Uploading…' : 'Upload'}
          </button>
        </>
      }
    >
      <div className="form-row">
        <label htmlFor={ids.file}>Certificate file (PEM or DER)</label>
        <input id={ids.file} type="file" accept=".pem,.cer,.crt,.der" onChange={(event) => void onFile(event.target.files?.[0])} />
        {fileProblem !== undefined && <p className="field-problem">{fileProblem}</p>}
      </div>
      <div className="form-row">
        <label htmlFor={ids.name}>Name (1–64 letters, digits, - . _)</label>
        <input id={ids.name} value={name} onChange={(event) => setName(event.target.value)} spellCheck={false} autoComplete="off" />
      </div>
      <ErrorBanner error={action.error} />
    </Dialog>
  );
}

export function CertificateDetailPage({ name }: { name: string }) {
  const session = useSession();
  const loaded = useLoad((signal) => session.client.get<CaCertificate>(['certificates', name], { signal }), [name]);
  const [code, setCode] = useState<string | undefined>(undefined);
  const [deleting, setDeleting] = useState(false);
  const action = useAction();
  const fileInput = useRef<HTMLInputElement>(null);
  if (!session.can('ServiceConfig')) return <RequiresServiceConfig title="CA certificate" />;
  const certificate = loaded.data;
  const generate = async () => {
    const answer = await action.run(() =>
      session.client.post<CaCertificate>(['certificates', name, 'generateVerificationCode'], undefined, certificate === undefined ? {} : { headers: { 'if-match': certificate.etag } }),
    );
    if (answer?.verificationCode !== undefined) {
      setCode(answer.verificationCode);
      loaded.reload();
    }
  };
  const verify = async (file: File | undefined) => {
    if (file === undefined) return;
    const text = await certificateFileText(file);
    const answer = await action.run(() => session.client.post<CaCertificate>(['certificates', name, 'verify'], { certificate: text }));
    if (answer !== undefined) {
      setCode(undefined);
      loaded.reload();
    }
  };
  const remove = async () => {
    const done = await action.run(async () => {
      await session.client.delete(['certificates', name]);
      return true;
    });
    if (done === true) navigate('/settings/certificates');
  };
  return (
    <>
      <PageHeader
        title={
          <>
            {name} {certificate !== undefined && <Badge value={certificate.isVerified ? 'verified' : 'unverified'} />}
          </>
        }
        subtitle={<Link to="/settings/certificates">← CA certificates</Link>}
        actions={
          certificate !== undefined ? (
            <button type="button" className="button danger" onClick={() => setDeleting(true)}>
              Delete
            </button>
          ) : undefined
        }
      />
      {certificate === undefined ? (
        loaded.loading ? (
          <Loading />
        ) : (
          <ErrorBanner error={loaded.error} onRetry={loaded.reload} />
        )
      ) : (
        <>
          <Section title="Certificate">
            <Fields
              rows={[
                ['Subject', certificate.info.subjectName],
                ['Issuer', certificate.info.issuerName],
                ['SHA-256 thumbprint', <code className="wrap" key="sha">{certificate.info.sha256Thumbprint}</code>],
                ['Valid from', <DateTime value={certificate.info.notBeforeUtc} key="from" />],
                ['Valid until', <DateTime value={certificate.info.notAfterUtc} key="until" />],
                ['Uploaded', <DateTime value={certificate.createdDateTimeUtc} key="uploaded" />],
              ]}
            />
          </Section>
          <Section title="Proof of possession">
            {certificate.isVerified ? (
              <Notice kind="success">Verified: enrollment groups can name this CA in their X.509 attestation.</Notice>
            ) : (
              <ol className="steps">
                <li>
                  <p>
                    <strong>Generate a verification code.</strong> A new code replaces any earlier one.
                  </p>
                  <button type="button" className="button secondary" onClick={() => void generate()} disabled={action.busy}>
                    Generate verification code
                  </button>
                  {code !== undefined && (
                    <p>
                      Code: <CodeWithCopy value={code} />
                    </p>
                  )}
                </li>
                <li>
                  <p>
                    <strong>Sign a certificate with the CA's key</strong> whose subject CN is the code, for example with OpenSSL:
                  </p>
                  <pre className="json">
                    {`openssl req -new -newkey rsa:2048 -nodes -keyout verification.key \\
  -subj "/CN=${code ?? '<verification code>'}" -out verification.csr
openssl x509 -req -in verification.csr -CA ca.pem -CAkey ca.key \\
  -CAcreateserial -days 1 -sha256 -out verification.pem`}
                  </pre>
                </li>
                <li>
                  <p>
                    <strong>Upload the verification certificate.</strong>
                  </p>
                  <button type="button" className="button primary" onClick={() => fileInput.current?.click()} disabled={action.busy}>
                    Upload verification.pem…
                  </button>
                  <input
                    ref={fileInput}
                    type="file"
                    hidden
                    accept=".pem,.cer,.crt,.der"
                    aria-label="Verification certificate"
                    onChange={(event) => {
                      void verify(event.target.files?.[0]);
                      event.target.value = '';
                    }}
                  />
                </li>
              </ol>
            )}
            {!deleting && <ErrorBanner error={action.error} />}
          </Section>
        </>
      )}
      <ConfirmDialog
        open={deleting}
        title={`Delete the CA certificate ${name}?`}
        confirmLabel="Delete"
        danger
        busy={action.busy}
        error={action.error}
        onConfirm={() => void remove()}
        onClose={() => {
          setDeleting(false);
          action.clear();
        }}
      >
        <p>Enrollment groups that name it stop provisioning devices.</p>
      </ConfirmDialog>
    </>
  );
}
