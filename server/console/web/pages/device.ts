/**
 * One device: what it reported (state, settings digest, keys, self-test), its presence history and its commands;
 * an operator sends update / selftest / rotate / delete after a confirmation naming the device (delete: the id typed).
 */
import { html } from 'htm/preact';
import type { VNode } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { api, errorText, seg } from '../api.js';
import { Badge } from '../components/badge.js';
import { Dialog } from '../components/dialog.js';
import { ErrorLine, Notice } from '../components/error.js';
import { Table, type Column } from '../components/table.js';
import { ago, when } from '../format.js';
import { can } from '../roles.js';
import type { CommandView, DeviceView, Role } from '../types.js';

type PresenceEntry = Record<string, unknown>;

const COMMAND_COLUMNS: Column<CommandView>[] = [
  { key: 'action', label: 'Action', cell: (c) => c.action },
  { key: 'status', label: 'Status', cell: (c) => html`<${Badge} text=${c.status} />` },
  { key: 'code', label: 'Code', cell: (c) => c.code ?? '-' },
  { key: 'created', label: 'Created', cell: (c) => when(c.created_at) },
  { key: 'sent', label: 'Sent', cell: (c) => when(c.sent_at) },
  { key: 'acked', label: 'Acked', cell: (c) => when(c.acked_at) },
  { key: 'jti', label: 'Command id', cell: (c) => html`<code>${c.jti}</code>` },
];

const SEND_ACTIONS = ['selftest', 'update', 'rotate', 'delete'] as const;
type SendAction = (typeof SEND_ACTIONS)[number];

export function DevicePage({ id, role }: { id: string; role: Role }): VNode {
  const [device, setDevice] = useState<DeviceView | null>(null);
  const [commands, setCommands] = useState<CommandView[] | null>(null);
  const [presence, setPresence] = useState<PresenceEntry[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [notice, setNotice] = useState<string | null>(null);
  const [sending, setSending] = useState<SendAction | null>(null);
  const [reload, setReload] = useState(0);

  useEffect(() => {
    let live = true;
    const path = `/devices/${seg(id)}`;
    api
      .get<DeviceView>(path)
      .then((d) => live && setDevice(d))
      .catch((err: unknown) => live && setError(errorText(err)));
    api
      .get<{ commands: CommandView[] }>(`${path}/commands`, { limit: 50 })
      .then((c) => live && setCommands(c.commands))
      .catch(() => live && setCommands([]));
    api
      .get<Record<string, unknown>>(`${path}/presence`, { limit: 50 })
      .then((p) => {
        const list = Array.isArray(p.changes) ? p.changes : Object.values(p).find(Array.isArray);
        if (live) setPresence((list as PresenceEntry[] | undefined) ?? []);
      })
      .catch(() => live && setPresence([]));
    return () => void (live = false);
  }, [id, reload]);

  if (!device)
    return html`<section>
      <h1>Device <code>${id}</code></h1>
      <${ErrorLine} error=${error} />${error ? null : html`<p aria-busy="true">Loading…</p>`}
    </section>`;
  const r = device.reported;
  const operator = can(role, 'operator');

  return html`<section aria-labelledby="device-title">
    <p><a href="#/devices">← Fleet</a></p>
    <h1 id="device-title">Device <code>${device.id}</code></h1>
    <${ErrorLine} error=${error} />
    <${Notice} text=${notice} />
    ${
      operator
        ? html`<div class="actions" role="group" aria-label="Send a command">
            ${SEND_ACTIONS.map(
              (a) =>
                html`<button type="button" class=${a === 'delete' ? 'danger' : ''} onClick=${() => setSending(a)} disabled=${device.state === 'decommissioned'}>
                  Send ${a}…
                </button>`,
            )}
          </div>`
        : html`<p class="muted">Your role (viewer) can look but not send commands.</p>`
    }
    <div class="grid">
      <dl class="facts">
        <dt>User</dt>
        <dd>${device.user_id ?? '-'}</dd>
        <dt>State</dt>
        <dd>${device.state}</dd>
        <dt>Presence</dt>
        <dd><${Badge} text=${device.presence} /> last seen ${ago(device.last_seen_at)} (${when(device.last_seen_at)})</dd>
        <dt>Agent version</dt>
        <dd>${device.version ?? '-'}${device.arch ? ` (${device.arch})` : ''}</dd>
        <dt>Tags</dt>
        <dd><span class="tags">${device.tags.map((t) => html`<span class="tag">${t}</span>`)}</span>${device.tags.length ? null : '-'}</dd>
        <dt>Flag</dt>
        <dd>${device.security_flag ? html`<span class="badge bad">${device.security_flag.event}</span> ${when(device.security_flag.at)}` : 'none'}</dd>
        <dt>Enrolled</dt>
        <dd>${when(device.enrolled_at)}</dd>
      </dl>
      <dl class="facts" aria-label="Reported state">
        <dt>Last report</dt>
        <dd>${r ? r.reason : 'never reported'}</dd>
        <dt>Settings digest</dt>
        <dd><code>${r?.settings_digest ?? '-'}</code></dd>
        <dt>Node</dt>
        <dd>${r?.node_version ?? '-'}</dd>
        <dt>Uptime</dt>
        <dd>${r?.uptime_s != null ? `${r.uptime_s} s` : '-'}</dd>
        <dt>Last self-test</dt>
        <dd>${selftestText(r, commands)}</dd>
        <dt>Reported key ids</dt>
        <dd>
          <code>${r ? `${r.kids.sig ?? '-'} / ${r.kids.enc ?? '-'}` : '-'}</code
          >${r && !r.kids_match ? html` <span class="badge warn">differ from registered</span>` : null}
        </dd>
      </dl>
    </div>
    <h2>Keys</h2>
    <${Table}
      caption="Keys"
      columns=${[
        { key: 'kid', label: 'Key id', cell: (k: DeviceView['keys'][number]) => html`<code>${k.kid}</code>` },
        { key: 'use', label: 'Use', cell: (k: DeviceView['keys'][number]) => k.use },
        { key: 'alg', label: 'Alg', cell: (k: DeviceView['keys'][number]) => k.alg },
        { key: 'status', label: 'Status', cell: (k: DeviceView['keys'][number]) => k.status },
        { key: 'added', label: 'Added', cell: (k: DeviceView['keys'][number]) => when(k.added_at) },
      ]}
      rows=${device.keys}
      rowKey=${(k: DeviceView['keys'][number]) => k.kid + k.use}
      empty="No keys registered."
    />
    <h2>Commands</h2>
    <${Table}
      caption="Commands"
      columns=${COMMAND_COLUMNS}
      rows=${commands ?? []}
      rowKey=${(c: CommandView) => c.jti}
      empty=${commands ? 'No commands yet.' : 'Loading…'}
    />
    <h2>Presence history</h2>
    <${Table}
      caption="Presence history"
      columns=${[
        { key: 'state', label: 'Change', cell: (p: PresenceEntry) => presenceWord(p) },
        { key: 'at', label: 'At', cell: (p: PresenceEntry) => when(typeof p.at === 'string' ? p.at : null) },
        { key: 'reason', label: 'Reason', cell: (p: PresenceEntry) => (typeof p.reason === 'string' ? p.reason : '-') },
      ]}
      rows=${presence ?? []}
      rowKey=${(p: PresenceEntry) => `${String(p.at)}${presenceWord(p)}`}
      empty=${presence ? 'No presence changes recorded.' : 'Loading…'}
    />
    ${
      sending
        ? html`<${SendDialog}
            device=${device}
            action=${sending}
            onClose=${() => setSending(null)}
            onSent=${(jti: string) => {
              setSending(null);
              setNotice(`Sent ${sending} to ${device.id}: command ${jti}.`);
              setReload(reload + 1);
            }}
          />`
        : null
    }
  </section>`;
}

/** The board's own report of its last self-test, else the last selftest command's outcome. */
function selftestText(r: DeviceView['reported'], commands: CommandView[] | null): string {
  if (r?.selftest) return `${r.selftest.ok ? 'passed' : 'failed'} ${when(r.selftest.at)} (reported)`;
  const c = commands?.find((x) => x.action === 'selftest');
  if (!c) return 'none';
  return `selftest command ${c.status}${c.code ? ` (${c.code})` : ''} ${when(c.acked_at ?? c.created_at)}`;
}

function presenceWord(p: PresenceEntry): string {
  const v = p.presence ?? p.state ?? p.online ?? p.event;
  return typeof v === 'boolean' ? (v ? 'online' : 'offline') : String(v ?? '-');
}

function SendDialog({
  device,
  action,
  onClose,
  onSent,
}: {
  device: DeviceView;
  action: SendAction;
  onClose: () => void;
  onSent: (jti: string) => void;
}): VNode {
  const [typed, setTyped] = useState('');
  const [params, setParams] = useState('{}');
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const ok = action !== 'delete' || typed === device.id;

  const send = async (e: Event): Promise<void> => {
    e.preventDefault();
    if (!ok) return;
    setBusy(true);
    setError(null);
    try {
      let p: unknown = {};
      if (action === 'update') {
        try {
          p = JSON.parse(params);
        } catch {
          throw new Error('params: not valid JSON');
        }
      }
      const res = await api.post<{ jti: string }>(`/devices/${seg(device.id)}/commands`, { action, params: p });
      onSent(res.jti);
    } catch (err) {
      setError(err instanceof Error && err.name === 'Error' ? `E_INPUT: ${err.message}` : errorText(err));
    } finally {
      setBusy(false);
    }
  };

  return html`<${Dialog} title=${`Send ${action} to ${device.id}`} onClose=${onClose}>
    <form class="stack" onSubmit=${send}>
      <p>This seals and sends <strong>${action}</strong> to device <code class="target">${device.id}</code>${device.user_id ? ` (user ${device.user_id})` : ''}.</p>
      ${
        action === 'update'
          ? html`<label for="send-params">Settings (JSON)</label
              ><textarea id="send-params" rows="4" value=${params} onInput=${(e: Event) => setParams((e.target as HTMLTextAreaElement).value)}></textarea>`
          : null
      }
      ${
        action === 'delete'
          ? html`<label for="send-confirm">Type the device id to confirm</label
              ><input id="send-confirm" autocomplete="off" value=${typed} onInput=${(e: Event) => setTyped((e.target as HTMLInputElement).value)} />`
          : null
      }
      <${ErrorLine} error=${error} />
      <div class="actions">
        <button type="submit" class=${action === 'delete' ? 'danger' : ''} disabled=${busy || !ok}>Send ${action}</button>
        <button type="button" class="secondary" onClick=${onClose}>Cancel</button>
      </div>
    </form>
  </${Dialog}>`;
}
