/** `sensor-agent keygen`: create the device's key pairs in the protected key store. */
import { KeyStore } from '../store/keystore.js';
import { defineCommand } from '../../lib/cli.js';

export const keygenCommand = defineCommand({
  command: 'keygen',
  describe: 'Create the device signing (ES256) and encryption (ECDH-ES P-256, or RSA with --rsa) key pairs; print the public JWK set',
  builder: (y) =>
    y
      .option('keystore', { type: 'string', demandOption: true, describe: 'key store directory (created 0700 if absent)' })
      .option('rsa', { type: 'boolean', default: false, describe: 'RSA-OAEP-256 (3072-bit) encryption key, for devices migrated from RSA keys' })
      .option('force', { type: 'boolean', default: false, describe: 'replace existing keys (the device must then be re-registered)' })
      .example('# create keys and save the public set\n$0 keygen --keystore /var/lib/sensor-agent/keys > device.jwks', ''),
  handler: async (args) => {
    const store = await KeyStore.open(args.keystore, { create: true });
    const jwks = await store.generate({ rsa: args.rsa, force: args.force });
    process.stdout.write(`${JSON.stringify(jwks, null, 2)}\n`);
  },
});
