/** `provision-server serve`: the long-running server (enrollments, acks, reports, rollouts, HTTP API). */
import { createLogger } from '../../lib/log.js';
import { parseHostPort, startProvisionServer } from '../service.js';
import { brokerOverride, registryOption, withBroker, withData } from './common.js';
import { defineCommand } from '../../lib/cli.js';
import { CodedError } from '../../protocol/index.js';
import { parseDuration } from '../duration.js';

export const serveCommand = defineCommand({
  command: 'serve',
  describe: 'Run the server: handle enrollments, acks and reports from the broker, drive rollouts, and (with --http) the HTTP API',
  builder: (y) =>
    withBroker(withData(y))
      .option('http', { type: 'string', describe: 'serve the HTTP API on host:port (e.g. 127.0.0.1:8080; loopback unless told otherwise)' })
      .option('http-token-file', { type: 'string', describe: 'file holding the API bearer token (default DATA/http.token, must be 0600)' })
      .option('http-tls-cert', { type: 'string', describe: 'serve the HTTP API over HTTPS with this certificate (PEM; with --http-tls-key)' })
      .option('http-tls-key', { type: 'string', describe: "the HTTPS certificate's private key (PEM, mode 0600; with --http-tls-cert)" })
      .option('session-idle', {
        type: 'string',
        default: '30m',
        describe: 'a console login session ends after this long without a request (e.g. 30m)',
      })
      .option('session-max', { type: 'string', default: '12h', describe: 'a console login session ends this long after the login, however busy (e.g. 12h)' })
      .option('shared', {
        choices: ['auto', 'on', 'off'] as const,
        default: 'auto' as const,
        describe: 'MQTT shared subscriptions ($share/provision-server/...): auto probes the broker',
      })
      .option('client-id', {
        type: 'string',
        describe:
          'MQTT client id of the ack session; ID-enroll and ID-report are the enrollment and report sessions (default: provision-server-HOST-<hash of the data dir>)',
      })
      .option('log-level', {
        choices: ['debug', 'info', 'warn', 'error'] as const,
        default: 'info' as const,
        describe: 'least severe log lines written to stderr (one line per event)',
      }),
  handler: async (args) => {
    const log = createLogger({ level: args.logLevel, style: 'timestamped' });
    const sessions = { idleMs: parseDuration(args.sessionIdle, '--session-idle'), absoluteMs: parseDuration(args.sessionMax, '--session-max') };
    if (sessions.idleMs > sessions.absoluteMs) throw new CodedError('E_USAGE', '--session-idle is longer than --session-max');
    if ((args.httpTlsCert === undefined) !== (args.httpTlsKey === undefined)) throw new CodedError('E_USAGE', '--http-tls-cert and --http-tls-key go together');
    if (args.httpTlsCert !== undefined && !args.http) throw new CodedError('E_USAGE', '--http-tls-cert needs --http');
    const server = await startProvisionServer({
      dataDir: args.data,
      ...registryOption(args),
      broker: brokerOverride(args),
      ...(args.http ? { http: parseHostPort(args.http) } : {}),
      ...(args.httpTokenFile ? { httpTokenFile: args.httpTokenFile } : {}),
      sessions,
      ...(args.httpTlsCert !== undefined && args.httpTlsKey !== undefined ? { httpTls: { cert: args.httpTlsCert, key: args.httpTlsKey } } : {}),
      shared: args.shared,
      ...(args.clientId ? { clientId: args.clientId } : {}),
      log,
    });
    await new Promise<void>((resolve) => {
      const stop = (signal: string): void => {
        log.info('serve.stopping', { signal });
        resolve();
      };
      process.once('SIGINT', () => stop('SIGINT'));
      process.once('SIGTERM', () => stop('SIGTERM'));
    });
    await server.close();
  },
});
