import { writeFileSync } from 'node:fs';
import v8 from 'node:v8';

/**
 * Preloaded into a benchmark server (`node --import ./bench/heap-counter.ts …`, bench/nodes.ts --round-trips yes): on
 * each SIGUSR2 it writes to BENCH_HEAP_COUNTER (JSON) the bytes the server allocated on V8's heap since the previous
 * signal, and the collections that ran — figures no load on a shared machine blurs, unlike CPU time. Allocated bytes
 * are summed from what each collection found (heap used before it, less heap used after the one before), plus the
 * growth since the last one.
 */
const file = process.env.BENCH_HEAP_COUNTER;
if (file !== undefined && file !== '') {
  let profiler = new v8.GCProfiler();
  profiler.start();
  let since = v8.getHeapStatistics().used_heap_size;
  process.on('SIGUSR2', () => {
    const collections = profiler.stop()?.statistics ?? [];
    const now = v8.getHeapStatistics().used_heap_size;
    let allocated = 0;
    let after = since;
    const kinds: Record<string, number> = {};
    for (const collection of collections) {
      allocated += Math.max(0, collection.beforeGC.heapStatistics.usedHeapSize - after);
      after = collection.afterGC.heapStatistics.usedHeapSize;
      kinds[collection.gcType] = (kinds[collection.gcType] ?? 0) + 1;
    }
    allocated += Math.max(0, now - after);
    const pauseMs = collections.reduce((sum, collection) => sum + collection.cost / 1000, 0);
    writeFileSync(file, JSON.stringify({ allocatedBytes: allocated, collections: kinds, pauseMs: Number(pauseMs.toFixed(1)) }));
    since = now;
    profiler = new v8.GCProfiler();
    profiler.start();
  });
}

/**
 * BENCH_HEAP_PROFILE=FILE: V8's sampling heap profiler, counting what the collections took too (every allocation, not
 * only what lives on), from the first SIGUSR2 to the second, written to FILE (a .heapprofile: Chrome DevTools opens it).
 */
const profileFile = process.env.BENCH_HEAP_PROFILE;
if (profileFile !== undefined && profileFile !== '') {
  const { Session } = await import('node:inspector/promises');
  const session = new Session();
  session.connect();
  let signals = 0;
  process.on('SIGUSR2', () => {
    signals += 1;
    if (signals === 1) {
      void session.post('HeapProfiler.startSampling', { samplingInterval: 4096, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: true });
    } else if (signals === 2) {
      void session.post('HeapProfiler.stopSampling').then(({ profile }) => writeFileSync(profileFile, JSON.stringify(profile)));
    }
  });
}
