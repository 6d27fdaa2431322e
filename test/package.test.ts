import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { promisify } from 'node:util';
import { CA_DIR, call } from './harness.js';
import { serveProvisiond, type ServedProvisiond } from './provisiond-process.js';

/**
 * The package as a user gets it: `npm pack` (which builds the portal and dist/ through prepack and prepare), the
 * tarball installed into an empty directory, and `npx provisiond info` and `serve` run from there.
 *
 * The test runs without network (CI and the test network namespace). The tarball itself installs offline from a
 * lockfile that names only it; its dependencies are then found the way Node finds them — in a node_modules folder
 * above the empty directory, here a link to this checkout's installed dependencies — so nothing is downloaded and
 * nothing of this checkout's node_modules is written to.
 */
const run = promisify(execFile);
const root = process.cwd();
const scratch = mkdtempSync(join(tmpdir(), 'provisiond-package-'));
let server: ServedProvisiond | undefined;

after(async () => {
  await server?.stop('SIGKILL');
  rmSync(scratch, { recursive: true, force: true });
  for (const file of ['bundle.json', 'receipt.json']) rmSync(join(root, file), { force: true });
});

test('npm pack holds only what runs; the tarball installed in an empty directory runs `npx provisiond info` and `serve`', { timeout: 600_000 }, async () => {
  // What a user following the README leaves in the project directory must not be packed.
  writeFileSync(join(root, 'bundle.json'), '{}');
  writeFileSync(join(root, 'receipt.json'), '{}');
  const packed = await run('npm', ['pack', '--json', '--pack-destination', scratch], { cwd: root, maxBuffer: 64 * 1024 * 1024 });
  const [report] = JSON.parse(packed.stdout.slice(packed.stdout.indexOf('['))) as { filename: string; files: { path: string }[] }[];
  assert.ok(report !== undefined);
  const files = report.files.map((file) => file.path);
  const unexpected = files.filter((path) => !/^(bin\/|dist\/|web\/dist\/)/.test(path) && !['package.json', 'README.md'].includes(path));
  assert.deepEqual(unexpected, [], 'only bin/, dist/, web/dist/, package.json and README.md');
  for (const needed of ['bin/provisiond.js', 'dist/main.js', 'dist/app.js', 'web/dist/index.html']) assert.ok(files.includes(needed), needed);
  assert.ok(!files.some((path) => path.endsWith('.ts') || path.endsWith('.map')), 'no TypeScript sources or source maps');

  // The empty directory, with the dependencies reachable above it (see the note at the top).
  const above = join(scratch, 'above');
  const app = join(above, 'app');
  mkdirSync(app, { recursive: true });
  symlinkSync(join(root, 'node_modules'), join(above, 'node_modules'), 'dir');
  copyFileSync(join(scratch, report.filename), join(app, report.filename));
  const { version } = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string };
  const dependency = `file:${report.filename}`;
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'empty', version: '1.0.0', private: true, dependencies: { provisiond: dependency } }));
  writeFileSync(
    join(app, 'package-lock.json'),
    JSON.stringify({
      name: 'empty',
      version: '1.0.0',
      lockfileVersion: 3,
      requires: true,
      packages: {
        '': { name: 'empty', version: '1.0.0', dependencies: { provisiond: dependency } },
        'node_modules/provisiond': { version, resolved: dependency, bin: { provisiond: 'bin/provisiond.js' } },
      },
    }),
  );
  await run('npm', ['ci', '--offline', '--ignore-scripts', '--no-audit', '--no-fund'], { cwd: app });

  // A data directory with the test CA, so this test's HTTPS client trusts the server it starts.
  const dataDir = join(scratch, 'data');
  mkdirSync(join(dataDir, 'tls'), { recursive: true });
  copyFileSync(join(CA_DIR, 'ca.pem'), join(dataDir, 'tls', 'ca.pem'));
  copyFileSync(join(CA_DIR, 'ca.key'), join(dataDir, 'tls', 'ca.key'));
  const env = { ...process.env, npm_config_offline: 'true' };

  server = await serveProvisiond({
    command: ['npx', 'provisiond', 'serve'],
    args: ['--data-dir', dataDir, '--listen-host', '127.0.0.1', '--log-level', 'warn'],
    cwd: app,
    env,
    // npx runs the command under a shell of its own: stop() signals the whole process group, as Ctrl-C in a terminal does.
    detached: true,
  });
  const { banner } = server;
  // `info` reads what the running server created, beside it.
  const info = JSON.parse((await run('npx', ['provisiond', 'info', '--data-dir', dataDir, '--json'], { cwd: app, env })).stdout) as Record<string, unknown>;
  assert.match(String(info.idScope), /^0ne[0-9A-F]{8}$/);
  assert.equal(info.caCertificatePath, join(dataDir, 'tls', 'ca.pem'));
  assert.ok(banner.includes(`ID scope:                   ${String(info.idScope)}`));
  assert.deepEqual((await call('GET', '/healthz')).body, { status: 'ok' });
  // The portal comes from the package's web/dist, not the "not built" page.
  const portal = await call('GET', '/portal/');
  assert.equal(portal.status, 200);
  assert.match(portal.text, /<script type="module"[^>]*src="\/portal\/assets\//);

  // The installed CLI administers the server it started.
  const listed = await run(join(app, 'node_modules', '.bin', 'provisiond'), ['enrollment', 'list', '--json'], {
    cwd: app,
    env: { ...env, PROVISIOND_CONNECTION_STRING: String(info.serviceConnectionString) },
  });
  assert.deepEqual(JSON.parse(listed.stdout), []);

  await server.stop('SIGTERM');
});
