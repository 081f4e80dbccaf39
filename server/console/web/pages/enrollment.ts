/** Enrollment tokens (admin): create one (its text is shown once), list them, revoke; the pending enrollments. */
import { html } from 'htm/preact';
import type { VNode } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { api, errorText, seg } from '../api.js';
import { Badge } from '../components/badge.js';
import { ErrorLine } from '../components/error.js';
import { Table, type Column } from '../components/table.js';
import { when } from '../format.js';
import { can } from '../roles.js';
import type { EnrollmentTokenView, Role } from '../types.js';

export function EnrollmentPage({ role }: { role: Role }): VNode {
  const [tokens, setTokens] = useState<EnrollmentTokenView[] | null>(null);
  const [pending, setPending] = useState<EnrollmentTokenView[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [created, setCreated] = useState<{ device_id: string; token: string; expires_at: string } | null>(null);
  const [deviceId, setDeviceId] = useState('');
  const [userId, setUserId] = useState('');
  const [ttl, setTtl] = useState('');
  const [reload, setReload] = useState(0);

  const admin = can(role, 'admin');
  useEffect(() => {
    api
      .get<{ tokens: EnrollmentTokenView[] }>('/enrollment/tokens')
      .then((t) => setTokens(t.tokens))
      .catch((err: unknown) => setError(errorText(err)));
    api
      .get<{ pending: EnrollmentTokenView[] }>('/enrollment/pending')
      .then((p) => setPending(p.pending))
      .catch((err: unknown) => setError(errorText(err)));
  }, [reload]);

  const create = async (e: Event): Promise<void> => {
    e.preventDefault();
    setError(null);
    try {
      const t = await api.post<{ device_id: string; token: string; expires_at: string }>('/enrollment/tokens', {
        device_id: deviceId,
        user_id: userId,
        ...(ttl ? { ttl_s: Number(ttl) } : {}),
      });
      setCreated(t);
      setDeviceId('');
      setUserId('');
      setReload(reload + 1);
    } catch (err) {
      setError(errorText(err));
    }
  };
  const revoke = async (t: EnrollmentTokenView): Promise<void> => {
    setError(null);
    try {
      await api.del(`/enrollment/tokens/${seg(t.id ?? t.device_id)}`);
      setReload(reload + 1);
    } catch (err) {
      setError(errorText(err));
    }
  };

  const allColumns: Column<EnrollmentTokenView>[] = [
    { key: 'device', label: 'Device', cell: (t) => t.device_id },
    { key: 'user', label: 'User', cell: (t) => t.user_id },
    { key: 'status', label: 'Status', cell: (t) => html`<${Badge} text=${t.status} />` },
    { key: 'created', label: 'Created', cell: (t) => when(t.created_at) },
    { key: 'expires', label: 'Expires', cell: (t) => when(t.expires_at) },
    { key: 'used', label: 'Used', cell: (t) => when(t.used_at) },
    {
      key: 'revoke',
      label: 'Revoke',
      cell: (t) =>
        t.status === 'active' || t.status === 'unused' || t.status === 'valid'
          ? html`<button type="button" class="secondary" aria-label=${`Revoke the token for ${t.device_id}`} onClick=${() => revoke(t)}>Revoke</button>`
          : '-',
    },
  ];

  // Everyone sees the tokens (never their text); only an admin creates or revokes one.
  const columns = admin ? allColumns : allColumns.filter((c) => c.key !== 'revoke');
  return html`<section aria-labelledby="enroll-title">
    <h1 id="enroll-title">Enrollment</h1>
    ${
      admin
        ? html`<form class="filters" onSubmit=${create} aria-label="Create an enrollment token">
            <span
              ><label for="e-device">Device id</label
              ><input id="e-device" required value=${deviceId} onInput=${(e: Event) => setDeviceId((e.target as HTMLInputElement).value)}
            /></span>
            <span
              ><label for="e-user">User id</label
              ><input id="e-user" required value=${userId} onInput=${(e: Event) => setUserId((e.target as HTMLInputElement).value)}
            /></span>
            <span
              ><label for="e-ttl">Valid for (s)</label
              ><input id="e-ttl" type="number" min="60" value=${ttl} onInput=${(e: Event) => setTtl((e.target as HTMLInputElement).value)}
            /></span>
            <button type="submit">Create token</button>
          </form>`
        : html`<p class="muted">Only an admin creates or revokes enrollment tokens.</p>`
    }
    <${ErrorLine} error=${error} />
    ${
      created
        ? html`<div class="once" role="status">
            <p>Token for <code>${created.device_id}</code>, valid until ${when(created.expires_at)}. It is shown once: copy it now.</p>
            <input class="token" readonly aria-label="Enrollment token" value=${created.token} />
            <button type="button" class="secondary" onClick=${() => setCreated(null)}>Done</button>
          </div>`
        : null
    }
    <h2>Tokens</h2>
    ${tokens ? html`<${Table} caption="Enrollment tokens" columns=${columns} rows=${tokens} rowKey=${(t: EnrollmentTokenView) => t.id ?? t.device_id} empty="No tokens." />` : null}
    <h2>Pending enrollments</h2>
    <p class="muted">Devices with a token issued that have not enrolled yet.</p>
    ${
      pending
        ? html`<${Table}
            caption="Pending enrollments"
            columns=${columns.filter((c) => c.key !== 'revoke' && c.key !== 'used')}
            rows=${pending}
            rowKey=${(t: EnrollmentTokenView) => `${t.device_id}:${t.created_at ?? ''}`}
            empty="None pending."
          />`
        : null
    }
  </section>`;
}
