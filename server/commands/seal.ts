/**
 * `provision-server seal`: print one sealed command (compact JWE) for a device,
 * offline (no registry, no broker): the core's sealing (server/core/seal-pool.ts)
 * with the seq from KEYS/seq/ (server/core/seal-counter.ts).
 */
import { ACTIONS, checkCommandInput, CodedError, parseJwkSet } from '../../protocol/index.js';
import { deviceIdFlag, readJsonFile } from '../../lib/cli-input.js';
import { parseCommandTtl } from '../duration.js';
import { nextSealSeq } from '../core/seal-counter.js';
import { sealInProcess } from '../core/seal-pool.js';
import { loadServerKeys } from '../keys/server-keys.js';
import { defineCommand } from '../../lib/cli.js';

export const sealCommandModule = defineCommand({
  command: 'seal',
  describe: 'Sign and encrypt one command for a device and print it (compact JWE) on stdout',
  builder: (y) =>
    y
      .option('keys', { type: 'string', demandOption: true, describe: 'server key directory (from keys init)' })
      .option('device', { type: 'string', demandOption: true, coerce: deviceIdFlag('--device'), describe: 'device id' })
      .option('device-jwks', { type: 'string', demandOption: true, describe: "the device's public JWK set (from sensor-agent keygen)" })
      .option('action', { choices: ACTIONS, demandOption: true, describe: 'the action' })
      .option('user', { type: 'string', default: 'unassigned', describe: 'user id the command is for' })
      .option('params', { type: 'string', default: '{}', describe: 'action parameters as JSON' })
      .option('seq', { type: 'number', describe: 'sequence number (default: one above the last sealed for this device, kept in KEYS/seq/)' })
      .option('ttl', { type: 'string', default: '5m', describe: 'lifetime: 90 (seconds), 30s, 15m, 24h, 7d (at most 7d)' })
      .example('$0 seal --keys srv --device sensor-1 --device-jwks dev.jwks \\\n--action update --params \'{"sensor":{"enabled":true}}\' --ttl 1h', ''),
  handler: async (args) => {
    let params: unknown;
    try {
      params = JSON.parse(args.params) as unknown;
    } catch (err) {
      throw new CodedError('E_PARAMS', `--params is not valid JSON: ${(err as Error).message}`);
    }
    if (args.seq !== undefined && (!Number.isSafeInteger(args.seq) || args.seq < 1)) throw new CodedError('E_USAGE', '--seq must be an integer >= 1');
    const ttlSeconds = parseCommandTtl(args.ttl);
    const server = await loadServerKeys(args.keys);
    const recipients = await parseJwkSet(await readJsonFile(args.deviceJwks, 'device JWK set'), 'enc');
    const recipient = recipients[0];
    if (!recipient) throw new CodedError('E_NO_KEYS', `${args.deviceJwks} holds no encryption key: refusing to send anything unencrypted`);
    const input = { serverId: server.serverId, deviceId: args.device, action: args.action, userId: args.user, params, ttlSeconds };
    // Everything checked before the seq is taken: a refused command uses up no seq.
    checkCommandInput(input);
    const seq = await nextSealSeq(args.keys, args.device, args.seq);
    const { token } = await sealInProcess({ ...input, seq }, { signer: server.signing, recipient });
    process.stdout.write(`${token}\n`);
  },
});
