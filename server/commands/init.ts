/** `provision-server init`: create the data directory: server keys, registry, broker defaults, HTTP token. */
import { isAbsolute, resolve } from 'node:path';
import { CodedError, DEFAULT_TOPIC_PREFIX } from '../../protocol/index.js';
import { DEFAULT_BROKER_URL, initDataDir, type BrokerSettings } from '../data-dir.js';
import { redactUrl } from '../storage/open.js';
import { DEFAULT_SERVER_ID } from '../keys/server-keys.js';
import { joinDataDir } from '../keys/server-join.js';
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
      .option('join', {
        type: 'string',
        requiresArg: true,
        describe:
          "another machine for the same fleet: make the data directory from FILE (provision-server keys export on a running one): its server keys, release.jwks, HTTP token, topic prefix and registry (PostgreSQL; --registry overrides); this machine's broker connection from --broker/--ca/--cert/--key",
      })
      .example(
        '# the server on the backend listener, boards on 8883\n' +
          '$0 init --data /var/lib/provision-server \\\n' +
          '--broker mqtts://broker.example.net:8884 --ca backend-ca.pem \\\n' +
          '--cert server.crt --key server.key \\\n' +
          '--device-broker mqtts://broker.example.net:8883 --device-ca device-ca.pem',
        '',
      )
      .example(
        '# a second machine for the same fleet (PostgreSQL registry);\n' +
          '# on the first: $0 keys export --out join.json\n' +
          '$0 init --data /var/lib/provision-server --join join.json \\\n' +
          '--broker mqtts://broker.example.net:8884 --ca backend-ca.pem \\\n' +
          '--cert server2.crt --key server2.key',
        '',
      ),
  handler: async (args) => {
    if (args.join !== undefined) {
      const given = Object.entries({
        'server-id': args.serverId !== DEFAULT_SERVER_ID,
        'topic-prefix': args.topicPrefix !== DEFAULT_TOPIC_PREFIX,
        'device-broker': args.deviceBroker !== undefined,
        'device-ca': args.deviceCa !== undefined,
        'device-mqtt-version': args.deviceMqttVersion !== undefined,
        force: args.force,
      })
        .filter(([, set]) => set)
        .map(([name]) => name);
      if (given.length) throw new CodedError('E_USAGE', `--join takes the fleet's settings from the file: drop --${given.join(', --')}`);
      const broker = args.broker !== undefined || args.ca !== undefined || args.cert !== undefined || args.key !== undefined ? joinedBroker(args) : undefined;
      const joined = await joinDataDir(args.data, args.join, {
        ...(args.registry !== undefined ? { registry: args.registry } : {}),
        ...(broker ? { broker } : {}),
      });
      process.stdout.write(
        `joined ${resolve(args.data)} to the fleet of ${args.join}\n  registry: ${joined.registry}\n  broker:   ${broker ? String(broker.url) : "the exporting machine's URL, no client certificate (give --broker/--ca/--cert/--key)"}\n  run: provision-server serve --data ${args.data} --shared on\n`,
      );
      return;
    }
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

/** The broker settings --broker/--ca/--cert/--key give a joined machine (file paths made absolute). */
function joinedBroker(args: {
  broker?: string | undefined;
  ca?: string | undefined;
  cert?: string | undefined;
  key?: string | undefined;
}): Record<string, unknown> {
  if (args.broker === undefined) throw new CodedError('E_USAGE', '--ca/--cert/--key with --join go with --broker: name the broker this machine connects to');
  const abs = (p: string): string => (isAbsolute(p) ? p : resolve(p));
  return {
    url: args.broker,
    ...(args.ca !== undefined ? { ca: abs(args.ca) } : {}),
    ...(args.cert !== undefined ? { cert: abs(args.cert) } : {}),
    ...(args.key !== undefined ? { key: abs(args.key) } : {}),
  };
}
