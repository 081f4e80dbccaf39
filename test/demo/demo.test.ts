import { expect } from 'chai';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { plaintextCheck } from '../../demo/demo.js';
import { skipBecause } from '../helpers/skip.js';

describe('npm run demo', function () {
  this.timeout(60_000);

  it('the plaintext check catches a claim in clear, in a JWE header, or a payload that is not a JWE', () => {
    const jwe = (header: object): string => `${Buffer.from(JSON.stringify(header)).toString('base64url')}.AAAA.BBBB.CCCC.DDDD`;
    const secrets = new Set(['sensor-9', 'alice']);
    expect(
      plaintextCheck([{ topic: 'p/sensor-9/command', payload: Buffer.from(jwe({ alg: 'ECDH-ES+A256KW', enc: 'A256GCM', kid: 'k' })) }], secrets).problems,
    ).to.deep.equal([]);
    expect(plaintextCheck([{ topic: 't', payload: Buffer.from('{"action":"request","user_id":"alice"}') }], secrets).problems).to.have.length(1);
    expect(plaintextCheck([{ topic: 't', payload: Buffer.from(jwe({ alg: 'ECDH-ES+A256KW', enc: 'A256GCM', user: 'alice' })) }], secrets).problems[0]).to.match(
      /alice/,
    );
    expect(plaintextCheck([{ topic: 't', payload: Buffer.from(jwe({ alg: 'x', enc: 'y', action: 1 })) }], secrets).problems[0]).to.match(/"action"/);
  });

  it("the README's demo section states no payload count (the demo prints it, and it moves with every message kind: it said 18 when it was 20)", async () => {
    const readme = await readFile(fileURLToPath(new URL('../../../README.md', import.meta.url)), 'utf8');
    const section = readme.slice(readme.indexOf('## The demo'), readme.indexOf('## A five-minute tour'));
    expect(section).to.include('plaintext check');
    expect(section).not.to.match(/\b\d+ (payloads|messages)\b/);
  });

  it('runs the embedded broker, the server and real agents, and ends with the plaintext check passing', async function () {
    const demo = fileURLToPath(new URL('../../demo/demo.js', import.meta.url));
    if (!existsSync(fileURLToPath(new URL('../../agent/agent.js', import.meta.url))))
      skipBecause(this, 'the agent is not built (dist/agent/agent.js missing: npm run build)');
    const child = spawn(process.execPath, [demo], { env: { ...process.env, DEMO_AGENTS: '1' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
    expect(code, out).to.equal(0);
    for (const step of ['enroll', 'request', 'update', 'rotate', 'delete']) expect(out).to.match(new RegExp(`demo-sensor-01\\s+${step}\\s`));
    expect(out).to.match(/plaintext check PASSED: all \d+ payloads are compact JWE/);
  });
});
