/**
 * The app shell: asks the API who is logged in (GET /session), shows the login page without a session, else the
 * navigation and the page the hash names.
 */
import { html } from 'htm/preact';
import type { VNode } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { api, ApiError, errorText, setUnauthorizedHandler } from './api.js';
import { closeLive } from './live.js';
import { useRoute } from './router.js';
import type { SessionView } from './types.js';
import { LoginPage } from './pages/login.js';
import { FleetPage } from './pages/fleet.js';
import { DevicePage } from './pages/device.js';
import { RolloutsPage } from './pages/rollouts.js';
import { RolloutPage } from './pages/rollout.js';
import { EnrollmentPage } from './pages/enrollment.js';
import { AuditPage } from './pages/audit.js';
import { UsersPage } from './pages/users.js';
import { ErrorLine } from './components/error.js';

const NAV: { path: string; label: string }[] = [
  { path: 'devices', label: 'Fleet' },
  { path: 'rollouts', label: 'Rollouts' },
  { path: 'audit', label: 'Audit' },
  { path: 'enrollment', label: 'Enrollment' },
  { path: 'users', label: 'Users' },
];

export function App(): VNode {
  const [session, setSession] = useState<SessionView | null | undefined>(undefined);
  const [error, setError] = useState<string | null>(null);
  const route = useRoute();

  useEffect(() => {
    setUnauthorizedHandler(() => {
      closeLive();
      setSession(null);
    });
    api
      .get<SessionView>('/session')
      .then((s) => setSession({ name: s.name, role: s.role }))
      .catch((err: unknown) => {
        if (err instanceof ApiError && err.status === 401) setSession(null);
        else {
          setSession(null);
          setError(errorText(err));
        }
      });
  }, []);

  if (session === undefined) return html`<main class="loading" aria-busy="true">Loading…</main>`;
  if (session === null) return html`<${LoginPage} onLogin=${(s: SessionView) => setSession(s)} error=${error} />`;

  const logout = async (): Promise<void> => {
    try {
      await api.del('/session');
    } catch (err) {
      setError(errorText(err));
    }
    closeLive();
    setSession(null);
  };

  const section = route.parts[0] ?? 'devices';
  return html`<div class="shell">
    <a class="skip" href="#main">Skip to content</a>
    <header class="top">
      <span class="brand">Fleet console</span>
      <nav aria-label="Main">
        <ul>
          ${NAV.map((n) => html`<li><a href=${`#/${n.path}`} aria-current=${section === n.path ? 'page' : undefined}>${n.label}</a></li>`)}
        </ul>
      </nav>
      <span class="who"><span class="who-name">${session.name}</span> <span class="role">${session.role}</span></span>
      <button type="button" class="secondary" onClick=${logout}>Log out</button>
    </header>
    <main id="main" tabindex="-1">
      <${ErrorLine} error=${error} />
      ${page(route.parts, route.query, session)}
    </main>
  </div>`;
}

function page(parts: string[], query: URLSearchParams, session: SessionView): VNode {
  const [section = 'devices', id] = parts;
  const role = session.role;
  switch (section) {
    case 'devices':
      return id !== undefined ? html`<${DevicePage} key=${id} id=${id} role=${role} />` : html`<${FleetPage} query=${query} role=${role} />`;
    case 'rollouts':
      return id !== undefined ? html`<${RolloutPage} key=${id} id=${id} role=${role} />` : html`<${RolloutsPage} role=${role} />`;
    case 'audit':
      return html`<${AuditPage} query=${query} />`;
    case 'enrollment':
      return html`<${EnrollmentPage} role=${role} />`;
    case 'users':
      return html`<${UsersPage} role=${role} self=${session.name} />`;
    default:
      return html`<p>No page here. <a href="#/devices">Go to the fleet.</a></p>`;
  }
}
