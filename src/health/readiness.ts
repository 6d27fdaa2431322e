import { constants, closeSync, openSync } from 'node:fs';
import type { Store } from '../store/store.js';

/**
 * `/readyz`: can this node serve devices and callers right now? Unlike `/healthz` (the process answers at all), it
 * asks each part: the store answers a real query (and, for SQLite, its file can still be opened — a long-lived
 * connection keeps working on a file whose permissions or path changed under it, but nothing else would), every
 * migration has run, every listener is bound, and lifecycle-event delivery is still sweeping its outbox. The body
 * names the failing parts; the status is 503 when any fails.
 */
export interface ReadinessDeps {
  store: Store;
  /** An instance that exists, for the store's real query. */
  instanceId: string;
  /** The SQLite file, when the store is one. */
  databaseFile?: string;
  pendingMigrations(): Promise<string[]>;
  /** Each listener and whether it is bound. */
  listeners(): Record<string, boolean>;
  outbox(): Promise<{ depth: number; oldestAgeSeconds: number }>;
  /** When lifecycle-event delivery last swept its outbox (epoch ms), undefined before the first sweep. */
  lastOutboxSweepAt(): number | undefined;
  timeoutMs?: number;
  now?: () => number;
}

export type CheckResult = { status: 'ok' | 'failing'; reason?: string } & Record<string, unknown>;

export interface Readiness {
  httpStatus: 200 | 503;
  body: { status: 'ready' | 'notReady'; failing: string[]; checks: Record<string, CheckResult> };
}

/** Delivery sweeps every second; this long without one while events wait means it has stopped. */
const OUTBOX_SWEEP_STALE_MS = 30_000;

export async function checkReadiness(deps: ReadinessDeps): Promise<Readiness> {
  const timeoutMs = deps.timeoutMs ?? 2000;
  const now = deps.now ?? Date.now;
  const checks: Record<string, CheckResult> = {};
  const [store, migrations, outbox] = await Promise.all([
    guarded(timeoutMs, async () => {
      const started = now();
      if (deps.databaseFile !== undefined) {
        // O_RDWR: the server writes; a file it may only read is as unusable as one it cannot open.
        closeSync(openSync(deps.databaseFile, constants.O_RDWR));
      }
      const instance = await deps.store.getInstance(deps.instanceId);
      if (instance === undefined) return { status: 'failing', reason: 'the default instance is missing from the store' };
      return { status: 'ok', latencyMs: now() - started };
    }),
    guarded(timeoutMs, async () => {
      const pending = await deps.pendingMigrations();
      return pending.length === 0 ? { status: 'ok' } : { status: 'failing', reason: `migrations not applied: ${pending.join(', ')}`, pending };
    }),
    guarded(timeoutMs, async () => {
      const { depth, oldestAgeSeconds } = await deps.outbox();
      const lastSweep = deps.lastOutboxSweepAt();
      const stale = lastSweep === undefined || now() - lastSweep > OUTBOX_SWEEP_STALE_MS;
      const details = { depth, oldestAgeSeconds: Math.round(oldestAgeSeconds), lastSweepSecondsAgo: lastSweep === undefined ? null : Math.round((now() - lastSweep) / 1000) };
      if (depth > 0 && stale) return { status: 'failing', reason: 'lifecycle events are waiting and delivery has not swept the outbox for 30 s', ...details };
      return { status: 'ok', ...details };
    }),
  ]);
  checks.store = store;
  checks.migrations = migrations;
  const listeners = deps.listeners();
  const down = Object.entries(listeners).filter(([, up]) => !up).map(([name]) => name);
  checks.listeners = {
    status: down.length === 0 ? 'ok' : 'failing',
    ...(down.length === 0 ? {} : { reason: `not listening: ${down.join(', ')}` }),
    ...Object.fromEntries(Object.entries(listeners).map(([name, up]) => [name, up ? 'up' : 'down'])),
  };
  checks.eventOutbox = outbox;
  const failing = Object.entries(checks).filter(([, check]) => check.status !== 'ok').map(([name]) => name);
  return {
    httpStatus: failing.length === 0 ? 200 : 503,
    body: { status: failing.length === 0 ? 'ready' : 'notReady', failing, checks },
  };
}

async function guarded(timeoutMs: number, check: () => Promise<CheckResult>): Promise<CheckResult> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      check(),
      new Promise<CheckResult>((resolve) => {
        timer = setTimeout(() => resolve({ status: 'failing', reason: `no answer within ${timeoutMs} ms` }), timeoutMs);
      }),
    ]);
  } catch (error) {
    return { status: 'failing', reason: (error as Error).message };
  } finally {
    clearTimeout(timer);
  }
}
