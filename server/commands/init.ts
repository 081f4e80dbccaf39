/** `provision-server init`: create the data directory: server keys, registry, broker defaults, HTTP token. */
import { CodedError, DEFAULT_TOPIC_PREFIX } from '../../protocol/index.js';
import { DEFAULT_BROKER_URL, initDataDir, type BrokerSettings } from '../data-dir.js';
import { redactUrl } from '../storage/open.js';
import { DEFAULT_SERVER_ID } from '../keys/server-keys.js';
import { withBroker, withData } from './common.js';
import { defineCommand } from '../../lib/cli.js';

export const initCommand = defineCommand({
  command: 'init',
  describe:
    'Create the data directory: server keys (DATA/keys), registry (DATA/registry.sqlite, or --registry, recorded), broker defaults (DATA/server.json), HTTP token (DATA/http.token)',
  builder: (y) =>
    withBroker(withData(y))
      .option('broker', { type: 'string', describe: `broker URL the server connects to, recorded for serve and send (default ${DEFAULT_BROKER_URL})` })
      .option('device-broker', { type: 'string', describe: "broker URL as boards reach it, when it differs from --broker (recorded; bundle's default)" })
      .option('device-ca', { type: 'string', describe: 'CA (PEM) boards pin for --device-broker (recorded; bundle copies it)' })
      .option('device-mqtt-version', {
        choices: [4, 5] as const,
        describe: "MQTT version of the boards' broker, recorded as bundle's default: 5 (the default) or 4 when it only speaks MQTT 3.1.1",
      })
      .option('server-id', { type: 'string', default: DEFAULT_SERVER_ID, describe: 'the server id (iss of commands, aud of acks)' })
      .option('topic-prefix', { type: 'string', default: DEFAULT_TOPIC_PREFIX, describe: 'MQTT topic prefix' })
      .option('force', { type: 'boolean', default: false, describe: 'replace existing server keys (every device must then be re-flashed)' })
      .example(
        '# the server on the backend listener, boards on 8883\n' +
          '$0 init --data /var/lib/provision-server \\\n' +
          '--broker mqtts://broker.example.net:8884 --ca backend-ca.pem \\\n' +
          '--cert server.crt --key server.key \\\n' +
          '--device-broker mqtts://broker.example.net:8883 --device-ca device-ca.pem',
        '',
      ),
  handler: async (args) => {
    const broker: BrokerSettings = { url: args.broker ?? DEFAULT_BROKER_URL };
    if (args.ca) broker.ca = args.ca;
    if (args.cert) broker.cert = args.cert;
    if (args.key) broker.key = args.key;
    if (args.deviceCa && !args.deviceBroker) throw new CodedError('E_USAGE', '--device-ca goes with --device-broker');
    const deviceBroker: BrokerSettings | undefined = args.deviceBroker
      ? { url: args.deviceBroker, ...(args.deviceCa ? { ca: args.deviceCa } : {}) }
      : undefined;
    const paths = await initDataDir(args.data, {
      serverId: args.serverId,
      broker,
      ...(deviceBroker ? { deviceBroker } : {}),
      ...(args.deviceMqttVersion !== undefined ? { deviceMqttVersion: args.deviceMqttVersion } : {}),
      topicPrefix: args.topicPrefix,
      force: args.force,
      ...(args.registry !== undefined ? { registry: args.registry } : {}),
    });
    const where = paths.registryLocation;
    const registry = where.kind === 'postgres' ? redactUrl(where.url) : where.path;
    process.stdout.write(
      `initialised ${paths.dir}\n  keys:     ${paths.keys} (devices pin ${paths.keys}/trust.jwks)\n  registry: ${registry}\n  broker:   ${broker.url}\n${deviceBroker ? `  boards:   ${deviceBroker.url}\n` : ''}  HTTP API bearer token: ${paths.httpToken}\n`,
    );
  },
});
