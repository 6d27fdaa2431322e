import { useId, useState, type FormEvent } from 'react';
import { hostOnly, isBase64, parseConnectionString, type Credentials } from '../api/credentials';
import { describeError } from '../components/ui';
import { useSessionState } from '../session';

/**
 * Sign-in with a service connection string, or a policy name and key for this host. The key is used to sign tokens in
 * this tab and kept in its session storage; it is never sent to the server.
 */
export function SignInPage() {
  const { signIn, restoreError } = useSessionState();
  const [mode, setMode] = useState<'connectionString' | 'policy'>('connectionString');
  const [connectionString, setConnectionString] = useState('');
  const [hostName, setHostName] = useState(() => window.location.hostname);
  const [keyName, setKeyName] = useState('provisioningserviceowner');
  const [key, setKey] = useState('');
  const [error, setError] = useState<string | undefined>(restoreError === undefined ? undefined : `Your earlier sign-in could not be reopened: ${restoreError}`);
  const [busy, setBusy] = useState(false);
  const ids = { cs: useId(), host: useId(), name: useId(), key: useId(), error: useId() };

  const submit = async (event: FormEvent) => {
    event.preventDefault();
    setError(undefined);
    let credentials: Credentials;
    if (mode === 'connectionString') {
      const parsed = parseConnectionString(connectionString);
      if ('error' in parsed) {
        setError(parsed.error);
        return;
      }
      credentials = parsed;
    } else {
      if (keyName.trim() === '' || key.trim() === '' || hostName.trim() === '') {
        setError('Enter the host name, the policy name and its key.');
        return;
      }
      credentials = { hostName: hostOnly(hostName), keyName: keyName.trim(), key: key.trim() };
    }
    if (!isBase64(credentials.key)) {
      setError('The key is not base64; copy it again from `provisiond info` or the access policy.');
      return;
    }
    setBusy(true);
    try {
      await signIn(credentials);
    } catch (caught) {
      setError(describeError(caught).title);
    } finally {
      setBusy(false);
    }
  };

  const pageHost = window.location.hostname;
  const parsedHost = mode === 'connectionString' ? parseConnectionString(connectionString) : undefined;
  const otherHost = parsedHost !== undefined && !('error' in parsedHost) && parsedHost.hostName !== pageHost.toLowerCase() ? parsedHost.hostName : undefined;

  return (
    <main className="sign-in" id="main">
      <form className="card sign-in-card" onSubmit={(event) => void submit(event)} aria-describedby={error === undefined ? undefined : ids.error} noValidate>
        <div className="brand brand-large">
          <img src="/portal/favicon.svg" alt="" width="36" height="36" />
          <span>provisiond</span>
        </div>
        <h1>Sign in</h1>
        <p className="muted">
          Use a service connection string of this instance — <code>npx provisiond info</code> prints the owner's. The key stays in this
          browser tab; requests carry only short-lived signatures.
        </p>
        <div className="segmented" role="radiogroup" aria-label="Sign in with">
          <label className={mode === 'connectionString' ? 'selected' : ''}>
            <input type="radio" name="mode" checked={mode === 'connectionString'} onChange={() => setMode('connectionString')} />
            Connection string
          </label>
          <label className={mode === 'policy' ? 'selected' : ''}>
            <input type="radio" name="mode" checked={mode === 'policy'} onChange={() => setMode('policy')} />
            Policy name and key
          </label>
        </div>
        {mode === 'connectionString' ? (
          <div className="form-row">
            <label htmlFor={ids.cs}>Service connection string</label>
            <textarea
              id={ids.cs}
              name="connectionString"
              rows={3}
              value={connectionString}
              onChange={(event) => setConnectionString(event.target.value)}
              placeholder="HostName=localhost;SharedAccessKeyName=provisioningserviceowner;SharedAccessKey=…"
              autoComplete="off"
              spellCheck={false}
              required
              autoFocus
            />
            {otherHost !== undefined && (
              <p className="hint">
                This string is for <code>{otherHost}</code>; the portal is open at <code>{pageHost}</code>. If sign-in fails, open the portal at{' '}
                <code>https://{otherHost}/portal/</code>.
              </p>
            )}
          </div>
        ) : (
          <>
            <div className="form-row">
              <label htmlFor={ids.host}>Service host name</label>
              <input id={ids.host} value={hostName} onChange={(event) => setHostName(event.target.value)} autoComplete="off" spellCheck={false} />
            </div>
            <div className="form-row">
              <label htmlFor={ids.name}>Policy name</label>
              <input id={ids.name} value={keyName} onChange={(event) => setKeyName(event.target.value)} autoComplete="username" spellCheck={false} />
            </div>
            <div className="form-row">
              <label htmlFor={ids.key}>Key</label>
              <input id={ids.key} type="password" value={key} onChange={(event) => setKey(event.target.value)} autoComplete="current-password" spellCheck={false} />
            </div>
          </>
        )}
        {error !== undefined && (
          <div className="banner banner-error" role="alert" id={ids.error}>
            <div>
              <strong>Could not sign in.</strong> {error}
            </div>
          </div>
        )}
        <button type="submit" className="button primary wide" disabled={busy}>
          {busy ? 'Signing in…' : 'Sign in'}
        </button>
      </form>
    </main>
  );
}
