import type { FastifyBaseLogger } from 'fastify';
import { auditClassOf } from '../domain/audit-class.js';
import type { JsonMap } from '../domain/enrollment.js';
import { randomHex } from '../domain/random-pool.js';
import { dpsTimestamp } from '../domain/time.js';
import type { AuditEvent, AuditQuery, InstanceRecord, Page, Store } from '../store/store.js';
import { probeOfEvent, pseudonymizedEvent } from './customer-data/erase-fence.js';
import type { ServiceDeps } from './deps.js';
import { deleteInBatches } from './retention-purge.js';

/**
 * The system log: every service call, registration attempt, hub write, webhook exchange and data request, stored
 * per instance and queryable by the tenant. Recording never fails the operation it records (a failed write is
 * logged). No secret goes in: callers pass IDs, names, codes and reasons, never keys or tokens.
 *
 * Each event is an access or a change (src/domain/audit-class.ts). Changes are all kept, one event each. An
 * operator's reads are folded so the console does not fill the log with itself (docs/customer-data.md "The system
 * log"): a read by the same policy from the same address, within {@link ACCESS_FOLD_MS} of the start of its previous
 * event about the same subject, with nothing else logged about that subject in between, is counted in that event
 * (`details.repeats`, `details.lastTimeUtc`, `details.alsoRead`) instead of written anew; for reads that name no
 * subject, the same holds per operation. Who read a device's data, and when, stays recorded.
 */
export type AuditInput = Omit<AuditEvent, 'eventId' | 'timeUtc'>;

export const DEFAULT_AUDIT_RETENTION_DAYS = 90;
const DAY_MS = 86_400_000;
/** How long a reader's repeated reads of one subject fold into one event. */
export const ACCESS_FOLD_MS = 60_000;
/** How many of a reader's recent access events a read with no subject looks through for one to fold into. */
const FOLD_LOOKBACK = 20;
/** Fold hints kept at most (see AuditLog); past it they start again. */
const MAX_FOLD_HINTS = 4096;

/** The last ID made (updated in place: two of them per registration). */
const lastId = { ms: 0, sequence: 0 };
/** IDs per millisecond: the sequence has four hex digits. */
const SEQUENCES_PER_MS = 0x10000;

/**
 * Event IDs sort in the order they were made: 12 hex digits of milliseconds, a per-process sequence within the
 * millisecond, then randomness (several nodes writing in the same millisecond). More IDs than the sequence holds in
 * one millisecond (a large bulk call) go on in the next one: an ID is never longer, so never out of order.
 */
export function newEventId(now: Date): string {
  // reserveEventIds(now, 1)(0), without the closure (a registration makes two IDs). The claim first: it sets claimedMs.
  const sequence = claim(now, 1);
  return eventIdAt(claimedMs, sequence);
}

/**
 * Reserves `count` consecutive event IDs now, in O(1): the i-th is made only when asked for. Whoever needs IDs in
 * the order of its calls but may not use them (lifecycle events, when no webhook is set) reserves them before its
 * first await and pays for the IDs it makes.
 */
export function reserveEventIds(now: Date, count: number): (index: number) => string {
  const first = claim(now, count);
  const ms = claimedMs;
  return (index) => eventIdAt(ms, first + index);
}

/** The millisecond of the last {@link claim}: its sequences count from there. */
let claimedMs = 0;

/** Claims `count` consecutive IDs (at least one): the sequence of the first, counted from {@link claimedMs}. */
function claim(now: Date, count: number): number {
  const ms = Math.max(now.getTime(), lastId.ms);
  const first = ms === lastId.ms ? lastId.sequence + 1 : 0;
  const last = first + Math.max(0, count - 1);
  lastId.ms = ms + Math.floor(last / SEQUENCES_PER_MS);
  lastId.sequence = last % SEQUENCES_PER_MS;
  claimedMs = ms;
  return first;
}

/** The ID of `sequence` counted from `ms` (a sequence past the millisecond's last goes on in the next ones). */
function eventIdAt(ms: number, sequence: number): string {
  const at = ms + Math.floor(sequence / SEQUENCES_PER_MS);
  return `${at.toString(16).padStart(12, '0')}${(sequence % SEQUENCES_PER_MS).toString(16).padStart(4, '0')}${randomHex(4)}`;
}

/** The event time of an ID's millisecond; the last one is remembered (a bulk call's events share a few). */
const lastStamp = { ms: -1, timeUtc: '' };
function timeOfMs(ms: number): string {
  if (ms !== lastStamp.ms) {
    lastStamp.ms = ms;
    lastStamp.timeUtc = dpsTimestamp(new Date(ms));
  }
  return lastStamp.timeUtc;
}

export class AuditLog {
  readonly #deps: ServiceDeps;
  readonly #logger: FastifyBaseLogger;
  /**
   * Folding reads looks up, then writes: reads of one instance are recorded one at a time on this node, so the
   * portal's parallel requests of one page view fold into one event. (Two nodes may each write one; nothing is lost.)
   */
  readonly #foldQueues = new Map<string, Promise<void>>();
  /**
   * Per reader and operation, the event this node last wrote or folded a read that names no subject into. The next
   * such read looks at that one event first (a point read by its ID) instead of reading and parsing up to
   * FOLD_LOOKBACK of the reader's recent events (7–9 % of a page's time in the server at a million events: bench/README.md,
   * session 34). A hint only: the event is judged as any candidate, and the search runs when it does not qualify (too
   * old, removed with its instance, or another node's read came since: that node folds into its own event).
   */
  readonly #foldHints = new Map<string, string>();

  constructor(deps: ServiceDeps, logger: FastifyBaseLogger) {
    this.#deps = deps;
    this.#logger = logger;
  }

  /** The event, stamped now; for callers that write it inside their own transaction. */
  event(input: AuditInput): AuditEvent {
    const eventId = newEventId(this.#deps.now());
    // The event's time is the millisecond its ID starts with (the clock's, unless it stepped back: IDs never do), so
    // the store finds a time range of the log as a range of IDs. (lastId.ms is that millisecond: the ID just made.)
    const timeUtc = timeOfMs(lastId.ms);
    // An input that carries an earlier event's ID and time (a spread AuditEvent) is stamped afresh all the same: the
    // erase fence's guarantee rests on the stamp being taken now (docs/customer-data.md "The erase fence").
    // Copied by Object.assign and stamped by assignment, not `{ ...input, eventId, … }`: on this V8 (Node 20) a
    // property added to a spread's copy makes a new hidden class per object — about 2 µs and 400 bytes each (bench/README.md
    // "Issue 12 P1/P6 outside the store (session 21, H3)").
    const event = Object.assign({}, input) as AuditEvent;
    event.eventId = eventId;
    event.timeUtc = timeUtc;
    event.class = input.class ?? auditClassOf(input);
    return event;
  }

  async record(instanceId: string, input: AuditInput): Promise<void> {
    if (!foldable(this.event(input))) return this.#write(instanceId, input);
    const previous = this.#foldQueues.get(instanceId) ?? Promise.resolve();
    const next = previous.then(() => this.#write(instanceId, input));
    this.#foldQueues.set(instanceId, next);
    await next;
    if (this.#foldQueues.get(instanceId) === next) this.#foldQueues.delete(instanceId);
  }

  async #write(instanceId: string, input: AuditInput): Promise<void> {
    try {
      await this.#deps.store.transaction(async (store) => {
        // An event about a subject an erase has fenced is written already pseudonymized, so nothing the erase has
        // cleaned can reappear in the log while it runs (docs/customer-data.md "The erase fence"). It is stamped after
        // the fence is looked up: an event written in clear then bears a time after the erase became final.
        const fence = await store.findEraseFence(instanceId, probeOfEvent(input.subject));
        const event = this.event(input);
        if (fence !== undefined) return store.appendAuditEvent(instanceId, pseudonymizedEvent(event, fence.subjectHash));
        if (!foldable(event)) return store.appendAuditEvent(instanceId, event);
        const hintKey = subjectIdOf(event) === undefined ? `${instanceId}\n${event.actor}\n${event.source ?? ''}\n${event.operation}` : undefined;
        const into = await foldTarget(store, instanceId, event, hintKey === undefined ? undefined : this.#foldHints.get(hintKey));
        if (hintKey !== undefined) {
          // Bounded: readers (policy and source) are few; a flood of sources only costs hints.
          if (this.#foldHints.size >= MAX_FOLD_HINTS) this.#foldHints.clear();
          this.#foldHints.set(hintKey, (into ?? event).eventId);
        }
        if (into === undefined) return store.appendAuditEvent(instanceId, event);
        return store.replaceAuditEvents(instanceId, [folded(into, event)]);
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
    // In plain loops: `flatMap` with an array per event cost ~0.2 µs an event per kind (a bulk import's item).
    const probe = { registrationIds: [] as string[], deviceIds: [] as string[], groupIds: [] as string[] };
    for (const { subject } of events) {
      if (subject.registrationId !== undefined) probe.registrationIds.push(subject.registrationId);
      if (subject.deviceId !== undefined) probe.deviceIds.push(subject.deviceId);
      if (subject.enrollmentGroupId !== undefined) probe.groupIds.push(subject.enrollmentGroupId);
    }
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

/** An operator's successful or not-found read: the events that fold. A failed read (refused, invalid) never does. */
function foldable(event: AuditEvent): boolean {
  return event.kind === 'serviceApi' && event.class === 'access' && event.outcome !== 'failure';
}

const subjectIdOf = (event: AuditEvent): string | undefined => event.subject.registrationId ?? event.subject.deviceId ?? event.subject.enrollmentGroupId;

/** The reader's earlier event this read folds into, if any (see {@link AuditLog}); `hinted`: the likeliest one's ID. */
async function foldTarget(store: Store, instanceId: string, event: AuditEvent, hinted?: string): Promise<AuditEvent | undefined> {
  const since = dpsTimestamp(new Date(Date.parse(event.timeUtc) - ACCESS_FOLD_MS));
  const sameReader = (candidate: AuditEvent): boolean =>
    foldable(candidate) && candidate.actor === event.actor && candidate.source === event.source && candidate.timeUtc >= since;
  const subject = subjectIdOf(event);
  if (subject !== undefined) {
    // The newest event about the subject, whoever wrote it: a change or another reader in between starts a new event.
    const [newest] = (await store.queryAuditEvents(instanceId, { subject, limit: 1 })).items;
    return newest !== undefined && sameReader(newest) ? newest : undefined;
  }
  const sameRead = (candidate: AuditEvent): boolean => sameReader(candidate) && candidate.operation === event.operation && subjectIdOf(candidate) === undefined;
  if (hinted !== undefined) {
    const candidate = await store.getAuditEvent(instanceId, hinted);
    if (candidate !== undefined && sameRead(candidate)) return candidate;
  }
  const recent = await store.queryAuditEvents(instanceId, { actor: event.actor, eventClass: 'access', from: since, limit: FOLD_LOOKBACK });
  return recent.items.find(sameRead);
}

/** The earlier event, counting one more read: how many, until when, and which other reads (with how they ended). */
function folded(into: AuditEvent, read: AuditEvent): AuditEvent {
  const details: JsonMap = { ...into.details };
  const repeats = typeof details.repeats === 'number' ? details.repeats : 0;
  const alsoRead = Array.isArray(details.alsoRead) ? (details.alsoRead as JsonMap[]) : [];
  const same = (entry: { operation?: unknown; outcome?: unknown }) => entry.operation === read.operation && entry.outcome === read.outcome;
  if (!same(into) && !alsoRead.some(same)) alsoRead.push({ operation: read.operation, outcome: read.outcome });
  details.repeats = repeats + 1;
  details.lastTimeUtc = read.timeUtc;
  if (alsoRead.length > 0) details.alsoRead = alsoRead;
  return { ...into, details };
}
