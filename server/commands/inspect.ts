/** `provision-server inspect`: open an ack or an enrollment and print its verified claims. */
import { CodedError, decryptSealed, DEFAULT_MAX_MESSAGE_BYTES, isRecord, KeyRing, openAck, openEnrollment, parseJwkSet } from '../../protocol/index.js';
import { readInput, readJsonFile, withInputFile } from '../../lib/cli-input.js';
import { loadServerKeys } from '../keys/server-keys.js';
import { defineCommand } from '../../lib/cli.js';

export const inspectCommand = defineCommand({
  command: 'inspect [file]',
  describe: 'Decrypt and verify one ack or enrollment (file or stdin) and print its claims as JSON',
  builder: (y) =>
    withInputFile(y)
      .option('keys', { type: 'string', demandOption: true, describe: 'server key directory' })
      .option('device-jwks', { type: 'string', describe: "the device's public JWK set (required for acks)" }),
  handler: async (args) => {
    const server = await loadServerKeys(args.keys);
    const input = await readInput(args.file, DEFAULT_MAX_MESSAGE_BYTES * 2);
    // Peek (after decryption, before trusting anything) to tell an enrollment from an ack.
    const peek = await decryptSealed(input, server.decryption);
    const payload = JSON.parse(Buffer.from(peek.jws.split('.')[1] ?? '', 'base64url').toString('utf8')) as unknown;
    if (isRecord(payload) && 'token' in payload && 'keys' in payload) {
      const opened = await openEnrollment(input, { serverId: server.serverId, decryption: server.decryption });
      const { token: _token, ...claims } = opened.claims;
      process.stdout.write(`${JSON.stringify({ kind: 'enrollment', claims: { ...claims, token: '(redacted)' } }, null, 2)}\n`);
      return;
    }
    if (!args.deviceJwks) throw new CodedError('E_USAGE', 'an ack is verified against the device signing key: pass --device-jwks FILE');
    const signers = await parseJwkSet(await readJsonFile(args.deviceJwks, 'device JWK set'), 'sig');
    const opened = await openAck(input, { serverId: server.serverId, decryption: server.decryption, verification: await KeyRing.create(signers) });
    process.stdout.write(`${JSON.stringify({ kind: 'ack', claims: opened.claims, signer_kid: opened.signerKid }, null, 2)}\n`);
  },
});
