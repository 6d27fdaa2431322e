import { spawn, type ChildProcess } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CA_DIR } from './harness.js';

/**
 * `provisiond serve` as a real process, for the tests that need one: a kill is a real kill (crash tests), a stop is
 * a real signal (stop test), an installed package runs as installed (package test), nodes are separate processes
 * (cluster test). The one place that knows how such a process is started and when it is ready: once its banner is
 * complete. The banner is printed once every listener is up, on stderr (stdout carries the JSON log), and its last
 * line is the portal's address.
 */

/** Runs provisiond from its sources through tsx: what most tests want (no build needed). */
export const FROM_SOURCE: readonly string[] = [process.execPath, '--import', 'tsx', 'src/main.ts', 'serve'];
/** Runs the compiled `bin/provisiond.js` (dist/, built by scripts/test.sh), as `npm start` and the package do. */
export const FROM_DIST: readonly string[] = [process.execPath, 'bin/provisiond.js', 'serve'];

export interface ServeOptions {
  /** The flags after the command. */
  args: readonly string[];
  /** The command line up to the flags (FROM_SOURCE by default), e.g. ['npm', 'start', '--ignore-scripts', '--']. */
  command?: readonly string[];
  /** Added to this process's environment. */
  env?: Record<string, string>;
  cwd?: string;
  /** stdout: collected into output() (default), or ignored, or passed through to the test's own stdout. */
  stdout?: 'pipe' | 'ignore' | 'inherit';
  /** Its own process group, so stop() reaches every process of a wrapper (npx, npm) at once. */
  detached?: boolean;
  uid?: number;
  gid?: number;
  /** How long the banner may take (default 120 s: a loaded 2-core machine starting tsx is slow). */
  timeoutMs?: number;
}

export interface ServedProvisiond {
  child: ChildProcess;
  /** The banner as printed, up to and including its portal line. */
  banner: string;
  idScope: string;
  /** The service connection string as printed: its key is masked unless this start created the instance. */
  connectionString: string;
  /** The owner key from the banner; '' when the banner masked it. */
  ownerKey: string;
  /** Everything the process wrote so far, stdout (when collected) and stderr, in arrival order. */
  output(): Buffer;
  stdout(): string;
  stderr(): string;
  /** Resolves with the exit code (null after a signal) once the process has exited. */
  exited(): Promise<number | null>;
  /** Sends the signal (to the whole group when detached) and resolves once the process has exited. */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

const BANNER_END = /\n\s*portal:\s+\S+\n/;

/** A fresh data directory holding the test CA, so the tests' HTTPS clients (NODE_EXTRA_CA_CERTS) trust the server. */
export function dataDirWithTestCa(prefix = 'provisiond-process-'): string {
  const dataDir = mkdtempSync(join(tmpdir(), prefix));
  mkdirSync(join(dataDir, 'tls'), { recursive: true });
  copyFileSync(join(CA_DIR, 'ca.pem'), join(dataDir, 'tls', 'ca.pem'));
  copyFileSync(join(CA_DIR, 'ca.key'), join(dataDir, 'tls', 'ca.key'));
  return dataDir;
}

/** Starts `provisiond serve` and resolves once its banner is complete; rejects (and kills it) if it exits or stalls first. */
export async function serveProvisiond(options: ServeOptions): Promise<ServedProvisiond> {
  const [command, ...prefix] = options.command ?? FROM_SOURCE;
  if (command === undefined) throw new Error('serveProvisiond: an empty command');
  const child = spawn(command, [...prefix, ...options.args], {
    cwd: options.cwd ?? process.cwd(),
    env: { ...process.env, ...options.env },
    stdio: ['ignore', options.stdout ?? 'pipe', 'pipe'],
    detached: options.detached ?? false,
    ...(options.uid === undefined ? {} : { uid: options.uid }),
    ...(options.gid === undefined ? {} : { gid: options.gid }),
  });
  const chunks: Buffer[] = [];
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (chunk: Buffer) => {
    chunks.push(chunk);
    stdout += chunk.toString();
  });
  const exit = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const signal = (name: NodeJS.Signals): void => {
    if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return;
    if (options.detached === true) process.kill(-child.pid, name);
    else child.kill(name);
  };
  const banner = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => {
      signal('SIGKILL');
      reject(new Error(`provisiond printed no banner within ${options.timeoutMs ?? 120_000} ms: ${stderr}`));
    }, options.timeoutMs ?? 120_000);
    child.stderr?.on('data', (chunk: Buffer) => {
      chunks.push(chunk);
      stderr += chunk.toString();
      const end = BANNER_END.exec(stderr);
      if (end === null) return;
      clearTimeout(timer);
      const start = stderr.lastIndexOf('provisiond instance', end.index);
      resolve(stderr.slice(start < 0 ? 0 : start, end.index + end[0].length));
    });
    void exit.then((code) => {
      clearTimeout(timer);
      reject(new Error(`provisiond exited (${code}) before its banner: ${stderr}${stdout}`));
    });
  });
  const connectionString = /service connection string:\s+(\S+)/.exec(banner)?.[1] ?? '';
  const ownerKey = /SharedAccessKey=([^;\s]+)/.exec(connectionString)?.[1] ?? '';
  return {
    child,
    banner,
    idScope: /ID scope:\s+(\S+)/.exec(banner)?.[1] ?? '',
    connectionString,
    ownerKey: ownerKey === '****' ? '' : ownerKey,
    output: () => Buffer.concat(chunks),
    stdout: () => stdout,
    stderr: () => stderr,
    exited: () => exit,
    stop(name: NodeJS.Signals = 'SIGTERM') {
      signal(name);
      return exit;
    },
  };
}
