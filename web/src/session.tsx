import { createContext, useCallback, useContext, useEffect, useMemo, useState, type ReactNode } from 'react';
import { ApiClient, type Right } from './api/client';
import { loadCredentials, storeCredentials, type Credentials } from './api/credentials';
import { discoverCapabilities, SignInError, type Capabilities } from './api/rights';

/**
 * The signed-in session: the API client, the policy's rights, and sign-in/sign-out. Credentials are kept in this tab's
 * sessionStorage so a reload keeps the session; another tab or a closed browser starts signed out.
 */
export interface Session {
  client: ApiClient;
  capabilities: Capabilities;
  can(right: Right): boolean;
  canAll(...rights: Right[]): boolean;
  signOut(): void;
}

interface SessionState {
  session: Session | undefined;
  restoring: boolean;
  /** Why a session kept in this tab could not be reopened (shown on the sign-in page). */
  restoreError: string | undefined;
  signIn(credentials: Credentials): Promise<void>;
}

const SessionContext = createContext<SessionState | undefined>(undefined);

export function SessionProvider({ children }: { children: ReactNode }) {
  const [session, setSession] = useState<Session | undefined>(undefined);
  const [restoring, setRestoring] = useState(() => loadCredentials() !== undefined);
  const [restoreError, setRestoreError] = useState<string | undefined>(undefined);

  const signOut = useCallback(() => {
    storeCredentials(undefined);
    setSession(undefined);
  }, []);

  const open = useCallback(
    async (credentials: Credentials): Promise<Session> => {
      const client = new ApiClient(credentials);
      const capabilities = await discoverCapabilities(client);
      const can = (right: Right) => capabilities.rights.has(right);
      return { client, capabilities, can, canAll: (...rights) => rights.every(can), signOut };
    },
    [signOut],
  );

  const signIn = useCallback(
    async (credentials: Credentials) => {
      const opened = await open(credentials);
      storeCredentials(credentials);
      setSession(opened);
    },
    [open],
  );

  useEffect(() => {
    const stored = loadCredentials();
    if (stored === undefined) return;
    open(stored)
      .then(setSession)
      .catch((error: unknown) => {
        // Keys that stopped working (regenerated, policy deleted) end the session; a network error keeps them.
        if (error instanceof SignInError && !/reached/.test(error.message)) storeCredentials(undefined);
        setRestoreError(error instanceof Error ? error.message : String(error));
      })
      .finally(() => setRestoring(false));
  }, [open]);

  const value = useMemo(() => ({ session, restoring, restoreError, signIn }), [session, restoring, restoreError, signIn]);
  return <SessionContext.Provider value={value}>{children}</SessionContext.Provider>;
}

export function useSessionState(): SessionState {
  const state = useContext(SessionContext);
  if (state === undefined) throw new Error('useSessionState outside SessionProvider');
  return state;
}

/** The session of a signed-in page (pages render only inside one). */
export function useSession(): Session {
  const { session } = useSessionState();
  if (session === undefined) throw new Error('useSession while signed out');
  return session;
}
