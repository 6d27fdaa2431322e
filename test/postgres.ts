import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';

/**
 * A private PostgreSQL cluster for the tests: `initdb` into a temp directory, `pg_ctl start` on a free port, trust
 * authentication on 127.0.0.1, stopped and removed at the end. scripts/test.sh starts one for the whole run and
 * passes its URL in PROVISIOND_TEST_PG_URL; a test file run on its own starts (and stops) its own.
 *
 * The cluster's default collation is ICU with punctuation ignored (`en-US-u-ka-shifted`), the kind of locale under
 * which `ab-cd` sorts between `abc` and `abd`: key columns must compare byte-wise (COLLATE "C") to stay correct.
 */
export interface PostgresCluster {
  url: string;
  dir: string;
}

function binDir(): string {
  const root = '/usr/lib/postgresql';
  const versions = existsSync(root) ? readdirSync(root).filter((name) => /^\d+$/.test(name)).sort((a, b) => Number(b) - Number(a)) : [];
  const found = versions.map((version) => join(root, version, 'bin')).find((dir) => existsSync(join(dir, 'initdb')));
  if (found === undefined) throw new Error('PostgreSQL binaries not found under /usr/lib/postgresql (apt-get install -y postgresql)');
  return found;
}

/** initdb refuses to run as root: as root, the cluster belongs to the `postgres` user. */
function runAsOwner(command: string, args: string[]): void {
  const asRoot = process.getuid?.() === 0;
  const result = asRoot ? spawnSync('runuser', ['-u', 'postgres', '--', command, ...args], { encoding: 'utf8' }) : spawnSync(command, args, { encoding: 'utf8' });
  if (result.status !== 0) throw new Error(`${command} failed: ${result.stderr || result.stdout}`);
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => resolve(typeof address === 'object' && address !== null ? address.port : 0));
    });
  });
}

export async function startPostgresCluster(extraOptions = ''): Promise<PostgresCluster> {
  const bin = binDir();
  const dir = mkdtempSync(join(tmpdir(), 'provisiond-pg-'));
  chmodSync(dir, 0o700);
  if (process.getuid?.() === 0) {
    const uid = Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).trim());
    const gid = Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).trim());
    chownSync(dir, uid, gid);
  }
  const data = join(dir, 'data');
  runAsOwner(join(bin, 'initdb'), ['-A', 'trust', '-U', 'postgres', '-D', data, '--no-sync', '-E', 'UTF8', '--locale=C.UTF-8', '--locale-provider=icu', '--icu-locale=en-US-u-ka-shifted']);
  const port = await freePort();
  // fsync off: a test cluster never needs to survive a machine crash, and the shared machine's disk is slow.
  const options = `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300${extraOptions === '' ? '' : ` ${extraOptions}`}`;
  runAsOwner(join(bin, 'pg_ctl'), ['-D', data, '-o', options, '-l', join(dir, 'log'), '-w', 'start']);
  return { url: `postgres://postgres@127.0.0.1:${port}/postgres`, dir };
}

export function stopPostgresCluster(dir: string): void {
  try {
    runAsOwner(join(binDir(), 'pg_ctl'), ['-D', join(dir, 'data'), '-m', 'immediate', '-w', 'stop']);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

let shared: Promise<string> | undefined;

/** The test server's URL: the run's cluster, or one started for this process and stopped when it exits. */
export function postgresServerUrl(): Promise<string> {
  shared ??= (async () => {
    const given = process.env.PROVISIOND_TEST_PG_URL;
    if (given !== undefined && given !== '') return given;
    const cluster = await startPostgresCluster();
    process.once('exit', () => stopPostgresCluster(cluster.dir));
    return cluster.url;
  })();
  return shared;
}

let databases = 0;
let template: Promise<string> | undefined;

async function createDatabase(server: string, name: string, from?: string): Promise<string> {
  const client = new pg.Client({ connectionString: server });
  await client.connect();
  try {
    await client.query(`create database ${name}${from === undefined ? '' : ` template ${from}`}`);
  } finally {
    await client.end();
  }
  const url = new URL(server);
  url.pathname = `/${name}`;
  return url.toString();
}

/**
 * A new database on the test server; its URL. `migrated` copies a database that `migrate` prepared once for this
 * process (CREATE DATABASE … TEMPLATE is a file copy, much faster than running every migration again).
 */
export async function freshPostgresDatabase(migrate?: (url: string) => Promise<void>): Promise<string> {
  const server = await postgresServerUrl();
  const name = `t_${process.pid}_${Date.now().toString(36)}_${(databases += 1)}`;
  if (migrate === undefined) return createDatabase(server, name);
  template ??= (async () => {
    const templateName = `tpl_${process.pid}_${Date.now().toString(36)}`;
    await migrate(await createDatabase(server, templateName));
    return templateName;
  })();
  return createDatabase(server, name, await template);
}

/**
 * Drops a database that freshPostgresDatabase made, once its server has closed. Without FORCE on purpose: a server
 * that left a connection open (a pool not ended) makes the drop fail, naming the database, instead of holding the
 * test process (and the run) open; and the run's one cluster does not fill up with the databases of finished tests.
 */
export async function dropPostgresDatabase(url: string): Promise<void> {
  const name = new URL(url).pathname.slice(1);
  const client = new pg.Client({ connectionString: await postgresServerUrl() });
  await client.connect();
  try {
    await client.query(`drop database if exists ${name}`);
  } finally {
    await client.end();
  }
}

/**
 * Every row of every table of a database, as text (`row::text`), whose text holds `needle` (any case): what a raw
 * look at the database would find of a subject, by table. The tables' own columns only (no WAL, no dead tuples).
 */
export async function rowsHolding(url: string, needle: string): Promise<Record<string, string[]>> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    const tables = await client.query<{ name: string }>("select tablename as name from pg_tables where schemaname = 'public' order by tablename");
    const found: Record<string, string[]> = {};
    for (const { name } of tables.rows) {
      const rows = await client.query<{ row: string }>(`select t::text as row from "${name}" t where strpos(lower(t::text), lower($1)) > 0`, [needle]);
      if (rows.rows.length > 0) found[name] = rows.rows.map((row) => row.row.slice(0, 300));
    }
    return found;
  } finally {
    await client.end();
  }
}
