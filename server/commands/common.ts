/** Options shared by the data-directory commands: --data and the broker connection. */
import type { Argv } from 'yargs';
import { defaultDataDir } from '../data-dir.js';

export interface DataArgs {
  data: string;
}

export interface BrokerArgs {
  broker?: string;
  ca?: string;
  cert?: string;
  key?: string;
}

/** Adds --data (its value: DataArgs). */
export function withData<T>(y: Argv<T>) {
  return y.option('data', {
    type: 'string',
    default: defaultDataDir(),
    defaultDescription: '$PROVISION_SERVER_DATA or /var/lib/provision-server',
    describe: 'server data directory (keys, registry, recorded broker settings)',
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
