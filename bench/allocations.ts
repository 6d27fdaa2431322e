import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Agent, request, type Dispatcher } from 'undici';
import { createSasToken, deriveDeviceKey } from '../src/domain/sas.js';

/**
 * Benchmark (not a test): what one full HTTPS registration (register + poll until `assigned`, keep-alive, symmetric
 * key, SQLite, built-in hub) makes the server allocate and collect — figures that the load of a shared machine cannot
 * blur, unlike CPU time (issue 12 P1 and P6; bench/README.md "Issue 12 P1/P6 outside the store (session 21, H3)").
 *
 *   npx tsx bench/allocations.ts [--root DIR] [--devices 50] [--registrations 3000] [--rounds 3] [--port 8443]
 *                                [--profile FILE.heapprofile] [--node-options '--flag …'] [--promises yes] [--callgrind yes]
 *   npx tsx bench/allocations.ts --summarize FILE.heapprofile [--top 40]
 *
 * Runs `provisiond serve` compiled (`node DIR/bin/provisiond.js serve`, DIR = this tree unless `--root` names another
 * built tree, e.g. the base to compare with) with bench/allocation-probe.mjs loaded; every device registers twice
 * first (the first registration creates the hub device; the steady state is a re-registration), then each round
 * measures `--registrations` re-registrations by `--devices` devices at once between the probe's two signals.
 * Per registration: bytes allocated on V8's heap, bytes that survived a young collection (copied within the young
 * generation, or promoted to the old space), young collections (scavenges), full collections, GC pause, HTTP
 * requests and server CPU. `--profile` writes a sampling heap profile of each round (the file keeps the last) that includes the
 * collected objects; `--summarize` prints its allocation by function (self) and by script. `--promises yes` also counts
 * the async resources (promises, timers, sockets' requests…) created per registration, by type (an async hook: that
 * run's CPU is not the server's usual).
 *
 * `--callgrind yes` runs the server under `valgrind --tool=callgrind` with its instrumentation off, and turns it on
 * (`callgrind_control -i on`) only for each round's registrations: `instructionsPerRegistration` is the count of machine
 * instructions the server executed per registration (the process's threads together, V8's JIT code included) — a
 * figure that, unlike CPU time, this machine's changes of speed do not move. Valgrind runs the server ~100 times slower
 * and one thread at a time, so use few registrations and many rounds (e.g. `--rounds 12 --registrations 300 --devices
 * 20`, ~3 minutes; V8 is still compiling in the first ~5, see bench/README.md "session 35"); its other figures are not
 * the server's usual. Needs valgrind (Debian's `valgrind`).
 */
const args = new Map<string, string>();
for (let i = 2; i < process.argv.length; i += 2) args.set(process.argv[i]?.replace(/^--/, '') ?? '', process.argv[i + 1] ?? '');

if (args.has('summarize')) {
  summarize(args.get('summarize') ?? '', Number(args.get('top') ?? 40));
  process.exit(0);
}

const ROOT = resolve(args.get('root') ?? join(import.meta.dirname, '..'));
const DEVICES = Number(args.get('devices') ?? 50);
const REGISTRATIONS = Number(args.get('registrations') ?? 3000);
const ROUNDS = Number(args.get('rounds') ?? 3);
const PORT = Number(args.get('port') ?? 8443);
const ENROLLMENTS = Math.max(2, DEVICES);
const NODE_FLAGS = (args.get('node-options') ?? '').split(' ').filter((flag) => flag !== '');
const PROBE = join(import.meta.dirname, 'allocation-probe.mjs');
const CALLGRIND = args.get('callgrind') === 'yes';
if (CALLGRIND) {
  try {
    execFileSync('valgrind', ['--version']);
  } catch {
    throw new Error('--callgrind yes needs valgrind on the PATH (Debian: apt-get install -y valgrind)');
  }
}

interface Device {
  id: string;
  key: string;
}

interface Server {
  child: ChildProcess;
  lines: string[];
}

const dataDir = mkdtempSync(join(tmpdir(), 'provisiond-alloc-'));
const ca = (): string => readFileSync(join(dataDir, 'tls', 'ca.pem'), 'utf8');
let server: Server | undefined;
try {
  const bin = join(ROOT, 'bin', 'provisiond.js');
  if (!existsSync(join(ROOT, 'dist', 'main.js'))) throw new Error(`${ROOT}: run \`npm run build\` there first`);
  server = await start(bin);
  const info = JSON.parse(
    await new Promise<string>((done, fail) => execFile(process.execPath, [bin, 'info', '--json', '--data-dir', dataDir], (error, stdout) => (error === null ? done(stdout) : fail(error)))),
  ) as { serviceConnectionString: string; idScope: string };
  const base = `https://localhost:${PORT}`;
  const devices = await createEnrollments(base, info.serviceConnectionString);
  const agent = new Agent({ connect: { ca: ca(), servername: 'localhost' }, connections: DEVICES, pipelining: 1 });
  const run = async (count: number): Promise<number> => {
    let next = 0;
    let done = 0;
    await Promise.all(
      Array.from({ length: DEVICES }, async (_, slot) => {
        while (next < count) {
          next += 1;
          const device = devices[(slot + next) % devices.length] as Device;
          if ((await httpRegistration(agent, base, info.idScope, device)) === true) done += 1;
        }
      }),
    );
    return done;
  };
  await run(devices.length * 2);
  const rounds: Record<string, number>[] = [];
  for (let round = 0; round < ROUNDS; round += 1) {
    await probe(server, 'started');
    if (CALLGRIND) await callgrindControl(server, ['--instr=on']);
    const done = await run(REGISTRATIONS);
    const instructions = CALLGRIND ? await callgrindInstructions(server) : undefined;
    const result = (await probe(server, 'result')) as Record<string, number> & { asyncResources?: Record<string, number> };
    rounds.push({
      registrations: done,
      kibPerRegistration: Number(((result.allocatedBytes ?? 0) / 1024 / done).toFixed(1)),
      survivingKibPerRegistration: Number(((result.survivedBytes ?? 0) / 1024 / done).toFixed(2)),
      promotedKibPerRegistration: Number(((result.promotedBytes ?? 0) / 1024 / done).toFixed(2)),
      scavengesPerRegistration: Number(((result.scavenges ?? 0) / done).toFixed(4)),
      fullCollections: result.fullCollections ?? 0,
      gcPauseMsPerRegistration: Number(((result.gcPauseMs ?? 0) / done).toFixed(4)),
      requestsPerRegistration: Number(((result.requests ?? 0) / done).toFixed(2)),
      serverCpuMsPerRegistration: Number(((result.cpuMs ?? 0) / done).toFixed(3)),
      perSecond: Math.round((done * 1000) / (result.wallMs ?? 1)),
      loadAverage: Number((loadavg()[0] ?? 0).toFixed(2)),
      ...(instructions === undefined ? {} : { instructionsPerRegistration: Math.round(instructions / done) }),
      // --promises yes: async resources created per registration, by type (PROMISE: every promise, awaited or not).
      ...Object.fromEntries(Object.entries(result.asyncResources ?? {}).map(([type, count]) => [`asyncPerRegistration${type}`, Number((count / done).toFixed(1))])),
    });
  }
  await agent.close();
  process.stdout.write(`${JSON.stringify({ root: ROOT, devices: DEVICES, nodeOptions: NODE_FLAGS, rounds }, null, 1)}\n`);
} finally {
  if (server !== undefined && server.child.exitCode === null) {
    server.child.kill('SIGTERM');
    await new Promise((done) => server?.child.once('exit', done));
  }
  rmSync(dataDir, { recursive: true, force: true });
}

async function start(bin: string): Promise<Server> {
  const flags = ['--data-dir', dataDir, '--https-port', String(PORT), '--listen-host', '127.0.0.1', '--host-names', 'localhost,127.0.0.1', '--log-level', 'warn', '--no-amqp', '--no-mqtt'];
  const command = [process.execPath, ...NODE_FLAGS, '--import', PROBE, bin, 'serve', ...flags];
  const valgrind = ['--tool=callgrind', '--instr-atstart=no', `--callgrind-out-file=${join(dataDir, 'callgrind.out.%p')}`, '-q'];
  const child = spawn(CALLGRIND ? 'valgrind' : (command[0] as string), CALLGRIND ? [...valgrind, ...command] : command.slice(1), {
    stdio: ['ignore', 'pipe', 'pipe'],
    // With --profile every round is sampled (the file keeps the last); the sampling's own cost shows in CPU, not in bytes.
    // Under valgrind a register may take seconds to finish its work: it waits for it (as it does at native speed) rather
    // than answer `assigning` and be polled after Retry-After.
    env: { ...process.env, PROVISIOND_REGISTRATIONS_PER_SECOND: '0', PROVISIOND_POLLS_PER_SECOND_PER_DEVICE: '0', ...(CALLGRIND ? { PROVISIOND_REGISTRATION_WAIT_MS: '25000' } : {}), ...(args.has('profile') ? { ALLOCATION_PROBE_PROFILE: args.get('profile') } : {}), ...(args.get('promises') === 'yes' ? { ALLOCATION_PROBE_PROMISES: '1' } : {}) },
  });
  const lines: string[] = [];
  child.stdout?.on('data', (chunk: Buffer) => lines.push(...chunk.toString().split('\n').filter((line) => line !== '')));
  let banner = '';
  await new Promise<void>((done, fail) => {
    child.stderr?.on('data', (chunk: Buffer) => {
      banner += chunk.toString();
      if (banner.includes('portal:')) done();
    });
    child.once('exit', (code) => fail(new Error(`provisiond serve exited with ${code}: ${banner}`)));
  });
  return { child, lines };
}

function callgrindControl(target: Server, options: string[]): Promise<string> {
  return new Promise((done, fail) =>
    execFile('callgrind_control', [...options, String(target.child.pid)], (error, stdout) => (error === null ? done(stdout) : fail(error))),
  );
}

/** Turns callgrind's instrumentation off, dumps what it counted since it was turned on, and reads the instructions. */
async function callgrindInstructions(target: Server): Promise<number> {
  await callgrindControl(target, ['--instr=off']);
  const before = new Set(readdirSync(dataDir));
  await callgrindControl(target, ['--dump']);
  // The dump is written by the server's process when it next runs callgrind's command check: wait for the new file and
  // its last line (the header's `summary:` is written before the counts are known).
  const deadline = Date.now() + 120_000;
  while (Date.now() < deadline) {
    const dumped = readdirSync(dataDir).find((name) => name.startsWith('callgrind.out.') && !before.has(name));
    const totals = dumped === undefined ? undefined : /^totals: (\d+)$/m.exec(readFileSync(join(dataDir, dumped), 'utf8'));
    if (totals?.[1] !== undefined) return Number(totals[1]);
    await new Promise((done) => setTimeout(done, 100));
  }
  throw new Error(`callgrind wrote no dump with totals in ${dataDir} within 2 minutes`);
}

/** Signals the probe and waits for its answer: 'started', or the stretch's figures. */
async function probe(target: Server, expect: 'started' | 'result'): Promise<unknown> {
  const from = target.lines.length;
  target.child.kill('SIGUSR2');
  for (;;) {
    for (const line of target.lines.slice(from)) {
      if (!line.startsWith('{"allocationProbe"')) continue;
      const { allocationProbe } = JSON.parse(line) as { allocationProbe: unknown };
      if ((allocationProbe === 'started') === (expect === 'started')) return allocationProbe;
    }
    await new Promise((done) => setTimeout(done, 20));
  }
}

/** Half individual enrollments, half devices of one symmetric-key group (as bench/registrations.ts). */
async function createEnrollments(base: string, serviceConnectionString: string): Promise<Device[]> {
  const agent = new Agent({ connect: { ca: ca(), servername: 'localhost' } });
  const ownerKey = /SharedAccessKey=([^;]+)/.exec(serviceConnectionString)?.[1] ?? '';
  const authorization = createSasToken({ resource: 'localhost', keyBase64: ownerKey, keyName: 'provisioningserviceowner', expirySeconds: Math.floor(Date.now() / 1000) + 3600 });
  const individualKey = Buffer.alloc(32, 3).toString('base64');
  const groupKey = Buffer.alloc(32, 5).toString('base64');
  const individuals = Array.from({ length: Math.ceil(ENROLLMENTS / 2) }, (_, i) => `alloc-ind-${i}`);
  const post = async (path: string, method: 'POST' | 'PUT', body: unknown): Promise<void> => {
    const response = await request(`${base}${path}?api-version=2021-10-01`, { method, dispatcher: agent, headers: { authorization, 'content-type': 'application/json' }, body: JSON.stringify(body) });
    if (response.statusCode >= 300) throw new Error(`${method} ${path}: ${response.statusCode} ${await response.body.text()}`);
    await response.body.dump();
  };
  const symmetricKey = (key: string) => ({ type: 'symmetricKey', symmetricKey: { primaryKey: key, secondaryKey: key } });
  await post('/enrollments', 'POST', { mode: 'create', enrollments: individuals.map((registrationId) => ({ registrationId, attestation: symmetricKey(individualKey) })) });
  await post('/enrollmentGroups/alloc-group', 'PUT', { enrollmentGroupId: 'alloc-group', attestation: symmetricKey(groupKey) });
  await agent.close();
  return individuals.flatMap((id, i) => [
    { id, key: individualKey },
    { id: `alloc-grp-${i}`, key: deriveDeviceKey(groupKey, `alloc-grp-${i}`) },
  ]);
}

/** One full registration as the SDKs do it: register, then poll after Retry-After until terminal. */
async function httpRegistration(dispatcher: Dispatcher, base: string, idScope: string, device: Device): Promise<true | string> {
  const authorization = createSasToken({ resource: `${idScope}/registrations/${device.id}`, keyBase64: device.key, keyName: 'registration', expirySeconds: Math.floor(Date.now() / 1000) + 3600 });
  const registered = await request(`${base}/${idScope}/registrations/${device.id}/register?api-version=2019-03-31`, {
    method: 'PUT',
    dispatcher,
    headers: { authorization, 'content-type': 'application/json' },
    body: JSON.stringify({ registrationId: device.id }),
  });
  const operation = (await registered.body.json()) as { operationId: string };
  if (registered.statusCode !== 202) return `register ${registered.statusCode}`;
  let wait = Number(registered.headers['retry-after'] ?? 1);
  for (;;) {
    if (wait > 0) await new Promise((done) => setTimeout(done, wait * 1000));
    const polled = await request(`${base}/${idScope}/registrations/${device.id}/operations/${operation.operationId}?api-version=2019-03-31`, { dispatcher, headers: { authorization } });
    const body = (await polled.body.json()) as { status: string };
    if (polled.statusCode === 200) return body.status === 'assigned' || body.status;
    if (polled.statusCode !== 202) return `poll ${polled.statusCode}`;
    wait = Number(polled.headers['retry-after'] ?? 1);
  }
}

interface ProfileNode {
  callFrame: { functionName: string; url: string; lineNumber: number };
  selfSize: number;
  children: ProfileNode[];
}

/** A sampling heap profile's bytes by function (self) and by script, largest first. */
function summarize(file: string, top: number): void {
  const { head } = JSON.parse(readFileSync(file, 'utf8')) as { head: ProfileNode };
  const byFunction = new Map<string, number>();
  const byScript = new Map<string, number>();
  let total = 0;
  const walk = (node: ProfileNode, stack: string): void => {
    const { functionName, url, lineNumber } = node.callFrame;
    const script = url.replace(/^file:\/\//, '').replace(/^.*node_modules\//, '').replace(/^.*\/dist\//, 'dist/');
    const name = `${functionName || '(anonymous)'} ${script}:${lineNumber + 1}`;
    if (node.selfSize > 0) {
      total += node.selfSize;
      byFunction.set(`${name}  <  ${stack}`, (byFunction.get(`${name}  <  ${stack}`) ?? 0) + node.selfSize);
      const module = script.startsWith('dist/') ? script : script.split('/').slice(0, script.startsWith('@') ? 2 : 1).join('/');
      byScript.set(module || '(native)', (byScript.get(module || '(native)') ?? 0) + node.selfSize);
    }
    for (const child of node.children) walk(child, functionName || stack);
  };
  walk(head, '');
  const list = (map: Map<string, number>) =>
    [...map].sort((a, b) => b[1] - a[1]).slice(0, top).map(([name, bytes]) => `${((bytes / total) * 100).toFixed(1).padStart(5)}%  ${name}`);
  process.stdout.write(`total sampled ${(total / 1024 / 1024).toFixed(1)} MiB\n\nby script:\n${list(byScript).join('\n')}\n\nby function (self, < caller):\n${list(byFunction).join('\n')}\n`);
}
