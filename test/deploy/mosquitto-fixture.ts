/**
 * Runs mosquitto with the production configuration
 * (provisioning/mosquitto/sensor-broker.conf and its two ACL files), changed
 * only where a test must: the listeners move from 8883/8884 to free loopback
 * ports, file paths point into the test's directory, persistence is off and
 * the log goes to stderr. Started as root, mosquitto drops to its own user
 * before reading the key and the ACL, exactly as in production, so the test
 * hands those files to that user with the modes the production comments
 * document (0600 mosquitto:mosquitto).
 */
import { spawn, type ChildProcess, execFileSync } from 'node:child_process';
import { once } from 'node:events';
import { chmod, chown, copyFile, readFile, writeFile } from 'node:fs/promises';
import { createConnection, createServer } from 'node:net';
import { basename, join } from 'node:path';
import { PROVISIONING_DIR } from './repo-paths.js';
import { isRoot } from './tools.js';

export interface RunningBroker {
  /** mqtts:// URL of the device listener (production 8883). */
  deviceUrl: string;
  /** mqtts:// URL of the backend listener (production 8884). */
  backendUrl: string;
  /** Everything mosquitto logged so far. */
  log(): string;
  stop(): Promise<void>;
}

export async function freeLoopbackPort(): Promise<number> {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const address = server.address();
  server.close();
  await once(server, 'close');
  if (address === null || typeof address === 'string') throw new Error('no port');
  return address.port;
}

/** uid/gid of a local user, or undefined. */
function lookupUser(name: string): { uid: number; gid: number } | undefined {
  try {
    const line = execFileSync('getent', ['passwd', name], { encoding: 'utf8' }).trim();
    const [, , uid, gid] = line.split(':');
    return { uid: Number(uid), gid: Number(gid) };
  } catch {
    return undefined;
  }
}

/** Production listener port -> test port. */
export type PortMap = ReadonlyMap<number, number>;

/**
 * The production config with a test's ports and paths, every other line
 * unchanged: `listener N` becomes `listener <ports[N]> 127.0.0.1`, and each
 * /etc/mosquitto/... path becomes `dir/<its base name>`.
 */
export function testBrokerConfig(production: string, ports: PortMap, dir: string, options: { quietLog?: boolean } = {}): string {
  const seen = new Set<number>();
  const lines = production.split('\n').map((line) => {
    const listener = /^\s*listener\s+(\d+)\s*$/.exec(line);
    if (listener) {
      const prod = Number(listener[1]);
      const port = ports.get(prod);
      if (port === undefined) throw new Error(`no test port for production listener ${prod}`);
      seen.add(prod);
      return `listener ${port} 127.0.0.1`;
    }
    if (line.trim().startsWith('#')) return line;
    return line.replace(/\/etc\/mosquitto\/\S+/g, (path) => join(dir, basename(path)));
  });
  for (const prod of ports.keys()) {
    if (!seen.has(prod)) throw new Error(`production broker config has no 'listener ${prod}'`);
  }
  // quietLog: no per-message debug lines (a flood would otherwise pace the broker by how fast the test reads its pipe).
  const logTypes = options.quietLog ? ['log_type error', 'log_type warning', 'log_type notice', 'log_type information'] : ['log_type all'];
  return [...lines, '# test-only:', 'persistence false', 'log_dest stderr', ...logTypes, 'connection_messages true', ''].join('\n');
}

/**
 * Picks two distinct free loopback ports (the device and backend listeners)
 * and copies the production ACLs and the pki output into runDir, under the
 * names the production config uses.
 */
export async function stageBrokerFiles(pkiDir: string, runDir: string): Promise<{ devicePort: number; backendPort: number; acls: string[] }> {
  const devicePort = await freeLoopbackPort();
  let backendPort = await freeLoopbackPort();
  while (backendPort === devicePort) backendPort = await freeLoopbackPort();
  const acls = ['sensor-devices.acl', 'sensor-backend.acl'];
  for (const f of acls) await copyFile(join(PROVISIONING_DIR, 'mosquitto', f), join(runDir, f));
  // pki output -> the names the production config uses
  const installed: Array<[string, string]> = [
    ['ca.pem', 'sensor-ca.pem'],
    ['backend-ca.pem', 'sensor-backend-ca.pem'],
    ['broker.crt', 'broker.crt'],
    ['broker.key', 'broker.key'],
  ];
  for (const [from, to] of installed) await copyFile(join(pkiDir, from), join(runDir, to));
  return { devicePort, backendPort, acls };
}

/** Starts mosquitto on a free loopback port with certificates from `pkiDir`; resolves once it accepts connections. */
export async function startBroker(mosquitto: string, pkiDir: string, runDir: string, options: { quietLog?: boolean } = {}): Promise<RunningBroker> {
  const { devicePort, backendPort, acls } = await stageBrokerFiles(pkiDir, runDir);
  const ports: PortMap = new Map([
    [8883, devicePort],
    [8884, backendPort],
  ]);
  let config = testBrokerConfig(await readFile(join(PROVISIONING_DIR, 'mosquitto/sensor-broker.conf'), 'utf8'), ports, runDir, options);
  if (isRoot()) {
    const user = lookupUser('mosquitto');
    if (user === undefined) {
      config += 'user root\n'; // no mosquitto user to drop to on this machine
    } else {
      await chmod(runDir, 0o711);
      for (const f of ['broker.key', ...acls]) {
        await chown(join(runDir, f), user.uid, user.gid);
        await chmod(join(runDir, f), 0o600);
      }
      for (const f of ['sensor-ca.pem', 'sensor-backend-ca.pem', 'broker.crt']) await chmod(join(runDir, f), 0o644);
    }
  }
  const configPath = join(runDir, 'mosquitto.conf');
  await writeFile(configPath, config, { mode: 0o644 });

  const child: ChildProcess = spawn(mosquitto, ['-c', configPath], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout?.on('data', (b: Buffer) => {
    output += b.toString();
  });
  child.stderr?.on('data', (b: Buffer) => {
    output += b.toString();
  });
  let exited = false;
  child.on('exit', () => {
    exited = true;
  });

  const deadline = Date.now() + 10_000;
  for (;;) {
    if (exited) throw new Error(`mosquitto exited at start:\n${output}`);
    if ((await accepts(devicePort)) && (await accepts(backendPort))) break;
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`mosquitto did not listen on 127.0.0.1:${devicePort} and :${backendPort}:\n${output}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    deviceUrl: `mqtts://127.0.0.1:${devicePort}`,
    backendUrl: `mqtts://127.0.0.1:${backendPort}`,
    log: () => output,
    async stop() {
      if (exited) return;
      const gone = once(child, 'exit');
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 3000);
      await gone;
      clearTimeout(timer);
    },
  };
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}
