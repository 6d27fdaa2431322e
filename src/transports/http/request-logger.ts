import type { Bindings, ChildLoggerOptions } from 'pino';
import type { FastifyBaseLogger } from 'fastify';

type Level = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace';

/**
 * `request.log` made on first use (issue 12 P1/P6): Fastify gives every request a child of the listener's logger
 * bound to its request ID, and a pino child costs an object and a fresh closure per log level (pino rebuilds them for
 * each child) — made and dropped twice per registration although nothing is logged at the levels a server runs at.
 * This stands in for that child: a call at a level the parent logs (or any call when the parent cannot say) makes
 * the real child once and passes the call on, so what is logged, and with which bindings, is unchanged.
 */
export class RequestLogger {
  readonly #parent: FastifyBaseLogger;
  readonly #bindings: Bindings;
  readonly #options: ChildLoggerOptions;
  #child: FastifyBaseLogger | undefined;

  constructor(parent: FastifyBaseLogger, bindings: Bindings, options: ChildLoggerOptions) {
    this.#parent = parent;
    this.#bindings = bindings;
    this.#options = options;
  }

  /** Fastify's `childLoggerFactory`: a stand-in for the request's child logger. */
  static factory(this: unknown, logger: FastifyBaseLogger, bindings: Bindings, options: ChildLoggerOptions): FastifyBaseLogger {
    return new RequestLogger(logger, bindings, options) as unknown as FastifyBaseLogger;
  }

  #real(): FastifyBaseLogger {
    this.#child ??= this.#parent.child(this.#bindings, this.#options);
    return this.#child;
  }

  /** A call at `level`, passed on to the real child when it can log anything. */
  #call(level: Level, args: unknown[]): void {
    if (!this.#logs(level)) return;
    const child = this.#real();
    Reflect.apply(child[level], child, args);
  }

  /** Whether a call at `level` can log anything: only then is the real child made. */
  #logs(level: Level): boolean {
    if (this.#child !== undefined || this.#options.level !== undefined) return true;
    const parent = this.#parent as FastifyBaseLogger & { isLevelEnabled?: (level: string) => boolean };
    return typeof parent.isLevelEnabled !== 'function' || parent.isLevelEnabled(level);
  }

  get level(): string {
    return this.#child?.level ?? this.#options.level ?? this.#parent.level;
  }

  set level(level: string) {
    this.#real().level = level;
  }

  isLevelEnabled(level: string): boolean {
    const logger = (this.#child ?? this.#parent) as FastifyBaseLogger & { isLevelEnabled?: (level: string) => boolean };
    return this.#logs(level as Level) && (typeof logger.isLevelEnabled !== 'function' || logger.isLevelEnabled(level));
  }

  child(bindings: Bindings, options?: ChildLoggerOptions): FastifyBaseLogger {
    return this.#real().child(bindings, options);
  }

  fatal(...args: unknown[]): void {
    this.#call('fatal', args);
  }

  error(...args: unknown[]): void {
    this.#call('error', args);
  }

  warn(...args: unknown[]): void {
    this.#call('warn', args);
  }

  info(...args: unknown[]): void {
    this.#call('info', args);
  }

  debug(...args: unknown[]): void {
    this.#call('debug', args);
  }

  trace(...args: unknown[]): void {
    this.#call('trace', args);
  }

  silent(): void {}
}
