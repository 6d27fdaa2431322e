import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * How long a `provisiond` command takes from start to exit, as a shell sees it: `provisiond --help`, and
 * `provisiond enrollment list` against a running server (started here, in its own process, on 127.0.0.1:8443). The
 * compiled CLI (bin/provisiond.js → dist/) is measured, next to bare `node -e 0` (the floor: Node's own start) and
 * the old way, TypeScript compiled at start by tsx. Needs `npm run build` first.
 *
 * `npm run bench:cli -- [--runs 15]` prints JSON: per command the median, the fastest and the slowest wall time.
 */
const args = process.argv.slice(2);
const runs = Number(args[args.indexOf('--runs') + 1] ?? '15') || 15;
const root = join(import.meta.dirname, '..');
const port = 8443;

if (!existsSync(join(root, 'dist', 'main.js'))) {
  process.stderr.write('dist/ is missing: run `npm run build` first\n');
  process.exit(1);
}

const dataDir = mkdtempSync(join(tmpdir(), 'provisiond-cli-bench-'));
const server = spawn(process.execPath, ['--import', 'tsx', join(import.meta.dirname, 'server-process.ts'), dataDir, String(port)], {
  stdio: ['ignore', 'pipe', 'inherit'],
});
const info = await new Promise<{ serviceConnectionString: string; caCertificatePath: string }>((resolve, reject) => {
  let output = '';
  server.stdout.on('data', (chunk: Buffer) => {
    output += chunk.toString();
    const line = output.split('\n').find((text) => text.startsWith('{'));
    if (line !== undefined && output.includes('listening')) resolve(JSON.parse(line) as { serviceConnectionString: string; caCertificatePath: string });
  });
  server.once('exit', (code) => reject(new Error(`server exited (${code})`)));
});
const caFile = join(dataDir, 'ca-copy.pem');
copyFileSync(info.caCertificatePath, caFile);
const env = {
  ...process.env,
  NODE_EXTRA_CA_CERTS: caFile,
  PROVISIOND_CONNECTION_STRING: info.serviceConnectionString.replace('HostName=localhost;', `HostName=localhost:${port};`),
};

function measure(command: string[], times: number): { medianMs: number; minMs: number; maxMs: number } {
  const samples: number[] = [];
  for (let run = 0; run < times; run += 1) {
    const started = process.hrtime.bigint();
    const result = spawnSync(command[0] ?? '', command.slice(1), { cwd: root, env, stdio: ['ignore', 'ignore', 'pipe'] });
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    if (result.status !== 0) throw new Error(`${command.join(' ')} failed: ${result.stderr.toString()}`);
    samples.push(ms);
  }
  samples.sort((a, b) => a - b);
  const round = (ms: number) => Math.round(ms);
  return { medianMs: round(samples[Math.floor(samples.length / 2)] ?? 0), minMs: round(samples[0] ?? 0), maxMs: round(samples.at(-1) ?? 0) };
}

try {
  const node = process.execPath;
  const results = {
    loadAverageAtStart: loadavg().map((value) => Math.round(value * 10) / 10),
    runs,
    'node -e 0 (floor)': measure([node, '-e', '0'], runs),
    'provisiond --help': measure([node, 'bin/provisiond.js', '--help'], runs),
    'provisiond enrollment list': measure([node, 'bin/provisiond.js', 'enrollment', 'list'], runs),
    'uncompiled (tsx src/main.ts) --help': measure([node, '--import', 'tsx', 'src/main.ts', '--help'], Math.min(runs, 5)),
    'uncompiled (tsx src/main.ts) enrollment list': measure([node, '--import', 'tsx', 'src/main.ts', 'enrollment', 'list'], Math.min(runs, 5)),
    loadAverageAtEnd: loadavg().map((value) => Math.round(value * 10) / 10),
  };
  process.stdout.write(`${JSON.stringify(results, null, 2)}\n`);
} finally {
  server.kill('SIGTERM');
  await new Promise((resolve) => server.once('exit', resolve));
  rmSync(dataDir, { recursive: true, force: true });
}
