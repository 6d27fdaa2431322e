import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { appendFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';

/**
 * `provisiond serve` from dist/ as an operator starts it (`npm start`: plain node, no tsx and its ~45 MiB), with a
 * benchmark's settings (no rate limits, no AMQP, MQTT only when asked); the connection details come from `provisiond
 * info --json` once its banner (stderr) says it listens. Shared by bench/registrations.ts and bench/scale.ts
 * (`--server compiled`); `npm run build` first.
 */
export interface CompiledServer {
  child: ChildProcess;
  /** Every line the process has printed on stdout so far. */
  lines: string[];
  info: { serviceConnectionString: string; idScope: string };
}

export async function startCompiledServer(options: {
  dataDir: string;
  port: number;
  mqttPort?: number;
  /** A `postgres://…` URL, or undefined for SQLite in the data directory. */
  store?: string | undefined;
  nodeFlags?: readonly string[];
  profileDir?: string | undefined;
  /** More `provisiond serve` flags (e.g. `--metrics`). */
  serveFlags?: readonly string[];
}): Promise<CompiledServer> {
  const root = join(import.meta.dirname, '..');
  const bin = join(root, 'bin', 'provisiond.js');
  if (!existsSync(join(root, 'dist', 'main.js'))) throw new Error('--server compiled: run `npm run build` first');
  const profile = options.profileDir === undefined ? [] : ['--cpu-prof', `--cpu-prof-dir=${options.profileDir}`];
  const flags = ['--data-dir', options.dataDir, '--https-port', String(options.port), '--listen-host', '127.0.0.1', '--host-names', 'localhost,127.0.0.1', '--log-level', process.env.BENCH_SERVER_LOG_LEVEL ?? 'warn', '--no-amqp'];
  const mqtt = (options.mqttPort ?? 0) > 0 ? ['--mqtt-port', String(options.mqttPort)] : ['--no-mqtt'];
  const store = options.store === undefined ? [] : ['--store', options.store];
  const child = spawn(process.execPath, [...(options.nodeFlags ?? []), ...profile, bin, 'serve', ...flags, ...mqtt, ...store, ...(options.serveFlags ?? [])], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, PROVISIOND_REGISTRATIONS_PER_SECOND: '0', PROVISIOND_POLLS_PER_SECOND_PER_DEVICE: '0' },
  });
  const lines: string[] = [];
  let banner = '';
  // BENCH_SERVER_STDOUT=FILE also appends what the server prints (e.g. `--node-options --trace-gc`) to FILE.
  const stdoutFile = process.env.BENCH_SERVER_STDOUT;
  child.stdout?.on('data', (chunk: Buffer) => {
    if (stdoutFile !== undefined && stdoutFile !== '') appendFileSync(stdoutFile, chunk);
    lines.push(...chunk.toString().split('\n').filter((line) => line !== ''));
  });
  await new Promise<void>((resolve, reject) => {
    child.stderr?.on('data', (chunk: Buffer) => {
      banner += chunk.toString();
      if (banner.includes('portal:')) resolve();
    });
    child.once('exit', (code) => reject(new Error(`provisiond serve exited with ${code}: ${banner}`)));
  });
  const info = await new Promise<string>((resolve, reject) =>
    execFile(process.execPath, [bin, 'info', '--json', '--data-dir', options.dataDir, ...store], (error, stdout) => (error === null ? resolve(stdout) : reject(error))),
  );
  return { child, lines, info: JSON.parse(info) as CompiledServer['info'] };
}

/** Stops a server process (SIGTERM, as an operator would) and waits for it to exit; one that already exited is done. */
export async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  await exited;
}
