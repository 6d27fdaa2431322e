/** The last millisecond formatted, and its text: a registration formats the same instant several times. */
let lastMs = Number.NaN;
let lastText = '';

/** DPS writes UTC timestamps with seven fractional digits (dps-wire.md §1); JavaScript has milliseconds. */
export function dpsTimestamp(date: Date): string {
  const ms = date.getTime();
  if (ms === lastMs) return lastText;
  // toISOString always ends in `.sssZ`: four more digits before the Z (a slice: this runs several times per request).
  // An invalid date (NaN) is never the last one: toISOString throws for it, as before.
  const iso = date.toISOString();
  lastText = `${iso.slice(0, -1)}0000Z`;
  lastMs = ms;
  return lastText;
}
