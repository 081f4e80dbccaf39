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

  const admin = can(role, 'admin');
  useEffect(() => {
    api
      .get<{ operators: OperatorView[] }>('/operators')
      .then((o) => setOps(o.operators))
      .catch((err: unknown) => setError(errorText(err)));
    api
      .get<{ tokens: ApiTokenView[] }>('/api-tokens')
      .then((t) => setTokens(t.tokens))
      .catch((err: unknown) => setError(errorText(err)));
  }, [reload]);

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

  const allOpColumns: Column<OperatorView>[] = [
    { key: 'name', label: 'Name', cell: (o) => o.name },
    {
      key: 'role',
      label: 'Role',
      cell: (o) =>
        !admin
          ? o.role
          : html`<select
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
  const allTokenColumns: Column<ApiTokenView>[] = [
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

  // Everyone sees the operators and the tokens (never their text); only an admin changes them.
  const opColumns = admin ? allOpColumns : allOpColumns.filter((c) => c.key !== 'do');
  const tokenColumns = admin ? allTokenColumns : allTokenColumns.filter((c) => c.key !== 'do');
  return html`<section aria-labelledby="users-title">
    <h1 id="users-title">Users</h1>
    <${ErrorLine} error=${error} />
    <h2>Operators</h2>
    ${ops ? html`<${Table} caption="Operators" columns=${opColumns} rows=${ops} rowKey=${(o: OperatorView) => o.name} />` : null}
    ${
      admin
        ? html`<form class="filters" onSubmit=${add} aria-label="Add an operator">
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
          </form>`
        : html`<p class="muted">Only an admin adds, changes or removes operators and API tokens.</p>`
    }
    <h2>API tokens</h2>
    ${tokens ? html`<${Table} caption="API tokens" columns=${tokenColumns} rows=${tokens} rowKey=${(t: ApiTokenView) => t.id} empty="No API tokens." />` : null}
    ${
      admin
        ? html`<form class="filters" onSubmit=${addToken} aria-label="Create an API token">
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
          </form>`
        : null
    }
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
