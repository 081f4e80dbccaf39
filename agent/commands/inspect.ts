/** `sensor-agent inspect`: open one sealed command and print its verified claims (stateless). */
import {
  CodedError,
  DEFAULT_MAX_MESSAGE_BYTES,
  isProtocolError,
  KeyRing,
  openCommand,
  parseJwkSet,
  TRUSTED_CLOCK,
  UNTRUSTED_CLOCK,
} from '../../protocol/index.js';
import { deviceIdFlag, readInput, readJsonFile, withInputFile } from '../../lib/cli-input.js';
import { KeyStore } from '../store/keystore.js';
import { defineCommand } from '../../lib/cli.js';

export const inspectCommand = defineCommand({
  command: 'inspect [file]',
  describe: 'Decrypt and verify one sealed command (file or stdin) and print its claims as JSON; no replay check, nothing applied',
  builder: (y) =>
    withInputFile(y)
      .option('keystore', { type: 'string', demandOption: true, describe: 'the device key store directory' })
      .option('trust', { type: 'string', demandOption: true, describe: "the server's public JWK set (trust.jwks)" })
      .option('device', {
        type: 'string',
        demandOption: true,
        coerce: deviceIdFlag('--device'),
        describe: 'this device id (checked against aud and device_id)',
      })
      .option('clock', { choices: ['trusted', 'untrusted'], default: 'trusted', describe: 'check exp/iat against this clock, or skip the time checks' })
      .example('$0 inspect --keystore keys --trust trust.jwks \\\n--device sensor-1 cmd.jwe', ''),
  handler: async (args) => {
    const store = await KeyStore.open(args.keystore);
    const decryption = store.decryptionKeys();
    if (decryption.length === 0)
      throw new CodedError('E_NO_KEYS', `key store ${args.keystore} holds no encryption key; run: sensor-agent keygen --keystore ${args.keystore}`);
    const pinned = await parseJwkSet(await readJsonFile(args.trust, 'trust anchors'), 'sig');
    if (pinned.length === 0) throw new CodedError('E_NO_KEYS', `trust anchors ${args.trust} hold no signing key`);
    const input = await readInput(args.file, DEFAULT_MAX_MESSAGE_BYTES * 2);
    const opened = await openCommand(input, {
      deviceId: args.device,
      decryption: await KeyRing.create(decryption),
      verification: await KeyRing.create(pinned),
      clock: args.clock === 'untrusted' ? UNTRUSTED_CLOCK : TRUSTED_CLOCK,
    }).catch((err: unknown) => {
      throw withClockHint(err);
    });
    process.stdout.write(`${JSON.stringify({ claims: opened.claims, signer_kid: opened.signerKid, decrypt_kid: opened.decryptKid }, null, 2)}\n`);
  },
});

/** A time refusal says how to read the command anyway, or how to get a fresh one. */
function withClockHint(err: unknown): unknown {
  if (!isProtocolError(err)) return err;
  if (err.code === 'E_EXPIRED') {
    return new CodedError(
      err.code,
      `${err.message}; to read it anyway, pass --clock untrusted (the time checks are skipped, as on a board without a synchronised clock), or seal it again (provision-server seal ... --ttl 1h)`,
    );
  }
  if (err.code === 'E_NOT_YET_VALID') {
    return new CodedError(err.code, `${err.message}; check this machine's clock (timedatectl), or pass --clock untrusted to skip the time checks`);
  }
  return err;
}
