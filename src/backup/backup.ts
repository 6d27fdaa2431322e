import Database from 'better-sqlite3';
import { createHash } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { basename, dirname, join, relative, resolve, sep } from 'node:path';
import { create } from 'tar';

/**
 * `provisiond backup`: one gzip tar archive holding a consistent copy of the database and every other file of the
 * data directory (the dev CA and server certificate, the operator's TLS files kept there, instance signing keys, any
 * issuing CA) — taken while the server runs. The database is copied with SQLite's online backup API, which reads a
 * consistent snapshot beside a writing server (WAL). Files are taken generically, so key material added by later
 * versions is included without a change here. The archive holds private keys: it is written with mode 0600.
 *
 *   manifest.json          format, time, versions, instances (ID scopes), migrations, every file's SHA-256
 *   database/provisiond.db
 *   files/<path>           everything else in the data directory
 */
export const BACKUP_FORMAT = 'provisiond-backup';
export const BACKUP_FORMAT_VERSION = 1;

export interface BackupManifest {
  format: typeof BACKUP_FORMAT;
  formatVersion: number;
  /** When the database snapshot was taken (ISO 8601, UTC). */
  createdUtc: string;
  provisiondVersion: string;
  sourceDataDir: string;
  instances: Array<{ name: string; idScope: string }>;
  migrations: string[];
  database: { path: string; sha256: string; bytes: number };
  files: Array<{ path: string; sha256: string; bytes: number; mode: number }>;
}

export interface BackupOptions {
  dataDir: string;
  /** The SQLite file (usually `<dataDir>/provisiond.db`). */
  databaseFile: string;
  out: string;
  version: string;
  now?: () => Date;
}

export class BackupError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'BackupError';
  }
}

/** The live database's own files, which only the online backup may read (a plain copy could be torn). */
export function isLiveDatabaseFile(name: string, databaseFile: string): boolean {
  const base = basename(databaseFile);
  return [base, `${base}-wal`, `${base}-shm`, `${base}-journal`].includes(name);
}

export async function createBackup(options: BackupOptions): Promise<BackupManifest> {
  const dataDir = resolve(options.dataDir);
  const databaseFile = resolve(options.databaseFile);
  const out = resolve(options.out);
  if (!existsSync(databaseFile)) throw new BackupError(`no database at ${databaseFile}: is ${dataDir} a provisiond data directory?`);
  const staging = mkdtempSync(join(dirname(out), '.provisiond-backup-'));
  try {
    mkdirSync(join(staging, 'database'));
    mkdirSync(join(staging, 'files'));
    const copy = join(staging, 'database', 'provisiond.db');
    const source = new Database(databaseFile, { readonly: true, fileMustExist: true });
    let createdUtc: string;
    try {
      source.pragma('busy_timeout = 5000');
      createdUtc = (options.now?.() ?? new Date()).toISOString();
      // After the first 100 pages, the rest in one step: a step copies a consistent snapshot, and fewer steps
      // leave the writing server fewer chances to restart the copy.
      await source.backup(copy, { progress: () => 1_000_000 });
    } finally {
      source.close();
    }
    const snapshot = new Database(copy);
    let instances: BackupManifest['instances'];
    let migrations: string[];
    try {
      snapshot.pragma('journal_mode = DELETE');
      const check = snapshot.pragma('integrity_check', { simple: true });
      if (check !== 'ok') throw new BackupError(`the database copy failed its integrity check: ${String(check)}`);
      instances = (snapshot.prepare('SELECT doc FROM instances').all() as Array<{ doc: string }>).map((row) => {
        const doc = JSON.parse(row.doc) as { name: string; idScope: string };
        return { name: doc.name, idScope: doc.idScope };
      });
      migrations = (snapshot.prepare('SELECT name FROM kysely_migration ORDER BY name').all() as Array<{ name: string }>).map((row) => row.name);
    } finally {
      snapshot.close();
    }
    const files: BackupManifest['files'] = [];
    for (const path of filesUnder(dataDir)) {
      const relativePath = relative(dataDir, path);
      // The live database goes through the backup API above; the archive being written is not part of itself.
      if (!relativePath.includes(sep) && isLiveDatabaseFile(relativePath, databaseFile)) continue;
      if (path === out || path.startsWith(`${staging}${sep}`) || basename(path).startsWith('.provisiond-backup-')) continue;
      // A lock or pid file belongs to the running process, not to the data: restored, it would look held.
      if (/\.(lock|pid)$/.test(basename(path))) continue;
      const target = join(staging, 'files', relativePath);
      mkdirSync(dirname(target), { recursive: true });
      const bytes = readFileSync(path);
      const mode = statSync(path).mode & 0o777;
      writeFileSync(target, bytes, { mode });
      chmodSync(target, mode);
      files.push({ path: relativePath.split(sep).join('/'), sha256: sha256(bytes), bytes: bytes.length, mode });
    }
    const databaseBytes = readFileSync(copy);
    const manifest: BackupManifest = {
      format: BACKUP_FORMAT,
      formatVersion: BACKUP_FORMAT_VERSION,
      createdUtc,
      provisiondVersion: options.version,
      sourceDataDir: dataDir,
      instances,
      migrations,
      database: { path: 'database/provisiond.db', sha256: sha256(databaseBytes), bytes: databaseBytes.length },
      files,
    };
    writeFileSync(join(staging, 'manifest.json'), `${JSON.stringify(manifest, null, 2)}\n`);
    const partial = `${out}.partial`;
    // Created 0600 before a byte of key material goes in; tar writes into it as it is.
    writeFileSync(partial, '', { mode: 0o600 });
    await create({ gzip: true, file: partial, cwd: staging, portable: true }, ['manifest.json', 'database', 'files']);
    chmodSync(partial, 0o600);
    renameSync(partial, out);
    return manifest;
  } finally {
    rmSync(staging, { recursive: true, force: true });
  }
}

export function sha256(bytes: Buffer): string {
  return createHash('sha256').update(bytes).digest('hex');
}

function filesUnder(dir: string): string[] {
  const found: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) found.push(...filesUnder(path));
    else if (entry.isFile()) found.push(path);
  }
  return found.sort();
}
