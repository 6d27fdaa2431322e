import type { JsonMap } from '../../domain/enrollment.js';
import { idKey } from '../../domain/ids.js';
import type { Store } from '../../store/store.js';
import type { Place, PlaceContext } from './places.js';
import { erasePlanOf, NOTHING_FOUND, type DataRequestDoc, type ErasePlan, type PlaceProgress } from './request-doc.js';
import { fencedIdsOf, mergeTraces, type Subject, type SubjectTrace } from './subject.js';

/** How many times the erase searches every place again before it gives up on signing (writes were under way). */
const RECHECK_PASSES = 5;
/** How often (in units of work) a running erase stores its progress. */
const PERSIST_EVERY = 50;
/**
 * The most units of work the store's places of one erase do in one transaction, with the request's progress (one
 * commit instead of one per row and per save: issue 12 P5). A larger erase (a group's records) goes place by place,
 * storing its progress as it goes, so that no transaction holds the store for long.
 */
const ONE_TRANSACTION_UNITS = PERSIST_EVERY;

/** Thrown inside a job when the server shuts down; the request stays `running` and resumes at the next start. */
export class Stopped extends Error {}

/** What an erase (or its dry run) needs from the service that runs it. */
export interface EraseJob {
  /** Everything a place needs but the tick, which the erase supplies. */
  readonly context: Omit<PlaceContext, 'tick' | 'resumeAt'>;
  /** The same, with every store read and write (and every request saved) through `store`: a transaction of it. */
  contextIn(store: Store): Omit<PlaceContext, 'tick' | 'resumeAt'>;
  readonly doc: DataRequestDoc;
  readonly subject: Subject;
  /** The places as they are now (one per linked hub among them). */
  places(): Promise<Place[]>;
  /** What the subject leads to now. */
  trace(): Promise<SubjectTrace>;
  /** Fences these IDs (docs/customer-data.md "The erase fence"); through `store` when given. */
  fence(ids: Subject[], store?: Store): Promise<void>;
  /** Stores the request; through `store` when given. */
  save(store?: Store): Promise<void>;
  stopping(): boolean;
}

/** One place in a dry run's or an erase's result. */
export interface PlaceEntry {
  place: string;
  name: string;
  count: number;
  items?: string[];
  error?: string;
}

/**
 * Runs an erase (or its dry run) up to the point where only the receipt is missing. The plan — what the subject led
 * to, and each place's progress — is stored before anything is deleted, so a request left running by a crash resumes
 * where it was. Returns the request's result, and whether it completed.
 */
export async function runErase(job: EraseJob): Promise<{ result: JsonMap; completed: boolean; counts: { deleted: PlaceEntry[]; pseudonymized: PlaceEntry[] } }> {
  const { doc } = job;
  const places = await job.places();
  let plan = erasePlanOf(doc);
  if (plan === undefined) {
    // The subject itself first, so a registration starting while the rest is being found is refused already.
    if (!doc.dryRun) await job.fence([job.subject]);
    const trace = await job.trace();
    plan = { trace, places: places.map((place) => ({ place: place.key, count: 0, completed: false })) };
    doc.plan = plan;
    doc.progress = { done: 0, total: places.reduce((sum, place) => sum + place.size(trace), 0) };
    // What it led to is fenced in the commit that stores the plan (the subject is fenced already: only the rest).
    const others = fencedIdsOf(trace).filter((id) => id.kind !== job.subject.kind || idKey(id.id) !== idKey(job.subject.id));
    await job.context.store.transaction(async (tx) => {
      if (!doc.dryRun) await job.fence(others, tx);
      await job.save(tx);
    });
  }
  const trace = plan.trace ?? (await job.trace());
  if (doc.dryRun) {
    const found = await findEverywhere(job, places, trace);
    const nothingFound = found.every((entry) => entry.count === 0 && entry.error === undefined);
    return {
      result: { dryRun: true, ...split(places, found), ...(nothingFound ? { nothingFound: true, warning: NOTHING_FOUND } : {}) },
      completed: true,
      counts: { deleted: [], pseudonymized: [] },
    };
  }

  let sinceSave = 0;
  let current: PlaceProgress | undefined;
  const context: Omit<PlaceContext, 'resumeAt'> = {
    ...job.context,
    tick: async (erased) => {
      if (current !== undefined) {
        current.count += erased;
        current.done = (current.done ?? 0) + 1;
      }
      doc.progress.done = Math.min(doc.progress.total, doc.progress.done + 1);
      if (job.stopping()) {
        await job.save();
        throw new Stopped();
      }
      sinceSave += 1;
      if (sinceSave >= PERSIST_EVERY) {
        sinceSave = 0;
        await job.save();
      }
    },
  };
  /** Erases one place, keeping its count exact across a resume: the place's own total replaces the ticks' running one. */
  const eraseIn = async (place: Place, entry: PlaceProgress, of: SubjectTrace, using: Omit<PlaceContext, 'resumeAt'> = context): Promise<void> => {
    const base = entry.count;
    current = entry;
    try {
      entry.count = base + (await place.erase({ ...using, resumeAt: entry.done ?? 0 }, of));
      delete entry.done;
    } finally {
      current = undefined;
    }
  };

  /** Erases the places one by one, each with its own writes; the progress stored after each place that changed. */
  const eraseEachPlace = async (some: readonly Place[]): Promise<void> => {
    for (const place of some) {
      const entry = progressOf(plan, place);
      if (entry.completed) continue;
      const countBefore = entry.count;
      try {
        await eraseIn(place, entry, trace);
        entry.completed = true;
        delete entry.error;
      } catch (error) {
        if (error instanceof Stopped) throw error;
        entry.error = messageOf(error);
      }
      doc.progress.done = Math.min(doc.progress.total, completedSize(plan, places, trace));
      // Stored when the place erased something (its count must survive a crash: a rerun would find nothing and count
      // 0) or failed. A place that held nothing is not: after a crash it runs again, finds nothing again, and counts
      // the same. Most places hold nothing about a given subject, and every stored progress is a write the erase's
      // checkpoint copies back (issue 12 P5: 17 writes of the request per erase before).
      if (entry.count !== countBefore || entry.error !== undefined) await job.save();
    }
  };

  /**
   * Erases the store's places in one transaction, which stores their progress too: their rows and their counts are
   * committed together or not at all (a crash before the commit leaves the plan as it was, and the rerun finds the
   * rows again). Any failure rolls it all back, and the places then run one by one, each failure recorded as its own.
   */
  const eraseInOneTransaction = async (some: readonly Place[]): Promise<void> => {
    const pending = some.filter((place) => !progressOf(plan, place).completed);
    if (pending.length === 0) return;
    const before = structuredClone({ places: plan.places, progress: doc.progress });
    try {
      await job.context.store.transaction(async (tx) => {
        // The ticks only count here: a save would be rolled back with the rest, and a shutdown rolls back too.
        const inTransaction: Omit<PlaceContext, 'resumeAt'> = {
          ...job.contextIn(tx),
          tick: (erased) => {
            if (current !== undefined) current.count += erased;
            return job.stopping() ? Promise.reject(new Stopped()) : Promise.resolve();
          },
        };
        let changed = false;
        for (const place of pending) {
          const entry = progressOf(plan, place);
          const countBefore = entry.count;
          await eraseIn(place, entry, trace, inTransaction);
          entry.completed = true;
          delete entry.error;
          changed ||= entry.count !== countBefore;
        }
        doc.progress.done = Math.min(doc.progress.total, completedSize(plan, places, trace));
        // As place by place: nothing to store when nothing was there.
        if (changed) await job.save(tx);
      });
    } catch (error) {
      plan.places.splice(0, plan.places.length, ...before.places);
      doc.progress = before.progress;
      if (error instanceof Stopped) throw error;
      await eraseEachPlace(pending);
    }
  };

  // Runs of consecutive places: the hubs' one by one, the store's in one transaction when small enough.
  for (let from = 0; from < places.length; ) {
    const inStore = places[from]?.inStore === true;
    let to = from;
    while (to < places.length && places[to]?.inStore === inStore) to += 1;
    const run = places.slice(from, to);
    if (inStore && run.reduce((sum, place) => sum + place.size(trace), 0) <= ONE_TRANSACTION_UNITS) await eraseInOneTransaction(run);
    else await eraseEachPlace(run);
    from = to;
  }

  // The re-check: every place is searched again for everything the plan named and everything the subject leads to now;
  // whatever turned up (a write that was already under way when the fence went up) is erased and counted, and the
  // receipt is signed only when a pass finds nothing.
  if (!plan.places.some((entry) => entry.error !== undefined)) {
    let clean = false;
    // A place that could not be searched or erased in a pass (a hub that dropped a connection) is tried again in the
    // next one; only what still fails after the last pass fails the erase.
    let failing = new Map<string, string>();
    for (let pass = 0; pass < RECHECK_PASSES && !clean; pass += 1) {
      const again = mergeTraces(trace, await job.trace());
      const found = await findEverywhere(job, places, again);
      failing = new Map();
      // A place that could not be searched is searched again in the next pass rather than erased blind.
      found.forEach((entry) => entry.error !== undefined && failing.set(entry.place, entry.error));
      const dirty = places.filter((_place, index) => (found[index]?.count ?? 0) > 0);
      clean = dirty.length === 0 && failing.size === 0;
      for (const place of dirty) {
        doc.progress.total += place.size(again);
        try {
          await eraseIn(place, progressOf(plan, place), again);
        } catch (error) {
          if (error instanceof Stopped) throw error;
          failing.set(place.key, messageOf(error));
        }
      }
      // A clean pass changed nothing to store (the request is saved when it ends).
      if (!clean) await job.save();
    }
    for (const [key, reason] of failing) progressOf(plan, placeOf(places, key)).error = reason;
    const last = plan.places.at(-1);
    if (!clean && failing.size === 0 && last !== undefined) last.error = `data about the subject kept appearing after ${RECHECK_PASSES} re-checks`;
  }

  const named = (entry: PlaceProgress): PlaceEntry => ({ place: entry.place, name: humanNameOf(places, entry.place), count: entry.count });
  const actionOf = (entry: PlaceProgress): Place['action'] => places.find((place) => place.key === entry.place)?.action ?? 'delete';
  const deleted = plan.places.filter((entry) => actionOf(entry) === 'delete').map(named);
  const pseudonymized = plan.places.filter((entry) => actionOf(entry) === 'pseudonymize').map(named);
  const failed = plan.places.filter((entry) => entry.error !== undefined);
  const nothingFound = failed.length === 0 && plan.places.every((entry) => entry.count === 0);
  const result: JsonMap = {
    deleted,
    pseudonymized,
    failures: failed.map((entry) => ({ place: entry.place, name: humanNameOf(places, entry.place), reason: entry.error })),
    ...(nothingFound ? { nothingFound: true, warning: NOTHING_FOUND } : {}),
  };
  if (failed.length > 0) doc.error = failed.map((entry) => `${entry.place}: ${entry.error ?? ''}`).join('; ');
  return { result, completed: failed.length === 0, counts: { deleted, pseudonymized } };
}

/** What every place holds now, in the places' order (a dry run's answer; the re-check's question). */
async function findEverywhere(job: EraseJob, places: readonly Place[], trace: SubjectTrace): Promise<PlaceEntry[]> {
  const context: PlaceContext = { ...job.context, tick: () => Promise.resolve(), resumeAt: 0 };
  const found: PlaceEntry[] = [];
  for (const place of places) {
    try {
      const finding = await place.find(context, trace);
      found.push({ place: place.key, name: place.humanName, count: finding.count, ...(finding.items === undefined ? {} : { items: finding.items }) });
    } catch (error) {
      found.push({ place: place.key, name: place.humanName, count: 0, error: messageOf(error) });
    }
  }
  return found;
}

function split(places: readonly Place[], found: PlaceEntry[]): { deleted: PlaceEntry[]; pseudonymized: PlaceEntry[] } {
  const action = (entry: PlaceEntry) => places.find((place) => place.key === entry.place)?.action;
  return { deleted: found.filter((entry) => action(entry) === 'delete'), pseudonymized: found.filter((entry) => action(entry) === 'pseudonymize') };
}

/** A place's progress entry; a place that appeared since the plan (a hub linked meanwhile) gets a new one. */
function progressOf(plan: ErasePlan, place: Place): PlaceProgress {
  let entry = plan.places.find((candidate) => candidate.place === place.key);
  if (entry === undefined) {
    entry = { place: place.key, count: 0, completed: false };
    plan.places.push(entry);
  }
  return entry;
}

function placeOf(places: readonly Place[], key: string): Place {
  const place = places.find((candidate) => candidate.key === key);
  if (place === undefined) throw new Error(`no place ${key}`);
  return place;
}

/** A place no longer in the list (a hub unlinked since the plan) keeps its key as its name. */
function humanNameOf(places: readonly Place[], key: string): string {
  return places.find((place) => place.key === key)?.humanName ?? key;
}

function completedSize(plan: ErasePlan, places: readonly Place[], trace: SubjectTrace): number {
  return places.reduce((sum, place) => sum + (plan.places.find((entry) => entry.place === place.key)?.completed === true ? place.size(trace) : 0), 0);
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
