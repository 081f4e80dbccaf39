/**
 * `provision-server` as a process, as someone coming from the seed types it:
 * `update DEVICE USER` re-binds, numeric user ids work on every path; and
 * every input is checked before anything happens (no seq burned, no broker
 * contacted, no directory left behind), with the exit statuses of
 * docs/SERVER.md (2 for bad usage and missing files).
 */
import { expect } from 'chai';
import { generateKeyPairSync } from 'node:crypto';
import { mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import {
  KeyRing,
  TRUSTED_CLOCK,
  generateEncryptionKey,
  generateSigningKey,
  openCommand,
  toJwkSet,
  toPublicJwk,
  type PrivateJwk,
} from '../../protocol/index.js';
import { openSqliteStorage } from '../../server/storage/sqlite/index.js';
import { runServerCli, useInitializedDataDir } from './run-cli.js';
import { makeSimDevice, SimFleet } from './sim-fleet.js';

/** A port nothing listens on: bound, then closed. */
async function deadPort(): Promise<number> {
  const srv: Server = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  const port = (srv.address() as { port: number }).port;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

async function missing(path: string): Promise<boolean> {
  return stat(path).then(
    () => false,
    () => true,
  );
}

describe('provision-server CLI: seed usage, checks before action, exit statuses', function () {
  this.timeout(90_000);
  const ctx = useInitializedDataDir('provision-checks-');

  describe("the seed's usage", () => {
    it('send DEVICE update --user OTHER --wait re-binds the device (the seed: update sal01 1); --set user_id=8 takes a numeric id', async () => {
      const storage = openSqliteStorage(join(ctx.data, 'registry.sqlite'));
      const trust = JSON.parse(await readFile(join(ctx.data, 'keys', 'trust.jwks'), 'utf8'));
      const fleet = await SimFleet.connect(ctx.broker.url, { trust });
      try {
        const d = fleet.add(await makeSimDevice('sal01'));
        await storage.devices.add({
          id: 'sal01',
          userId: '7',
          origin: 'jwks',
          signing: toPublicJwk(d.signing),
          encryption: toPublicJwk(d.encryption),
          state: 'provisioned',
        });

        const r = await runServerCli(['send', 'sal01', 'update', '--user', '1', '--wait', '--timeout', '10s', '--data', ctx.data]);
        expect(r.code, r.stderr).to.equal(0);
        expect(JSON.parse(r.stdout)).to.include({ device_id: 'sal01', action: 'update', status: 'applied' });
        expect(d.applied[0]?.params).to.deep.equal({ user_id: '1' });
        expect((await storage.devices.require('sal01')).userId).to.equal('1');

        const set = await runServerCli(['send', 'sal01', 'update', '--set', 'user_id=8', '--wait', '--timeout', '10s', '--data', ctx.data]);
        expect(set.code, set.stderr).to.equal(0);
        expect(d.applied[1]?.params).to.deep.equal({ user_id: '8' });
        expect((await storage.devices.require('sal01')).userId).to.equal('8');

        // The device's own user and nothing else to change: still refused, and nothing is sealed.
        const seqBefore = (await storage.devices.require('sal01')).nextSeq;
        const same = await runServerCli(['send', 'sal01', 'update', '--user', '8', '--data', ctx.data]);
        expect(same.code).to.equal(1);
        expect(same.stderr).to.match(/E_PARAMS: params: update needs at least one setting/);
        // Two different new users at once is a usage error.
        const both = await runServerCli(['send', 'sal01', 'update', '--user', '2', '--set', 'user_id=3', '--data', ctx.data]);
        expect(both.code).to.equal(2);
        expect(both.stderr).to.match(/E_USAGE: the user 2 and params.user_id 3 disagree/);
        expect((await storage.devices.require('sal01')).nextSeq).to.equal(seqBefore);
      } finally {
        await fleet.close();
        await storage.close();
      }
    });

    it('import-legacy takes numeric user directories (the seed: user_keys/1/sal02_public.pem) as user ids', async () => {
      const root = join(ctx.dir, 'seed');
      await mkdir(join(root, 'user_keys', '1'), { recursive: true });
      const pem = generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey.export({ type: 'spki', format: 'pem' }) as string;
      await writeFile(join(root, 'user_keys', '1', 'sal02_public.pem'), pem);
      const r = await runServerCli(['import-legacy', root, '--data', ctx.data]);
      expect(r.code, r.stderr).to.equal(0);
      const storage = openSqliteStorage(join(ctx.data, 'registry.sqlite'));
      try {
        expect(await storage.devices.require('sal02')).to.include({ userId: '1', origin: 'legacy' });
      } finally {
        await storage.close();
      }
      const list = await runServerCli(['device', 'list', '--user', '1', '--json', '--data', ctx.data]);
      expect(list.code, list.stderr).to.equal(0);
      expect(list.stdout).to.include('sal02');
    });
  });

  describe('seal: one duration syntax, no seq burned by a refusal', () => {
    let keys: string;
    let jwks: string;
    let device: { signing: PrivateJwk; encryption: PrivateJwk };

    before(async () => {
      keys = join(ctx.dir, 'srv');
      expect((await runServerCli(['keys', 'init', '--dir', keys])).code).to.equal(0);
      device = { signing: await generateSigningKey(), encryption: await generateEncryptionKey() };
      jwks = join(ctx.dir, 'dev.jwks');
      await writeFile(jwks, JSON.stringify(toJwkSet([toPublicJwk(device.signing), toPublicJwk(device.encryption)])));
    });

    const open = async (token: string) => {
      const trust = JSON.parse(await readFile(join(keys, 'trust.jwks'), 'utf8')) as { keys: { use: string }[] };
      const pinned = trust.keys.filter((k) => k.use === 'sig');
      return openCommand(token.trim(), {
        deviceId: 'seal-1',
        decryption: await KeyRing.create([device.encryption]),
        verification: await KeyRing.create(pinned as never),
        clock: TRUSTED_CLOCK,
      });
    };
    const seal = (...extra: string[]) => runServerCli(['seal', '--keys', keys, '--device', 'seal-1', '--device-jwks', jwks, '--action', 'update', ...extra]);

    it('refused --params and --ttl take no seq: the next accepted command is seq 1', async () => {
      const badParams = await seal('--params', '{"sensor":{"enabled":"yes"}}');
      expect(badParams.code).to.equal(1);
      expect(badParams.stderr).to.match(/E_PARAMS/);
      const badJson = await seal('--params', '{');
      expect(badJson.code).to.equal(2);
      const longTtl = await seal('--params', '{"sensor":{"enabled":true}}', '--ttl', '8d');
      expect(longTtl.code).to.equal(2);
      expect(longTtl.stderr).to.match(/E_USAGE: --ttl "8d" is longer than a command may live \(at most 7d\)/);
      const notTtl = await seal('--params', '{"sensor":{"enabled":true}}', '--ttl', 'soon');
      expect(notTtl.code).to.equal(2);
      expect(notTtl.stderr).to.include('--ttl "soon" is not a duration like 90 (seconds), 30s, 15m, 24h or 7d');
      expect(await missing(join(keys, 'seq', 'seal-1'))).to.equal(true);

      const ok = await seal('--params', '{"sensor":{"enabled":true}}');
      expect(ok.code, ok.stderr).to.equal(0);
      expect((await open(ok.stdout)).claims.seq).to.equal(1);
    });

    it('--ttl takes 5m, 24h and plain seconds, as send, token and bundle do', async () => {
      for (const [ttl, seconds] of [
        ['5m', 300],
        ['24h', 86_400],
        ['90', 90],
      ] as const) {
        const r = await seal('--params', '{"sensor":{"enabled":true}}', '--ttl', ttl);
        expect(r.code, r.stderr).to.equal(0);
        const { claims } = await open(r.stdout);
        expect(claims.exp - claims.iat, ttl).to.equal(seconds);
      }
    });

    it('an invalid --device is bad usage (exit 2) and takes no seq', async () => {
      const r = await runServerCli(['seal', '--keys', keys, '--device', 'sensor 1/x', '--device-jwks', jwks, '--action', 'selftest']);
      expect(r.code).to.equal(2);
      expect(r.stderr).to.match(/^provision-server: E_USAGE: --device "sensor 1\/x" is not a device id/);
      expect(r.stderr).to.include("Run 'provision-server seal --help' for usage.");
    });
  });

  describe('nothing is contacted or created before the input is checked', () => {
    let offline: string;

    before(async () => {
      // A data directory whose recorded broker is down.
      offline = join(ctx.dir, 'offline');
      const r = await runServerCli(['init', '--data', offline, '--broker', `mqtt://127.0.0.1:${await deadPort()}`]);
      expect(r.code, r.stderr).to.equal(0);
      const dev = await makeSimDevice('off-1');
      const storage = openSqliteStorage(join(offline, 'registry.sqlite'));
      await storage.devices.add({ id: 'off-1', userId: 'alice', origin: 'jwks', signing: toPublicJwk(dev.signing), encryption: toPublicJwk(dev.encryption) });
      await storage.close();
    });

    it('send with bad params reports E_PARAMS, not the unreachable broker, and records nothing', async () => {
      for (const args of [
        ['--params', '{"sensor":{"enabled":"yes"}}'],
        ['--set', 'gpio.status_led=99'],
      ]) {
        const r = await runServerCli(['send', 'off-1', 'update', ...args, '--data', offline]);
        expect(r.code, r.stderr).to.equal(1);
        expect(r.stderr).to.match(/^provision-server: E_PARAMS: /);
        expect(r.stderr).to.not.match(/E_BROKER/);
      }
      const fanout = await runServerCli(['send', '--all', 'update', '--params', '{"nope":1}', '--data', offline]);
      expect(fanout.code).to.equal(1);
      expect(fanout.stderr).to.match(/E_PARAMS/);
      const storage = openSqliteStorage(join(offline, 'registry.sqlite'));
      try {
        expect(await storage.commands.list({ deviceId: 'off-1' })).to.have.length(0);
        expect((await storage.devices.require('off-1')).nextSeq).to.equal(1);
      } finally {
        await storage.close();
      }
    });

    it('serve --http-token-file /nonexistent fails (exit 2) before it connects anywhere', async () => {
      const r = await runServerCli(['serve', '--data', offline, '--http', '0', '--http-token-file', join(ctx.dir, 'nonexistent')]);
      expect(r.code).to.equal(2);
      expect(r.stderr).to.match(/^provision-server: E_NO_FILE: HTTP token file .*nonexistent does not exist/);
      expect(r.stderr).to.not.match(/E_BROKER/);
    });

    it('serve --http 99999 says a bare port is allowed', async () => {
      const r = await runServerCli(['serve', '--data', offline, '--http', '99999']);
      expect(r.code).to.equal(2);
      expect(r.stderr).to.include('--http "99999" names port 99999, above 65535: give a port (127.0.0.1 is assumed) or host:port');
    });

    it('bundle --client-cert without --client-key (or with a missing file) exits 2 and leaves no --out', async () => {
      const cert = join(ctx.dir, 'client.crt');
      await writeFile(cert, '-----BEGIN CERTIFICATE-----\n');
      const out = join(ctx.dir, 'bundle-a');
      const r = await runServerCli(['bundle', '--data', ctx.data, '--device', 'bun-1', '--user', '1', '--out', out, '--client-cert', cert]);
      expect(r.code).to.equal(2);
      expect(r.stderr).to.match(/E_USAGE: --client-cert and --client-key go together/);
      expect(await missing(out)).to.equal(true);
      const r2 = await runServerCli([
        'bundle',
        '--data',
        ctx.data,
        '--device',
        'bun-1',
        '--user',
        '1',
        '--out',
        out,
        '--client-cert',
        cert,
        '--client-key',
        join(ctx.dir, 'absent.key'),
      ]);
      expect(r2.code).to.equal(2);
      expect(r2.stderr).to.match(/E_NO_FILE/);
      expect(await missing(out)).to.equal(true);
      const storage = openSqliteStorage(join(ctx.data, 'registry.sqlite'));
      try {
        expect(storage.db.prepare("SELECT count(*) AS n FROM enrollment_tokens WHERE device_id = 'bun-1'").get()).to.deep.equal({ n: 0 });
      } finally {
        await storage.close();
      }
    });

    it('keys init --dir FILE and init --data FILE say so (exit 2), not E_INTERNAL; under /proc they refuse at once', async () => {
      const file = join(ctx.dir, 'a-file');
      await writeFile(file, 'x');
      for (const args of [
        ['keys', 'init', '--dir', file],
        ['init', '--data', file],
        ['keys', 'init', '--dir', join(file, 'sub')],
      ]) {
        const r = await runServerCli(args);
        expect(r.code, args.join(' ')).to.equal(2);
        expect(r.stderr).to.include(`provision-server: E_NOT_DIR: ${file} is a file, not a directory`);
      }
      expect(await readFile(file, 'utf8')).to.equal('x');
      const proc = await runServerCli(['keys', 'init', '--dir', '/proc/provision-server-test/keys'], { timeoutMs: 10_000 });
      expect(proc.code, proc.stderr).to.equal(2);
      expect(proc.stderr).to.match(/E_NO_FILE: cannot create directory \/proc\/provision-server-test/);
    });

    it('token create, send and device show refuse an invalid device id as bad usage (exit 2)', async () => {
      const t = await runServerCli(['token', 'create', '--data', ctx.data, '--device', 'sensor 1/x', '--user', '1']);
      expect(t.code).to.equal(2);
      expect(t.stderr).to.match(/E_USAGE: --device "sensor 1\/x" is not a device id/);
      expect(t.stderr).to.include("Run 'provision-server token create --help' for usage.");
      const send = await runServerCli(['send', 'sensor 1/x', 'selftest', '--data', ctx.data]);
      expect(send.code).to.equal(2);
      expect(send.stderr).to.match(/E_USAGE: DEVICE "sensor 1\/x" is not a device id/);
      const show = await runServerCli(['device', 'show', 'sensor 1/x', '--data', ctx.data]);
      expect(show.code).to.equal(2);
    });
  });

  it("usage errors point at the subcommand's --help", async () => {
    const cases: [string[], string][] = [
      [['keys', 'init'], 'provision-server keys init --help'],
      [['send', '--data', ctx.data], 'provision-server send --help'],
      [['device', 'add', '--data', ctx.data], 'provision-server device add --help'],
      [['frobnicate'], 'provision-server --help'],
    ];
    for (const [args, help] of cases) {
      const r = await runServerCli(args);
      expect(r.code, args.join(' ')).to.equal(2);
      expect(r.stderr, args.join(' ')).to.match(/^provision-server: E_USAGE: /);
      expect(r.stderr, args.join(' ')).to.include(`Run '${help}' for usage.`);
    }
  });

  it('help examples are whole command lines (never wrapped mid-command) and --log-level is described', async () => {
    for (const command of [['init'], ['send'], ['seal'], ['bundle']]) {
      const help = (await runServerCli([...command, '--help'])).stdout;
      const examples = (help.slice(help.indexOf('Examples:')).split('\n\n')[0]?.split('\n').slice(1) ?? []).filter((l) => l !== '');
      expect(examples, command.join(' ')).to.have.length.above(0);
      for (const line of examples) {
        expect(line.length, line).to.be.at.most(80);
        expect(line, command.join(' ')).to.match(/^ {2}(# |provision-server |--)/);
      }
    }
    const serve = (await runServerCli(['serve', '--help'])).stdout;
    expect(serve).to.match(/--log-level\s+least severe log lines/);
  });
});
