import { constants, PerformanceObserver, type PerformanceObserverEntryList } from 'node:perf_hooks';
import { getHeapSpaceStatistics, setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

/**
 * Bounds V8's young generation (the "new space", where short-lived objects are made) of `provisiond serve`
 * (issue 12, P6; bench/README.md "Issue 12 P6/P2/P3 (session 20)").
 *
 * V8 grows the young generation up to 2 × 16 MiB when much of it survives, and keeps it at that size: starting a
 * server (modules, schemas, migrations) does that, and so does every burst of registrations. Session 20 bounded it at
 * 8 MiB (peaks 124–142 MiB against 158–175 at the ~100–300 registrations/s of a loaded machine). At an idle machine's
 * ~1,600 registrations/s (session 24) a registration lives ~100 ms and an 8 MiB young generation is collected every
 * ~50 ms: most of what it holds survives into the old space, which then grew to 130 MiB (peaks 230 MiB) while the
 * young collections took ~12 % of the time. The bound is now 16 MiB, with the old space's growth limited as well
 * (OLD_GENERATION_GROWTH_PERCENT): peaks 160–165 MiB, young collections ~8 % of the time.
 *
 * The usual way to bound it, `node --max-semi-space-size=…`, is read once when V8 starts, before `provisiond` runs
 * (the installed `provisiond` command cannot pass it); the growth factor is read each time V8 would grow the space,
 * so it can be changed while running: 1 (no growth) while the young generation is at the cap, V8's default 2 below it.
 * The size is checked after every garbage collection (V8 grows the space only in one), so it overshoots only when two
 * collections that both grow it fall in one turn of the event loop. V8 may shrink the space again when allocation slows
 * down (idle); below the cap it may then grow again.
 *
 * An operator's own young-generation flags (`node --max-semi-space-size=…` or `--semi-space-growth-factor=…`, on the
 * command line or in NODE_OPTIONS) are left alone: `ownedByOperator` says whether they were given.
 */
export interface YoungGenerationOptions {
  /** The young generation's size at most (both semi-spaces), in MiB. */
  maxMiB: number;
  /**
   * It grows only under sustained allocation: at least this many young collections in the last second. V8 grows the
   * space once the bytes that survived its collections since it last grew add up to its size, however long that
   * takes, so a first start's work after listening (and an idle server's timers, in time) grew it to 4–16 MiB and
   * it stayed so while idle; under P1 load a young collection runs every 20–60 ms.
   */
  collectionsPerSecond: number;
}

export const YOUNG_GENERATION_DEFAULTS: YoungGenerationOptions = Object.freeze({ maxMiB: 16, collectionsPerSecond: 5 });

const MiB = 1024 * 1024;

/**
 * How far V8 lets the old space grow past what a full collection left alive before the next full collection, in
 * percent (`--heap-growing-percent`; V8's own choice, 0, is a factor of 1.1 to 4 picked from how fast it collects,
 * which under a registration burst means up to 4 ×). Under P1 load (200 devices, ~1,600 registrations/s, compiled
 * server, session 24) the old space was 35–45 MiB alive and grew to 96–134 MiB between full collections; at 60 it
 * peaked at 52–58 MiB, for 9–13 full collections of ~7 ms each per 10 s instead of 2–5 (bench/README.md, "session 24").
 * Read by V8 at every full collection, so it can be set once the server listens.
 */
export const OLD_GENERATION_GROWTH_PERCENT = 60;

/** True when Node was started with a flag matching `pattern`, on its command line or in NODE_OPTIONS. */
function givenByOperator(pattern: RegExp, execArgv: readonly string[], nodeOptions: string | undefined): boolean {
  return [...execArgv, nodeOptions ?? ''].some((option) => pattern.test(option));
}

/** True when the process was started with a young-generation flag of its own (then nothing here changes it). */
export function ownedByOperator(execArgv: readonly string[], nodeOptions: string | undefined): boolean {
  return givenByOperator(/semi-space-(growth-factor|size)/, execArgv, nodeOptions);
}

/** True when the process was started with its own `--heap-growing-percent` (then the server leaves it alone). */
export function oldGrowthOwnedByOperator(execArgv: readonly string[], nodeOptions: string | undefined): boolean {
  return givenByOperator(/heap-growing-percent/, execArgv, nodeOptions);
}

/**
 * Young collections on the main thread alone (`--no-parallel-scavenge`). A young collection runs every 20–60 ms under
 * registration load (a registration allocates ~100 KB), and V8 spreads each over helper threads by default: a few
 * milliseconds shorter, but the hand-over to the helpers and back costs more CPU than they save. Measured under P1 on
 * the compiled server (bench/README.md, "session 30"): 0.527 → 0.478 and 0.816 → 0.759 ms of CPU per registration with
 * the flag on the command line; set by `serve`, ~4–10 % lower in most alternating pairs of this machine's fast mode and
 * within the scatter of its slow one, V8's helper threads 20–35 % less busy. The P5 latencies did not move (session
 * 29). `serve` sets it once listening, after the start's garbage is collected: set from the first import, the start's
 * collections done alone left the old space ~5 MiB larger while idle. V8 reads the flag at each young collection. An
 * operator's own `--parallel-scavenge` (or `--single-threaded-gc`) on Node's command line is left as given
 * (NODE_OPTIONS does not accept either).
 */
export function scavengeOnMainThread(): void {
  setFlagsFromString('--no-parallel-scavenge');
}

/** True when the process was started with its own scavenger flags (then the server leaves them alone). */
export function scavengerOwnedByOperator(execArgv: readonly string[], nodeOptions: string | undefined): boolean {
  return givenByOperator(/parallel-scavenge|single-threaded-gc/, execArgv, nodeOptions);
}

/** Bounds the old space's growth between full collections (OLD_GENERATION_GROWTH_PERCENT). */
export function limitOldGenerationGrowth(percent: number = OLD_GENERATION_GROWTH_PERCENT): void {
  setFlagsFromString(`--heap-growing-percent=${percent}`);
}

/** No growth at all (while the server starts: its garbage would otherwise grow the space to the maximum). */
export function holdYoungGeneration(): void {
  setFlagsFromString('--semi-space-growth-factor=1');
}

/** Lets the young generation grow up to the cap; `stop()` ends the checks and gives V8 its default growth back. */
export function capYoungGeneration(options: Partial<YoungGenerationOptions> & Pick<YoungGenerationOptions, 'maxMiB'> = YOUNG_GENERATION_DEFAULTS): { stop(): void } {
  let growth: 1 | 2 | undefined;
  const setGrowth = (factor: 1 | 2): void => {
    if (factor === growth) return;
    growth = factor;
    setFlagsFromString(`--semi-space-growth-factor=${factor}`);
  };
  const perSecond = options.collectionsPerSecond ?? YOUNG_GENERATION_DEFAULTS.collectionsPerSecond;
  // When the recent young collections ran (performance.now() milliseconds), the last second's only.
  const recent: number[] = [];
  const check = (list?: PerformanceObserverEntryList): void => {
    for (const entry of list?.getEntries() ?? []) {
      if ((entry as unknown as { detail?: { kind?: number } }).detail?.kind !== constants.NODE_PERFORMANCE_GC_MINOR) continue;
      recent.push(entry.startTime);
      while ((recent[0] ?? entry.startTime) < entry.startTime - 1000) recent.shift();
    }
    // Growth doubles the space: allowed only under sustained allocation, and while the doubled size fits the cap.
    setGrowth(recent.length >= perSecond && youngGenerationMiB() * 2 <= options.maxMiB ? 2 : 1);
  };
  check();
  // Each collection is reported after it ran (one entry per collection, in the next turn of the event loop).
  const collections = new PerformanceObserver((list) => check(list));
  collections.observe({ entryTypes: ['gc'] });
  return {
    stop() {
      collections.disconnect();
      setGrowth(2);
    },
  };
}

/**
 * Two full collections once the server listens, so what starting it left behind (module compilation, schema
 * compilers, migrations, a first start's CA) is not carried while idle: V8's own memory reducer does that only after
 * seconds without allocation, which a server with timers often never has (bench/README.md, "session 24": with the
 * young generation held from the first import, idle RSS 97–107 → 84–90 MiB). Node 20 has no API for a collection:
 * `--expose-gc` is set only for the moment it takes to make a context whose global has `gc` (a new context gets the
 * extension; the main context never does), then unset again.
 */
export function collectStartupGarbage(): void {
  setFlagsFromString('--expose-gc');
  let gc: (() => void) | undefined;
  try {
    gc = runInNewContext('gc') as () => void;
  } finally {
    setFlagsFromString('--no-expose-gc');
  }
  gc();
  // The first collection finds what died; objects with finalizers (weak references, closed handles) die in a second.
  gc();
}

/** The young generation's current size in MiB (both semi-spaces), for tests and the benchmark. */
export function youngGenerationMiB(): number {
  return (getHeapSpaceStatistics().find((space) => space.space_name === 'new_space')?.space_size ?? 0) / MiB;
}
