/**
 * Every action end to end through a real broker (aedes in process, and
 * mosquitto with TLS as a child process): enrollment + request, update (with
 * a hook), selftest, rotate (ack signed by the old key, previous encryption
 * key retired by the first command under the new kid), the refusals, delete
 * (exit 10, and exit 10 again at the next start).
 */
import { expect } from 'chai';
import { chmod, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { AgentStartError, startAgent, type RunningAgent } from '../../agent/agent.js';
import { bufferedLogger } from '../../lib/log.js';
import { sealClaims, toPublicJwk, type PublicJwk } from '../../protocol/index.js';
import { shouldRunMosquitto, startAedes, startMosquitto } from '../helpers/brokers.js';
import { makeParty, type Party } from '../helpers/keys.js';
import { exists, showAgentLogOnFailure, makeDevice, readDeviceState, removeDir, SERVER_ID, TestServer, type DeviceFiles } from './agent-fixture.js';
import { NO_MOSQUITTO, skipBecause } from '../helpers/skip.js';
import { agentExitStatus } from '../../agent/commands/exit-statuses.js';
import { fakeGpio, startWithFakeGpio } from '../helpers/fake-gpio.js';

interface BrokerUnderTest {
  url: string;
  caFile: string | undefined;
  stop(): Promise<void>;
}

function lifecycle(name: string, start: () => Promise<BrokerUnderTest | undefined>): void {
  describe(`agent lifecycle over ${name}`, function () {
    let broker: BrokerUnderTest;
    let server: TestServer;
    let serverParty: Party;
    let files: DeviceFiles;
    let agent: RunningAgent | undefined;
    const deviceId = `board-${name.replace(/[^a-z]/g, '')}`;
    const logs = bufferedLogger('debug');

    before(async function () {
      const b = await start();
      if (!b) skipBecause(this, NO_MOSQUITTO);
      broker = b;
      serverParty = await makeParty();
      server = new TestServer(serverParty, broker.url, broker.caFile);
      await server.connect();
      files = await makeDevice({ deviceId, brokerUrl: broker.url, ...(broker.caFile ? { caFile: broker.caFile } : {}), server: serverParty, token: 'tok-123' });
    });

    showAgentLogOnFailure(logs);

    after(async function () {
      await agent?.stop();
      await server?.close();
      await broker?.stop();
      if (files) await removeDir(files.dir);
    });

    it('enrolls with its token, becomes provisioned on the request, removes the token before it acks', async function () {
      server.expectEnrollment(deviceId, 'tok-123', 'alice');
      // The order is the agent's guarantee, not timing: at the PUBACK (after the state is saved) the token is already gone.
      const tokenAtPuback: boolean[] = [];
      const afterPersist = async (action: string): Promise<void> => {
        if (action === 'request') tokenAtPuback.push(await exists(files.tokenFile));
      };
      agent = await startWithFakeGpio(
        { configPath: files.configPath, log: logs.logger, backoff: { minMs: 50, maxMs: 500 }, enrollment: { retryMinMs: 2000 }, faults: { afterPersist } },
        startAgent,
      );
      const ack = await server.waitAck((a) => a.claims.iss === deviceId);
      expect(tokenAtPuback).to.deep.equal([false]);
      expect(ack.claims.status).to.equal('applied');
      expect(ack.claims.code).to.equal('OK');
      expect(ack.claims.aud).to.equal(SERVER_ID);
      const st = await readDeviceState(files);
      expect(st.provisioned).to.equal(true);
      expect(st.user_id).to.equal('alice');
      expect(st.last_seq).to.equal(1);
      // Done before the ack, so true the moment it arrives.
      expect(await exists(files.tokenFile)).to.equal(false);
      expect(fakeGpio(agent).value(27)).to.equal(true); // sensor enabled once provisioned
    });

    it('applies an update through its hook, transactionally', async function () {
      const hook = join(files.hooksDir, 'update');
      await writeFile(hook, `#!/bin/sh\ncat > "${files.dir}/hook-input.json"\n`);
      await chmod(hook, 0o755);
      const params = { user_id: 'bob', sensor: { enabled: false, sample_interval_s: 30 }, reporting: { interval_s: 60 } };
      const ack = await server.command(deviceId, 'update', params);
      expect(ack.claims.status, ack.claims.detail).to.equal('applied');
      expect(JSON.parse(await readFile(join(files.dir, 'hook-input.json'), 'utf8'))).to.deep.equal(params);
      const st = await readDeviceState(files);
      expect(st.user_id).to.equal('bob');
      expect(st.settings).to.deep.equal({ sensor: { enabled: false, sample_interval_s: 30 }, reporting: { interval_s: 60 } });
      expect(fakeGpio(agent).value(27)).to.equal(false);

      // A failing hook: failed ack, nothing changed.
      await writeFile(hook, '#!/bin/sh\necho "no such sensor" >&2\nexit 3\n');
      const before = await readDeviceState(files);
      const failed = await server.command(deviceId, 'update', { sensor: { enabled: true } });
      expect(failed.claims.status).to.equal('failed');
      expect(failed.claims.code).to.equal('E_HOOK');
      expect(failed.claims.detail).to.match(/exit 3.*no such sensor/);
      const after = await readDeviceState(files);
      expect(after.settings).to.deep.equal(before.settings);
      expect(fakeGpio(agent).value(27)).to.equal(false);
      await writeFile(hook, '#!/bin/sh\nexit 0\n');
    });

    it('runs the self-test remotely and reports it in the ack', async function () {
      const ack = await server.command(deviceId, 'selftest');
      expect(ack.claims.status).to.equal('applied');
      const report = ack.claims.result?.report as { checks: { id: string; status: string }[] };
      const ids = report.checks.map((c) => c.id);
      expect(ids).to.include.members(['config', 'keys', 'trust', 'crypto', 'state_dir', 'broker', 'gpio', 'node']);
      expect(report.checks.find((c) => c.id === 'broker')?.status).to.equal('pass');
      expect(report.checks.find((c) => c.id === 'crypto')?.status).to.equal('pass');
    });

    it('rotates: ack signed by the old key with the new keys; the old encryption key goes with the first command under the new kid', async function () {
      const oldSigning = server.devices.get(deviceId)!.signing[0]!.kid;
      const oldEnc = server.devices.get(deviceId)!.encryption.kid;
      const ack = await server.command(deviceId, 'rotate');
      expect(ack.claims.status).to.equal('applied');
      expect(ack.signerKid).to.equal(oldSigning);
      const keys = (ack.claims.result?.keys as { keys: PublicJwk[] }).keys;
      const sig = keys.find((k) => k.use === 'sig')!;
      const enc = keys.find((k) => k.use === 'enc')!;
      expect(sig.kid).to.not.equal(oldSigning);
      expect(enc.kid).to.not.equal(oldEnc);
      let st = await readDeviceState(files);
      expect(st.keys).to.deep.equal({ signing: sig.kid, encryption: enc.kid, previous_encryption: oldEnc });
      expect(await exists(join(files.keystore, 'encryption.previous.jwk'))).to.equal(true);

      // The server learns the new signing key from the ack but, until it switches, still seals to the old
      // encryption key: that command opens (previous key kept) and its ack is signed by the new key.
      server.devices.get(deviceId)!.signing.push(sig);
      const stillOld = await server.command(deviceId, 'selftest');
      expect(stillOld.claims.status).to.equal('applied');
      expect(stillOld.signerKid).to.equal(sig.kid);
      server.register(deviceId, { signing: sig, encryption: enc });
      expect(await exists(join(files.keystore, 'encryption.previous.jwk'))).to.equal(true);

      const ack2 = await server.command(deviceId, 'update', { reporting: { interval_s: 120 } });
      expect(ack2.claims.status).to.equal('applied');
      expect(ack2.signerKid).to.equal(sig.kid);
      st = await readDeviceState(files);
      expect(st.keys.previous_encryption).to.equal(null);
      expect(await exists(join(files.keystore, 'encryption.previous.jwk'))).to.equal(false);
    });

    it('refuses replay, another device, expired and bad params with the right code and no state change; drops a non-pinned signer without an ack', async function () {
      const applied = await server.seal(deviceId, 'update', { reporting: { interval_s: 90 } });
      const first = server.waitAck((a) => a.claims.ref === applied.jti);
      await server.publish(deviceId, applied.token);
      expect((await first).claims.status).to.equal('applied');
      const before = await readDeviceState(files);
      const strip = (s: Record<string, unknown>): Record<string, unknown> => ({ ...s, updated_at: 0 });

      // The same command again: acked as a duplicate of the applied one, not applied again.
      const nAcks = server.acks.length;
      await server.publish(deviceId, applied.token);
      const dup = await server.waitAck((a) => a.claims.ref === applied.jti && server.acks.indexOf(a) >= nAcks);
      expect(dup.claims.status).to.equal('applied');
      expect(dup.claims.detail).to.match(/^duplicate/);

      const stale = await server.command(deviceId, 'update', { reporting: { interval_s: 5 } }, { seq: before.last_seq });
      expect([stale.claims.status, stale.claims.code]).to.deep.equal(['rejected', 'E_REPLAY']);

      const other = await server.command(deviceId, 'update', { reporting: { interval_s: 5 } }, { claimsDevice: 'someone-else' });
      expect([other.claims.status, other.claims.code]).to.deep.equal(['rejected', 'E_AUDIENCE']);

      const expired = await server.command(deviceId, 'update', { reporting: { interval_s: 5 } }, { now: Date.now() - 3600_000, ttlSeconds: 60 });
      expect([expired.claims.status, expired.claims.code]).to.deep.equal(['rejected', 'E_EXPIRED']);

      // Bad params cannot be made with sealCommand (it validates): seal the claims directly.
      const seq = server.nextSeq(deviceId);
      const jti = crypto.randomUUID();
      const now = Math.floor(Date.now() / 1000);
      const bad = await sealClaims(
        {
          iss: SERVER_ID,
          aud: deviceId,
          iat: now,
          exp: now + 300,
          jti,
          seq,
          device_id: deviceId,
          action: 'update',
          user_id: 'u',
          params: { sensor: { enabled: 'yes' } },
        },
        { signer: serverParty.signing, recipient: server.devices.get(deviceId)!.encryption },
      );
      const badAck = server.waitAck((a) => a.claims.ref === jti);
      await server.publish(deviceId, bad);
      expect([(await badAck).claims.status, (await badAck).claims.code]).to.deep.equal(['rejected', 'E_PARAMS']);

      // Signed by a key that is not pinned: dropped, never acked.
      const attacker = await makeParty();
      const forged = await server.seal(deviceId, 'delete', {}, { signer: attacker });
      await server.publish(deviceId, forged.token);
      // A gap in seq is fine (only strictly greater is required).
      const probeSeq = server.nextSeq(deviceId) + 5;
      server.seq.set(deviceId, probeSeq);
      const probe = await server.command(deviceId, 'selftest', {}, { seq: probeSeq });
      expect(probe.claims.status).to.equal('applied');
      expect(server.acks.some((a) => a.claims.ref === forged.jti)).to.equal(false);
      expect(logs.find(/unauthenticated message dropped code=E_SIGNATURE/)).to.be.a('string');

      const after = await readDeviceState(files);
      // Only the probe selftest changed anything (its seq and record).
      expect(after.settings).to.deep.equal(before.settings);
      expect(after.provisioned).to.equal(true);
      expect(after.keys).to.deep.equal(before.keys);
      expect(strip({ ...after, last_seq: 0, recent: [], last_command: null })).to.deep.equal(strip({ ...before, last_seq: 0, recent: [], last_command: null }));
    });

    it('deletes: wipes keys, sensor low, acks, exits 10; a restart without a token exits 10 again', async function () {
      const a = agent!;
      const ack = await server.command(deviceId, 'delete');
      expect(ack.claims.status).to.equal('applied');
      expect(await a.exited).to.equal(10);
      agent = undefined;
      const st = await readDeviceState(files);
      expect(st.provisioned).to.equal(false);
      expect(st.decommissioned).to.equal(true);
      expect(st.user_id).to.equal(null);
      for (const f of ['signing.jwk', 'encryption.jwk', 'encryption.previous.jwk']) expect(await exists(join(files.keystore, f))).to.equal(false);
      expect(fakeGpio(a).value(27) ?? false).to.equal(false);

      let err: unknown;
      try {
        await startAgent({ configPath: files.configPath, log: logs.logger });
      } catch (e) {
        err = e;
      }
      expect(err).to.be.instanceOf(AgentStartError);
      expect(agentExitStatus(err)).to.equal(10);
      expect((err as AgentStartError).code).to.equal('E_DECOMMISSIONED');
    });
  });
}

lifecycle('aedes', async () => {
  const b = await startAedes();
  return { url: b.url, caFile: undefined, stop: b.stop };
});

lifecycle('mosquitto with TLS', async () => {
  if (!(await shouldRunMosquitto())) return undefined;
  const b = await startMosquitto({ tls: true });
  return { url: b.url, caFile: b.caFile, stop: b.stop };
});

void toPublicJwk;
