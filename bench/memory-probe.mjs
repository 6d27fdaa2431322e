// Loaded into a compiled `provisiond serve` by `NODE_OPTIONS="--import ./bench/memory-probe.mjs"` (bench/README.md
// "Issue 12 P6/P2/P3 (session 20)"): samples the process's memory every 250 ms (RSS split into anonymous and
// file-backed pages, V8's heap spaces) and counts garbage collections and HTTP requests; at exit writes the peak
// samples and GC per request to $MEMORY_PROBE_DIR (default the temp directory) as memory-probe-$MEMORY_PROBE_TAG.json.
// Plain JavaScript: loading tsx into the server would add its own ~45 MiB to what is measured.
import diagnostics from 'node:diagnostics_channel';
import { readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { constants, PerformanceObserver } from 'node:perf_hooks';
import v8 from 'node:v8';

if (process.argv.includes('serve')) {
  const MiB = 1024 * 1024;
  const samples = [];
  const gc = { minor: 0, minorMs: 0, major: 0, majorMs: 0, otherMs: 0 };
  let requests = 0;
  diagnostics.subscribe('http.server.request.start', () => (requests += 1));
  new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) {
      const kind = entry.detail?.kind;
      if (kind === constants.NODE_PERFORMANCE_GC_MINOR) (gc.minor += 1), (gc.minorMs += entry.duration);
      else if (kind === constants.NODE_PERFORMANCE_GC_MAJOR) (gc.major += 1), (gc.majorMs += entry.duration);
      else gc.otherMs += entry.duration;
    }
  }).observe({ entryTypes: ['gc'] });
  const sample = () => {
    const usage = process.memoryUsage();
    const status = readFileSync('/proc/self/status', 'utf8');
    const statusMiB = (name) => Math.round(Number(new RegExp(`${name}:\\s+(\\d+)`).exec(status)?.[1] ?? 0) / 1024);
    const spaces = Object.fromEntries(v8.getHeapSpaceStatistics().map((space) => [space.space_name, Math.round((space.space_size / MiB) * 10) / 10]));
    samples.push({
      at: new Date().toISOString(),
      rss: Math.round(usage.rss / MiB),
      anonymous: statusMiB('RssAnon'),
      fileBacked: statusMiB('RssFile'),
      heapTotal: Math.round(usage.heapTotal / MiB),
      heapUsed: Math.round(usage.heapUsed / MiB),
      external: Math.round(usage.external / MiB),
      youngGeneration: spaces.new_space,
      oldSpace: spaces.old_space,
      codeSpace: spaces.code_space,
    });
  };
  setInterval(sample, 250).unref();
  process.on('exit', () => {
    const last = samples.at(-1);
    const peak = [...samples].sort((a, b) => b.rss - a.rss).slice(0, 2);
    const perRequest = { requests, scavengesPerRequest: gc.minor / Math.max(1, requests), gcPauseMsPerRequest: (gc.minorMs + gc.majorMs + gc.otherMs) / Math.max(1, requests), ...gc };
    const file = join(process.env.MEMORY_PROBE_DIR ?? tmpdir(), `memory-probe-${process.env.MEMORY_PROBE_TAG ?? process.pid}.json`);
    writeFileSync(file, JSON.stringify({ last, peak, perRequest }, null, 1));
  });
}
