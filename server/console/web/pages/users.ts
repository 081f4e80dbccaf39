/** Operators and API tokens (admin): add, change role, disable / enable, remove; tokens created (text shown once) and revoked. */
import { html } from 'htm/preact';
import type { VNode } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { api, errorText, seg } from '../api.js';
import { ErrorLine } from '../components/error.js';
import { Table, type Column } from '../components/table.js';
import { when } from '../format.js';
import { can } from '../roles.js';
import type { ApiTokenView, OperatorView, Role } from '../types.js';

const ROLES: Role[] = ['viewer', 'operator', 'admin'];

export function UsersPage({ role, self }: { role: Role; self: string }): VNode {
  const [ops, setOps] = useState<OperatorView[] | null>(null);
  const [tokens, setTokens] = useState<ApiTokenView[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [reload, setReload] = useState(0);
  const [form, setForm] = useState({ name: '', role: 'viewer' as Role, password: '' });
  const [tokenForm, setTokenForm] = useState({ operator: self, label: '' });
  const [newToken, setNewToken] = useState<string | null>(null);

  useEffect(() => {
    if (!can(role, 'admin')) return;
    api
      .get<{ operators: OperatorView[] }>('/operators')
      .then((o) => setOps(o.operators))
      .catch((err: unknown) => setError(errorText(err)));
    api
      .get<{ tokens: ApiTokenView[] }>('/api-tokens')
      .then((t) => setTokens(t.tokens))
      .catch((err: unknown) => setError(errorText(err)));
  }, [reload]);

  if (!can(role, 'admin'))
    return html`<section>
      <h1>Users</h1>
      <p>Only an admin manages users.</p>
    </section>`;

  const act = async (fn: () => Promise<unknown>): Promise<void> => {
    setError(null);
    try {
      await fn();
      setReload((n) => n + 1);
    } catch (err) {
      setError(errorText(err));
    }
  };
  const add = (e: Event): void => {
    e.preventDefault();
    void act(async () => {
      await api.post('/operators', form);
      setForm({ name: '', role: 'viewer', password: '' });
    });
  };
  const addToken = (e: Event): void => {
    e.preventDefault();
    void act(async () => {
      const t = await api.post<{ token: string }>('/api-tokens', tokenForm);
      setNewToken(t.token);
    });
  };

  const opColumns: Column<OperatorView>[] = [
    { key: 'name', label: 'Name', cell: (o) => o.name },
    {
      key: 'role',
      label: 'Role',
      cell: (o) =>
        html`<select
          aria-label=${`Role of ${o.name}`}
          value=${o.role}
          onChange=${(e: Event) => act(() => api.patch(`/operators/${seg(o.name)}`, { role: (e.target as HTMLSelectElement).value }))}
        >
          ${ROLES.map((r) => html`<option value=${r}>${r}</option>`)}
        </select>`,
    },
    { key: 'state', label: 'State', cell: (o) => (o.disabled ? 'disabled' : 'enabled') },
    { key: 'created', label: 'Created', cell: (o) => when(o.created_at ?? null) },
    {
      key: 'do',
      label: 'Actions',
      cell: (o) =>
        html`<span class="cell-actions"
          ><button type="button" class="secondary" onClick=${() => act(() => api.patch(`/operators/${seg(o.name)}`, { disabled: !o.disabled }))}>
            ${o.disabled ? 'Enable' : 'Disable'}
          </button>
          <button type="button" class="danger" disabled=${o.name === self} onClick=${() => act(() => api.del(`/operators/${seg(o.name)}`))}>
            Remove
          </button></span
        >`,
    },
  ];
  const tokenColumns: Column<ApiTokenView>[] = [
    { key: 'id', label: 'Id', cell: (t) => html`<code>${t.id}</code>` },
    { key: 'op', label: 'Operator', cell: (t) => t.operator },
    { key: 'label', label: 'Label', cell: (t) => t.label },
    { key: 'expires', label: 'Expires', cell: (t) => when(t.expires_at ?? null) },
    { key: 'used', label: 'Last used', cell: (t) => when(t.last_used_at ?? null) },
    {
      key: 'do',
      label: 'Revoke',
      cell: (t) => html`<button type="button" class="secondary" onClick=${() => act(() => api.del(`/api-tokens/${seg(t.id)}`))}>Revoke</button>`,
    },
  ];

  return html`<section aria-labelledby="users-title">
    <h1 id="users-title">Users</h1>
    <${ErrorLine} error=${error} />
    <h2>Operators</h2>
    ${ops ? html`<${Table} caption="Operators" columns=${opColumns} rows=${ops} rowKey=${(o: OperatorView) => o.name} />` : null}
    <form class="filters" onSubmit=${add} aria-label="Add an operator">
      <span
        ><label for="u-name">Name</label
        ><input id="u-name" required value=${form.name} onInput=${(e: Event) => setForm({ ...form, name: (e.target as HTMLInputElement).value })}
      /></span>
      <span
        ><label for="u-role">Role</label
        ><select id="u-role" value=${form.role} onChange=${(e: Event) => setForm({ ...form, role: (e.target as HTMLSelectElement).value as Role })}>
          ${ROLES.map((r) => html`<option value=${r}>${r}</option>`)}
        </select></span
      >
      <span
        ><label for="u-password">Password</label
        ><input
          id="u-password"
          type="password"
          autocomplete="new-password"
          required
          value=${form.password}
          onInput=${(e: Event) => setForm({ ...form, password: (e.target as HTMLInputElement).value })}
      /></span>
      <button type="submit">Add operator</button>
    </form>
    <h2>API tokens</h2>
    ${tokens ? html`<${Table} caption="API tokens" columns=${tokenColumns} rows=${tokens} rowKey=${(t: ApiTokenView) => t.id} empty="No API tokens." />` : null}
    <form class="filters" onSubmit=${addToken} aria-label="Create an API token">
      <span
        ><label for="t-op">Operator</label
        ><input
          id="t-op"
          required
          value=${tokenForm.operator}
          onInput=${(e: Event) => setTokenForm({ ...tokenForm, operator: (e.target as HTMLInputElement).value })}
      /></span>
      <span
        ><label for="t-label">Label</label
        ><input
          id="t-label"
          required
          value=${tokenForm.label}
          onInput=${(e: Event) => setTokenForm({ ...tokenForm, label: (e.target as HTMLInputElement).value })}
      /></span>
      <button type="submit">Create token</button>
    </form>
    ${
      newToken
        ? html`<div class="once" role="status">
            <p>The token is shown once: copy it now.</p>
            <input class="token" readonly aria-label="API token" value=${newToken} /><button type="button" class="secondary" onClick=${() => setNewToken(null)}>
              Done
            </button>
          </div>`
        : null
    }
  </section>`;
}
