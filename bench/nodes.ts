import { spawn, type ChildProcess } from 'node:child_process';
import { appendFileSync, cpSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent, request } from 'undici';
import pg from 'pg';
import { createSasToken, deriveDeviceKey } from '../src/domain/sas.js';
import { startPostgresCluster, stopPostgresCluster } from '../test/postgres.js';

/**
 * Benchmark (not a test): full registrations (register + poll, HTTPS keep-alive, symmetric-key group) against
 *   - one node on SQLite,
 *   - one, two and three nodes on one PostgreSQL (a private cluster started for the run, like the tests'),
 *   - the TLS ceiling (a minimal Fastify TLS server), measured in the same run, alternating with the others,
 * reporting registrations/s and the CPU each spends: provisiond processes and PostgreSQL processes separately, from
 * /proc (the stable figure on a shared machine). Run inside a network namespace with 127.0.0.2/3 on loopback.
 *
 *   npx tsx bench/nodes.ts [--devices 100] [--seconds 8] [--warmup 2] [--only sqlite1,postgres1] [--socket tcp|unix]
 *                          [--tree DIR] [--ids-per-lane K] [--limits off|default]
 *
 * --only: just these scenarios (sqlite1, ceiling, postgres1, postgres2, postgres3), for short alternating A/B runs.
 * --socket unix: the nodes reach PostgreSQL through its Unix socket (`?host=<socket dir>`) instead of loopback TCP.
 * --counts yes: also count, per registration, the queries each PostgreSQL node sends (round trips, lock queries
 * included; the window's texts are kept in $TMPDIR/provisiond-bench-round-trips-<label>-<node>.json) and the bytes
 * every node allocates on V8's heap (bench/heap-counter.ts, preloaded): figures no load on the machine blurs.
 * --tree DIR: run the server of another checkout (its bench/server-process.ts), e.g. the base commit, with this
 * driver, so both sides of an A/B are measured the same way.
 * --ids-per-lane K: each of the --devices lanes cycles over K registration IDs of its own, so once each has registered
 * (in the warm-up, when it is long enough) every registration is a re-registration — devices re-provisioning at boot.
 * Without it every registration is a new device's first (a new ID each time).
 * --limits default: the servers keep the default rate limits (registrationsPerSecond, pollsPerSecondPerDevice) as
 * `npm start` runs them; off (the default here) turns both off (BENCH_DEFAULT_LIMITS, read by server-process.ts).
 * --pg-stats FILE: the cluster loads pg_stat_statements, and per PostgreSQL scenario FILE gets, over the measured
 * window, each statement's calls and execution time per registration, and each table's inserts, updates (HOT ones
 * apart: an update that changes no indexed column and finds room on its page writes no index entry) and deletes.
 */
const args = new Map<string, string>();
for (let i = 2; i < process.argv.length; i += 2) args.set(process.argv[i]?.replace(/^--/, '') ?? '', process.argv[i + 1] ?? '');
const DEVICES = Number(args.get('devices') ?? 100);
const SECONDS = Number(args.get('seconds') ?? 8);
const WARMUP_SECONDS = Number(args.get('warmup') ?? 2);
const PORT = 8443;
const ADDRESSES = ['127.0.0.1', '127.0.0.2', '127.0.0.3'];
const TICKS_PER_SECOND = 100;
const ONLY = args.has('only') ? new Set((args.get('only') ?? '').split(',')) : undefined;
const SOCKET = args.get('socket') ?? 'tcp';
const TREE = args.get('tree') ?? join(import.meta.dirname, '..');
const COUNTS = args.get('counts') === 'yes';
const IDS_PER_LANE = args.has('ids-per-lane') ? Number(args.get('ids-per-lane')) : undefined;
const LIMITS = args.get('limits') ?? 'off';
if (LIMITS === 'default') process.env.BENCH_DEFAULT_LIMITS = '1';
const PG_STATS = args.get('pg-stats');

/** A process's CPU so far: user and kernel time (ms), and context switches it made (waits) and suffered (preempted). */
interface Cpu {
  user: number;
  sys: number;
  voluntary: number;
  involuntary: number;
}
const NO_CPU: Cpu = { user: 0, sys: 0, voluntary: 0, involuntary: 0 };

function cpuOf(pid: number): Cpu {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? [];
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const switches = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+)`, 'm').exec(status)?.[1] ?? 0);
    // utime and stime: fields 14 and 15 of stat, 12 and 13 after the command name.
    return {
      user: (Number(fields[11]) * 1000) / TICKS_PER_SECOND,
      sys: (Number(fields[12]) * 1000) / TICKS_PER_SECOND,
      voluntary: switches('voluntary_ctxt_switches'),
      involuntary: switches('nonvoluntary_ctxt_switches'),
    };
  } catch {
    return NO_CPU;
  }
}

function cpuMs(pid: number): number {
  const cpu = cpuOf(pid);
  return cpu.user + cpu.sys;
}

function sumCpu(pids: number[]): Cpu {
  return pids.map(cpuOf).reduce((sum, cpu) => ({ user: sum.user + cpu.user, sys: sum.sys + cpu.sys, voluntary: sum.voluntary + cpu.voluntary, involuntary: sum.involuntary + cpu.involuntary }), NO_CPU);
}

/** What a PostgreSQL process is, from its title (`postgres: checkpointer`, `postgres: autovacuum worker`, a backend). */
function postgresKind(pid: number, postmaster: number | undefined): string {
  if (pid === postmaster) return 'postmaster';
  let title = '';
  try {
    title = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ').trim();
  } catch {
    return 'exited';
  }
  const kind = /^postgres: (checkpointer|background writer|walwriter|autovacuum launcher|autovacuum worker|logical replication launcher|stats collector)/.exec(title)?.[1];
  return kind === undefined ? 'backends' : kind.replace(/ (\w)/g, (_, c: string) => c.toUpperCase());
}

/**
 * The CPU (ms) of every process of the cluster, by kind, from `before` (pid → CPU at the window's start) to now:
 * processes started in the window (autovacuum workers, a pool's new connections) count from zero, and those that
 * ended in it (reaped by the postmaster) through the postmaster's children's time (`cutime` + `cstime`).
 */
function postgresCpuSince(clusterDir: string, before: { perPid: Map<number, number>; reaped: number }): Record<string, number> {
  const postmaster = postmasterPid(clusterDir);
  const byKind: Record<string, number> = {};
  for (const pid of postgresPids(clusterDir)) {
    const kind = postgresKind(pid, postmaster);
    byKind[kind] = (byKind[kind] ?? 0) + cpuMs(pid) - (before.perPid.get(pid) ?? 0);
  }
  const reaped = reapedChildrenMs(postmaster) - before.reaped;
  if (reaped > 0) byKind.endedInWindow = reaped;
  return byKind;
}

function postgresCpuSnapshot(clusterDir: string): { perPid: Map<number, number>; reaped: number } {
  return { perPid: new Map(postgresPids(clusterDir).map((pid) => [pid, cpuMs(pid)])), reaped: reapedChildrenMs(postmasterPid(clusterDir)) };
}

function postmasterPid(clusterDir: string): number | undefined {
  try {
    return Number(readFileSync(join(clusterDir, 'data', 'postmaster.pid'), 'utf8').split('\n')[0]);
  } catch {
    return undefined;
  }
}

/** The CPU (ms) of the children a process has waited for: `cutime` + `cstime`, fields 16 and 17 of its stat. */
function reapedChildrenMs(pid: number | undefined): number {
  if (pid === undefined) return 0;
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? [];
    return ((Number(fields[13]) + Number(fields[14])) * 1000) / TICKS_PER_SECOND;
  } catch {
    return 0;
  }
}

/** Every process whose command line names the cluster's data directory or is one of its backends. */
function postgresPids(clusterDir: string): number[] {
  const pids: number[] = [];
  let postmaster: number | undefined;
  try {
    postmaster = Number(readFileSync(join(clusterDir, 'data', 'postmaster.pid'), 'utf8').split('\n')[0]);
  } catch {
    return [];
  }
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const parent = Number(stat.split(') ')[1]?.split(' ')[1]);
      if (Number(entry) === postmaster || parent === postmaster) pids.push(Number(entry));
    } catch {
      // gone
    }
  }
  return pids;
}

async function startServer(
  dataDir: string,
  mode: string,
  store: string,
  address: string,
  counters?: { texts: string | undefined; heap: string },
): Promise<{ child: ChildProcess; info: { serviceConnectionString: string; idScope: string } | undefined }> {
  // BENCH_NODE_FLAGS: extra node/V8 flags for the servers (e.g. `--cpu-prof --cpu-prof-dir=DIR`, `--trace-deopt`).
  const flags = (process.env.BENCH_NODE_FLAGS ?? '').split(' ').filter((flag) => flag !== '');
  // (after tsx, which loads it)
  const preload = counters === undefined ? [] : ['--import', join(import.meta.dirname, 'heap-counter.ts')];
  const child = spawn(process.execPath, [...flags, '--import', 'tsx', ...preload, join(TREE, 'bench', 'server-process.ts'), dataDir, String(PORT), mode, store, address], {
    cwd: TREE,
    stdio: ['ignore', 'pipe', 'inherit'],
    env:
      counters === undefined
        ? process.env
        : { ...process.env, BENCH_HEAP_COUNTER: counters.heap, ...(counters.texts === undefined ? {} : { BENCH_PG_STATEMENT_TEXTS: counters.texts }) },
  });
  let output = '';
  await new Promise<void>((resolve, reject) => {
    child.stdout?.on('data', (chunk: Buffer) => {
      // BENCH_SERVER_STDOUT=PREFIX: each server's standard output (e.g. a V8 trace) goes to PREFIX.<pid> as well.
      if (process.env.BENCH_SERVER_STDOUT !== undefined) appendFileSync(`${process.env.BENCH_SERVER_STDOUT}.${child.pid}`, chunk);
      output += chunk.toString();
      if (output.includes('listening\n')) resolve();
    });
    child.once('exit', (code) => reject(new Error(`server exited with ${code}`)));
  });
  const line = output.split('\n').find((text) => text.startsWith('{'));
  return { child, info: line === undefined ? undefined : (JSON.parse(line) as { serviceConnectionString: string; idScope: string }) };
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return;
  child.kill('SIGTERM');
  await new Promise((resolve) => child.once('exit', resolve));
}

/** Drives DEVICES simulated devices spread over `addresses` for the window; returns full registrations done. */
async function drive(addresses: string[], ca: string, idScope: string, groupKey: string, run: string): Promise<{ registrations: number; failures: number }> {
  const agents = addresses.map((address) => ({ address, agent: new Agent({ connect: { ca, servername: 'localhost' }, connections: Math.ceil(DEVICES / addresses.length) }) }));
  const measureFrom = Date.now() + WARMUP_SECONDS * 1000;
  const deadline = measureFrom + SECONDS * 1000;
  let registrations = 0;
  let failures = 0;
  let next = 0;
  await Promise.all(
    Array.from({ length: DEVICES }, async (_, lane) => {
      const { address, agent } = agents[lane % agents.length] as (typeof agents)[number];
      const base = `https://${address}:${PORT}`;
      let laneRegistrations = 0;
      while (Date.now() < deadline) {
        laneRegistrations += 1;
        const id = IDS_PER_LANE === undefined ? `${run}-${(next += 1)}` : `${run}-${lane}-${laneRegistrations % IDS_PER_LANE}`;
        const authorization = createSasToken({ resource: `${idScope}/registrations/${id}`, keyBase64: deriveDeviceKey(groupKey, id), keyName: 'registration', expirySeconds: Math.floor(Date.now() / 1000) + 3600 });
        let ok = false;
        try {
          const registered = await request(`${base}/${idScope}/registrations/${id}/register?api-version=2019-03-31`, {
            method: 'PUT',
            dispatcher: agent,
            headers: { authorization, 'content-type': 'application/json' },
            body: JSON.stringify({ registrationId: id }),
          });
          const operation = (await registered.body.json()) as { operationId: string };
          let wait = Number(registered.headers['retry-after'] ?? 1);
          for (let polls = 0; registered.statusCode === 202 && polls < 30; polls += 1) {
            if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait * 1000));
            const polled = await request(`${base}/${idScope}/registrations/${id}/operations/${operation.operationId}?api-version=2019-03-31`, { dispatcher: agent, headers: { authorization } });
            const body = (await polled.body.json()) as { status: string };
            if (polled.statusCode !== 202) {
              ok = polled.statusCode === 200 && body.status === 'assigned';
              break;
            }
            wait = Number(polled.headers['retry-after'] ?? 1);
          }
        } catch {
          ok = false;
        }
        const now = Date.now();
        if (now < measureFrom || now > deadline) continue;
        if (ok) registrations += 1;
        else failures += 1;
      }
    }),
  );
  await Promise.all(agents.map(({ agent }) => agent.close()));
  return { registrations, failures };
}

async function ceiling(dataDir: string, ca: string): Promise<{ requestsPerSecond: number; serverCpuMsPerRequest: number }> {
  const server = await startServer(dataDir, 'baseline', 'sqlite', '127.0.0.1');
  const agent = new Agent({ connect: { ca, servername: 'localhost' }, connections: DEVICES });
  let requests = 0;
  const measureFrom = Date.now() + WARMUP_SECONDS * 1000;
  const deadline = measureFrom + SECONDS * 1000;
  let cpuStart = 0;
  const marker = setTimeout(() => (cpuStart = cpuMs(server.child.pid ?? 0)), WARMUP_SECONDS * 1000);
  await Promise.all(
    Array.from({ length: DEVICES }, async () => {
      while (Date.now() < deadline) {
        const response = await request(`https://127.0.0.1:${PORT}/ping`, { dispatcher: agent });
        await response.body.dump();
        const now = Date.now();
        if (now >= measureFrom && now <= deadline) requests += 1;
      }
    }),
  );
  clearTimeout(marker);
  const cpu = cpuMs(server.child.pid ?? 0) - cpuStart;
  await agent.close();
  await stop(server.child);
  return { requestsPerSecond: Math.round(requests / SECONDS), serverCpuMsPerRequest: Number((cpu / Math.max(1, requests)).toFixed(3)) };
}

/** --pg-stats: zero PostgreSQL's counters (at the window's start), or read them per registration (at its end). */
async function pgStats(store: string, step: 'reset' | 'read', registrations = 1): Promise<Record<string, unknown>> {
  const client = new pg.Client({ connectionString: store });
  await client.connect();
  try {
    await client.query('create extension if not exists pg_stat_statements');
    if (step === 'reset') {
      await client.query('select pg_stat_statements_reset(), pg_stat_reset()');
      return {};
    }
    // The table counters reach the view when a backend reports them (at most every 10 ms of idle, PGSTAT_MIN_INTERVAL).
    await new Promise((resolve) => setTimeout(resolve, 1500));
    const per = (value: unknown) => Number((Number(value) / registrations).toFixed(3));
    const statements = await client.query<{ query: string; calls: string; plans: string; ms: number; plan_ms: number }>(
      'select query, calls, plans, total_exec_time as ms, total_plan_time as plan_ms from pg_stat_statements order by total_exec_time + total_plan_time desc limit 40',
    );
    const tables = await client.query<Record<string, string>>(
      `select relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del from pg_stat_user_tables
        where n_tup_ins + n_tup_upd + n_tup_del > 0 order by relname`,
    );
    return {
      registrations,
      statements: statements.rows.map((row) => ({ callsPerRegistration: per(row.calls), plansPerRegistration: per(row.plans), execMsPerRegistration: per(row.ms), planMsPerRegistration: per(row.plan_ms), query: row.query.replace(/\s+/g, ' ').slice(0, 300) })),
      tables: tables.rows.map((row) => ({ table: row.relname, inserts: per(row.n_tup_ins), updates: per(row.n_tup_upd), hotUpdates: per(row.n_tup_hot_upd), deletes: per(row.n_tup_del) })),
    };
  } finally {
    await client.end();
  }
}

const root = mkdtempSync(join(tmpdir(), 'provisiond-bench-nodes-'));
const cluster = await startPostgresCluster(PG_STATS === undefined ? '' : '-c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all -c pg_stat_statements.track_planning=on');
const results: Record<string, unknown> = { devices: DEVICES, seconds: SECONDS, warmupSeconds: WARMUP_SECONDS, loadAverageAtStart: (await import('node:os')).loadavg() };
try {
  let runs = 0;
  const scenario = async (label: string, store: string, nodes: number): Promise<void> => {
    runs += 1;
    const dirs = ADDRESSES.slice(0, nodes).map((address) => join(root, `${label}-${address}`));
    // The first node creates the TLS material (and, on PostgreSQL, the schema and the instance); the others share it.
    const textsFile = (index: number) => (store === 'sqlite' ? undefined : join(root, `round-trips-${label}-${index}.json`));
    const counters = (index: number) => (COUNTS ? { texts: textsFile(index), heap: join(root, `heap-${label}-${index}.json`) } : undefined);
    const first = await startServer(dirs[0] as string, 'provisiond', store, ADDRESSES[0] as string, counters(0));
    const servers = [first];
    for (const [index, dir] of dirs.slice(1).entries()) {
      cpSync(join(dirs[0] as string, 'tls'), join(dir, 'tls'), { recursive: true });
      servers.push(await startServer(dir, 'provisiond', store, ADDRESSES[index + 1] as string, counters(index + 1)));
    }
    // The counters restart at the window's start (SIGUSR2 writes and clears them) and are read at its end.
    const countersSignal = () => {
      if (COUNTS) for (const server of servers) server.child.kill('SIGUSR2');
    };
    const ca = readFileSync(join(dirs[0] as string, 'tls', 'ca.pem'), 'utf8');
    const { serviceConnectionString, idScope } = first.info as { serviceConnectionString: string; idScope: string };
    const ownerKey = /SharedAccessKey=([^;]+)/.exec(serviceConnectionString)?.[1] ?? '';
    const groupKey = Buffer.alloc(32, 5).toString('base64');
    const agent = new Agent({ connect: { ca, servername: 'localhost' } });
    const created = await request(`https://127.0.0.1:${PORT}/enrollmentGroups/bench-group?api-version=2021-10-01`, {
      method: 'PUT',
      dispatcher: agent,
      headers: {
        authorization: createSasToken({ resource: 'localhost', keyBase64: ownerKey, keyName: 'provisioningserviceowner', expirySeconds: Math.floor(Date.now() / 1000) + 3600 }),
        'content-type': 'application/json',
      },
      body: JSON.stringify({ enrollmentGroupId: 'bench-group', attestation: { type: 'symmetricKey', symmetricKey: { primaryKey: groupKey, secondaryKey: groupKey } } }),
    });
    await created.body.dump();
    await agent.close();
    // The backends are listed when the measured window starts: a pool opens its connections as the load needs them, so
    // a list taken before the warm-up missed most of them (and PostgreSQL's CPU was under-counted, more so the larger
    // the pool).
    let pgPids: number[] = [];
    const cpu = () => ({ nodes: sumCpu(servers.map((server) => server.child.pid ?? 0)), postgres: sumCpu(pgPids) });
    let before = cpu();
    let pgBefore = { perPid: new Map<number, number>(), reaped: 0 };
    // The load generator (this process: TLS, HTTP and SAS tokens of every simulated device) shares the cores too.
    let driverBefore = process.cpuUsage();
    const marker = setTimeout(() => {
      driverBefore = process.cpuUsage();
      pgPids = store === 'sqlite' ? [] : postgresPids(cluster.dir);
      before = cpu();
      if (store !== 'sqlite') pgBefore = postgresCpuSnapshot(cluster.dir);
      countersSignal();
      if (PG_STATS !== undefined && store !== 'sqlite') void pgStats(store, 'reset');
    }, WARMUP_SECONDS * 1000);
    const driven = await drive(ADDRESSES.slice(0, nodes), ca, idScope, groupKey, `r${runs}`);
    clearTimeout(marker);
    const driver = process.cpuUsage(driverBefore);
    const after = cpu();
    const pgByKind = store === 'sqlite' ? {} : postgresCpuSince(cluster.dir, pgBefore);
    countersSignal();
    if (PG_STATS !== undefined && store !== 'sqlite') appendFileSync(PG_STATS, `${JSON.stringify({ label, ...(await pgStats(store, 'read', Math.max(1, driven.registrations))) }, null, 1)}\n`);
    let roundTrips = 0;
    let allocatedBytes = 0;
    if (COUNTS) {
      await new Promise((resolve) => setTimeout(resolve, 300));
      for (const [index] of servers.entries()) {
        const texts = textsFile(index);
        if (texts !== undefined) roundTrips += (JSON.parse(readFileSync(texts, 'utf8')) as { total: number }).total;
        allocatedBytes += (JSON.parse(readFileSync(counters(index)?.heap as string, 'utf8')) as { allocatedBytes: number }).allocatedBytes;
      }
    }
    const count = Math.max(1, driven.registrations);
    const per = (key: keyof Cpu, side: 'nodes' | 'postgres') => Number(((after[side][key] - before[side][key]) / count).toFixed(2));
    results[label] = {
      nodes,
      registrationsPerSecond: Math.round(driven.registrations / SECONDS),
      failures: driven.failures,
      nodeCpuMsPerRegistration: Number((per('user', 'nodes') + per('sys', 'nodes')).toFixed(2)),
      ...(store === 'sqlite' ? {} : { postgresCpuMsPerRegistration: Number((per('user', 'postgres') + per('sys', 'postgres')).toFixed(2)) }),
      // Where the node's CPU goes (JS and libraries vs the kernel: on loopback TCP a write also runs the receiver's
      // side of the stack), and how often per registration it waited or was preempted.
      nodeUserSysMsPerRegistration: [per('user', 'nodes'), per('sys', 'nodes')],
      loadGeneratorCpuMsPerRegistration: Number(((driver.user + driver.system) / 1000 / Math.max(1, driven.registrations)).toFixed(2)),
      nodeContextSwitchesPerRegistration: { voluntary: per('voluntary', 'nodes'), involuntary: per('involuntary', 'nodes') },
      ...(store === 'sqlite' ? {} : { postgresUserSysMsPerRegistration: [per('user', 'postgres'), per('sys', 'postgres')] }),
      // Every process of the cluster over the window, by kind, those started or ended in it included (the figure
      // above counts the processes listed at its start only).
      ...(store === 'sqlite'
        ? {}
        : { postgresCpuMsPerRegistrationByProcess: Object.fromEntries(Object.entries(pgByKind).map(([kind, ms]) => [kind, Number((ms / Math.max(1, driven.registrations)).toFixed(3))])) }),
      // (Counted from the end of the warm-up to the end of the last request, so slightly over the window's.)
      ...(store === 'sqlite' ? {} : { postgresProcesses: pgPids.length }),
      ...(COUNTS && store !== 'sqlite' ? { roundTripsPerRegistration: Number((roundTrips / count).toFixed(2)) } : {}),
      ...(COUNTS ? { heapKiBAllocatedPerRegistration: Math.round(allocatedBytes / 1024 / count) } : {}),
      loadAverage: (await import('node:os')).loadavg()[0],
    };
    for (const server of servers) await stop(server.child);
    process.stderr.write(`${label}: ${JSON.stringify(results[label])}\n`);
  };
  const database = async (name: string): Promise<string> => {
    const client = new pg.Client({ connectionString: cluster.url });
    await client.connect();
    await client.query(`create database ${name}`);
    await client.end();
    const url = new URL(cluster.url);
    url.pathname = `/${name}`;
    // The cluster listens on a Unix socket in its directory too (test/postgres.ts: -k).
    if (SOCKET === 'unix') url.searchParams.set('host', cluster.dir);
    return url.toString();
  };
  const wanted = (label: string) => ONLY === undefined || ONLY.has(label);
  results.socket = SOCKET;
  results.tree = TREE;
  await scenario('sqlite1', 'sqlite', 1);
  if (wanted('ceiling')) results.ceilingBefore = await ceiling(join(root, 'sqlite1-127.0.0.1'), readFileSync(join(root, 'sqlite1-127.0.0.1', 'tls', 'ca.pem'), 'utf8'));
  if (wanted('postgres1')) await scenario('postgres1', await database('bench1'), 1);
  if (wanted('postgres2')) await scenario('postgres2', await database('bench2'), 2);
  if (wanted('postgres3')) await scenario('postgres3', await database('bench3'), 3);
  if (wanted('ceiling')) results.ceilingAfter = await ceiling(join(root, 'sqlite1-127.0.0.1'), readFileSync(join(root, 'sqlite1-127.0.0.1', 'tls', 'ca.pem'), 'utf8'));
  results.loadAverageAtEnd = (await import('node:os')).loadavg();
} finally {
  stopPostgresCluster(cluster.dir);
  if (COUNTS) for (const name of readdirSync(root).filter((entry) => entry.startsWith('round-trips-'))) cpSync(join(root, name), join(tmpdir(), `provisiond-bench-${name}`));
  rmSync(root, { recursive: true, force: true });
}
process.stdout.write(`${JSON.stringify(results, null, 2)}\n`);
