import { fork, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import Database from 'better-sqlite3';
import { Agent, request } from 'undici';
import { createSasToken } from '../src/domain/sas.js';
import { startCompiledServer, stopChild } from './compiled-server.js';

/**
 * Benchmark (not a test) of the scale paths of issue 12, against a real provisiond in its own process on the embedded
 * SQLite store:
 *
 *   P4     bulk-import N individual enrollments through the service API (batches of 1,000, `--concurrency` at once):
 *          wall time, server CPU, peak server RSS.
 *   P5     at N enrollments + N registration records + 4N log events (seeded straight into the database file, then
 *          measured through the real API): p50/p99 of a query page of 100 (enrollments, records, log), of an export
 *          of one subject and of an erase of one subject — from sending the request to the answer's last byte, and
 *          (`parsed`) to the end of the client's JSON.parse of it. 1,000 samples a page by default (a p99 of 100 is
 *          the second-slowest request), 100 exports and erases (each of its own subject).
 *   purge  N operations past their retention: how long the start-up purge takes and the longest event-loop stall
 *          of the server while it runs (`monitorEventLoopDelay` inside the server process).
 *   P6     server RSS idle (after start and after a P4 of 10,000), the heap, and what is loaded.
 *
 *   npm run bench:scale -- --mode p4|p5|purge|p6 [--n 1000000] [--concurrency 2] [--samples 1000] [--port 8443] [--profile DIR]
 *     [--server tsx|compiled] (compiled: `provisiond serve` from dist/ as `npm start` runs it; `npm run build` first)
 *     [--node-options '--flag …'] (the compiled server's Node flags)
 *     [--warmup 200] (p5: operations run first in each measurement, reported apart as `warmupMs`, not in p50/p99/CPU)
 *     [--start-warmup 10] (p5: rounds of three pages — enrollments, records, log — answered once the server started,
 *     before any measurement)
 *     [--server-latency yes] (p5: the server also serves its metrics, and each measurement reports how long its
 *     requests took inside the server — `provisiond_service_api_request_duration_seconds` read before and after it:
 *     how many took over 5 ms, and the bucket edge under which 99 % of them ended — beside what the client saw)
 *     [--store postgres://…] (p4 and p5 on that PostgreSQL database; give an empty one, and for p5 `--data DIR` to
 *     reuse its seeding)
 *     [--page-cache as-found|warm] (p5 on SQLite: `warm` reads the store's files once before the server starts, so
 *     the measurements find them in the kernel's page cache as on a server that has run a while; `as-found`, the
 *     default, leaves the cache as it is — after seeding, or on a kept store the machine has since evicted, the reads
 *     go to the disk)
 */
const args = new Map<string, string>();
for (let i = 2; i < process.argv.length; i += 2) args.set(process.argv[i]?.replace(/^--/, '') ?? '', process.argv[i + 1] ?? '');
const storeUrl = args.get('store');
/** Node/V8 flags for the compiled server (`--node-options '--flag …'`), to measure a setting before making it a default. */
const NODE_FLAGS = (args.get('node-options') ?? '').split(' ').filter((flag) => flag !== '');
/** p5 `--server-latency yes`: the server serves /metrics, and each measurement reads its request-duration histogram. */
const serverLatency = args.get('server-latency') === 'yes';


/** The server side: provisiond as `provisiond serve` runs it, answering `stats` messages from the bench. */
async function serve(dataDir: string, port: number): Promise<void> {
  const delay = monitorEventLoopDelay({ resolution: 5 });
  delay.enable();
  const timesFile = process.env.BENCH_STATEMENT_TIMES;
  if (timesFile !== undefined) await timeStatements(timesFile);
  const pgTextsFile = process.env.BENCH_PG_STATEMENT_TEXTS;
  if (pgTextsFile !== undefined) await countPostgresQueries(pgTextsFile);
  // As src/main.ts's serve does with V8's heap (P6): the young generation held while starting, then bounded and grown
  // only under sustained allocation, the old space's growth limited, the start's garbage collected once listening.
  const heap = await import('../src/runtime/young-generation.js');
  heap.holdYoungGeneration();
  const { createApp } = await import('../src/app.js');
  const { loadConfig } = await import('../src/config/config.js');
  const config = loadConfig({
    flags: {
      dataDir,
      httpsPort: port,
      listenHost: '127.0.0.1',
      hostNames: ['localhost'],
      logLevel: 'warn',
      registrationsPerSecond: 0,
      pollsPerSecondPerDevice: 0,
      mqttEnabled: false,
      amqpEnabled: false,
      // `--store postgres://…`: the server's store is that PostgreSQL database instead of SQLite in its data directory.
      ...(storeUrl === undefined ? {} : { store: storeUrl }),
      ...(serverLatency ? { metricsEnabled: true } : {}),
    },
  });
  const app = await createApp({ config });
  await app.listen();
  heap.capYoungGeneration();
  heap.limitOldGenerationGrowth();
  heap.collectStartupGarbage();
  // Stalls from here on are the server's own work (before it: loading and compiling modules, the start's collection).
  delay.reset();
  const info = await app.info();
  process.on('message', (message: unknown) => {
    if (message === 'stats') {
      const usage = process.memoryUsage();
      process.send?.({ maxStallMs: delay.max / 1e6, p99StallMs: delay.percentile(99) / 1e6, heapUsedMiB: usage.heapUsed / 2 ** 20, rssMiB: usage.rss / 2 ** 20 });
      delay.reset();
    } else if (message === 'stop') {
      void app.close().then(() => process.exit(0));
    }
  });
  process.send?.({ listening: true, serviceConnectionString: info.serviceConnectionString });
}

/**
 * BENCH_STATEMENT_TIMES=FILE: times every SQLite statement the server runs, by SQL text (count, total and worst ms),
 * written to FILE (JSON, most total time first) when the server stops: where a p99 goes, statement by statement. Each
 * text also counts `autocommits`: its writes run outside any transaction, each of which is a commit of its own (with a
 * `commit` text's count, every commit the server made); a `wal_checkpoint` counts `walBytes`, the size of the WAL file
 * when it ran (what the commits since the last checkpoint appended, which the checkpoint reads and copies back).
 */
async function timeStatements(file: string): Promise<void> {
  const probe = new Database(':memory:');
  type Statement = { source: string; reader: boolean; database: { inTransaction: boolean; name: string } };
  const prototype = Object.getPrototypeOf(probe.prepare('select 1')) as Record<'run' | 'get' | 'all' | 'iterate', (...args: unknown[]) => unknown>;
  probe.close();
  const times = new Map<string, { count: number; autocommits: number; walBytes: number; totalMs: number; maxMs: number }>();
  for (const method of ['run', 'get', 'all'] as const) {
    const original = prototype[method];
    prototype[method] = function (this: Statement, ...args: unknown[]) {
      const autocommit = !this.reader && !this.database.inTransaction && !/^\s*(begin|commit|rollback|savepoint|release|pragma)/i.test(this.source);
      const walBytes = /wal_checkpoint/i.test(this.source) && existsSync(`${this.database.name}-wal`) ? statSync(`${this.database.name}-wal`).size : 0;
      const startedAt = performance.now();
      try {
        return original.apply(this, args);
      } finally {
        const ms = performance.now() - startedAt;
        const entry = times.get(this.source) ?? { count: 0, autocommits: 0, walBytes: 0, totalMs: 0, maxMs: 0 };
        entry.count += 1;
        if (autocommit) entry.autocommits += 1;
        entry.walBytes += walBytes;
        entry.totalMs += ms;
        entry.maxMs = Math.max(entry.maxMs, ms);
        times.set(this.source, entry);
      }
    };
  }
  process.once('exit', () => {
    const sorted = [...times].sort((a, b) => b[1].totalMs - a[1].totalMs).map(([sql, entry]) => ({ sql: sql.slice(0, 400), ...entry }));
    writeFileSync(file, JSON.stringify(sorted, null, 1));
  });
}

/**
 * BENCH_PG_STATEMENT_TEXTS=FILE: every query the server sends to PostgreSQL (each `Client#query` one round trip), by
 * text, with the time until its answer (count, total and worst ms), written to FILE (JSON, most frequent first, with
 * the total) when the server stops: the round trips of an export or an erase.
 */
async function countPostgresQueries(file: string): Promise<void> {
  const { default: pg } = await import('pg');
  const texts = new Map<string, { count: number; totalMs: number; maxMs: number }>();
  const prototype = pg.Client.prototype as unknown as { query: (...args: unknown[]) => unknown };
  const original = prototype.query;
  prototype.query = function (this: unknown, ...args: unknown[]) {
    const first = args[0];
    const text = typeof first === 'string' ? first : typeof first === 'object' && first !== null && 'text' in first ? String((first as { text: unknown }).text) : '?';
    const entry = texts.get(text) ?? { count: 0, totalMs: 0, maxMs: 0 };
    texts.set(text, entry);
    entry.count += 1;
    const startedAt = performance.now();
    const result = original.apply(this, args);
    if (result instanceof Promise) {
      void result.then(
        () => {
          const ms = performance.now() - startedAt;
          entry.totalMs += ms;
          entry.maxMs = Math.max(entry.maxMs, ms);
        },
        () => undefined,
      );
    }
    return result;
  };
  process.once('exit', () => {
    const total = [...texts.values()].reduce((sum, entry) => sum + entry.count, 0);
    const sorted = [...texts].sort((a, b) => b[1].count - a[1].count).map(([sql, entry]) => ({ sql: sql.slice(0, 400), ...entry }));
    writeFileSync(file, JSON.stringify({ total, texts: sorted }, null, 1));
  });
}

interface Server {
  child: ChildProcess;
  base: string;
  agent: Agent;
  token(): string;
  /** From the tsx server's probe; a compiled server (`--server compiled`) has only its RSS. */
  stats(): Promise<{ maxStallMs?: number; p99StallMs?: number; heapUsedMiB?: number; rssMiB: number }>;
  stop(): Promise<void>;
}

/**
 * `--server compiled`: `provisiond serve` from dist/ as `npm start` runs it (bench/compiled-server.ts), so its RSS has
 * no tsx in it and it manages its heap as `serve` does (src/main.ts); its stats come from /proc (no heap figures or
 * event-loop stalls: those need the tsx server's probe).
 */
async function startCompiled(dataDir: string, port: number): Promise<Server> {
  const server = await startCompiledServer({
    dataDir,
    port,
    store: storeUrl,
    nodeFlags: NODE_FLAGS,
    ...(args.has('profile') ? { profileDir: args.get('profile') } : {}),
    ...(serverLatency ? { serveFlags: ['--metrics'] } : {}),
  });
  return connect(server.child, dataDir, port, server.info.serviceConnectionString, async () => ({ rssMiB: rssMiB(server.child.pid) }), () => stopChild(server.child));
}

async function start(dataDir: string, port: number): Promise<Server> {
  if (args.get('server') === 'compiled') return startCompiled(dataDir, port);
  const child = fork(import.meta.filename, ['--serve', dataDir, '--port', String(port), ...(storeUrl === undefined ? [] : ['--store', storeUrl])], { execArgv: ['--import', 'tsx', ...(args.has('profile') ? ['--cpu-prof', `--cpu-prof-dir=${args.get('profile')}`] : [])], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const info = await new Promise<{ serviceConnectionString: string }>((resolve, reject) => {
    child.once('message', (message) => resolve(message as { serviceConnectionString: string }));
    child.once('exit', (code) => reject(new Error(`server exited with ${code}`)));
  });
  return connect(
    child,
    dataDir,
    port,
    info.serviceConnectionString,
    () =>
      new Promise((resolve) => {
        child.once('message', (message) => resolve(message as Awaited<ReturnType<Server['stats']>>));
        child.send('stats');
      }),
    async () => {
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.send('stop');
      await exited;
    },
  );
}

function connect(child: ChildProcess, dataDir: string, port: number, serviceConnectionString: string, stats: Server['stats'], stopServer: () => Promise<void>): Server {
  // A bench that fails leaves no server behind.
  process.once('exit', () => child.kill());
  const ownerKey = /SharedAccessKey=([^;]+)/.exec(serviceConnectionString)?.[1] ?? '';
  // Generous timeouts: on a loaded shared machine a request behind a long stall is a figure, not a failure.
  const agent = new Agent({
    connect: { ca: readFileSync(join(dataDir, 'tls', 'ca.pem'), 'utf8'), servername: 'localhost', timeout: 600_000 },
    connections: 16,
    headersTimeout: 0,
    bodyTimeout: 0,
  });
  return {
    child,
    base: `https://127.0.0.1:${port}`,
    agent,
    token: () => createSasToken({ resource: 'localhost', keyBase64: ownerKey, keyName: 'provisioningserviceowner', expirySeconds: Math.floor(Date.now() / 1000) + 3600 }),
    stats,
    stop: async () => {
      await agent.close();
      await stopServer();
    },
  };
}

/** One timed operation: to the answer's last byte, and to the end of the client's parsing of it. */
interface Timing {
  ms: number;
  parsedMs: number;
}

async function call(server: Server, method: 'GET' | 'POST' | 'PUT', path: string, body?: unknown, headers: Record<string, string> = {}) {
  const response = await request(`${server.base}${path}${path.includes('?') ? '&' : '?'}api-version=2021-10-01`, {
    method,
    dispatcher: server.agent,
    headers: { authorization: server.token(), 'content-type': 'application/json', ...headers },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  const text = await response.body.text();
  const receivedAt = performance.now();
  if (response.statusCode >= 300) throw new Error(`${method} ${path} → ${response.statusCode} ${text.slice(0, 300)}`);
  return { json: JSON.parse(text) as unknown, headers: response.headers, receivedAt };
}

/** The server's request-duration histogram summed over its routes (`--server-latency yes`): count per bucket edge. */
interface Durations {
  buckets: Map<string, number>;
  count: number;
  sumSeconds: number;
}
async function requestDurations(server: Server): Promise<Durations> {
  const response = await request(`${server.base}/metrics`, { dispatcher: server.agent });
  const text = await response.body.text();
  if (response.statusCode !== 200) throw new Error(`GET /metrics → ${response.statusCode} ${text.slice(0, 200)}`);
  const durations: Durations = { buckets: new Map(), count: 0, sumSeconds: 0 };
  const name = 'provisiond_service_api_request_duration_seconds';
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const value = Number(line.slice(line.lastIndexOf(' ') + 1));
    if (line.startsWith(`${name}_bucket{`)) {
      const edge = /le="([^"]+)"/.exec(line)?.[1] ?? '';
      durations.buckets.set(edge, (durations.buckets.get(edge) ?? 0) + value);
    } else if (line.startsWith(`${name}_count`)) durations.count += value;
    else if (line.startsWith(`${name}_sum`)) durations.sumSeconds += value;
  }
  return durations;
}
/** What the server measured of a measurement's requests: how many, their mean, how many over 5 ms, and the p99's bucket. */
interface InServer {
  requests: number;
  meanMs: number;
  over5Ms: number;
  /** The smallest bucket edge (ms) that at least 99 % of the requests ended under. */
  p99AtMostMs: number;
}
function durationsSince(before: Durations, after: Durations): InServer {
  const requests = after.count - before.count;
  const under = (edge: string) => (after.buckets.get(edge) ?? 0) - (before.buckets.get(edge) ?? 0);
  const edges = [...after.buckets.keys()].filter((edge) => edge !== '+Inf').sort((a, b) => Number(a) - Number(b));
  const p99Edge = edges.find((edge) => under(edge) >= 0.99 * requests);
  return {
    requests,
    meanMs: Number((((after.sumSeconds - before.sumSeconds) / Math.max(1, requests)) * 1000).toFixed(2)),
    over5Ms: requests - under('0.005'),
    p99AtMostMs: p99Edge === undefined ? Infinity : Number(p99Edge) * 1000,
  };
}

function rssMiB(pid: number | undefined): number {
  return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0) / 1024;
}
/** The process's CPU time (user + system) in ms, from /proc (clock ticks of 10 ms). */
function cpuMs(pid: number | undefined): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? [];
  return (Number(fields[11] ?? 0) + Number(fields[12] ?? 0)) * 10;
}
/** The kernel's part of {@link cpuMs} (system time: the writes, the checkpoint's copying, the TLS sockets). */
function systemCpuMs(pid: number | undefined): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? [];
  return Number(fields[12] ?? 0) * 10;
}
/**
 * The nearest-rank percentile: the smallest value with at least p % of the values at or below it. (Before session 25
 * this took the value one rank higher: of 100 samples, the "p99" was the slowest one.)
 */
const percentile = (values: number[], p: number): number => {
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((sorted.length * p) / 100) - 1));
  return Number((sorted[rank] ?? NaN).toFixed(2));
};
const key = Buffer.alloc(32, 7).toString('base64');
const enrollment = (registrationId: string) => ({ registrationId, attestation: { type: 'symmetricKey', symmetricKey: { primaryKey: key, secondaryKey: key } } });

async function bulkImport(server: Server, n: number, concurrency: number, prefix: string): Promise<void> {
  let next = 0;
  const worker = async () => {
    for (;;) {
      const from = next;
      next += 1000;
      if (from >= n) return;
      const items = Array.from({ length: Math.min(1000, n - from) }, (_, i) => enrollment(`${prefix}-${String(from + i).padStart(7, '0')}`));
      const { json } = await call(server, 'POST', '/enrollments', { mode: 'create', enrollments: items });
      if ((json as { isSuccessful: boolean }).isSuccessful !== true) throw new Error(`bulk failed: ${JSON.stringify(json).slice(0, 300)}`);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
}

async function main(): Promise<void> {
  const mode = args.get('mode') ?? 'p4';
  const n = Number(args.get('n') ?? 1_000_000);
  const port = Number(args.get('port') ?? 8443);
  // `--data DIR` keeps the data directory (and for p5 its seeded store, reused by the next run with the same DIR).
  const keep = args.get('data');
  const dataDir = keep ?? mkdtempSync(join(tmpdir(), 'provisiond-scale-'));
  const results: Record<string, unknown> = { mode, n, loadAverageBefore: loadavg().map((value) => Number(value.toFixed(2))) };
  try {
    if (mode === 'p4') results.p4 = await p4(dataDir, port, n, Number(args.get('concurrency') ?? 2));
    else if (mode === 'p5') results.p5 = await p5(dataDir, port, n, Number(args.get('samples') ?? 1000));
    else if (mode === 'purge') results.purge = await purge(dataDir, port, n);
    else if (mode === 'p6') results.p6 = await p6(dataDir, port);
    else throw new Error(`unknown mode ${mode}`);
  } finally {
    if (keep === undefined) rmSync(dataDir, { recursive: true, force: true });
  }
  results.loadAverageAfter = loadavg().map((value) => Number(value.toFixed(2)));
  console.log(JSON.stringify(results, null, 2));
}

async function p4(dataDir: string, port: number, n: number, concurrency: number) {
  const server = await start(dataDir, port);
  try {
    let peakRss = rssMiB(server.child.pid);
    const sampler = setInterval(() => (peakRss = Math.max(peakRss, rssMiB(server.child.pid))), 100);
    const cpuBefore = cpuMs(server.child.pid);
    const clientBefore = process.cpuUsage();
    const startedAt = performance.now();
    await bulkImport(server, n, concurrency, 'p4');
    const seconds = (performance.now() - startedAt) / 1000;
    const client = process.cpuUsage(clientBefore);
    clearInterval(sampler);
    const cpu = cpuMs(server.child.pid) - cpuBefore;
    // What an item costs on disk (the database and its WAL: rows and index entries), a figure no load can blur; on
    // PostgreSQL the two tables an import writes, with their indexes.
    let bytes: number;
    if (storeUrl === undefined) {
      const db = new Database(join(dataDir, 'provisiond.db'), { readonly: true });
      const pages = (db.pragma('page_count', { simple: true }) as number) - (db.pragma('freelist_count', { simple: true }) as number);
      bytes = pages * (db.pragma('page_size', { simple: true }) as number);
      db.close();
    } else {
      bytes = Number(await postgresScalar(storeUrl, "select pg_total_relation_size('enrollments') + pg_total_relation_size('audit_events')"));
    }
    return {
      seconds: Number(seconds.toFixed(1)),
      itemsPerSecond: Math.round(n / seconds),
      serverCpuUsPerItem: Number(((cpu * 1000) / n).toFixed(1)),
      // The bench's own CPU (this process: bodies, TLS, responses, the RSS sampler), on the same two cores.
      clientCpuUsPerItem: Number(((client.user + client.system) / n).toFixed(1)),
      peakRssMiB: Math.round(peakRss),
      storeBytesPerItem: Math.round(bytes / n),
      concurrency,
      // The server's heap and RSS at the end (what of the peak is the JavaScript heap).
      serverAtEnd: await server.stats(),
    };
  } finally {
    await server.stop();
  }
}

/** The instance's ID and one row of each kind, as templates for the seeded rows. */
function seed(dataDir: string, rows: { enrollments: number; records: number; events: number; operations: number; operationsUpdatedAt?: string }): void {
  const db = new Database(join(dataDir, 'provisiond.db'));
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = OFF');
  const instanceId = (db.prepare('select id from instances limit 1').get() as { id: string }).id;
  const template = db.prepare("select doc from enrollments where instance_id = ? limit 1").get(instanceId) as { doc: string };
  const base = JSON.parse(template.doc) as Record<string, unknown>;
  const eventTemplate = JSON.parse((db.prepare('select doc from audit_events where instance_id = ? limit 1').get(instanceId) as { doc: string }).doc) as Record<string, unknown>;
  const id = (i: number) => `seed-${String(i).padStart(7, '0')}`;
  const now = new Date().toISOString().replace('Z', '0000Z');
  const insertEnrollment = db.prepare(
    'insert into enrollments (instance_id, registration_id_key, device_id_key, provisioning_status, attestation_type, etag, doc) values (?, ?, ?, ?, ?, ?, ?)',
  );
  const insertRecord = db.prepare(
    'insert into registrations (instance_id, registration_id_key, device_id_key, group_id_key, status, assigned_hub_key, etag, doc) values (?, ?, ?, ?, ?, ?, ?, ?)',
  );
  const insertEvent = db.prepare(
    'insert into audit_events (instance_id, event_id, time_utc, kind, actor, outcome, event_class, registration_id_key, device_id_key, group_id_key, doc) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
  );
  const insertOperation = db.prepare('insert into operations (instance_id, operation_id, registration_id_key, updated_at, doc) values (?, ?, ?, ?, ?)');
  const chunk = (count: number, write: (i: number) => void) => {
    for (let from = 0; from < count; from += 50_000) db.transaction(() => { for (let i = from; i < Math.min(count, from + 50_000); i += 1) write(i); })();
  };
  chunk(rows.enrollments, (i) => insertEnrollment.run(instanceId, id(i), id(i), 'enabled', 'symmetrickey', `"e${i}"`, JSON.stringify({ ...base, registrationId: id(i), etag: `"e${i}"` })));
  chunk(rows.records, (i) =>
    insertRecord.run(
      instanceId, id(i), id(i), 'seed-group', 'assigned', 'localhost', `"r${i}"`,
      JSON.stringify({ registrationId: id(i), deviceId: id(i), createdDateTimeUtc: now, assignedHub: 'localhost', status: 'assigned', substatus: 'initialAssignment', lastUpdatedDateTimeUtc: now, etag: `"r${i}"`, enrollmentGroupId: 'seed-group', attestationType: 'symmetricKey' }),
    ),
  );
  // A month of log, in time order, each event's ID made from its own time (as services/audit-log.ts makes them): per
  // subject a service-API create, a registration, its hub write and an operator's read; about 1 % failures.
  const monthAgo = Date.now() - 30 * 86_400_000;
  const spanMs = 30 * 86_400_000 - 60_000;
  const shapes = [
    { kind: 'serviceApi', actor: 'provisioningserviceowner', eventClass: 'change', operation: 'IndividualEnrollment_CreateOrUpdate' },
    { kind: 'registration', actor: 'device', eventClass: 'change', operation: 'register' },
    { kind: 'hubWrite', actor: 'device', eventClass: 'change', operation: 'createDevice' },
    { kind: 'serviceApi', actor: 'provisioningserviceowner', eventClass: 'access', operation: 'IndividualEnrollment_Get' },
  ] as const;
  chunk(rows.events, (i) => {
    const subject = id(Math.floor(i / 4) % Math.max(1, rows.enrollments));
    const ms = monthAgo + Math.floor((i * spanMs) / Math.max(1, rows.events));
    const eventId = `${ms.toString(16).padStart(12, '0')}0000${i.toString(16).padStart(8, '0')}`;
    const timeUtc = new Date(ms).toISOString().replace('Z', '0000Z');
    const shape = shapes[i % 4] ?? shapes[0];
    const outcome = i % 97 === 0 ? 'failure' : 'success';
    const doc = { ...eventTemplate, eventId, timeUtc, kind: shape.kind, actor: shape.actor, operation: shape.operation, outcome, class: shape.eventClass, subject: { registrationId: subject } };
    insertEvent.run(instanceId, eventId, timeUtc, shape.kind, shape.actor, outcome, shape.eventClass, subject, '', '', JSON.stringify(doc));
  });
  const updatedAt = rows.operationsUpdatedAt ?? now;
  chunk(rows.operations, (i) =>
    insertOperation.run(instanceId, `op-${i}`, id(i % Math.max(1, rows.enrollments)), updatedAt, JSON.stringify({ operationId: `op-${i}`, registrationId: id(i), status: 'assigned', createdDateTimeUtc: updatedAt, lastUpdatedDateTimeUtc: updatedAt })),
  );
  // No ANALYZE: a real server never runs one, so the planner works here as it does there.
  db.close();
}

async function postgresScalar(url: string, text: string): Promise<unknown> {
  const { default: pg } = await import('pg');
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return Object.values((await client.query(text)).rows[0] ?? {})[0];
  } finally {
    await client.end();
  }
}

/**
 * What seed() writes into a SQLite file, made by PostgreSQL itself (`generate_series`, one statement per table): N
 * enrollments, N records of one group, 4N log events (a month, IDs made from their times) and N operations. Then
 * ANALYZE, as autovacuum does on its own minutes after a load of this size.
 */
async function seedPostgres(url: string, n: number): Promise<void> {
  const { default: pg } = await import('pg');
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    const instanceId = (await client.query<{ id: string }>('select id from instances limit 1')).rows[0]?.id ?? '';
    const enrollmentDoc = (await client.query<{ doc: string }>('select doc from enrollments where instance_id = $1 limit 1', [instanceId])).rows[0]?.doc ?? '{}';
    const eventDoc = (await client.query<{ doc: string }>('select doc from audit_events where instance_id = $1 limit 1', [instanceId])).rows[0]?.doc ?? '{}';
    const id = (i: string) => `('seed-' || lpad((${i})::text, 7, '0'))`;
    await client.query(
      `insert into enrollments (instance_id, registration_id_key, device_id_key, provisioning_status, attestation_type, etag, doc)
       select $1, ${id('i')}, ${id('i')}, 'enabled', 'symmetrickey', '"e' || i || '"',
              ($2::jsonb || jsonb_build_object('registrationId', ${id('i')}, 'etag', '"e' || i || '"'))::text
       from generate_series(0, $3::int - 1) as i`,
      [instanceId, enrollmentDoc, n],
    );
    const now = new Date().toISOString().replace('Z', '0000Z');
    await client.query(
      `insert into registrations (instance_id, registration_id_key, device_id_key, group_id_key, status, assigned_hub_key, etag, doc)
       select $1, ${id('i')}, ${id('i')}, 'seed-group', 'assigned', 'localhost', '"r' || i || '"',
              jsonb_build_object('registrationId', ${id('i')}, 'deviceId', ${id('i')}, 'createdDateTimeUtc', $2::text, 'assignedHub', 'localhost',
                'status', 'assigned', 'substatus', 'initialAssignment', 'lastUpdatedDateTimeUtc', $2::text, 'etag', '"r' || i || '"',
                'enrollmentGroupId', 'seed-group', 'attestationType', 'symmetricKey')::text
       from generate_series(0, $3::int - 1) as i`,
      [instanceId, now, n],
    );
    const monthAgo = Date.now() - 30 * 86_400_000;
    const spanMs = 30 * 86_400_000 - 60_000;
    await client.query(
      `insert into audit_events (instance_id, event_id, time_utc, kind, actor, outcome, event_class, registration_id_key, device_id_key, group_id_key, doc)
       select $1, e.event_id, e.time_utc, e.kind, e.actor, e.outcome, e.class, e.subject, '', '',
              ($2::jsonb || jsonb_build_object('eventId', e.event_id, 'timeUtc', e.time_utc, 'kind', e.kind, 'actor', e.actor, 'operation', e.operation,
                'outcome', e.outcome, 'class', e.class, 'subject', jsonb_build_object('registrationId', e.subject)))::text
       from (
         select lpad(to_hex(ms), 12, '0') || '0000' || lpad(to_hex(i), 8, '0') as event_id,
                to_char(to_timestamp(ms / 1000.0) at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS') || '0000Z' as time_utc,
                (array['serviceApi', 'registration', 'hubWrite', 'serviceApi'])[i % 4 + 1] as kind,
                (array['provisioningserviceowner', 'device', 'device', 'provisioningserviceowner'])[i % 4 + 1] as actor,
                (array['IndividualEnrollment_CreateOrUpdate', 'register', 'createDevice', 'IndividualEnrollment_Get'])[i % 4 + 1] as operation,
                (array['change', 'change', 'change', 'access'])[i % 4 + 1] as class,
                case when i % 97 = 0 then 'failure' else 'success' end as outcome,
                ${id('(i / 4) % $3::int')} as subject
         from (select i, $4::bigint + (i::bigint * $5::bigint) / (4 * $3::bigint) as ms from generate_series(0, 4 * $3::int - 1) as i) as t
       ) as e`,
      [instanceId, eventDoc, n, monthAgo, spanMs],
    );
    await client.query(
      `insert into operations (instance_id, operation_id, registration_id_key, updated_at, doc)
       select $1, 'op-' || i, ${id('i')}, $2::text,
              jsonb_build_object('operationId', 'op-' || i, 'registrationId', ${id('i')}, 'status', 'assigned', 'createdDateTimeUtc', $2::text, 'lastUpdatedDateTimeUtc', $2::text)::text
       from generate_series(0, $3::int - 1) as i`,
      [instanceId, now, n],
    );
    await client.query('analyze');
  } finally {
    await client.end();
  }
}

/** Reads the SQLite store's files once (`--page-cache warm`), so the kernel holds them in its page cache. */
function warmPageCache(dataDir: string): string {
  const startedAt = performance.now();
  const chunk = Buffer.allocUnsafe(16 * 1024 * 1024);
  let bytes = 0;
  for (const name of ['provisiond.db', 'provisiond.db-wal']) {
    const file = join(dataDir, name);
    if (!existsSync(file)) continue;
    const fd = openSync(file, 'r');
    try {
      for (let read = readSync(fd, chunk); read > 0; read = readSync(fd, chunk)) bytes += read;
    } finally {
      closeSync(fd);
    }
  }
  return `warmed: ${Math.round(bytes / 1024 / 1024)} MiB read in ${((performance.now() - startedAt) / 1000).toFixed(1)} s`;
}

async function p5(dataDir: string, port: number, n: number, samples: number) {
  const seeded = join(dataDir, `seeded-${n}`);
  let seedSeconds = 0;
  if (!existsSync(seeded)) {
    // A first start creates the instance and its database; one enrollment and one log event serve as templates.
    const first = await start(dataDir, port);
    await bulkImport(first, 1, 1, 'template');
    // The records belong to one group (the registration query pages a group's records).
    await call(first, 'PUT', '/enrollmentGroups/seed-group', { enrollmentGroupId: 'seed-group', attestation: { type: 'symmetricKey' } });
    await first.stop();
    const seededAt = performance.now();
    if (storeUrl === undefined) seed(dataDir, { enrollments: n, records: n, events: 4 * n, operations: n });
    else await seedPostgres(storeUrl, n);
    seedSeconds = Number(((performance.now() - seededAt) / 1000).toFixed(1));
    writeFileSync(seeded, '');
  }
  const pageCache = args.get('page-cache') === 'warm' && storeUrl === undefined ? warmPageCache(dataDir) : 'as found';
  const server = await start(dataDir, port);
  try {
    // A request's latency is to the answer's last byte (as wrk and k6 count it); with the client's own JSON.parse of the
    // answer after that (0.01–0.25 ms at p50 in session 34) it is reported apart: `parsed`.
    const timed = async (work: () => Promise<{ receivedAt: number }>): Promise<Timing> => {
      const startedAt = performance.now();
      const { receivedAt } = await work();
      return { ms: receivedAt - startedAt, parsedMs: performance.now() - startedAt };
    };
    const randomId = () => `seed-${String(Math.floor(Math.random() * n)).padStart(7, '0')}`;
    const page = (path: string, body: unknown, from?: string) => async () => {
      // A page in the middle of the key range: the continuation of a one-item page that ends at a random key.
      const headers: Record<string, string> = { 'x-ms-max-item-count': '100' };
      if (from !== undefined) headers['x-ms-continuation'] = from;
      return call(server, 'POST', path, body, headers);
    };
    const continuationAt = async (path: string, body: unknown) =>
      (await call(server, 'POST', path, body, { 'x-ms-max-item-count': '1' })).headers['x-ms-continuation'] as string;
    // Server CPU per operation (from /proc, 10 ms ticks: meaningful over many samples) beside the latencies: the
    // figure a shared machine's load does not blur.
    const figures: Record<string, { p50: number; p99: number; max?: number; parsed?: { p50: number; p99: number }; serverCpuMsPerOperation?: number; serverSystemCpuMsPerOperation?: number; inServer?: InServer; warmupMs?: number[] }> = {};
    // `--only name,name` runs some of the measurements (iterating on one query of a seeded store kept with `--data`).
    const only = args.get('only')?.split(',');
    // The first `warmup` operations of each measurement (`--warmup`) are reported apart (`warmupMs`) and
    // counted nowhere else: the first erase of a run is the first use of ~40 statement texts (each prepared then), of
    // its code paths and of its index pages — 30–50 ms, alone making the "p99" (with ≤ 100 samples, the slowest one).
    // Default 20 (1 before session 33): in a fresh server process the first requests of each query shape also run
    // V8's not yet optimized code and prepare their statements — 5–17 ms in the server for ~20 requests of the first
    // page of the enrollments (its own request log), against ≤ 4 ms after — which is a start's cost, not a page's.
    // Default 200 since session 34: V8 was still compiling a page's code (TurboFan, on a helper thread that competes
    // with the server and the client for the two cores) well after 20, in the measured part.
    const warmup = Number(args.get('warmup') ?? 200);
    const measure = async (name: string, count: number, work: (i: number) => Promise<Timing>) => {
      if (only !== undefined && !only.includes(name)) return;
      const times: number[] = [];
      const parsedTimes: number[] = [];
      try {
        const warmupMs: number[] = [];
        for (let i = 0; i < warmup; i += 1) warmupMs.push(Number((await work(i)).ms.toFixed(2)));
        const durationsBefore = serverLatency ? await requestDurations(server) : undefined;
        const cpuBefore = cpuMs(server.child.pid);
        const systemBefore = systemCpuMs(server.child.pid);
        for (let i = warmup; i < warmup + count; i += 1) {
          const timing = await work(i);
          times.push(timing.ms);
          parsedTimes.push(timing.parsedMs);
        }
        const serverCpuMsPerOperation = Number(((cpuMs(server.child.pid) - cpuBefore) / count).toFixed(2));
        const serverSystemCpuMsPerOperation = Number(((systemCpuMs(server.child.pid) - systemBefore) / count).toFixed(2));
        const inServer = durationsBefore === undefined ? undefined : durationsSince(durationsBefore, await requestDurations(server));
        const parsed = { p50: percentile(parsedTimes, 50), p99: percentile(parsedTimes, 99) };
        figures[name] = { p50: percentile(times, 50), p99: percentile(times, 99), max: percentile(times, 100), parsed, serverCpuMsPerOperation, serverSystemCpuMsPerOperation, ...(inServer === undefined ? {} : { inServer }), warmupMs };
      } catch (error) {
        // One failing measurement does not cost the others (seeding takes minutes).
        figures[name] = { p50: NaN, p99: NaN, error: String(error).slice(0, 300) } as never;
      }
    };
    const first100 = { query: 'SELECT * FROM enrollments' };
    // The server's start, warmed apart (`--start-warmup`, default 10 rounds): a round of the service API's common path
    // (authentication, routing, a page, its log entry, the answer) and of the log's page, so the first measurement's
    // 20 warm-up operations are not also the first the process ever answered (in session 33, the enrollments' first
    // page, measured first, still had 3 of 100 requests over 5 ms in the server, and none of its later pages did).
    const startWarmup = Number(args.get('start-warmup') ?? 10);
    for (let i = 0; i < startWarmup; i += 1) {
      await page('/enrollments/query', first100)();
      await page('/registrations/seed-group/query', { query: 'SELECT *' })();
      await page('/auditEvents/query', {})();
    }
    await measure('enrollmentQueryFirstPage', samples, () => timed(page('/enrollments/query', first100)));
    const middle = await continuationAt('/enrollments/query', first100);
    await measure('enrollmentQueryLaterPage', samples, () => timed(page('/enrollments/query', first100, middle)));
    await measure('enrollmentQueryByDeviceId', samples, () => timed(page('/enrollments/query', { query: `SELECT * FROM enrollments WHERE deviceId = '${randomId()}'` })));
    // A filter that matches nothing: the page is whatever the store finds before it gives up looking.
    await measure('enrollmentQueryDisabled', samples, () => timed(page('/enrollments/query', { query: "SELECT * FROM enrollments WHERE provisioningStatus = 'disabled'" })));
    await measure('registrationQueryFirstPage', samples, () => timed(page('/registrations/seed-group/query', { query: 'SELECT *' })));
    await measure('logQueryFirstPage', samples, () => timed(page('/auditEvents/query', {})));
    await measure('logQueryBySubject', samples, () => timed(page('/auditEvents/query', { subject: randomId() })));
    // What the portal's device timeline asks (changes only), and the system-log page's filters.
    await measure('logQueryBySubjectChanges', samples, () => timed(page('/auditEvents/query', { subject: randomId(), class: 'change' })));
    await measure('logQueryFailures', samples, () => timed(page('/auditEvents/query', { outcome: 'failure' })));
    await measure('logQueryAccesses', samples, () => timed(page('/auditEvents/query', { class: 'access' })));
    await measure('logQueryKindHubWrite', samples, () => timed(page('/auditEvents/query', { kind: 'hubWrite' })));
    await measure('logQueryActor', samples, () => timed(page('/auditEvents/query', { actor: 'device' })));
    await measure('logQueryOneDay', samples, () => {
      const day = Date.now() - (2 + Math.floor(Math.random() * 25)) * 86_400_000;
      return timed(page('/auditEvents/query', { from: new Date(day).toISOString(), to: new Date(day + 86_400_000).toISOString() }));
    });
    await measure('logQueryOneDayFailures', samples, () => {
      const day = Date.now() - (2 + Math.floor(Math.random() * 25)) * 86_400_000;
      return timed(page('/auditEvents/query', { from: new Date(day).toISOString(), to: new Date(day + 86_400_000).toISOString(), outcome: 'failure' }));
    });
    // Subjects spread over the key range; a run on a kept store (`--data`) picks others than the run before.
    const run = Date.now().toString(36);
    const spread = Math.max(2, Math.floor(n / (Math.min(samples, 100) + warmup)));
    // Exports too: a subject exported in an earlier run has that export's request among its data, and each run's
    // export of it would find one more (on a kept store, the same subjects' exports grew run after run).
    const exportOffset = Math.floor(Math.random() * spread);
    const eraseOffset = (exportOffset + 1 + Math.floor(Math.random() * (spread - 1))) % spread;
    const dataRequest = async (type: 'export' | 'erase', i: number) => {
      const subject = `seed-${String(Math.min(n - 1, i * spread + (type === 'erase' ? eraseOffset : exportOffset))).padStart(7, '0')}`;
      const id = `${type}-${run}-${i}`;
      return timed(async () => {
        let answer = await call(server, 'PUT', `/dataRequests/${id}`, { type, subject: { registrationId: subject } });
        while ((answer.json as { status: string }).status === 'running') {
          await new Promise((resolve) => setTimeout(resolve, 1));
          answer = await call(server, 'GET', `/dataRequests/${id}`);
        }
        if ((answer.json as { status: string }).status !== 'completed') throw new Error(`${type} ended ${JSON.stringify(answer.json).slice(0, 300)}`);
        return answer;
      });
    };
    await measure('exportOneSubject', Math.min(samples, 100), (i) => dataRequest('export', i));
    await measure('eraseOneSubject', Math.min(samples, 100), (i) => dataRequest('erase', i));
    return { seedSeconds, samples, pageCache, ...figures, server: await server.stats() };
  } finally {
    await server.stop();
  }
}

async function purge(dataDir: string, port: number, n: number) {
  const first = await start(dataDir, port);
  await bulkImport(first, 1, 1, 'template');
  await first.stop();
  // Operations a week old: past the default retention, so the purge at start takes every one.
  seed(dataDir, { enrollments: 1, records: 0, events: 0, operations: n, operationsUpdatedAt: new Date(Date.now() - 7 * 86_400_000).toISOString().replace('Z', '0000Z') });
  const startedAt = performance.now();
  const server = await start(dataDir, port);
  const startSeconds = (performance.now() - startedAt) / 1000;
  try {
    const db = new Database(join(dataDir, 'provisiond.db'), { readonly: true });
    let maxStallMs = 0;
    // Device-like requests while it runs: how long a request waits behind the purge.
    const latencies: number[] = [];
    for (;;) {
      const t = performance.now();
      await call(server, 'POST', '/enrollments/query', { query: "SELECT * FROM enrollments WHERE registrationId = 'seed-0000000'" });
      latencies.push(performance.now() - t);
      maxStallMs = Math.max(maxStallMs, (await server.stats()).maxStallMs ?? Number.NaN);
      const left = (db.prepare('select count(*) as n from operations').get() as { n: number }).n;
      if (left === 0) break;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    db.close();
    return { seconds: Number(((performance.now() - startedAt) / 1000).toFixed(1)), startSeconds: Number(startSeconds.toFixed(1)), maxEventLoopStallMs: Number(maxStallMs.toFixed(1)), requestsDuringPurge: latencies.length, requestP99Ms: percentile(latencies, 99), requestMaxMs: percentile(latencies, 100) };
  } finally {
    await server.stop();
  }
}

async function p6(dataDir: string, port: number) {
  const server = await start(dataDir, port);
  try {
    await new Promise((resolve) => setTimeout(resolve, 5000));
    const idle = { ...(await server.stats()), rssMiB: Math.round(rssMiB(server.child.pid)) };
    await bulkImport(server, 10_000, 2, 'p6');
    await new Promise((resolve) => setTimeout(resolve, 5000));
    const afterImport = { ...(await server.stats()), rssMiB: Math.round(rssMiB(server.child.pid)) };
    return { idle, afterImportOf10000: afterImport, underP1Load: 'npm run bench (bench/registrations.ts) reports the peak RSS under P1 load' };
  } finally {
    await server.stop();
  }
}

// Last, so every constant above is initialised before either side runs.
if (args.has('serve')) {
  await serve(args.get('serve') ?? '', Number(args.get('port') ?? 8443));
} else {
  await main();
}
