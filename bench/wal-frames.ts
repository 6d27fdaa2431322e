import Database from 'better-sqlite3';
import { randomBytes } from 'node:crypto';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { newOperationId } from '../src/domain/ids.js';

/**
 * WAL frames per registration (issue 12, bench/README.md "session 21, H1"): a figure no load on a shared machine can
 * blur. Replays the writes of a re-registration — the SQL texts and one execution's parameters that a bench run
 * recorded with `BENCH_STATEMENT_TEXTS=FILE BENCH_KEEP_DATA=1` — for distinct devices of that run, `--batch`
 * registrations per transaction (the group commit's batch), each in a savepoint with `--savepoints` (as the group
 * commit runs a batch of more than one), on a copy of the run's database with the server's pragmas. Frames are the WAL
 * file's growth (autocheckpoint off unless `--autocheckpoint N`) divided by the registrations.
 *
 *   npx tsx bench/wal-frames.ts DATA_DIR/provisiond.db TEXTS.json [--batch 8] [--registrations 400] [--savepoints]
 *     [--temp-store default|memory] [--autocheckpoint 0]
 *
 * Run it under `strace -f -c -e trace=pwrite64,pread64,openat,unlink,fsync` for the syscalls per registration. Reads
 * and the hub device's revision-guarded update (whose recorded revision matches only the recorded device) are left out
 * or change nothing: the figure is the record, link, operation and log rows' pages.
 */
const [databaseFile, textsFile, ...flags] = process.argv.slice(2);
if (databaseFile === undefined || textsFile === undefined) throw new Error('usage: wal-frames.ts DATABASE TEXTS.json [--batch N] …');
const flag = (name: string, fallback: string): string => {
  const at = flags.indexOf(name);
  return at >= 0 ? (flags[at + 1] ?? fallback) : fallback;
};
const batch = Number(flag('--batch', '8'));
const registrations = Number(flag('--registrations', '400'));
const savepoints = flags.includes('--savepoints');

const dir = mkdtempSync(join(tmpdir(), 'provisiond-wal-frames-'));
const copy = join(dir, 'provisiond.db');
copyFileSync(databaseFile, copy);
const db = new Database(copy);
db.pragma('journal_mode = WAL');
db.pragma('synchronous = NORMAL');
db.pragma('secure_delete = ON');
if (flag('--temp-store', 'default') === 'memory') db.pragma('temp_store = MEMORY');
db.pragma(`wal_autocheckpoint = ${Number(flag('--autocheckpoint', '0'))}`);

type Recorded = [text: string, count: number, micros: number, example: unknown[][] | undefined];
const recorded = JSON.parse(readFileSync(textsFile, 'utf8')) as Recorded[];
const writes = recorded.filter(([text, , , example]) => /^(insert|update|delete)/i.test(text) && example !== undefined);
// A text run for every registration of the burst (200 devices) or twice (the log's two rows); group-only texts fewer.
const most = Math.max(...writes.map(([, count]) => count));
const perRegistration = writes.map(([text, count, , example]) => ({
  statement: db.prepare(text),
  text,
  parameters: (example?.[0] ?? []) as unknown[],
  times: count > most / 2 ? Math.round((2 * count) / most) : 1,
  groupOnly: count < most / 2,
}));
const device = /bench-(ind|grp)-\d+/g;

db.pragma('wal_checkpoint(TRUNCATE)');
const started = process.hrtime.bigint();
let done = 0;
while (done < registrations) {
  db.exec('begin');
  for (let unit = 0; unit < batch && done < registrations; unit += 1, done += 1) {
    const group = done % 2 === 1;
    const id = `bench-${group ? 'grp' : 'ind'}-${Math.floor(done / 2) + 7}`;
    if (savepoints) db.exec('savepoint unit');
    for (const write of perRegistration) {
      if (write.groupOnly && !group) continue;
      for (let i = 0; i < write.times; i += 1) {
        const parameters = write.parameters.map((value) => (typeof value === 'string' ? value.replace(device, id) : value));
        // Fresh keys where every registration writes a new row.
        if (/^insert into "audit_events"/.test(write.text)) parameters[1] = `01${randomBytes(11).toString('hex')}`;
        if (/^insert into "operations"/.test(write.text)) parameters[1] = newOperationId();
        write.statement.run(...parameters);
      }
    }
    if (savepoints) db.exec('release savepoint unit');
  }
  db.exec('commit');
}
const micros = Number(process.hrtime.bigint() - started) / 1000;
const walBytes = statSync(`${copy}-wal`).size;
db.close();
rmSync(dir, { recursive: true, force: true });
const frame = 4096 + 24;
process.stdout.write(
  `${JSON.stringify({ batch, savepoints, registrations: done, walFramesPerRegistration: Number(((walBytes - 32) / frame / done).toFixed(2)), wallMicrosPerRegistration: Math.round(micros / done) })}\n`,
);
