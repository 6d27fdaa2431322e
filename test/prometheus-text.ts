/**
 * A parser for the Prometheus text exposition format 0.0.4 (what Prometheus itself reads from /metrics), strict
 * enough to fail a test on anything Prometheus would refuse: every sample belongs to a family declared by `# TYPE`
 * (histograms through their _bucket/_sum/_count series), label values are quoted with \\, \" and \n escapes, values
 * are floats (or NaN, +Inf, -Inf), and no series appears twice.
 */
export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export interface MetricFamily {
  name: string;
  type: 'counter' | 'gauge' | 'histogram' | 'summary' | 'untyped';
  help: string;
  samples: Sample[];
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*/;

export function parsePrometheusText(text: string): Map<string, MetricFamily> {
  const families = new Map<string, MetricFamily>();
  const seen = new Set<string>();
  const lines = text.split('\n');
  if (lines.at(-1) !== '') throw new Error('the exposition must end with a newline');
  lines.forEach((line, index) => {
    const where = `line ${index + 1}: ${line}`;
    if (line.trim() === '') return;
    if (line.startsWith('#')) {
      const match = /^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) ?(.*)$/.exec(line);
      if (match === null) return; // a plain comment
      const [, keyword, name, rest] = match as unknown as [string, string, string, string];
      const family = families.get(name) ?? { name, type: 'untyped' as const, help: '', samples: [] };
      if (keyword === 'TYPE') {
        if (!['counter', 'gauge', 'histogram', 'summary', 'untyped'].includes(rest)) throw new Error(`${where}: unknown type`);
        if (family.samples.length > 0) throw new Error(`${where}: TYPE after samples`);
        family.type = rest as MetricFamily['type'];
      } else {
        family.help = rest.replaceAll('\\n', '\n').replaceAll('\\\\', '\\');
      }
      families.set(name, family);
      return;
    }
    const sample = parseSample(line, where);
    const family = familyOf(sample.name, families);
    if (family === undefined) throw new Error(`${where}: sample of an undeclared metric`);
    const key = `${sample.name}${JSON.stringify(Object.entries(sample.labels).sort())}`;
    if (seen.has(key)) throw new Error(`${where}: duplicate series`);
    seen.add(key);
    family.samples.push(sample);
  });
  for (const family of families.values()) {
    if (family.type === 'histogram') checkHistogram(family);
  }
  return families;
}

function familyOf(sampleName: string, families: Map<string, MetricFamily>): MetricFamily | undefined {
  const exact = families.get(sampleName);
  if (exact !== undefined && exact.type !== 'histogram' && exact.type !== 'summary') return exact;
  for (const suffix of ['_bucket', '_sum', '_count']) {
    if (!sampleName.endsWith(suffix)) continue;
    const family = families.get(sampleName.slice(0, -suffix.length));
    if (family !== undefined && (family.type === 'histogram' || (family.type === 'summary' && suffix !== '_bucket'))) return family;
  }
  return undefined;
}

function parseSample(line: string, where: string): Sample {
  const nameMatch = NAME.exec(line);
  if (nameMatch === null) throw new Error(`${where}: no metric name`);
  const name = nameMatch[0];
  let rest = line.slice(name.length);
  const labels: Record<string, string> = {};
  if (rest.startsWith('{')) {
    rest = rest.slice(1);
    for (;;) {
      if (rest.startsWith('}')) {
        rest = rest.slice(1);
        break;
      }
      const labelMatch = LABEL_NAME.exec(rest);
      if (labelMatch === null) throw new Error(`${where}: bad label name`);
      const labelName = labelMatch[0];
      rest = rest.slice(labelName.length);
      if (!rest.startsWith('="')) throw new Error(`${where}: expected ="`);
      rest = rest.slice(2);
      let value = '';
      for (;;) {
        const char = rest[0];
        if (char === undefined) throw new Error(`${where}: unterminated label value`);
        rest = rest.slice(1);
        if (char === '"') break;
        if (char === '\\') {
          const escaped = rest[0];
          rest = rest.slice(1);
          if (escaped === 'n') value += '\n';
          else if (escaped === '\\' || escaped === '"') value += escaped;
          else throw new Error(`${where}: bad escape`);
        } else value += char;
      }
      if (labelName in labels) throw new Error(`${where}: label ${labelName} twice`);
      labels[labelName] = value;
      if (rest.startsWith(',')) rest = rest.slice(1);
      else if (!rest.startsWith('}')) throw new Error(`${where}: expected , or }`);
    }
  }
  const parts = rest.trim().split(/\s+/);
  if (!rest.startsWith(' ') || parts.length < 1 || parts.length > 2) throw new Error(`${where}: expected a value`);
  const value = parseValue(parts[0] ?? '', where);
  if (parts[1] !== undefined && !/^-?\d+$/.test(parts[1])) throw new Error(`${where}: bad timestamp`);
  return { name, labels, value };
}

function parseValue(text: string, where: string): number {
  if (text === 'NaN') return Number.NaN;
  if (text === '+Inf') return Number.POSITIVE_INFINITY;
  if (text === '-Inf') return Number.NEGATIVE_INFINITY;
  if (!/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(text)) throw new Error(`${where}: bad value ${text}`);
  return Number(text);
}

/** Buckets of each series are cumulative, end with le="+Inf", and that bucket equals _count. */
function checkHistogram(family: MetricFamily): void {
  const series = new Map<string, { buckets: Array<{ le: number; value: number }>; count?: number }>();
  for (const sample of family.samples) {
    const { le, ...rest } = sample.labels;
    const key = JSON.stringify(Object.entries(rest).sort());
    const entry = series.get(key) ?? { buckets: [] };
    if (sample.name.endsWith('_bucket')) {
      if (le === undefined) throw new Error(`${family.name}: bucket without le`);
      entry.buckets.push({ le: parseValue(le, family.name), value: sample.value });
    } else if (sample.name.endsWith('_count')) entry.count = sample.value;
    series.set(key, entry);
  }
  for (const [key, entry] of series) {
    const last = entry.buckets.at(-1);
    if (last === undefined || last.le !== Number.POSITIVE_INFINITY) throw new Error(`${family.name}${key}: no +Inf bucket`);
    for (let i = 1; i < entry.buckets.length; i += 1) {
      const previous = entry.buckets[i - 1] as { le: number; value: number };
      const current = entry.buckets[i] as { le: number; value: number };
      if (current.le <= previous.le || current.value < previous.value) throw new Error(`${family.name}${key}: buckets not cumulative`);
    }
    if (entry.count !== last.value) throw new Error(`${family.name}${key}: +Inf bucket ${last.value} != _count ${entry.count}`);
  }
}

/** The value of the one sample with exactly these labels (a subset match), or undefined. */
export function sampleValue(family: MetricFamily | undefined, name: string, labels: Record<string, string>): number | undefined {
  const matches = (family?.samples ?? []).filter(
    (sample) => sample.name === name && Object.entries(labels).every(([key, value]) => sample.labels[key] === value),
  );
  if (matches.length === 0) return undefined;
  return matches.reduce((sum, sample) => sum + sample.value, 0);
}
