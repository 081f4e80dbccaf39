/** server/operators/password.ts: scrypt hashes with their parameters, verification, rehash on raised parameters. */
import { expect } from 'chai';
import { DEFAULT_SCRYPT, checkPassword, dummyHash, hashPassword, needsRehash, verifyPassword } from '../../server/operators/password.js';

describe('operator passwords (scrypt)', function () {
  this.timeout(20_000);

  it('hashes with a fresh salt and the default parameters, and verifies only the right password', async () => {
    const a = await hashPassword('correct horse battery');
    const b = await hashPassword('correct horse battery');
    expect(a).to.match(/^\$scrypt\$ln=15,r=8,p=1\$[A-Za-z0-9_-]{22}\$[A-Za-z0-9_-]{43}$/);
    expect(a).not.to.equal(b);
    expect(await verifyPassword('correct horse battery', a)).to.equal(true);
    expect(await verifyPassword('correct horse batterY', a)).to.equal(false);
    expect(await verifyPassword('', a)).to.equal(false);
    expect(needsRehash(a)).to.equal(false);
  });

  it('keeps the parameters in the hash: an older, weaker hash still verifies and asks for a rehash', async () => {
    const weak = await hashPassword('correct horse battery', { ln: 10, r: 8, p: 1 });
    expect(weak).to.match(/^\$scrypt\$ln=10,r=8,p=1\$/);
    expect(await verifyPassword('correct horse battery', weak)).to.equal(true);
    expect(needsRehash(weak)).to.equal(true);
    expect(needsRehash(weak, { ln: 10, r: 8, p: 1 })).to.equal(false);
    expect(DEFAULT_SCRYPT).to.deep.equal({ ln: 15, r: 8, p: 1 });
  });

  it('refuses hashes it did not write or that ask for too much memory, without throwing', async () => {
    const good = await hashPassword('correct horse battery', { ln: 10, r: 8, p: 1 });
    for (const bad of ['', 'plain', good.replace('ln=10', 'ln=30'), good.replace('$scrypt$', '$argon2$'), good.slice(0, -10)]) {
      expect(await verifyPassword('correct horse battery', bad)).to.equal(false);
      expect(needsRehash(bad)).to.equal(true);
    }
    expect(await verifyPassword('x', await dummyHash())).to.equal(false);
  });

  it('refuses a password that is too short or too long (E_PASSWORD)', async () => {
    expect(() => checkPassword('short'))
      .to.throw()
      .with.property('code', 'E_PASSWORD');
    expect(() => checkPassword('x'.repeat(1025)))
      .to.throw()
      .with.property('code', 'E_PASSWORD');
    await hashPassword('short').then(
      () => expect.fail('accepted'),
      (err: { code?: string }) => expect(err.code).to.equal('E_PASSWORD'),
    );
  });
});
