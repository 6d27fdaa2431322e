import { randomBytes } from 'node:crypto';
import type { FastifyBaseLogger } from 'fastify';
import { dpsTimestamp } from '../domain/time.js';
import type { AuditEvent, AuditQuery, InstanceRecord, Page, Store } from '../store/store.js';
import { probeOfEvent, pseudonymizedEvent } from './customer-data/erase-fence.js';
import type { ServiceDeps } from './deps.js';
import { deleteInBatches } from './retention-purge.js';

/**
 * The system log: every service call, registration attempt, hub write, webhook exchange and data request, stored
 * per instance and queryable by the tenant. Recording never fails the operation it records (a failed write is
 * logged). No secret goes in: callers pass IDs, names, codes and reasons, never keys or tokens.
 */
export type AuditInput = Omit<AuditEvent, 'eventId' | 'timeUtc'>;

export const DEFAULT_AUDIT_RETENTION_DAYS = 90;
const DAY_MS = 86_400_000;

let lastId = { ms: 0, sequence: 0 };

/**
 * Event IDs sort in the order they were made: 12 hex digits of milliseconds, a per-process sequence within the
 * millisecond, then randomness (several nodes writing in the same millisecond).
 */
export function newEventId(now: Date): string {
  const ms = Math.max(now.getTime(), lastId.ms);
  lastId = ms === lastId.ms ? { ms, sequence: lastId.sequence + 1 } : { ms, sequence: 0 };
  return `${ms.toString(16).padStart(12, '0')}${lastId.sequence.toString(16).padStart(4, '0')}${randomBytes(4).toString('hex')}`;
}

export class AuditLog {
  readonly #deps: ServiceDeps;
  readonly #logger: FastifyBaseLogger;

  constructor(deps: ServiceDeps, logger: FastifyBaseLogger) {
    this.#deps = deps;
    this.#logger = logger;
  }

  /** The event, stamped now; for callers that write it inside their own transaction. */
  event(input: AuditInput): AuditEvent {
    const now = this.#deps.now();
    return { eventId: newEventId(now), timeUtc: dpsTimestamp(now), ...input };
  }

  async record(instanceId: string, input: AuditInput): Promise<void> {
    const event = this.event(input);
    try {
      // An event about a subject an erase has fenced is written already pseudonymized, so nothing the erase has
      // cleaned can reappear in the log while it runs (docs/customer-data.md "The erase fence").
      await this.#deps.store.transaction(async (store) => {
        const fence = await store.findEraseFence(instanceId, probeOfEvent(event.subject));
        await store.appendAuditEvent(instanceId, fence === undefined ? event : pseudonymizedEvent(event, fence.subjectHash));
      });
    } catch (error) {
      this.#logger.error({ err: error, kind: input.kind, operation: input.operation }, 'could not write an audit event');
    }
  }

  /**
   * Writes many events inside the caller's transaction (a bulk call's items), pseudonymized where an erase has
   * fenced their subject, like record. Failures are the caller's: the events belong to its transaction.
   */
  async recordAll(store: Store, instanceId: string, inputs: readonly AuditInput[]): Promise<void> {
    const events = inputs.map((input) => this.event(input));
    const probe = {
      registrationIds: events.flatMap((event) => (event.subject.registrationId === undefined ? [] : [event.subject.registrationId])),
      deviceIds: events.flatMap((event) => (event.subject.deviceId === undefined ? [] : [event.subject.deviceId])),
      groupIds: events.flatMap((event) => (event.subject.enrollmentGroupId === undefined ? [] : [event.subject.enrollmentGroupId])),
    };
    // Fences are rare: one probe for all, and one per event only when some fence stands.
    if ((await store.findEraseFence(instanceId, probe)) === undefined) {
      await store.appendAuditEvents(instanceId, events);
      return;
    }
    for (const event of events) {
      const fence = await store.findEraseFence(instanceId, probeOfEvent(event.subject));
      await store.appendAuditEvent(instanceId, fence === undefined ? event : pseudonymizedEvent(event, fence.subjectHash));
    }
  }

  async query(instance: InstanceRecord, query: AuditQuery): Promise<Page<AuditEvent>> {
    return this.#deps.store.queryAuditEvents(instance.id, query);
  }

  /** Deletes events older than each instance's retention period; returns how many went. */
  async purgeExpired(): Promise<number> {
    let purged = 0;
    const now = this.#deps.now().getTime();
    for (const instance of await this.#deps.store.listInstances()) {
      const days = instance.auditRetentionDays ?? DEFAULT_AUDIT_RETENTION_DAYS;
      const cutoff = dpsTimestamp(new Date(now - days * DAY_MS));
      purged += await deleteInBatches((limit) => this.#deps.store.deleteAuditEventsBefore(instance.id, cutoff, limit));
    }
    return purged;
  }
}
