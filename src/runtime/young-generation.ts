import { PerformanceObserver } from 'node:perf_hooks';
import { getHeapSpaceStatistics, setFlagsFromString } from 'node:v8';

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
}

export const YOUNG_GENERATION_DEFAULTS: YoungGenerationOptions = Object.freeze({ maxMiB: 16 });

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

/** True when the process was started with a young-generation flag of its own (then nothing here changes it). */
export function ownedByOperator(execArgv: readonly string[], nodeOptions: string | undefined): boolean {
  return [...execArgv, nodeOptions ?? ''].some((option) => /semi-space-(growth-factor|size)/.test(option));
}

/** True when the process was started with its own `--heap-growing-percent` (then the server leaves it alone). */
export function oldGrowthOwnedByOperator(execArgv: readonly string[], nodeOptions: string | undefined): boolean {
  return [...execArgv, nodeOptions ?? ''].some((option) => /heap-growing-percent/.test(option));
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
export function capYoungGeneration(options: YoungGenerationOptions = YOUNG_GENERATION_DEFAULTS): { stop(): void } {
  let growth: 1 | 2 | undefined;
  const setGrowth = (factor: 1 | 2): void => {
    if (factor === growth) return;
    growth = factor;
    setFlagsFromString(`--semi-space-growth-factor=${factor}`);
  };
  const check = (): void => {
    // Growth doubles the space: allowed only while the doubled size still fits under the cap.
    setGrowth(youngGenerationMiB() * 2 <= options.maxMiB ? 2 : 1);
  };
  check();
  // Each collection is reported after it ran (one entry per collection, in the next turn of the event loop).
  const collections = new PerformanceObserver(check);
  collections.observe({ entryTypes: ['gc'] });
  return {
    stop() {
      collections.disconnect();
      setGrowth(2);
    },
  };
}

/** The young generation's current size in MiB (both semi-spaces), for tests and the benchmark. */
export function youngGenerationMiB(): number {
  return (getHeapSpaceStatistics().find((space) => space.space_name === 'new_space')?.space_size ?? 0) / MiB;
}
