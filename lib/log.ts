/**
 * The one logger of the agent and the server: one line per event, no colour.
 * Two line styles: `journal` (the agent's: `LEVEL message key=value ...`,
 * suitable for journald; when stderr is the journal, each line also starts
 * with the syslog priority `<N>` so journald records the level) and
 * `timestamped` (the server's: `ISO-time level event key=value ...`).
 */
import { fstatSync } from 'node:fs';

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
export type LogFields = Readonly<Record<string, unknown>>;

export const LOG_LEVELS: readonly LogLevel[] = ['debug', 'info', 'warn', 'error'];
const RANK: Readonly<Record<LogLevel, number>> = { debug: 0, info: 1, warn: 2, error: 3 };
const SYSLOG_PRIORITY: Readonly<Record<LogLevel, number>> = { debug: 7, info: 6, warn: 4, error: 3 };

export interface Logger {
  debug(message: string, fields?: LogFields): void;
  info(message: string, fields?: LogFields): void;
  warn(message: string, fields?: LogFields): void;
  error(message: string, fields?: LogFields): void;
  /** A logger adding `fields` to every line (e.g. `device=...` when many agents share a process). */
  child(fields: LogFields): Logger;
}

export interface LoggerOptions {
  /** Lowest level written (default info). */
  level?: LogLevel;
  /** Where lines go (without the trailing newline); default: stderr. */
  write?: (line: string) => void;
  /** Prefix lines with `<N>` syslog priorities (default: when stderr is the journal, per JOURNAL_STREAM; never for `timestamped`). */
  syslogPrefix?: boolean;
  /** The line style (default `journal`). */
  style?: 'journal' | 'timestamped';
}

/** Where a logger's events go: level, message (or event name) and fields. */
export type LogSink = (level: LogLevel, message: string, fields: LogFields) => void;

export function isLogLevel(value: unknown): value is LogLevel {
  return typeof value === 'string' && (LOG_LEVELS as readonly string[]).includes(value);
}

/** Formats one event: `LEVEL message key=value` with values quoted when they hold spaces, quotes or `=`. */
export function formatLine(level: LogLevel, message: string, fields: LogFields = {}): string {
  const parts = [level.toUpperCase(), oneLine(message)];
  for (const [k, v] of Object.entries(fields)) {
    if (v === undefined) continue;
    parts.push(`${k}=${formatValue(v)}`);
  }
  return parts.join(' ');
}

/** The server's line: `ISO-time level event key=value`, a value quoted (JSON) unless it is a string without whitespace. */
export function formatTimestampedLine(level: LogLevel, event: string, fields: LogFields = {}, now: Date = new Date()): string {
  const parts = Object.entries(fields).map(([k, v]) => `${k}=${typeof v === 'string' && !/\s/.test(v) ? v : JSON.stringify(v)}`);
  return `${now.toISOString()} ${level} ${event}${parts.length ? ` ${parts.join(' ')}` : ''}`;
}

export function createLogger(options: LoggerOptions = {}): Logger {
  const min = RANK[options.level ?? 'info'];
  const timestamped = options.style === 'timestamped';
  const prefix = !timestamped && (options.syslogPrefix ?? stderrIsJournal());
  const write = options.write ?? ((line: string) => process.stderr.write(`${line}\n`));
  return makeLogger((level, message, fields) => {
    if (RANK[level] < min) return;
    const line = timestamped ? formatTimestampedLine(level, message, fields) : formatLine(level, message, fields);
    write(prefix ? `<${SYSLOG_PRIORITY[level]}>${line}` : line);
  }, {});
}

/** A logger handing every event to `sink` (tests, adapters). */
export function sinkLogger(sink: LogSink): Logger {
  return makeLogger(sink, {});
}

/** A logger that writes nothing. */
export const silentLogger: Logger = sinkLogger(() => undefined);

/** A logger that keeps its lines in memory (tests): `lines` grows, `find` searches. */
export function bufferedLogger(level: LogLevel = 'debug'): { logger: Logger; lines: string[]; find(re: RegExp): string | undefined } {
  const lines: string[] = [];
  const logger = createLogger({ level, syslogPrefix: false, write: (l) => lines.push(l) });
  return { logger, lines, find: (re) => lines.find((l) => re.test(l)) };
}

function makeLogger(sink: LogSink, base: LogFields): Logger {
  const emit = (level: LogLevel) => (message: string, fields?: LogFields) => sink(level, message, { ...base, ...fields });
  return {
    debug: emit('debug'),
    info: emit('info'),
    warn: emit('warn'),
    error: emit('error'),
    child: (fields) => makeLogger(sink, { ...base, ...fields }),
  };
}

function oneLine(s: string): string {
  return s.replace(/[\r\n]+/g, ' ').trim();
}

function formatValue(v: unknown): string {
  const s = oneLine(String(v));
  return s === '' || /[\s"=]/.test(s) ? JSON.stringify(s) : s;
}

/** True when stderr is connected to the journal (systemd sets JOURNAL_STREAM=dev:ino of it). */
function stderrIsJournal(): boolean {
  const stream = process.env.JOURNAL_STREAM;
  if (!stream) return false;
  try {
    const st = fstatSync(2);
    return stream === `${st.dev}:${st.ino}`;
  } catch {
    return false;
  }
}
