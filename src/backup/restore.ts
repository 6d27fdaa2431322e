import Database from 'better-sqlite3';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { extract } from 'tar';
import { subjectHash } from '../domain/receipt.js';
import { BACKUP_FORMAT, BACKUP_FORMAT_VERSION, BackupError, sha256, type BackupManifest } from './backup.js';

/**
 * `provisiond restore`: unpacks a backup into an empty data directory after checking it whole (format, every
 * file's SHA-256, the database's integrity). A server started on that directory answers with the same ID scopes,
 * keys and data as when the backup was taken.
 *
 * Erasure and backups (docs/customer-data.md): a backup taken before an erase still holds the erased subject, so
 * restoring it undoes the erase. Given the data directory the restore replaces (`compareDataDir`), the erases
 * completed there after the backup was taken are listed — with the subject's ID when the restored data still names
 * it (matched by the instance's keyed subject hash) — so they can be run again.
 */
export interface RestoreOptions {
  archive: string;
  dataDir: string;
  /** The data directory this restore replaces (the live or previous one), to find erases the backup predates. */
  compareDataDir?: string;
}

export interface UndoneErase {
  requestId: string;
  idScope: string;
  completedDateTimeUtc: string;
  subjectKind: string;
  subjectHash: string;
  /** The subject's ID as the restored data names it, when found. */
  subjectId?: string;
}

export interface RestoreResult {
  manifest: BackupManifest;
  /** Erases completed after the backup was taken (empty without compareDataDir). */
  undoneErases: UndoneErase[];
}

export async function restoreBackup(options: RestoreOptions): Promise<RestoreResult> {
  const dataDir = resolve(options.dataDir);
  if (existsSync(dataDir) && readdirSync(dataDir).length > 0) {
    throw new BackupError(`${dataDir} is not empty: restore only into an empty or new directory (move the current one aside first)`);
  }
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const staging = mkdtempSync(join(dirname(dataDir), '.provisiond-restore-'));
  try {
    try {
      await extract({ file: resolve(options.archive), cwd: staging, strict: true });
    } catch (error) {
      throw new BackupError(`cannot read ${options.archive} as a provisiond backup: ${(error as Error).message}`);
    }
    const manifest = readManifest(staging);
    const database = readFileSync(join(staging, manifest.database.path));
    if (sha256(database) !== manifest.database.sha256) throw new BackupError('the database in the backup does not match its checksum: the archive is damaged');
    for (const file of manifest.files) {
      const bytes = readFileSync(join(staging, 'files', ...file.path.split('/')));
      if (sha256(bytes) !== file.sha256) throw new BackupError(`${file.path} in the backup does not match its checksum: the archive is damaged`);
    }
    const check = new Database(join(staging, manifest.database.path), { readonly: true });
    try {
      const result = check.pragma('integrity_check', { simple: true });
      if (result !== 'ok') throw new BackupError(`the database in the backup failed its integrity check: ${String(result)}`);
    } finally {
      check.close();
    }
    for (const file of manifest.files) {
      const target = join(dataDir, ...file.path.split('/'));
      mkdirSync(dirname(target), { recursive: true, mode: 0o700 });
      renameSync(join(staging, 'files', ...file.path.split('/')), target);
      chmodSync(target, file.mode);
    }
    renameSync(join(staging, manifest.database.path), join(dataDir, 'provisiond.db'));
    chmodSync(join(dataDir, 'provisiond.db'), 0o600);
    const undoneErases = options.compareDataDir === undefined ? [] : erasesSince(manifest, resolve(options.compareDataDir), join(dataDir, 'provisiond.db'));
    return { manifest, undoneErases };
  } finally {
    rmSync(staging, { recursive: true, force: true });
  }
}

function readManifest(staging: string): BackupManifest {
  let manifest: BackupManifest;
  try {
    manifest = JSON.parse(readFileSync(join(staging, 'manifest.json'), 'utf8')) as BackupManifest;
  } catch {
    throw new BackupError('the archive has no readable manifest.json: it is not a provisiond backup');
  }
  if (manifest.format !== BACKUP_FORMAT) throw new BackupError('the archive is not a provisiond backup');
  if (manifest.formatVersion > BACKUP_FORMAT_VERSION) {
    throw new BackupError(`the backup has format version ${manifest.formatVersion}; this provisiond reads up to ${BACKUP_FORMAT_VERSION}: restore it with a newer provisiond`);
  }
  return manifest;
}

interface EraseDoc {
  requestId: string;
  type: string;
  status: string;
  dryRun?: boolean;
  subject: { kind: string; hash: string };
  lastUpdatedDateTimeUtc: string;
  /** The signed receipt: `{ receipt: { completedDateTimeUtc, … }, signature }`. */
  receipt?: { receipt?: { completedDateTimeUtc?: string } };
}

/** Completed (not dry-run) erases in `compareDataDir` that finished after the backup's snapshot. */
function erasesSince(manifest: BackupManifest, compareDataDir: string, restoredDatabase: string): UndoneErase[] {
  const file = join(compareDataDir, 'provisiond.db');
  if (!existsSync(file)) throw new BackupError(`no database at ${file} to compare with`);
  const current = new Database(file, { readonly: true, fileMustExist: true });
  const found: UndoneErase[] = [];
  try {
    current.pragma('busy_timeout = 5000');
    const scopes = new Map(
      (current.prepare('SELECT id, doc FROM instances').all() as Array<{ id: string; doc: string }>).map((row) => [row.id, (JSON.parse(row.doc) as { idScope: string }).idScope]),
    );
    const rows = current.prepare("SELECT instance_id, doc FROM data_requests WHERE type = 'erase' AND status = 'completed'").all() as Array<{ instance_id: string; doc: string }>;
    const since = Date.parse(manifest.createdUtc);
    for (const row of rows) {
      const doc = JSON.parse(row.doc) as EraseDoc;
      if (doc.dryRun === true) continue;
      const completed = doc.receipt?.receipt?.completedDateTimeUtc ?? doc.lastUpdatedDateTimeUtc;
      if (Date.parse(completed) <= since) continue;
      found.push({
        requestId: doc.requestId,
        idScope: scopes.get(row.instance_id) ?? '',
        completedDateTimeUtc: completed,
        subjectKind: doc.subject.kind,
        subjectHash: doc.subject.hash,
      });
    }
  } finally {
    current.close();
  }
  if (found.length > 0) nameSubjects(found, restoredDatabase);
  return found.sort((a, b) => a.completedDateTimeUtc.localeCompare(b.completedDateTimeUtc));
}

/** Finds which ID in the restored data each erase's keyed hash stands for (the instance's hash key is restored too). */
function nameSubjects(erases: UndoneErase[], restoredDatabase: string): void {
  const db = new Database(restoredDatabase, { readonly: true });
  try {
    const instances = (db.prepare('SELECT id, doc FROM instances').all() as Array<{ id: string; doc: string }>).map((row) => ({
      id: row.id,
      doc: JSON.parse(row.doc) as { idScope: string; secrets?: { subjectHashKey?: string } },
    }));
    for (const erase of erases) {
      const instance = instances.find((candidate) => candidate.doc.idScope === erase.idScope);
      const key = instance?.doc.secrets?.subjectHashKey;
      if (instance === undefined || key === undefined) continue;
      const ids = new Set<string>();
      const collect = (sql: string, field: string) => {
        for (const row of db.prepare(sql).all(instance.id) as Array<{ doc: string }>) {
          const value = (JSON.parse(row.doc) as Record<string, unknown>)[field];
          if (typeof value === 'string') ids.add(value);
        }
      };
      if (erase.subjectKind === 'registrationId') {
        collect('SELECT doc FROM enrollments WHERE instance_id = ?', 'registrationId');
        collect('SELECT doc FROM registrations WHERE instance_id = ?', 'registrationId');
      } else if (erase.subjectKind === 'deviceId') {
        collect('SELECT doc FROM enrollments WHERE instance_id = ?', 'deviceId');
        collect('SELECT doc FROM registrations WHERE instance_id = ?', 'deviceId');
      } else if (erase.subjectKind === 'enrollmentGroupId') {
        collect('SELECT doc FROM enrollment_groups WHERE instance_id = ?', 'enrollmentGroupId');
      }
      const match = [...ids].find((id) => subjectHash(key, erase.subjectKind, id) === erase.subjectHash);
      if (match !== undefined) erase.subjectId = match;
    }
  } finally {
    db.close();
  }
}

/** The warning `provisiond restore` prints, with the commands that erase each subject again. */
export function formatUndoneErases(result: RestoreResult): string {
  if (result.undoneErases.length === 0) return '';
  const flag: Record<string, string> = { registrationId: '--registration-id', deviceId: '--device-id', enrollmentGroupId: '--enrollment-group-id' };
  const lines = [
    `warning: this backup (taken ${result.manifest.createdUtc}) is older than ${result.undoneErases.length} completed erase(s); the restored data holds their subjects again.`,
    'Run each erase again once the restored server is up:',
  ];
  for (const erase of result.undoneErases) {
    const again =
      erase.subjectId === undefined
        ? '(the subject is not named in the restored data; nothing to erase again unless it is found elsewhere)'
        : `provisiond data erase ${flag[erase.subjectKind] ?? `--${erase.subjectKind}`} ${erase.subjectId} --yes`;
    lines.push(`  ${erase.requestId}  completed ${erase.completedDateTimeUtc}  ID scope ${erase.idScope}  ${erase.subjectKind} hash ${erase.subjectHash.slice(0, 16)}…  →  ${again}`);
  }
  return `${lines.join('\n')}\n`;
}
