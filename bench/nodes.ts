import { spawn, type ChildProcess } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
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
 *   npx tsx bench/nodes.ts [--devices 100] [--seconds 8] [--warmup 2]
 */
const args = new Map<string, string>();
for (let i = 2; i < process.argv.length; i += 2) args.set(process.argv[i]?.replace(/^--/, '') ?? '', process.argv[i + 1] ?? '');
const DEVICES = Number(args.get('devices') ?? 100);
const SECONDS = Number(args.get('seconds') ?? 8);
const WARMUP_SECONDS = Number(args.get('warmup') ?? 2);
const PORT = 8443;
const ADDRESSES = ['127.0.0.1', '127.0.0.2', '127.0.0.3'];
const TICKS_PER_SECOND = 100;

function cpuMs(pid: number): number {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? [];
    // utime and stime: fields 14 and 15 of stat, 12 and 13 after the command name.
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / TICKS_PER_SECOND;
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

async function startServer(dataDir: string, mode: string, store: string, address: string): Promise<{ child: ChildProcess; info: { serviceConnectionString: string; idScope: string } | undefined }> {
  const child = spawn(process.execPath, ['--import', 'tsx', join(import.meta.dirname, 'server-process.ts'), dataDir, String(PORT), mode, store, address], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let output = '';
  await new Promise<void>((resolve, reject) => {
    child.stdout?.on('data', (chunk: Buffer) => {
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
      while (Date.now() < deadline) {
        const id = `${run}-${(next += 1)}`;
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

const root = mkdtempSync(join(tmpdir(), 'provisiond-bench-nodes-'));
const cluster = await startPostgresCluster();
const results: Record<string, unknown> = { devices: DEVICES, seconds: SECONDS, warmupSeconds: WARMUP_SECONDS, loadAverageAtStart: (await import('node:os')).loadavg() };
try {
  let runs = 0;
  const scenario = async (label: string, store: string, nodes: number): Promise<void> => {
    runs += 1;
    const dirs = ADDRESSES.slice(0, nodes).map((address) => join(root, `${label}-${address}`));
    // The first node creates the TLS material (and, on PostgreSQL, the schema and the instance); the others share it.
    const first = await startServer(dirs[0] as string, 'provisiond', store, ADDRESSES[0] as string);
    const servers = [first];
    for (const [index, dir] of dirs.slice(1).entries()) {
      cpSync(join(dirs[0] as string, 'tls'), join(dir, 'tls'), { recursive: true });
      servers.push(await startServer(dir, 'provisiond', store, ADDRESSES[index + 1] as string));
    }
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
    const pgPids = store === 'sqlite' ? [] : postgresPids(cluster.dir);
    const cpu = () => ({ nodes: servers.reduce((sum, server) => sum + cpuMs(server.child.pid ?? 0), 0), postgres: pgPids.reduce((sum, pid) => sum + cpuMs(pid), 0) });
    let before = cpu();
    const marker = setTimeout(() => (before = cpu()), WARMUP_SECONDS * 1000);
    const driven = await drive(ADDRESSES.slice(0, nodes), ca, idScope, groupKey, `r${runs}`);
    clearTimeout(marker);
    const after = cpu();
    const count = Math.max(1, driven.registrations);
    results[label] = {
      nodes,
      registrationsPerSecond: Math.round(driven.registrations / SECONDS),
      failures: driven.failures,
      nodeCpuMsPerRegistration: Number(((after.nodes - before.nodes) / count).toFixed(2)),
      ...(store === 'sqlite' ? {} : { postgresCpuMsPerRegistration: Number(((after.postgres - before.postgres) / count).toFixed(2)) }),
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
    return url.toString();
  };
  await scenario('sqlite1', 'sqlite', 1);
  results.ceilingBefore = await ceiling(join(root, 'sqlite1-127.0.0.1'), readFileSync(join(root, 'sqlite1-127.0.0.1', 'tls', 'ca.pem'), 'utf8'));
  await scenario('postgres1', await database('bench1'), 1);
  await scenario('postgres2', await database('bench2'), 2);
  await scenario('postgres3', await database('bench3'), 3);
  results.ceilingAfter = await ceiling(join(root, 'sqlite1-127.0.0.1'), readFileSync(join(root, 'sqlite1-127.0.0.1', 'tls', 'ca.pem'), 'utf8'));
  results.loadAverageAtEnd = (await import('node:os')).loadavg();
} finally {
  stopPostgresCluster(cluster.dir);
  rmSync(root, { recursive: true, force: true });
}
process.stdout.write(`${JSON.stringify(results, null, 2)}\n`);
