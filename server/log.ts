/** The server's log: one line per event, `level event key=value ...`, never a secret or a plaintext claim beyond ids. */
export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
export type Log = (level: LogLevel, event: string, fields?: Record<string, unknown>) => void;

export const silentLog: Log = () => undefined;

/** A log writing lines to a stream (stderr by default). */
export function streamLog(stream: NodeJS.WritableStream = process.stderr, minLevel: LogLevel = 'info'): Log {
  const order: Record<LogLevel, number> = { debug: 0, info: 1, warn: 2, error: 3 };
  return (level, event, fields = {}) => {
    if (order[level] < order[minLevel]) return;
    const parts = Object.entries(fields).map(([k, v]) => `${k}=${typeof v === 'string' && !/\s/.test(v) ? v : JSON.stringify(v)}`);
    stream.write(`${new Date().toISOString()} ${level} ${event}${parts.length ? ` ${parts.join(' ')}` : ''}\n`);
  };
}
