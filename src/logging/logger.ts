import { Writable } from 'node:stream';
import type { FastifyBaseLogger } from 'fastify';
import pino, { type DestinationStream, type Level } from 'pino';
import type { Config } from '../config/config.js';

/**
 * The operational log. JSON lines on stdout by default (what log collectors read); `logFormat: pretty` prints the
 * same records as short readable lines for a person at a terminal. Every part of the server logs through a child
 * named by its component, whose level `logLevels` can set apart from `logLevel` (e.g. `mqtt=debug` while chasing a
 * device problem without drowning in HTTP request lines).
 */
export const LOG_COMPONENTS = ['http', 'mqtt', 'amqp', 'registrations', 'dataRequests', 'events', 'audit', 'tls'] as const;
export type LogComponent = (typeof LOG_COMPONENTS)[number];

export interface LoggerOptions {
  level: Config['logLevel'];
  format: Config['logFormat'];
  levels: Config['logLevels'];
  /** Defaults to stdout. */
  destination?: NodeJS.WritableStream;
  serializers?: pino.LoggerOptions['serializers'];
}

export function createLogger(options: LoggerOptions): FastifyBaseLogger {
  const out = options.destination ?? process.stdout;
  const destination: DestinationStream = options.format === 'pretty' ? prettyStream(out) : (out as DestinationStream);
  // The root admits the most verbose level any component asks for; each component child filters for itself.
  const logger = pino(
    { level: mostVerbose([options.level, ...Object.values(options.levels)]), ...(options.serializers === undefined ? {} : { serializers: options.serializers }) },
    destination,
  );
  return logger.child({}, { level: options.level }) as unknown as FastifyBaseLogger;
}

/** The logger of one component: its own level when `logLevels` names it, the logger's level otherwise. */
export function componentLogger(logger: FastifyBaseLogger, levels: Config['logLevels'], component: LogComponent): FastifyBaseLogger {
  const level = levels[component];
  return logger.child({ component }, level === undefined ? {} : { level });
}

/** Components named in `logLevels` that the server does not have: a typo there would silently do nothing. */
export function unknownComponents(levels: Config['logLevels']): string[] {
  return Object.keys(levels).filter((name) => !(LOG_COMPONENTS as readonly string[]).includes(name));
}

const ORDER = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'];

function mostVerbose(levels: readonly string[]): Level | 'silent' {
  const index = Math.min(...levels.map((level) => ORDER.indexOf(level)).filter((at) => at >= 0));
  return (ORDER[index] ?? 'info') as Level | 'silent';
}

const LEVEL_NAMES: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' };

/** `12:03:04.567 WARN  [mqtt] message key=value …` — one line per record, the fields pino adds itself left out. */
export function prettyLine(record: Record<string, unknown>): string {
  const { level, time, msg, component, pid: _pid, hostname: _hostname, err, ...fields } = record;
  const when = typeof time === 'number' ? new Date(time).toISOString().slice(11, 23) : '';
  const name = (LEVEL_NAMES[typeof level === 'number' ? level : 30] ?? 'INFO').padEnd(5);
  const parts = [when, name, ...(typeof component === 'string' ? [`[${component}]`] : []), typeof msg === 'string' ? msg : ''];
  for (const [key, value] of Object.entries(fields)) parts.push(`${key}=${typeof value === 'string' ? value : JSON.stringify(value)}`);
  let line = parts.filter((part) => part !== '').join(' ');
  if (err !== null && typeof err === 'object' && 'stack' in err) line += `\n${String((err as { stack: unknown }).stack)}`;
  return `${line}\n`;
}

function prettyStream(out: NodeJS.WritableStream): DestinationStream {
  let pending = '';
  return new Writable({
    write(chunk: Buffer | string, _encoding, done) {
      pending += chunk.toString();
      let newline = pending.indexOf('\n');
      while (newline >= 0) {
        const text = pending.slice(0, newline);
        pending = pending.slice(newline + 1);
        try {
          out.write(prettyLine(JSON.parse(text) as Record<string, unknown>));
        } catch {
          out.write(`${text}\n`);
        }
        newline = pending.indexOf('\n');
      }
      done();
    },
  }) as unknown as DestinationStream;
}
