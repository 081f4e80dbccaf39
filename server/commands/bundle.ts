/** `provision-server bundle`: write everything a board needs at flashing into a directory. */
import { deviceIdFlag } from '../../lib/cli-input.js';
import { writeBundle } from '../provisioning/device-bundle.js';
import { openDataDir, type BrokerSettings } from '../data-dir.js';
import { parseDuration } from '../duration.js';
import { withData, registryOption } from './common.js';
import { defineCommand } from '../../lib/cli.js';

export const bundleCommand = defineCommand({
  command: 'bundle',
  describe: 'Write a flashing bundle for a device: config.json, trust.jwks, ca.pem, client cert, a fresh enrollment token (and with --keys-on-host, its keys)',
  builder: (y) =>
    withData(y)
      .option('device', { type: 'string', demandOption: true, coerce: deviceIdFlag('--device'), describe: 'device id' })
      .option('user', { type: 'string', demandOption: true, describe: 'user id the device is for' })
      .option('out', { type: 'string', demandOption: true, describe: 'output directory (created 0700)' })
      .option('broker', { type: 'string', describe: 'broker URL as the board reaches it (default: init --device-broker, else init --broker)' })
      .option('ca', { type: 'string', describe: 'broker CA (PEM) the board pins (default: the CA recorded with that URL)' })
      .option('client-cert', { type: 'string', describe: "the board's client certificate (PEM)" })
      .option('client-key', { type: 'string', describe: "the board's client key (PEM)" })
      .option('keys-on-host', {
        type: 'boolean',
        default: false,
        describe: 'generate the device keys here and register them (boards that cannot generate keys)',
      })
      .option('rsa', { type: 'boolean', default: false, describe: 'with --keys-on-host: an RSA-OAEP-256 encryption key' })
      .option('ttl', { type: 'string', default: '7d', describe: 'lifetime of the enrollment token' })
      .option('force', {
        type: 'boolean',
        default: false,
        describe: "overwrite a non-empty --out; with --keys-on-host, replace a registered device's keys (that board is cut off until re-flashed)",
      })
      .option('mqtt-version', {
        choices: [4, 5] as const,
        describe:
          "MQTT version the board speaks: 5 (default, unless init --device-mqtt-version 4 was recorded) announces the agent's maximum packet size, so the broker drops a message too big for the board instead of sending it; 4 (MQTT 3.1.1) only for a broker that does not speak MQTT 5",
      })
      .option('gpio', { choices: ['auto', 'onoff', 'fake', 'none'] as const, default: 'auto' as const, describe: 'GPIO backend in config.json' })
      .example(
        '$0 bundle --device sensor-0001 --user alice \\\n--out ./sensor-0001 --ca ca.pem \\\n--client-cert sensor-0001.crt --client-key sensor-0001.key',
        '',
      ),
  handler: async (args) => {
    const ttl = parseDuration(args.ttl, '--ttl');
    const data = await openDataDir(args.data, registryOption(args));
    try {
      const recorded = data.config.deviceBroker ?? data.config.broker;
      let broker: BrokerSettings = { url: recorded.url, ...(recorded.ca ? { ca: recorded.ca } : {}) };
      if (args.broker) broker = { url: args.broker };
      if (args.ca) broker.ca = args.ca;
      if (args.clientCert) broker.cert = args.clientCert;
      if (args.clientKey) broker.key = args.clientKey;
      const result = await writeBundle(data, {
        deviceId: args.device,
        userId: args.user,
        outDir: args.out,
        broker,
        tokenTtlMs: ttl,
        keysOnHost: args.keysOnHost,
        rsa: args.rsa,
        gpioBackend: args.gpio,
        force: args.force,
        ...(args.mqttVersion !== undefined ? { mqttVersion: args.mqttVersion } : {}),
      });
      process.stdout.write(
        `bundle for ${args.device} (user ${args.user}) in ${result.dir}: ${result.files.join(', ')}\n` +
          `enrollment token valid until ${new Date(result.tokenExpiresAt).toISOString()}\n` +
          `run on the board: sensor-agent run --config ${result.configPath}\n`,
      );
    } finally {
      await data.storage.close();
    }
  },
});
