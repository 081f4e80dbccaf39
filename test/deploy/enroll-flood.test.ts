/**
 * Issue 10, finding 5: junk enrollments must neither crowd out acks nor grow
 * the audit log without bound. Run against mosquitto with the production
 * configuration (provisioning/mosquitto: max_queued_messages 200,
 * max_inflight_messages 20, both ACLs) and a real `serve`: three devices whose
 * certificates an attacker holds flood their own enroll topics with
 * enrollments that open (sealed to the public trust.jwks, self-signed) but
 * carry unknown tokens, while a fourth device acks a command. The ack must be
 * recorded (the broker queues the flood for the server's enrollment session,
 * not for the session that takes acks), and the audit must hold a bounded
 * number of `device.enroll.refused` rows whose counts add up to the refusals.
 *
 * Timing-independent: the command goes out before the flood; the device's
 * ack is published only once the broker has queued more of the flood than a
 * session may hold (it logs "Outgoing messages are being dropped for client
 * ID"), and the flood (in a process of its own) goes on
 * until the ack is recorded or the test's wait ends, so the ack always meets
 * a full enrollment queue.
 */
import { expect } from 'chai';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import {
  ackTopic,
  enrollTopic,
  generateEncryptionKey,
  generateSigningKey,
  sealAck,
  sealEnrollment,
  toPublicJwk,
  type PublicJwk,
} from '../../protocol/index.js';
import { initDataDir } from '../../server/data-dir.js';
import { ENROLL_REFUSED_EVENT } from '../../server/core/enroll-refusals.js';
import type { InboundResult } from '../../server/core/inbound.js';
import { openSqliteStorage } from '../../server/storage/sqlite/index.js';
import { newEnrollmentToken } from '../../server/storage/tokens.js';
import { startProvisionServer, type RunningServer } from '../../server/service.js';
import { SimFleet, eventually, makeSimDevice } from '../server/sim-fleet.js';
import { startBroker, type RunningBroker } from './mosquitto-fixture.js';
import { clientCredentials, makeTestPki } from './pki-fixture.js';
import { requireTools } from './tools.js';
import { sinkLogger } from '../../lib/log.js';

const VICTIM = 'victim';
const FLOODERS = ['flood1', 'flood2', 'flood3'];
const SERVER_CLIENT = 'provision-server-flood-test';

describe('deploy/broker: an enrollment flood under the production mosquitto config', function () {
  this.timeout(120_000);
  let dir: string;
  let broker: RunningBroker;
  let server: RunningServer | undefined;
  let fleet: SimFleet | undefined;
  const flooders: MqttClient[] = [];
  const inbound: InboundResult[] = [];
  /** Devices whose enroll topic carried a garbage payload the server handled (the sentinels below). */
  const garbageSeen = new Set<string>();

  before(async function () {
    const { mosquitto = '' } = requireTools(this, 'REQUIRE_MOSQUITTO', ['mosquitto', 'openssl']);
    dir = await mkdtemp(join(tmpdir(), 'enroll-flood-'));
    const pkiDir = join(dir, 'pki');
    await makeTestPki(pkiDir, [VICTIM, ...FLOODERS]);
    broker = await startBroker(mosquitto, pkiDir, dir, { quietLog: true });
    const dataDir = join(dir, 'data');
    await initDataDir(dataDir, {
      broker: {
        url: broker.backendUrl,
        ca: join(pkiDir, 'ca.pem'),
        cert: join(pkiDir, 'clients', 'provision-server.crt'),
        key: join(pkiDir, 'clients', 'provision-server.key'),
      },
    });
    server = await startProvisionServer({
      dataDir,
      shared: 'auto',
      clientId: SERVER_CLIENT,
      onInbound: (r) => inbound.push(r),
      log: sinkLogger((_level, event, fields) => {
        if (event === 'enroll.dropped' && fields.code !== 'E_TOKEN_INVALID' && typeof fields.device === 'string') garbageSeen.add(fields.device);
      }),
    });
  });

  after(async () => {
    await Promise.all(flooders.map((c) => c.endAsync(true).catch(() => undefined)));
    await fleet?.close().catch(() => undefined);
    await server?.close().catch(() => undefined);
    if (broker) await broker.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it("a device's ack is recorded during the flood, and the audit holds a few aggregated rows, not one per junk enrollment", async () => {
    const srv = server as RunningServer;
    const pkiDir = join(dir, 'pki');
    const trust = srv.data.keys.trust;
    const serverEnc = trust.keys.find((k) => k.use === 'enc') as PublicJwk;

    // The victim: a provisioned device on the device listener, confined by the production ACL.
    const victimCreds = await clientCredentials(pkiDir, VICTIM);
    fleet = await SimFleet.connect(broker.deviceUrl, { trust, tls: victimCreds, wildcard: false });
    await fleet.watch(VICTIM);
    const victim = fleet.add(await makeSimDevice(VICTIM, 'silent'));
    await srv.data.storage.devices.add({
      id: VICTIM,
      userId: 'alice',
      origin: 'jwks',
      signing: toPublicJwk(victim.signing),
      encryption: toPublicJwk(victim.encryption),
      state: 'provisioned',
    });
    // The command goes out before the flood; the victim's ack (sealed now) is published only once the flood fills the broker's queue.
    const command = await srv.send({ deviceId: VICTIM, action: 'selftest' });
    const { token: ack } = await sealAck(
      { deviceId: VICTIM, serverId: srv.data.keys.serverId, ref: command.jti, seq: command.seq, status: 'applied', code: 'OK' },
      { signer: victim.signing, recipient: serverEnc },
    );

    // The attacker: three device certificates, 20 distinct junk enrollments each (valid seal and self-signature, unknown token).
    const spec: { url: string; max: number; flooders: { id: string; ca: string; cert: string; key: string; junk: string[] }[] } = {
      url: broker.deviceUrl,
      max: 10_000_000,
      flooders: [],
    };
    for (const id of FLOODERS) {
      const sealed: string[] = [];
      for (let i = 0; i < 20; i++) {
        const [signing, encryption] = await Promise.all([generateSigningKey(), generateEncryptionKey()]);
        const { token } = await sealEnrollment(
          { deviceId: id, serverId: srv.data.keys.serverId, token: newEnrollmentToken(), signing: toPublicJwk(signing), encryption: toPublicJwk(encryption) },
          { signer: signing, recipient: serverEnc },
        );
        sealed.push(token);
      }
      spec.flooders.push({
        id,
        ca: join(pkiDir, 'ca.pem'),
        cert: join(pkiDir, 'clients', `${id}.crt`),
        key: join(pkiDir, 'clients', `${id}.key`),
        junk: sealed,
      });
    }
    await writeFile(join(dir, 'flood.json'), JSON.stringify(spec));
    // The flood runs in a process of its own: its pace does not depend on this process's event loop, where the server runs.
    const child = spawn(process.execPath, [fileURLToPath(new URL('./flood-child.js', import.meta.url)), join(dir, 'flood.json')], {
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    let published = 0;
    let childOut = '';
    child.stdout.on('data', (d: Buffer) => {
      childOut += d.toString();
      const lines = childOut
        .trim()
        .split('\n')
        .filter((l) => /^\d+$/.test(l));
      published = Number(lines[lines.length - 1] ?? 0);
    });
    const childDone = once(child, 'exit');
    const floods = [childDone];
    const stopFlood = (): void => void child.stdin.end();

    const dropLine = /Outgoing messages are being dropped for client/;
    // The flood (thousands a second) outruns the server (each junk enrollment costs a decryption and a signature check): wait until the broker drops.
    await eventually(() => dropLine.test(broker.log()), 60_000, 'the broker to drop messages of the flood');
    await fleet.publishRaw(ackTopic('provision', VICTIM), ack);
    const acked = await srv.waitForAck(command.jti, 30_000);
    stopFlood();
    await Promise.all(floods);
    // The broker forces the client id to the certificate's CN: connect again once the flood process is gone.
    for (const id of FLOODERS)
      flooders.push(await mqtt.connectAsync(broker.deviceUrl, { ...(await clientCredentials(pkiDir, id)), clean: true, reconnectPeriod: 0 }));
    const drops = broker
      .log()
      .split('\n')
      .filter((l) => dropLine.test(l));
    expect(acked?.ackStatus, `ack of ${command.jti} not recorded; broker: ${drops.join('; ')}`).to.equal('applied');
    // The broker dropped for the enrollment session only: the session acks arrive on never lost a message.
    expect(
      drops.filter((l) => l.endsWith(`for client ${SERVER_CLIENT}-enroll.`)),
      drops.join('; '),
    ).to.have.length.above(0);
    expect(
      drops.filter((l) => l.endsWith(`for client ${SERVER_CLIENT}.`)),
      drops.join('; '),
    ).to.deep.equal([]);

    // Let the server finish what the broker queued: each flooder then sends a garbage sentinel (re-sent
    // while the broker still drops for a full queue); the server handles one session's messages in order,
    // so once every sentinel was handled, so was every junk enrollment the broker delivered.
    await eventually(
      async () => {
        await Promise.all(
          flooders.map((c, n) =>
            garbageSeen.has(FLOODERS[n] as string) ? undefined : c.publishAsync(enrollTopic('provision', FLOODERS[n] as string), 'sentinel', { qos: 1 }),
          ),
        );
        if (garbageSeen.size < FLOODERS.length) await new Promise((r) => setTimeout(r, 1000));
        return garbageSeen.size === FLOODERS.length;
      },
      60_000,
      'the server to handle the queued flood',
    );
    const handled = inbound.filter((r) => r.kind === 'dropped' && r.code === 'E_TOKEN_INVALID').length;
    expect(handled, 'the flood reached the server').to.be.greaterThan(200);
    await srv.close();
    server = undefined;

    const storage = openSqliteStorage(join(dir, 'data', 'registry.sqlite'));
    try {
      const rows = (await storage.audit.log({ limit: 100_000 })).filter((a) => a.event === ENROLL_REFUSED_EVENT);
      // Per flooding topic and minute: the first refusal and one summary (a window boundary in the run: twice that).
      expect(rows.length, `${rows.length} audit rows for ${handled} refused enrollments`).to.be.at.most(FLOODERS.length * 4);
      expect(new Set(rows.map((r) => r.deviceId))).to.deep.equal(new Set(FLOODERS));
      const counted = rows.reduce((sum, r) => sum + (typeof r.detail.count === 'number' ? r.detail.count : 0), 0);
      expect(counted, 'the aggregated counts add up to every refusal').to.equal(handled);
      expect(rows.every((r) => r.detail.code === 'E_TOKEN_INVALID')).to.equal(true);
    } finally {
      await storage.close();
    }
    if (process.env.FLOOD_FIGURES) process.stderr.write(`flood: ${published} junk enrollments published, ${handled} refused by the server\n`);
  });
});
