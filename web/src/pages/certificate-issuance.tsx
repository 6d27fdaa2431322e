import { useId, useState } from 'react';
import { ApiError } from '../api/client';
import { CREDENTIAL_KEY_TYPES, type CredentialKeyType, type CredentialPolicy, type IssuingCa } from '../api/types';
import { ConfirmDialog, CopyButton, DateTime, Dialog, Empty, ErrorBanner, Fields, Lacks, Loading, PageHeader, Section, downloadFile } from '../components/ui';
import { useAction, useLoad } from '../hooks';
import { useSession } from '../session';

/**
 * Certificate issuance (docs/certificate-issuance.md), ServiceConfig: the credential policies enrollments name in
 * `credentialPolicyName`, and the issuing CA that signs the certificates — shown read-only and without its key (the
 * server never returns it; replacing the CA is a service-API/CLI step that takes a private key, kept out of the browser).
 */
const KEY_TYPE_LABELS: Record<CredentialKeyType, string> = {
  ecP256: 'ECDSA P-256 (ecP256)',
  ecP384: 'ECDSA P-384 (ecP384)',
  rsa2048: 'RSA 2048 (rsa2048)',
  rsa3072: 'RSA 3072 (rsa3072)',
  rsa4096: 'RSA 4096 (rsa4096)',
};

export function CertificateIssuancePage() {
  const session = useSession();
  const policies = useLoad((signal) => session.client.get<CredentialPolicy[]>(['credentialPolicies'], { signal }), []);
  const ca = useLoad((signal) => session.client.get<IssuingCa>(['issuingCa'], { signal }), []);
  const [editing, setEditing] = useState<CredentialPolicy | 'new' | undefined>(undefined);
  const [deleting, setDeleting] = useState<string | undefined>(undefined);
  const action = useAction();
  if (!session.can('ServiceConfig')) {
    return (
      <>
        <PageHeader title="Certificate issuance" />
        <Lacks right="ServiceConfig" what="the credential policies and the issuing CA" />
      </>
    );
  }
  const list = policies.data ?? [];
  const remove = async () => {
    if (deleting === undefined) return;
    const done = await action.run(async () => {
      await session.client.delete(['credentialPolicies', deleting]);
      return true;
    });
    if (done === true) {
      setDeleting(undefined);
      policies.reload();
    }
  };
  return (
    <>
      <PageHeader
        title="Certificate issuance"
        subtitle="Devices whose enrollment names a credential policy may send a CSR when they register and get a certificate signed by the issuing CA."
        actions={
          <button type="button" className="button primary" onClick={() => setEditing('new')}>
            New credential policy
          </button>
        }
      />
      <Section title="Credential policies">
        <ErrorBanner error={policies.error} onRetry={policies.reload} />
        {policies.data === undefined && policies.loading ? (
          <Loading />
        ) : list.length === 0 && policies.error === undefined ? (
          <Empty title="No credential policy yet">Create one, then name it on the enrollments or groups whose devices may ask for certificates.</Empty>
        ) : (
          <div className="table-wrap">
            <table>
              <thead>
                <tr>
                  <th scope="col">Name</th>
                  <th scope="col">Key types</th>
                  <th scope="col" className="numeric">
                    Validity (days)
                  </th>
                  <th scope="col" className="hide-narrow">
                    Last updated
                  </th>
                  <th scope="col">
                    <span className="visually-hidden">Actions</span>
                  </th>
                </tr>
              </thead>
              <tbody>
                {list.map((policy) => (
                  <tr key={policy.name} data-testid={`credential-policy-${policy.name}`}>
                    <td>{policy.name}</td>
                    <td>{policy.keyTypes.join(', ')}</td>
                    <td className="numeric">{policy.validityInDays}</td>
                    <td className="hide-narrow">
                      <DateTime value={policy.lastUpdatedDateTimeUtc} />
                    </td>
                    <td className="row-actions">
                      <button type="button" className="button secondary small" onClick={() => setEditing(policy)} aria-label={`Edit ${policy.name}`}>
                        Edit
                      </button>
                      <button type="button" className="button danger small" onClick={() => setDeleting(policy.name)} aria-label={`Delete ${policy.name}`}>
                        Delete
                      </button>
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
      </Section>
      <Section title="Issuing CA">
        <ErrorBanner error={ca.error} onRetry={ca.reload} />
        {ca.data === undefined ? (
          ca.loading && <Loading />
        ) : (
          <>
            <Fields
              rows={[
                ['Subject', ca.data.info.subjectName],
                ['Issuer', ca.data.info.issuerName],
                ['SHA-256 thumbprint', <code key="sha256">{ca.data.info.sha256Thumbprint}</code>],
                ['SHA-1 thumbprint', <code key="sha1">{ca.data.info.sha1Thumbprint}</code>],
                ['Valid from', <DateTime value={ca.data.info.notBeforeUtc} key="from" />],
                ['Valid until', <DateTime value={ca.data.info.notAfterUtc} key="until" />],
                ['Source', ca.data.source === 'generated' ? 'Generated by provisiond' : "The operator's own CA"],
                ['Chain above it', ca.data.chain.length === 0 ? 'None (a root CA)' : `${ca.data.chain.length} certificate(s)`],
                [
                  'CRL URL',
                  ca.data.crlUrl === undefined ? (
                    <span className="muted" key="crl">
                      —
                    </span>
                  ) : (
                    <span className="secret" key="crl">
                      <code>{ca.data.crlUrl}</code>
                      <CopyButton text={ca.data.crlUrl} />
                    </span>
                  ),
                ],
              ]}
            />
            <div className="form-footer">
              <button
                type="button"
                className="button secondary"
                onClick={() => downloadFile('issuing-ca.pem', [ca.data?.certificate ?? '', ...(ca.data?.chain ?? [])].map((pem) => pem.trim()).join('\n') + '\n', 'application/x-pem-file')}
              >
                Download the CA certificate
              </button>
            </div>
            <p className="hint">
              Hubs and servers that authenticate issued certificates trust this CA. Replacing it with your own CA takes its private key, so it is done with
              the service API or the CLI (<code>PUT /issuingCa</code>), never in the browser.
            </p>
          </>
        )}
      </Section>
      {editing !== undefined && (
        <CredentialPolicyDialog
          policy={editing === 'new' ? undefined : editing}
          existing={list.map((policy) => policy.name)}
          onClose={() => setEditing(undefined)}
          onSaved={() => {
            setEditing(undefined);
            policies.reload();
          }}
        />
      )}
      <ConfirmDialog
        open={deleting !== undefined}
        title={`Delete the credential policy ${deleting ?? ''}?`}
        confirmLabel="Delete"
        danger
        busy={action.busy}
        error={action.error}
        onConfirm={() => void remove()}
        onClose={() => {
          setDeleting(undefined);
          action.clear();
        }}
      >
        <p>Devices whose enrollment names it can no longer get certificates from a CSR. Certificates already issued stay valid.</p>
      </ConfirmDialog>
    </>
  );
}

function CredentialPolicyDialog({ policy, existing, onClose, onSaved }: { policy: CredentialPolicy | undefined; existing: string[]; onClose: () => void; onSaved: () => void }) {
  const session = useSession();
  const [name, setName] = useState(policy?.name ?? '');
  const [keyTypes, setKeyTypes] = useState<CredentialKeyType[]>(policy?.keyTypes ?? [...CREDENTIAL_KEY_TYPES]);
  const [validity, setValidity] = useState(String(policy?.validityInDays ?? 30));
  const action = useAction();
  const ids = { name: useId(), validity: useId(), keyTypes: useId() };
  const toggle = (type: CredentialKeyType, on: boolean) =>
    setKeyTypes((current) => (on ? CREDENTIAL_KEY_TYPES.filter((known) => known === type || current.includes(known)) : current.filter((known) => known !== type)));
  const save = async () => {
    const trimmed = name.trim();
    const saved = await action.run(async () => {
      // PUT creates or replaces: a new policy must not silently replace one of the same name.
      if (policy === undefined && existing.includes(trimmed)) {
        throw new ApiError(409, `A credential policy named '${trimmed}' already exists; edit it instead.`);
      }
      // The number goes as typed (not clamped), so the server's own rule is what the operator sees when it is refused.
      const days = validity.trim() === '' ? Number.NaN : Number(validity);
      return session.client.put<CredentialPolicy>(['credentialPolicies', trimmed], { keyTypes, validityInDays: Number.isFinite(days) ? days : validity });
    });
    if (saved !== undefined) onSaved();
  };
  return (
    <Dialog
      open
      title={policy === undefined ? 'New credential policy' : `Edit ${policy.name}`}
      onClose={onClose}
      footer={
        <>
          <button type="button" className="button secondary" onClick={onClose}>
            Cancel
          </button>
          <button type="button" className="button primary" onClick={() => void save()} disabled={action.busy || name.trim() === ''}>
            {action.busy ? 'Saving…' : 'Save'}
          </button>
        </>
      }
    >
      <div className="form-row">
        <label htmlFor={ids.name}>Policy name</label>
        <input id={ids.name} value={name} onChange={(event) => setName(event.target.value)} readOnly={policy !== undefined} spellCheck={false} autoComplete="off" />
        <p className="hint">1 to 64 letters, digits, '-', '.' or '_'. Enrollments name it in their credential policy field.</p>
      </div>
      <fieldset className="form-row" aria-describedby={ids.keyTypes}>
        <legend>CSR key types accepted</legend>
        {CREDENTIAL_KEY_TYPES.map((type) => (
          <label className="checkbox" key={type}>
            <input type="checkbox" checked={keyTypes.includes(type)} onChange={(event) => toggle(type, event.target.checked)} />
            {KEY_TYPE_LABELS[type]}
          </label>
        ))}
        <p className="hint" id={ids.keyTypes}>
          A CSR with another key type is refused with error 400027.
        </p>
      </fieldset>
      <div className="form-row">
        <label htmlFor={ids.validity}>Certificate validity (days)</label>
        <input id={ids.validity} type="number" min={1} max={3650} value={validity} onChange={(event) => setValidity(event.target.value)} />
        <p className="hint">1 to 3650 days; default 30.</p>
      </div>
      <ErrorBanner error={action.error} />
    </Dialog>
  );
}

/**
 * The enrollment form's credential policy field: a choice among the instance's policies when the signed-in policy may
 * list them (ServiceConfig), otherwise the name typed in. A name no longer in the list (deleted since) stays shown, so
 * an edit does not drop it silently; the server refuses it with a clear 400 if it is still unknown.
 */
export function CredentialPolicyPicker({ id, value, onChange }: { id: string; value: string; onChange: (name: string) => void }) {
  const session = useSession();
  const canList = session.can('ServiceConfig');
  const loaded = useLoad((signal) => (canList ? session.client.get<CredentialPolicy[]>(['credentialPolicies'], { signal }) : Promise.resolve(undefined)), [canList]);
  const label = <label htmlFor={id}>Credential policy (certificates from CSRs)</label>;
  if (!canList || loaded.data === undefined) {
    return (
      <div className="form-row">
        {label}
        <input id={id} value={value} placeholder="none" onChange={(event) => onChange(event.target.value)} spellCheck={false} />
      </div>
    );
  }
  const names = loaded.data.map((policy) => policy.name);
  const current = value.trim();
  return (
    <div className="form-row">
      {label}
      <select id={id} value={current} onChange={(event) => onChange(event.target.value)}>
        <option value="">None (no certificates from CSRs)</option>
        {current !== '' && !names.includes(current) && <option value={current}>{current} (not found)</option>}
        {loaded.data.map((policy) => (
          <option key={policy.name} value={policy.name}>
            {policy.name} — {policy.keyTypes.join(', ')}; {policy.validityInDays} days
          </option>
        ))}
      </select>
    </div>
  );
}
