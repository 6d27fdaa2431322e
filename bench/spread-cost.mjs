// What building one object costs on this Node's V8, by how it is built (bench/README.md "Issue 12 P1/P6 outside the
// store (session 21, H3)"): `node bench/spread-cost.mjs`. On Node 20 (V8 11.3) a field added to a spread's copy —
// `{ ...base, more }`, or a field assigned to `{ ...base }` afterwards — costs ~2 µs and ~400 bytes each (a new hidden
// class per object), while Object.assign or a literal costs tens of nanoseconds. Run it again on a newer Node before
// going back to spreads on a hot path.
import v8 from 'node:v8';

const instance = { id: 'instance' };
const base = (i) => ({ instance, registrationId: `device-${i & 7}`, attestationType: 'symmetricKey', previous: undefined });
const ways = {
  'literal with every field': (i) => {
    const b = base(i);
    return { instance: b.instance, registrationId: b.registrationId, attestationType: b.attestationType, previous: b.previous, deviceId: 'd', enrollment: 1 };
  },
  'Object.assign({}, base, { more })': (i) => Object.assign({}, base(i), { deviceId: 'd', enrollment: 1 }),
  '{ more, ...base } (spread last)': (i) => ({ deviceId: 'd', enrollment: 1, ...base(i) }),
  '{ ...base } (nothing added)': (i) => ({ ...base(i) }),
  '{ ...base, more } (two fields added)': (i) => ({ ...base(i), deviceId: 'd', enrollment: 1 }),
};

const N = 500_000;
for (const [name, build] of Object.entries(ways)) {
  for (let i = 0; i < 100_000; i += 1) build(i);
  const usedBefore = v8.getHeapStatistics().used_heap_size;
  const profiler = new v8.GCProfiler();
  profiler.start();
  const cpu = process.cpuUsage();
  let kept;
  for (let i = 0; i < N; i += 1) kept = build(i);
  const { user, system } = process.cpuUsage(cpu);
  // Allocated: the heap's growth between collections (as bench/allocation-probe.mjs).
  let allocated = 0;
  let used = usedBefore;
  for (const collection of profiler.stop().statistics) {
    allocated += Math.max(0, collection.beforeGC.heapStatistics.usedHeapSize - used);
    used = collection.afterGC.heapStatistics.usedHeapSize;
  }
  allocated += Math.max(0, v8.getHeapStatistics().used_heap_size - used);
  process.stdout.write(`${name.padEnd(40)} ${((user + system) * 1000 / N).toFixed(0).padStart(6)} ns ${Math.round(allocated / N).toString().padStart(6)} bytes per object${kept === undefined ? ' (none)' : ''}\n`);
}
process.stdout.write(`(node ${process.version}, V8 ${process.versions.v8}; each includes building \`base\`, ~100 bytes)\n`);
