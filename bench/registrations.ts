import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent, request } from 'undici';
import { createSasToken, deriveDeviceKey } from '../src/domain/sas.js';

/**
 * Benchmark (not a test): N concurrent simulated devices register and poll over HTTPS keep-alive against a real
 * provisiond on the embedded SQLite store, symmetric key, individual and group enrollments; then the same load
 * generator against a minimal Fastify TLS server, as this machine's ceiling. Bounded in time; loopback only.
 *
 *   npm run bench -- [--devices 200] [--seconds 15] [--warmup 3] [--enrollments 2000] [--profile DIR] [--baseline no]
 */
const args = new Map<string, string>();
for (let i = 2; i < process.argv.length; i += 2) args.set(process.argv[i]?.replace(/^--/, '') ?? '', process.argv[i + 1] ?? '');
const DEVICES = Number(args.get('devices') ?? 200);
const SECONDS = Number(args.get('seconds') ?? 15);
const ENROLLMENTS = Number(args.get('enrollments') ?? 2000);
const PORT = Number(args.get('port') ?? 8443);
/** Load that is not measured: TLS handshakes of every connection and the JIT's first passes. */
const WARMUP_SECONDS = Number(args.get('warmup') ?? 3);

interface Started {
  child: ChildProcess;
  info: { serviceConnectionString: string; idScope: string } | undefined;
}

async function startProcess(dataDir: string, mode: string): Promise<Started> {
  const profile = args.has('profile') ? ['--cpu-prof', `--cpu-prof-dir=${args.get('profile')}`] : [];
  const child = spawn(process.execPath, [...profile, '--import', 'tsx', join(import.meta.dirname, 'server-process.ts'), dataDir, String(PORT), mode], {
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
  return { child, info: line === undefined ? undefined : (JSON.parse(line) as Started['info']) };
}

function rssMiB(pid: number | undefined): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0) / 1024;
}

/** The process's CPU time (user + system) in ms, from /proc (clock ticks of 10 ms). */
function cpuMs(pid: number | undefined): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? [];
  return (Number(fields[11] ?? 0) + Number(fields[12] ?? 0)) * 10;
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((sorted.length * p) / 100))] ?? NaN;
}

const dataDir = mkdtempSync(join(tmpdir(), 'provisiond-bench-'));
const ca = (): string => readFileSync(join(dataDir, 'tls', 'ca.pem'), 'utf8');
const results: Record<string, unknown> = { devices: DEVICES, seconds: SECONDS, warmupSeconds: WARMUP_SECONDS, enrollments: ENROLLMENTS };

try {
  // ---- provisiond
  const server = await startProcess(dataDir, 'provisiond');
  const agent = new Agent({ connect: { ca: ca(), servername: 'localhost' }, connections: DEVICES, pipelining: 1 });
  const base = `https://localhost:${PORT}`;
  const { serviceConnectionString, idScope } = server.info as NonNullable<Started['info']>;
  const ownerKey = /SharedAccessKey=([^;]+)/.exec(serviceConnectionString)?.[1] ?? '';
  const serviceToken = (): string =>
    createSasToken({ resource: 'localhost', keyBase64: ownerKey, keyName: 'provisioningserviceowner', expirySeconds: Math.floor(Date.now() / 1000) + 3600 });

  // Half individual enrollments (bulk-created), half devices of one symmetric-key group.
  const individualKey = Buffer.alloc(32, 3).toString('base64');
  const individuals = Array.from({ length: ENROLLMENTS / 2 }, (_, i) => `bench-ind-${i}`);
  for (let i = 0; i < individuals.length; i += 1000) {
    const enrollments = individuals.slice(i, i + 1000).map((registrationId) => ({
      registrationId,
      attestation: { type: 'symmetricKey', symmetricKey: { primaryKey: individualKey, secondaryKey: individualKey } },
    }));
    const response = await request(`${base}/enrollments?api-version=2021-10-01`, {
      method: 'POST',
      dispatcher: agent,
      headers: { authorization: serviceToken(), 'content-type': 'application/json' },
      body: JSON.stringify({ mode: 'create', enrollments }),
    });
    const bulk = (await response.body.json()) as { isSuccessful: boolean };
    if (!bulk.isSuccessful) throw new Error('bulk create failed');
  }
  const groupKey = Buffer.alloc(32, 5).toString('base64');
  await (
    await request(`${base}/enrollmentGroups/bench-group?api-version=2021-10-01`, {
      method: 'PUT',
      dispatcher: agent,
      headers: { authorization: serviceToken(), 'content-type': 'application/json' },
      body: JSON.stringify({ enrollmentGroupId: 'bench-group', attestation: { type: 'symmetricKey', symmetricKey: { primaryKey: groupKey, secondaryKey: groupKey } } }),
    })
  ).body.dump();
  const groupDevices = Array.from({ length: ENROLLMENTS / 2 }, (_, i) => `bench-grp-${i}`);
  const devices = individuals.flatMap((id, i) => [
    { id, key: individualKey },
    { id: groupDevices[i] as string, key: deriveDeviceKey(groupKey, groupDevices[i] as string) },
  ]);

  const latencies: number[] = [];
  let failures = 0;
  let requests = 0;
  let next = 0;
  const measureFrom = Date.now() + WARMUP_SECONDS * 1000;
  const deadline = measureFrom + SECONDS * 1000;
  let peakRss = 0;
  const sampler = setInterval(() => (peakRss = Math.max(peakRss, rssMiB(server.child.pid))), 250);

  /** One full registration (register, then poll until terminal); true when assigned. Counts its own requests. */
  async function registerOnce(device: { id: string; key: string }, counter: { requests: number }): Promise<boolean> {
    const authorization = createSasToken({
      resource: `${idScope}/registrations/${device.id}`,
      keyBase64: device.key,
      keyName: 'registration',
      expirySeconds: Math.floor(Date.now() / 1000) + 3600,
    });
    const headers = { authorization, 'content-type': 'application/json' };
    const registered = await request(`${base}/${idScope}/registrations/${device.id}/register?api-version=2019-03-31`, {
      method: 'PUT',
      dispatcher: agent,
      headers,
      body: JSON.stringify({ registrationId: device.id }),
    });
    counter.requests += 1;
    const operation = (await registered.body.json()) as { operationId: string };
    if (registered.statusCode !== 202) return false;
    let wait = Number(registered.headers['retry-after'] ?? 1);
    for (;;) {
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait * 1000));
      const polled = await request(`${base}/${idScope}/registrations/${device.id}/operations/${operation.operationId}?api-version=2019-03-31`, {
        dispatcher: agent,
        headers: { authorization },
      });
      counter.requests += 1;
      const body = (await polled.body.json()) as { status: string };
      if (polled.statusCode === 200) return body.status === 'assigned';
      if (polled.statusCode !== 202) return false;
      wait = Number(polled.headers['retry-after'] ?? 1);
    }
  }

  // Server CPU over the measured window only (process accounting), for a per-registration cost that does not depend
  // on how much of the shared machine the server got.
  const cpuMarks: number[] = [];
  const markCpu = (): void => void cpuMarks.push(cpuMs(server.child.pid));
  setTimeout(markCpu, Math.max(0, measureFrom - Date.now()));
  setTimeout(markCpu, Math.max(0, deadline - Date.now()));
  await Promise.all(
    Array.from({ length: DEVICES }, async () => {
      while (Date.now() < deadline) {
        const device = devices[next % devices.length] as { id: string; key: string };
        next += 1;
        const measured = Date.now() >= measureFrom;
        const t0 = performance.now();
        const counter = { requests: 0 };
        const ok = await registerOnce(device, counter).catch(() => false);
        if (!measured || Date.now() > deadline) continue;
        requests += counter.requests;
        if (ok) latencies.push(performance.now() - t0);
        else failures += 1;
      }
    }),
  );
  const elapsed = SECONDS;
  clearInterval(sampler);
  latencies.sort((a, b) => a - b);
  results.provisiond = {
    fullRegistrations: latencies.length,
    failures,
    registrationsPerSecond: Math.round(latencies.length / elapsed),
    deviceRequestsPerSecond: Math.round(requests / elapsed),
    p50Ms: Number(percentile(latencies, 50).toFixed(1)),
    p90Ms: Number(percentile(latencies, 90).toFixed(1)),
    p99Ms: Number(percentile(latencies, 99).toFixed(1)),
    maxMs: Number((latencies.at(-1) ?? NaN).toFixed(1)),
    serverPeakRssMiB: Math.round(peakRss),
    serverCpuMsPerRegistration: cpuMarks.length === 2 ? Number((((cpuMarks[1] ?? 0) - (cpuMarks[0] ?? 0)) / Math.max(1, latencies.length)).toFixed(3)) : null,
  };
  await agent.close();
  server.child.kill('SIGTERM');
  await new Promise((resolve) => server.child.once('exit', resolve));

  // ---- the ceiling: a minimal Fastify TLS server (--baseline no skips it, for short comparison runs)
  if (args.get('baseline') !== 'no') {
    const baseline = await startProcess(dataDir, 'baseline');
    const baselineAgent = new Agent({ connect: { ca: ca(), servername: 'localhost' }, connections: DEVICES });
    let baselineRequests = 0;
    const baselineMeasureFrom = Date.now() + WARMUP_SECONDS * 1000;
    const baselineDeadline = baselineMeasureFrom + SECONDS * 1000;
    await Promise.all(
      Array.from({ length: DEVICES }, async () => {
        while (Date.now() < baselineDeadline) {
          const response = await request(`https://localhost:${PORT}/ping`, { dispatcher: baselineAgent });
          await response.body.dump();
          const now = Date.now();
          if (now >= baselineMeasureFrom && now <= baselineDeadline) baselineRequests += 1;
        }
      }),
    );
    results.minimalFastifyTls = { requestsPerSecond: Math.round(baselineRequests / SECONDS) };
    await baselineAgent.close();
    baseline.child.kill('SIGTERM');
    await new Promise((resolve) => baseline.child.once('exit', resolve));
  }
} finally {
  rmSync(dataDir, { recursive: true, force: true });
}
process.stdout.write(`${JSON.stringify(results, null, 2)}\n`);
