// Loaded into `provisiond serve` by `node --import ./bench/allocation-probe.mjs` (bench/allocations.ts; bench/README.md
// "Issue 12 P1/P6 outside the store (session 21, H3)"): counts what the server allocates between two SIGUSR2 signals.
// The first signal starts a measured stretch, the second ends it and prints one JSON line on stdout:
// `{"allocationProbe": {...}}` — bytes allocated on V8's heap (from the heap's used size before and after every GC in
// the stretch, v8.GCProfiler), young and full collections and their pause, HTTP requests and the process's CPU.
// With ALLOCATION_PROBE_PROFILE=FILE it also takes a sampling heap profile of the stretch that keeps the objects
// collected since (so it shows where the garbage is made, not only what survives) and writes it to FILE
// (.heapprofile: Chrome DevTools' Memory tab, or `npx tsx bench/allocations.ts --summarize FILE`); with
// ALLOCATION_PROBE_SURVIVORS=1 as well, of the objects that outlived a young collection only (where promotion comes from).
// Plain JavaScript, so it loads into the compiled server without tsx.
import { createHook } from 'node:async_hooks';
import diagnostics from 'node:diagnostics_channel';
import { readFileSync, writeFileSync } from 'node:fs';
import { Session } from 'node:inspector';
import { constants, PerformanceObserver } from 'node:perf_hooks';
import v8 from 'node:v8';

if (process.argv.includes('serve')) {
  const gc = { scavenges: 0, fullCollections: 0, pauseMs: 0 };
  let requests = 0;
  diagnostics.subscribe('http.server.request.start', () => (requests += 1));
  new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) {
      const kind = entry.detail?.kind;
      if (kind === constants.NODE_PERFORMANCE_GC_MINOR) gc.scavenges += 1;
      else if (kind === constants.NODE_PERFORMANCE_GC_MAJOR) gc.fullCollections += 1;
      gc.pauseMs += entry.duration;
    }
  }).observe({ entryTypes: ['gc'] });
  /** The process's CPU (user + system) in ms, from /proc (clock ticks of 10 ms). */
  const cpuMs = () => {
    const fields = readFileSync('/proc/self/stat', 'utf8').split(') ')[1]?.split(' ') ?? [];
    return (Number(fields[11] ?? 0) + Number(fields[12] ?? 0)) * 10;
  };
  const profileFile = process.env.ALLOCATION_PROBE_PROFILE;
  // ALLOCATION_PROBE_PROMISES=1: also count the promises (and other async resources) created in the stretch, by type.
  // The hook makes every promise slower (V8's promise hooks): read the counts, not that run's CPU.
  const asyncResources = {};
  const asyncHook =
    process.env.ALLOCATION_PROBE_PROMISES === '1'
      ? createHook({
          init: (_id, type) => {
            if (stretch !== undefined) asyncResources[type] = (asyncResources[type] ?? 0) + 1;
          },
        })
      : undefined;
  let stretch;
  let session;
  const post = (method, params) => new Promise((resolve, reject) => session.post(method, params, (error, result) => (error ? reject(error) : resolve(result))));
  process.on('SIGUSR2', async () => {
    if (stretch === undefined) {
      if (profileFile !== undefined) {
        session = new Session();
        session.connect();
        // ALLOCATION_PROBE_SURVIVORS=1: only objects that outlived a young collection (promoted, alive or not).
        const survivors = process.env.ALLOCATION_PROBE_SURVIVORS === '1';
        await post('HeapProfiler.startSampling', { samplingInterval: 4096, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: !survivors });
      }
      const profiler = new v8.GCProfiler();
      profiler.start();
      for (const type of Object.keys(asyncResources)) delete asyncResources[type];
      asyncHook?.enable();
      stretch = { profiler, usedBefore: v8.getHeapStatistics().used_heap_size, gc: { ...gc }, requests, cpuMs: cpuMs(), at: performance.now() };
      process.stdout.write(`${JSON.stringify({ allocationProbe: 'started' })}\n`);
      return;
    }
    asyncHook?.disable();
    const usedAfter = v8.getHeapStatistics().used_heap_size;
    const { statistics } = stretch.profiler.stop();
    // Allocated = what the heap grew by between collections: from the last collection's end (or the stretch's start) to
    // the next collection's start, summed, plus the growth since the last collection.
    // Per young collection, what survived it: still in the young generation after it, or promoted (the old space's
    // growth across it). Copying the survivors is what a scavenge costs; the promoted ones wait for a full collection.
    let allocatedBytes = 0;
    let used = stretch.usedBefore;
    let survivedBytes = 0;
    let promotedBytes = 0;
    const spaceUsed = (snapshot, name) => snapshot.heapSpaceStatistics.find((space) => space.spaceName === name)?.spaceUsedSize ?? 0;
    for (const collection of statistics) {
      allocatedBytes += Math.max(0, collection.beforeGC.heapStatistics.usedHeapSize - used);
      used = collection.afterGC.heapStatistics.usedHeapSize;
      if (collection.gcType === 'Scavenge' || collection.gcType === 'MinorMarkSweep' || collection.gcType === 'MinorMarkCompact') {
        survivedBytes += spaceUsed(collection.afterGC, 'new_space');
        promotedBytes += Math.max(0, spaceUsed(collection.afterGC, 'old_space') - spaceUsed(collection.beforeGC, 'old_space'));
      }
    }
    allocatedBytes += Math.max(0, usedAfter - used);
    const result = {
      allocatedBytes,
      survivedBytes,
      promotedBytes,
      scavenges: gc.scavenges - stretch.gc.scavenges,
      fullCollections: gc.fullCollections - stretch.gc.fullCollections,
      gcPauseMs: Number((gc.pauseMs - stretch.gc.pauseMs).toFixed(1)),
      requests: requests - stretch.requests,
      cpuMs: cpuMs() - stretch.cpuMs,
      wallMs: Math.round(performance.now() - stretch.at),
      ...(asyncHook === undefined ? {} : { asyncResources: { ...asyncResources } }),
    };
    stretch = undefined;
    if (session !== undefined) {
      const { profile } = await post('HeapProfiler.stopSampling');
      writeFileSync(profileFile, JSON.stringify(profile));
      session.disconnect();
      session = undefined;
    }
    process.stdout.write(`${JSON.stringify({ allocationProbe: result })}\n`);
  });
}
