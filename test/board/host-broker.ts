/**
 * mosquitto with the production configuration on the host, for the emulated
 * board: test/deploy/mosquitto-fixture.ts's rewrite of
 * provisioning/mosquitto/sensor-broker.conf (free loopback ports instead of
 * 8883/8884, files in the run's directory, key and ACLs mosquitto:mosquitto
 * 0600), but kept on the same ports across stop() and start(), since the
 * board's bundle names its broker's port.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmod, chown, readFile, writeFile } from 'node:fs/promises';
import { createConnection } from 'node:net';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { stageBrokerFiles, testBrokerConfig } from '../deploy/mosquitto-fixture.js';
import { PROVISIONING_DIR } from '../deploy/repo-paths.js';
import { findTool } from '../deploy/tools.js';
import { BoardSetupError } from './host-tools.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

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

export class HostBroker {
  private child: ChildProcess | undefined;
  private output = '';
  private readonly listeners: Array<(line: string, at: number) => void> = [];

  private constructor(
    readonly configPath: string,
    readonly devicePort: number,
    readonly backendPort: number,
  ) {}

  get deviceUrl(): string {
    return `mqtts://127.0.0.1:${this.devicePort}`;
  }
  get backendUrl(): string {
    return `mqtts://127.0.0.1:${this.backendPort}`;
  }

  /** Writes the configuration (production file, test ports and paths) into runDir. */
  static async prepare(pkiDir: string, runDir: string): Promise<HostBroker> {
    const { devicePort, backendPort, acls } = await stageBrokerFiles(pkiDir, runDir);
    const production = await readFile(join(PROVISIONING_DIR, 'mosquitto/sensor-broker.conf'), 'utf8');
    const config = testBrokerConfig(
      production,
      new Map([
        [8883, devicePort],
        [8884, backendPort],
      ]),
      runDir,
    );
    const passwd = execFileSync('getent', ['passwd', 'mosquitto'], { encoding: 'utf8' }).trim().split(':');
    const uid = Number(passwd[2]);
    const gid = Number(passwd[3]);
    await chmod(runDir, 0o711);
    for (const f of ['broker.key', ...acls]) {
      await chown(join(runDir, f), uid, gid);
      await chmod(join(runDir, f), 0o600);
    }
    for (const f of ['sensor-ca.pem', 'sensor-backend-ca.pem', 'broker.crt']) await chmod(join(runDir, f), 0o644);
    const configPath = join(runDir, 'mosquitto.conf');
    await writeFile(configPath, config, { mode: 0o644 });
    return new HostBroker(configPath, devicePort, backendPort);
  }

  /** Called with every line mosquitto logs and the moment it arrived (performance.now()). */
  onLine(listener: (line: string, at: number) => void): void {
    this.listeners.push(listener);
  }

  log(): string {
    return this.output;
  }

  get running(): boolean {
    return this.child !== undefined;
  }

  async start(): Promise<void> {
    if (this.child !== undefined) return;
    const bin = findTool('mosquitto');
    if (bin === undefined) throw new BoardSetupError('E_BOARD_TOOL', 'mosquitto is missing; fix with: apt-get install -y mosquitto');
    const child = spawn(bin, ['-c', this.configPath], { stdio: ['ignore', 'pipe', 'pipe'] });
    let partial = '';
    const take = (b: Buffer): void => {
      const at = performance.now();
      const text = partial + b.toString();
      this.output += b.toString();
      const lines = text.split('\n');
      partial = lines.pop() ?? '';
      for (const line of lines) for (const l of this.listeners) l(line, at);
    };
    child.stdout.on('data', take);
    child.stderr.on('data', take);
    let exited = false;
    child.once('exit', () => {
      exited = true;
      if (this.child === child) this.child = undefined;
    });
    this.child = child;
    const deadline = Date.now() + 15_000;
    while (!((await accepts(this.devicePort)) && (await accepts(this.backendPort)))) {
      if (exited) throw new BoardSetupError('E_BOARD_BOOT', `mosquitto exited at start:\n${this.output.slice(-3000)}`);
      if (Date.now() > deadline)
        throw new BoardSetupError('E_BOARD_BOOT', `mosquitto did not listen on ${this.devicePort}/${this.backendPort}:\n${this.output.slice(-3000)}`);
      await sleep(50);
    }
  }

  async stop(): Promise<void> {
    const child = this.child;
    if (child === undefined) return;
    const gone = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
    await gone;
    clearTimeout(timer);
    this.child = undefined;
  }
}
