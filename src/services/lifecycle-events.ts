import { createHmac } from 'node:crypto';
import type { FastifyBaseLogger } from 'fastify';
import type { JsonMap } from '../domain/enrollment.js';
import { dpsTimestamp } from '../domain/time.js';
import type { InstanceRecord } from '../store/store.js';
import { newEventId, reserveEventIds } from './audit-log.js';
import type { ServiceDeps } from './deps.js';

/**
 * Lifecycle events for the systems around provisiond: an optional webhook per instance receives enrollment,
 * device and data-request events. Events are written to an outbox in the database (so none is lost across a
 * restart) and delivered one at a time per instance, in order; a failed delivery is retried with exponential
 * backoff and holds back the events after it. Each delivery is signed:
 *
 *   x-provisiond-signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>
 */
export type LifecycleEventType =
  | 'enrollment.created'
  | 'enrollment.updated'
  | 'enrollment.deleted'
  | 'enrollmentGroup.created'
  | 'enrollmentGroup.updated'
  | 'enrollmentGroup.deleted'
  | 'device.registered'
  | 'device.reprovisioned'
  | 'device.failed'
  | 'dataRequest.completed';

export interface LifecycleEventOptions {
  retryBaseMs: number;
  retryMaxMs: number;
  timeoutMs: number;
  /** Nodes sharing a database: this node's name as a lease holder, and how long a lease lasts unrenewed. */
  nodeId?: string;
  leaseMs?: number;
}

export function signDelivery(secret: string, timestampSeconds: number, body: string): string {
  return `t=${timestampSeconds},v1=${createHmac('sha256', secret).update(`${timestampSeconds}.${body}`).digest('hex')}`;
}

export class LifecycleEvents {
  readonly #deps: ServiceDeps;
  readonly #logger: FastifyBaseLogger;
  readonly #options: LifecycleEventOptions;
  /** Per instance: a delivery loop in progress, and when the next attempt may run after a failure. */
  readonly #running = new Set<string>();
  readonly #retry = new Map<string, { attempts: number; notBefore: number }>();
  #timer: NodeJS.Timeout | undefined;
  #closed = false;
  #lastSweepAt: number | undefined;

  constructor(deps: ServiceDeps, logger: FastifyBaseLogger, options: LifecycleEventOptions) {
    this.#deps = deps;
    this.#logger = logger;
    this.#options = options;
  }

  /** Queues an event if the instance has a webhook; delivery happens in the background. */
  async emit(instance: InstanceRecord, type: LifecycleEventType, data: JsonMap): Promise<void> {
    // The ID is taken before the first await, so events keep the order in which they were emitted.
    const now = this.#deps.now();
    const eventId = newEventId(now);
    const current = await this.#deps.store.currentInstance(instance);
    if (current?.eventWebhook === undefined) return;
    await this.#deps.store.appendOutboxEvent(instance.id, {
      eventId,
      doc: { id: eventId, type, timeUtc: dpsTimestamp(now), idScope: instance.idScope, data },
    });
    void this.#deliver(instance.id);
  }

  /** Queues several events at once (a bulk call's changes): one look at the webhook, one transaction. */
  async emitMany(instance: InstanceRecord, events: ReadonlyArray<{ type: LifecycleEventType; data: JsonMap }>): Promise<void> {
    if (events.length === 0) return;
    const now = this.#deps.now();
    // The IDs' places in the order are reserved before the first await, as emit takes its ID; they are made (and the
    // events built) only when a webhook will receive them, so a bulk call with none set costs one look at the instance.
    const idAt = reserveEventIds(now, events.length);
    const current = await this.#deps.store.currentInstance(instance);
    if (current?.eventWebhook === undefined) return;
    const timeUtc = dpsTimestamp(now);
    await this.#deps.store.transaction(async (store) => {
      for (const [index, { type, data }] of events.entries()) {
        const eventId = idAt(index);
        await store.appendOutboxEvent(instance.id, { eventId, doc: { id: eventId, type, timeUtc, idScope: instance.idScope, data } });
      }
    });
    void this.#deliver(instance.id);
  }

  /** Delivers what is pending now and every second from now on (events left over from before a restart, retries). */
  start(): void {
    this.#timer = setInterval(() => void this.#sweep(), 1000);
    this.#timer.unref();
    void this.#sweep();
  }

  /** When the outbox was last swept (readiness: a delivery loop that stopped sweeping is stuck). */
  get lastSweepAt(): number | undefined {
    return this.#lastSweepAt;
  }

  async close(): Promise<void> {
    this.#closed = true;
    if (this.#timer !== undefined) clearInterval(this.#timer);
    while (this.#running.size > 0) await new Promise((resolve) => setTimeout(resolve, 20));
  }

  async #sweep(): Promise<void> {
    if (this.#closed) return;
    try {
      for (const instanceId of await this.#deps.store.listInstancesWithOutboxEvents()) void this.#deliver(instanceId);
      this.#lastSweepAt = Date.now();
    } catch (error) {
      this.#logger.error({ err: error }, 'lifecycle event sweep failed');
    }
  }

  async #deliver(instanceId: string): Promise<void> {
    if (this.#running.has(instanceId) || this.#closed) return;
    const retry = this.#retry.get(instanceId);
    if (retry !== undefined && Date.now() < retry.notBefore) return;
    this.#running.add(instanceId);
    const lease = `outbox/${instanceId}`;
    const { nodeId, leaseMs = 30_000 } = this.#options;
    // Several nodes: one delivers an instance's events at a time (a lease in the store), so each event goes out once
    // and in order. A node that dies mid-delivery leaves its lease to expire; the next sweep elsewhere takes over.
    const leased = !this.#deps.store.capabilities.singleWriter && nodeId !== undefined;
    try {
      for (;;) {
        if (this.#closed) return;
        // Claimed (or extended) before each event: a delivery never runs on a lease that might have expired.
        if (leased && !(await this.#deps.store.claimLease(lease, nodeId, leaseMs, Date.now()))) return;
        const instance = await this.#deps.store.getInstance(instanceId);
        const [event] = await this.#deps.store.listOutboxEvents(instanceId, 1);
        if (event === undefined) return;
        if (instance?.eventWebhook === undefined) {
          // The webhook was removed: nobody is listening for these any more.
          await this.#deps.store.deleteOutboxEvent(instanceId, event.eventId);
          continue;
        }
        const delivered = await this.#post(instance.eventWebhook, event.doc);
        if (!delivered) {
          const attempts = (this.#retry.get(instanceId)?.attempts ?? 0) + 1;
          const delay = Math.min(this.#options.retryMaxMs, this.#options.retryBaseMs * 2 ** (attempts - 1));
          this.#retry.set(instanceId, { attempts, notBefore: Date.now() + delay });
          setTimeout(() => void this.#deliver(instanceId), delay).unref();
          return;
        }
        this.#retry.delete(instanceId);
        await this.#deps.store.deleteOutboxEvent(instanceId, event.eventId);
      }
    } catch (error) {
      this.#logger.error({ err: error, instanceId }, 'lifecycle event delivery failed');
    } finally {
      if (leased && nodeId !== undefined) await this.#deps.store.releaseLease(lease, nodeId).catch(() => undefined);
      this.#running.delete(instanceId);
    }
  }

  async #post(webhook: { url: string; secret: string }, event: JsonMap): Promise<boolean> {
    const body = JSON.stringify(event);
    const timestamp = Math.floor(Date.now() / 1000);
    try {
      const response = await fetch(webhook.url, {
        method: 'POST',
        headers: {
          'content-type': 'application/json; charset=utf-8',
          'x-provisiond-event-id': String(event.id),
          'x-provisiond-event-type': String(event.type),
          'x-provisiond-signature': signDelivery(webhook.secret, timestamp, body),
        },
        body,
        signal: AbortSignal.timeout(this.#options.timeoutMs),
      });
      await response.arrayBuffer();
      return response.status >= 200 && response.status < 300;
    } catch {
      return false;
    }
  }
}
