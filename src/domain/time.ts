/** DPS writes UTC timestamps with seven fractional digits (dps-wire.md §1); JavaScript has milliseconds. */
export function dpsTimestamp(date: Date): string {
  return date.toISOString().replace(/\.(\d{3})Z$/, '.$10000Z');
}
