import { useEffect, useRef, useState, type ReactNode } from 'react';
import type { Right } from './api/client';
import { Loading } from './components/ui';
import { CertificateIssuancePage } from './pages/certificate-issuance';
import { DataRequestDetailPage, DataRequestsPage } from './pages/data-requests';
import { GROUP, INDIVIDUAL } from './pages/enrollment-kinds';
import { EnrollmentFormPage } from './pages/enrollment-form';
import { EnrollmentDetailPage, EnrollmentListPage } from './pages/enrollments';
import { RegistrationDetailPage, RegistrationsPage } from './pages/registrations';
import { AccessPoliciesPage, CertificateDetailPage, CertificatesPage, InstancePage, LinkedHubsPage } from './pages/settings';
import { SignInPage } from './pages/sign-in';
import { SystemLogPage } from './pages/system-log';
import { Link, match, navigate, useLocation } from './router';
import { useSession, useSessionState, type Session } from './session';

/** The shell: sign-in when signed out; otherwise the navigation the policy's rights allow, and the routed page. */
interface NavItem {
  to: string;
  label: string;
  /** Shown when the policy has every one of these rights. */
  needs: Right[];
}

const NAV: Array<{ heading?: string; items: NavItem[] }> = [
  {
    items: [
      { to: '/enrollments', label: 'Enrollments', needs: ['EnrollmentRead'] },
      { to: '/groups', label: 'Enrollment groups', needs: ['EnrollmentRead'] },
      { to: '/registrations', label: 'Registration records', needs: ['RegistrationStatusRead'] },
    ],
  },
  {
    heading: 'Privacy and audit',
    items: [
      { to: '/data-requests', label: 'Customer data', needs: ['EnrollmentRead', 'RegistrationStatusRead'] },
      { to: '/log', label: 'System log', needs: ['EnrollmentRead', 'RegistrationStatusRead'] },
    ],
  },
  {
    heading: 'Instance settings',
    items: [
      { to: '/settings/instance', label: 'Instance', needs: ['ServiceConfig'] },
      { to: '/settings/hubs', label: 'Linked hubs', needs: ['ServiceConfig'] },
      { to: '/settings/policies', label: 'Access policies', needs: ['ServiceConfig'] },
      { to: '/settings/certificates', label: 'CA certificates', needs: ['ServiceConfig'] },
      { to: '/settings/certificate-issuance', label: 'Certificate issuance', needs: ['ServiceConfig'] },
    ],
  },
];

type Route = [pattern: string, render: (params: Record<string, string>) => ReactNode];

const ROUTES: Route[] = [
  // Keys name the list as well as the entry: switching lists starts a new page, never showing the other list's rows.
  ['/enrollments', () => <EnrollmentListPage kind={INDIVIDUAL} key="enrollments" />],
  ['/enrollments/new', () => <EnrollmentFormPage kind={INDIVIDUAL} />],
  ['/enrollments/:id', (params) => <EnrollmentDetailPage kind={INDIVIDUAL} id={params.id ?? ''} key={`enrollment/${params.id ?? ''}`} />],
  ['/enrollments/:id/edit', (params) => <EnrollmentFormPage kind={INDIVIDUAL} id={params.id ?? ''} key={`enrollment/${params.id ?? ''}`} />],
  ['/groups', () => <EnrollmentListPage kind={GROUP} key="groups" />],
  ['/groups/new', () => <EnrollmentFormPage kind={GROUP} />],
  ['/groups/:id', (params) => <EnrollmentDetailPage kind={GROUP} id={params.id ?? ''} key={`group/${params.id ?? ''}`} />],
  ['/groups/:id/edit', (params) => <EnrollmentFormPage kind={GROUP} id={params.id ?? ''} key={`group/${params.id ?? ''}`} />],
  ['/registrations', () => <RegistrationsPage />],
  ['/registrations/:id', (params) => <RegistrationDetailPage id={params.id ?? ''} key={params.id} />],
  ['/data-requests', () => <DataRequestsPage />],
  ['/data-requests/:id', (params) => <DataRequestDetailPage requestId={params.id ?? ''} key={params.id} />],
  ['/log', () => <SystemLogPage />],
  ['/settings/instance', () => <InstancePage />],
  ['/settings/hubs', () => <LinkedHubsPage />],
  ['/settings/policies', () => <AccessPoliciesPage />],
  ['/settings/certificates', () => <CertificatesPage />],
  ['/settings/certificate-issuance', () => <CertificateIssuancePage />],
  ['/settings/certificates/:name', (params) => <CertificateDetailPage name={params.name ?? ''} key={params.name} />],
];

function firstAllowed(session: Session): string | undefined {
  for (const group of NAV) for (const item of group.items) if (session.canAll(...item.needs)) return item.to;
  return undefined;
}

export function App() {
  const { session, restoring } = useSessionState();
  if (restoring) {
    return (
      <main className="centered" id="main">
        <Loading label="Signing in…" />
      </main>
    );
  }
  return session === undefined ? <SignInPage /> : <Shell />;
}

function Shell() {
  const session = useSession();
  const location = useLocation();
  const [menuOpen, setMenuOpen] = useState(false);
  const mainRef = useRef<HTMLElement>(null);
  const home = firstAllowed(session);

  useEffect(() => {
    if (location.path === '/' && home !== undefined) navigate(home, { replace: true });
  }, [location.path, home]);
  useEffect(() => {
    setMenuOpen(false);
  }, [location.path]);

  let page: ReactNode = undefined;
  for (const [pattern, render] of ROUTES) {
    const params = match(pattern, location.path);
    if (params !== undefined) {
      page = render(params);
      break;
    }
  }
  const { credentials } = session.client;
  const instance = session.capabilities.instance;
  const rights = [...session.capabilities.rights];

  return (
    <div className="shell">
      <a className="skip-link" href="#main" onClick={(event) => {
        event.preventDefault();
        mainRef.current?.focus();
      }}>
        Skip to content
      </a>
      <header className="topbar">
        <button type="button" className="menu-button" aria-expanded={menuOpen} aria-controls="nav" onClick={() => setMenuOpen((open) => !open)}>
          <span aria-hidden="true">☰</span>
          <span className="visually-hidden">Menu</span>
        </button>
        <Link to={home ?? '/'} className="brand">
          <img src="/portal/favicon.svg" alt="" width="26" height="26" />
          <span>provisiond</span>
        </Link>
        <div className="topbar-info">
          <span className="instance-name" title={instance === undefined ? credentials.hostName : `ID scope ${instance.idScope}`}>
            {instance === undefined ? credentials.hostName : `${instance.name} · ${instance.idScope}`}
          </span>
          <span className="policy" title={`Rights: ${rights.join(', ')}`} data-testid="signed-in-policy">
            {credentials.keyName}
          </span>
          <button type="button" className="button secondary small" onClick={session.signOut}>
            Sign out
          </button>
        </div>
      </header>
      <div className="body">
        <nav id="nav" className={`sidebar ${menuOpen ? 'open' : ''}`} aria-label="Sections">
          {NAV.map((group, index) => {
            const items = group.items.filter((item) => session.canAll(...item.needs));
            if (items.length === 0) return null;
            return (
              <div className="nav-group" key={group.heading ?? index}>
                {group.heading !== undefined && <div className="nav-heading">{group.heading}</div>}
                <ul>
                  {items.map((item) => {
                    const active = location.path === item.to || location.path.startsWith(`${item.to}/`);
                    return (
                      <li key={item.to}>
                        <Link to={item.to} className={active ? 'active' : undefined} aria-current={active ? 'page' : undefined} onClick={() => setMenuOpen(false)}>
                          {item.label}
                        </Link>
                      </li>
                    );
                  })}
                </ul>
              </div>
            );
          })}
          <div className="nav-rights" aria-label="Your rights">
            <div className="nav-heading">Your rights</div>
            <div className="chips">
              {rights.length === 0 ? <span className="muted small">none</span> : rights.map((right) => <span className="chip" key={right}>{right}</span>)}
            </div>
          </div>
        </nav>
        <main className="content" id="main" ref={mainRef} tabIndex={-1}>
          {page ?? (home === undefined ? <NoAccess /> : location.path === '/' ? <Loading /> : <NotFound />)}
        </main>
      </div>
    </div>
  );
}

function NoAccess() {
  return (
    <div className="card">
      <h1>Nothing to show</h1>
      <p>This policy has none of the rights the portal uses (EnrollmentRead, RegistrationStatusRead, ServiceConfig). Sign in with another policy.</p>
    </div>
  );
}

function NotFound() {
  return (
    <div className="card">
      <h1>No such page</h1>
      <p>
        <Link to="/">Go to the start page</Link>
      </p>
    </div>
  );
}
