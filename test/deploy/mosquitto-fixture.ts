/**
 * Runs mosquitto with the production configuration
 * (provisioning/mosquitto/sensor-broker.conf + sensor-broker.acl), changed
 * only where a test must: the listener moves from 8883 to a free loopback
 * port, file paths point into the test's directory, persistence is off and
 * the log goes to stderr. Started as root, mosquitto drops to its own user
 * before reading the key and the ACL, exactly as in production, so the test
 * hands those files to that user with the modes the production comments
 * document (0600 mosquitto:mosquitto).
 */
import { spawn, type ChildProcess, execFileSync } from 'node:child_process';
import { once } from 'node:events';
import { chmod, chown, copyFile, readFile, writeFile } from 'node:fs/promises';
import { createConnection, createServer } from 'node:net';
import { join } from 'node:path';
import { PROVISIONING_DIR } from './repo-paths.js';
import { isRoot } from './tools.js';

export interface RunningBroker {
  port: number;
  url: string;
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

/** The production config with a test's port and paths (every other line unchanged). */
export function testBrokerConfig(production: string, port: number, dir: string): string {
  const replaced = new Set<string>();
  const paths: Record<string, string> = {
    cafile: join(dir, 'ca.pem'),
    certfile: join(dir, 'broker.crt'),
    keyfile: join(dir, 'broker.key'),
    acl_file: join(dir, 'sensor-broker.acl'),
  };
  const lines = production.split('\n').map((line) => {
    const [key] = line.trim().split(/\s+/);
    if (key === 'listener') {
      replaced.add(key);
      return `listener ${port} 127.0.0.1`;
    }
    if (key !== undefined && key in paths) {
      replaced.add(key);
      return `${key} ${paths[key]}`;
    }
    return line;
  });
  for (const key of ['listener', ...Object.keys(paths)]) {
    if (!replaced.has(key)) throw new Error(`production broker config has no '${key}' line`);
  }
  return [...lines, '# test-only:', 'persistence false', 'log_dest stderr', 'log_type all', 'connection_messages true', ''].join('\n');
}

/** Starts mosquitto on a free loopback port with certificates from `pkiDir`; resolves once it accepts connections. */
export async function startBroker(mosquitto: string, pkiDir: string, runDir: string): Promise<RunningBroker> {
  const port = await freeLoopbackPort();
  await copyFile(join(PROVISIONING_DIR, 'mosquitto/sensor-broker.acl'), join(runDir, 'sensor-broker.acl'));
  for (const f of ['ca.pem', 'broker.crt', 'broker.key']) await copyFile(join(pkiDir, f), join(runDir, f));
  let config = testBrokerConfig(await readFile(join(PROVISIONING_DIR, 'mosquitto/sensor-broker.conf'), 'utf8'), port, runDir);
  if (isRoot()) {
    const user = lookupUser('mosquitto');
    if (user === undefined) {
      config += 'user root\n'; // no mosquitto user to drop to on this machine
    } else {
      await chmod(runDir, 0o711);
      for (const f of ['broker.key', 'sensor-broker.acl']) {
        await chown(join(runDir, f), user.uid, user.gid);
        await chmod(join(runDir, f), 0o600);
      }
      for (const f of ['ca.pem', 'broker.crt']) await chmod(join(runDir, f), 0o644);
    }
  }
  const configPath = join(runDir, 'mosquitto.conf');
  await writeFile(configPath, config, { mode: 0o644 });

  const child: ChildProcess = spawn(mosquitto, ['-c', configPath], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout?.on('data', (b: Buffer) => { output += b.toString(); });
  child.stderr?.on('data', (b: Buffer) => { output += b.toString(); });
  let exited = false;
  child.on('exit', () => { exited = true; });

  const deadline = Date.now() + 10_000;
  for (;;) {
    if (exited) throw new Error(`mosquitto exited at start:\n${output}`);
    if (await accepts(port)) break;
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`mosquitto did not listen on 127.0.0.1:${port}:\n${output}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    port,
    url: `mqtts://127.0.0.1:${port}`,
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
    socket.once('connect', () => { socket.destroy(); resolve(true); });
    socket.once('error', () => resolve(false));
  });
}
