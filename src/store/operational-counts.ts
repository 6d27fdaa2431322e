import { Migrator, type Kysely } from 'kysely';
import { migrationProvider } from './migrations.js';
import type { Database } from './schema.js';
import type { DialectCapabilities } from './dialects/dialect.js';

/**
 * Questions operators ask of the database, not the tenants: what migrations are still pending, how many data
 * requests are in which state, how deep the lifecycle-event outbox is. Read by /readyz and /metrics; one query each,
 * over any dialect.
 */
export async function pendingMigrations(db: Kysely<Database>, capabilities: DialectCapabilities): Promise<string[]> {
  const migrations = await new Migrator({ db, provider: migrationProvider(capabilities) }).getMigrations();
  return migrations.filter((migration) => migration.executedAt === undefined).map((migration) => migration.name);
}

export interface OperationalCounts {
  dataRequests: Array<{ kind: string; status: string; count: number }>;
  outboxDepth: number;
  outboxOldestAgeSeconds: number;
}

export async function operationalCounts(db: Kysely<Database>, now: Date = new Date()): Promise<OperationalCounts> {
  const requests = await db
    .selectFrom('data_requests')
    .select(['type', 'status', (eb) => eb.fn.countAll().as('count')])
    .groupBy(['type', 'status'])
    .execute();
  const outbox = await db
    .selectFrom('event_outbox')
    .select([(eb) => eb.fn.countAll().as('depth'), (eb) => eb.fn.min('event_id').as('oldest')])
    .executeTakeFirst();
  // Event IDs begin with 12 hex digits of milliseconds (audit-log.ts newEventId), so the smallest is the oldest.
  const oldest = typeof outbox?.oldest === 'string' ? Number.parseInt(outbox.oldest.slice(0, 12), 16) : undefined;
  return {
    dataRequests: requests.map((row) => ({ kind: row.type, status: row.status, count: Number(row.count) })),
    outboxDepth: Number(outbox?.depth ?? 0),
    outboxOldestAgeSeconds: oldest === undefined || Number.isNaN(oldest) ? 0 : Math.max(0, (now.getTime() - oldest) / 1000),
  };
}
