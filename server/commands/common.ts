/** Options shared by the data-directory commands: --data and the broker connection. */
import type { Argv } from 'yargs';
import { defaultDataDir } from '../data-dir.js';

export interface DataArgs {
  data: string;
  registry?: string | undefined;
}

/** openDataDir's options from the command line: --registry (absent: the environment, server.json, DATA/registry.sqlite). */
export function registryOption(args: { registry?: string | undefined }): { registry?: string } {
  return args.registry !== undefined ? { registry: args.registry } : {};
}

export interface BrokerArgs {
  broker?: string;
  ca?: string;
  cert?: string;
  key?: string;
}

/** Adds --data and --registry (their values: DataArgs). */
export function withData<T>(y: Argv<T>) {
  return y
    .option('data', {
      type: 'string',
      default: defaultDataDir(),
      defaultDescription: '$PROVISION_SERVER_DATA or /var/lib/provision-server',
      describe: 'server data directory (keys, registry, recorded broker settings)',
    })
    .option('registry', {
      type: 'string',
      requiresArg: true,
      describe:
        "the registry: a postgres://USER@HOST/DB URL (several servers share it) or a SQLite file; default: server.json's registry, else DATA/registry.sqlite; env PROVISION_SERVER_REGISTRY",
    });
}

/** Adds --broker, --ca, --cert, --key (their values: BrokerArgs). */
export function withBroker<T>(y: Argv<T>) {
  return y
    .option('broker', { type: 'string', describe: 'broker URL, mqtts://host:8883 (default: what init recorded)' })
    .option('ca', { type: 'string', describe: 'CA certificate (PEM) to pin for the broker' })
    .option('cert', { type: 'string', describe: 'client certificate (PEM) for the broker' })
    .option('key', { type: 'string', describe: 'client private key (PEM) for the broker' });
}

export function brokerOverride(args: BrokerArgs): BrokerArgs {
  const out: BrokerArgs = {};
  if (args.broker !== undefined) out.broker = args.broker;
  if (args.ca !== undefined) out.ca = args.ca;
  if (args.cert !== undefined) out.cert = args.cert;
  if (args.key !== undefined) out.key = args.key;
  return out;
}
