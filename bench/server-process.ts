import { writeFileSync } from 'node:fs';
import { createApp } from '../src/app.js';
import { loadConfig } from '../src/config/config.js';

/**
 * The server under test, in its own process so its RSS and CPU are its own. Prints one JSON line when listening.
 * Optional: a store (a postgres:// URL for nodes sharing a database), the address to listen on, and an MQTT/TLS port
 * (0 = no MQTT).
 *
 * Modes: `provisiond`; `baseline`, the machine's keep-alive ceiling (a minimal Fastify TLS server answering a small
 * JSON body); `bare-tls`, the new-connection ceiling (node:https answering one request per connection, then closing).
 */
const [dataDir = '', port = '8443', mode = 'provisiond', store = 'sqlite', listenHost = '127.0.0.1', mqttPort = '0'] = process.argv.slice(2);

if (mode === 'baseline' || mode === 'bare-tls') {
  const { readFileSync } = await import('node:fs');
  const tls = { key: readFileSync(`${dataDir}/tls/server.key`), cert: readFileSync(`${dataDir}/tls/server.pem`) };
  if (mode === 'baseline') {
    const { default: Fastify } = await import('fastify');
    const app = Fastify({ https: tls });
    app.get('/ping', async () => ({ status: 'ok' }));
    await app.listen({ port: Number(port), host: listenHost });
    process.once('SIGTERM', () => void app.close().then(() => process.exit(0)));
  } else {
    const { createServer } = await import('node:https');
    const body = JSON.stringify({ status: 'ok' });
    const server = createServer(tls, (_request, response) => {
      response.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), connection: 'close' });
      response.end(body);
    });
    await new Promise<void>((resolve) => server.listen(Number(port), listenHost, resolve));
    process.once('SIGTERM', () => server.close(() => process.exit(0)));
  }
} else {
  if (process.env.BENCH_COUNT_STATEMENTS === '1') await countStatements();
  if (process.env.BENCH_PG_STATEMENT_TEXTS !== undefined) await countPostgresQueries(process.env.BENCH_PG_STATEMENT_TEXTS);
  const config = loadConfig({
    // PROVISIOND_* settings apply too (e.g. PROVISIOND_STORE_POOL_SIZE); the flags below win.
    env: process.env,
    flags: {
      dataDir,
      httpsPort: Number(port),
      listenHost,
      store,
      hostNames: ['localhost', '127.0.0.1', '127.0.0.2', '127.0.0.3'],
      logLevel: (process.env.BENCH_LOG_LEVEL ?? 'warn') as 'warn',
      // BENCH_DEFAULT_LIMITS=1: the default rate limits, as `npm start` runs them; otherwise both off.
      ...(process.env.BENCH_DEFAULT_LIMITS === '1' ? {} : { registrationsPerSecond: 0, pollsPerSecondPerDevice: 0 }),
      mqttEnabled: Number(mqttPort) > 0,
      ...(Number(mqttPort) > 0 ? { mqttPort: Number(mqttPort) } : {}),
      amqpEnabled: false,
    },
  });
  // BENCH_GROUP_COMMIT=<windowMs>,<maxBatch>: the group commit's settings (bench/README.md "H1").
  const [windowMs, maxBatch] = (process.env.BENCH_GROUP_COMMIT ?? '').split(',').map(Number);
  const groupCommit = windowMs !== undefined && maxBatch !== undefined && maxBatch > 0 ? { windowMs, maxBatch } : undefined;
  const app = await createApp({ config, ...(groupCommit === undefined ? {} : { groupCommit }) });
  await app.listen();
  const info = await app.info();
  // A clean exit on SIGTERM, so --cpu-prof can write its profile.
  process.once('SIGTERM', () => void app.close().then(() => process.exit(0)));
  process.stdout.write(`${JSON.stringify(info)}\n`);
}
process.stdout.write('listening\n');

/**
 * Counts the SQLite statements the server executes (and the commits among them), printed as one JSON line on SIGUSR2:
 * statements per registration is the figure no load on a shared machine can blur.
 */
async function countStatements(): Promise<void> {
  const { default: Database } = await import('better-sqlite3');
  const probe = new Database(':memory:');
  const prototype = Object.getPrototypeOf(probe.prepare('select 1')) as Record<'run' | 'get' | 'all' | 'iterate', (...args: unknown[]) => unknown> & { source: string };
  probe.close();
  // The begin and end of the reads' shared transaction (src/store/dialects/sqlite-shared-reads.ts) apart: one per turn
  // of the event loop that read outside a transaction, standing for the transaction each such read was anyway.
  const { SHARED_READ_BEGIN, SHARED_READ_END } = await import('../src/store/dialects/sqlite-shared-reads.js');
  const counts = { statements: 0, commits: 0, sharedReads: 0 };
  // BENCH_STATEMENT_TEXTS=FILE: also count each SQL text, written to FILE (JSON, most frequent first) on SIGUSR2.
  const textsFile = process.env.BENCH_STATEMENT_TEXTS;
  const texts = new Map<string, number>();
  // and the time spent in each text (µs, wall clock inside the call: the statement's own work, no waiting for others)
  const micros = new Map<string, number>();
  // and the longest single execution (µs): an average pulled up by a few long calls (a checkpoint, a page read) shows
  const longest = new Map<string, number>();
  // and one execution's parameters (the benchmark's own made-up devices), to replay a statement alone
  const examples = new Map<string, unknown[]>();
  for (const method of ['run', 'get', 'all', 'iterate'] as const) {
    const original = prototype[method];
    prototype[method] = function (this: { source: string }, ...args: unknown[]) {
      if (this.source === SHARED_READ_BEGIN) counts.sharedReads += 1;
      else if (this.source !== SHARED_READ_END) counts.statements += 1;
      if (/^\s*commit/i.test(this.source)) counts.commits += 1;
      if (textsFile === undefined) return original.apply(this, args);
      texts.set(this.source, (texts.get(this.source) ?? 0) + 1);
      if (!examples.has(this.source)) examples.set(this.source, args);
      const started = process.hrtime.bigint();
      try {
        return original.apply(this, args);
      } finally {
        const elapsed = Number(process.hrtime.bigint() - started) / 1000;
        micros.set(this.source, (micros.get(this.source) ?? 0) + elapsed);
        if (elapsed > (longest.get(this.source) ?? 0)) longest.set(this.source, elapsed);
      }
    };
  }
  process.on('SIGUSR2', () => {
    if (textsFile !== undefined) {
      const rows = [...texts].map(([text, count]) => [text, count, Math.round(micros.get(text) ?? 0), examples.get(text), Math.round(longest.get(text) ?? 0)] as const);
      writeFileSync(textsFile, JSON.stringify(rows.sort((a, b) => b[1] - a[1]), null, 1));
      texts.clear();
      micros.clear();
      longest.clear();
      examples.clear();
    }
    process.stdout.write(`${JSON.stringify({ statementCounts: counts })}\n`);
  });
}

/**
 * BENCH_PG_STATEMENT_TEXTS=FILE: counts the PostgreSQL queries the server sends (every `Client#query`, each a round
 * trip), by text, written to FILE (JSON, most frequent first, with the total) on SIGUSR2 and then reset.
 */
async function countPostgresQueries(file: string): Promise<void> {
  const { default: pg } = await import('pg');
  const texts = new Map<string, number>();
  const prototype = pg.Client.prototype as unknown as { query: (...args: unknown[]) => unknown };
  const original = prototype.query;
  prototype.query = function (this: unknown, ...args: unknown[]) {
    const first = args[0];
    const text = typeof first === 'string' ? first : typeof first === 'object' && first !== null && 'text' in first ? String((first as { text: unknown }).text) : '?';
    texts.set(text, (texts.get(text) ?? 0) + 1);
    return original.apply(this, args);
  };
  process.on('SIGUSR2', () => {
    const total = [...texts.values()].reduce((sum, count) => sum + count, 0);
    writeFileSync(file, JSON.stringify({ total, texts: [...texts].sort((a, b) => b[1] - a[1]) }, null, 1));
    texts.clear();
  });
}
