/** The login form: POST /session {name, password}; the answer's cookie is HttpOnly, the page keeps only name and role. */
import { html } from 'htm/preact';
import type { VNode } from 'preact';
import { useState } from 'preact/hooks';
import { api, errorText } from '../api.js';
import { ErrorLine } from '../components/error.js';
import type { SessionView } from '../types.js';

export function LoginPage({ onLogin, error: initial }: { onLogin: (s: SessionView) => void; error: string | null }): VNode {
  const [name, setName] = useState('');
  const [password, setPassword] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(initial);

  const submit = async (e: Event): Promise<void> => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const s = await api.post<SessionView>('/session', { name, password });
      setPassword('');
      onLogin({ name: s.name, role: s.role });
    } catch (err) {
      setError(errorText(err));
    } finally {
      setBusy(false);
    }
  };

  return html`<main class="login">
    <form class="card" onSubmit=${submit} aria-labelledby="login-title">
      <h1 id="login-title">Fleet console</h1>
      <label for="login-name">Name</label>
      <input
        id="login-name"
        name="name"
        autocomplete="username"
        required
        value=${name}
        onInput=${(e: Event) => setName((e.target as HTMLInputElement).value)}
      />
      <label for="login-password">Password</label>
      <input
        id="login-password"
        name="password"
        type="password"
        autocomplete="current-password"
        required
        value=${password}
        onInput=${(e: Event) => setPassword((e.target as HTMLInputElement).value)}
      />
      <${ErrorLine} error=${error} />
      <button type="submit" disabled=${busy}>${busy ? 'Logging in…' : 'Log in'}</button>
    </form>
  </main>`;
}
