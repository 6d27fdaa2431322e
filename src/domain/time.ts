/** DPS writes UTC timestamps with seven fractional digits (dps-wire.md §1); JavaScript has milliseconds. */
export function dpsTimestamp(date: Date): string {
  // toISOString always ends in `.sssZ`: four more digits before the Z (a slice: this runs several times per request).
  const iso = date.toISOString();
  return `${iso.slice(0, -1)}0000Z`;
}
