/**
 * The human name of each place a subject's data can live, as the API (`name` next to `place`), the CLI and the portal
 * show it. `place` stays the stable machine identifier; nobody should have to read a table name.
 */
const NAMES: Readonly<Record<string, string>> = {
  enrollments: 'Individual enrollment',
  enrollmentGroups: 'Enrollment group',
  'enrollmentGroups (membership)': 'Enrollment group membership',
  registrations: 'Registration records',
  operations: 'Registration operations (with custom allocation payloads)',
  issuedCertificates: 'Certificates issued from CSRs (an erase revokes them)',
  auditEvents: 'System log events',
  webhookExchanges: 'Custom allocation webhook exchanges',
  dataRequests: 'Earlier data requests about the subject',
  lifecycleEventOutbox: 'Undelivered lifecycle events',
};

export function placeName(place: string): string {
  const hub = /^hub:(.+)\/devices$/.exec(place);
  if (hub !== null) return `Device identity and twin on hub ${hub[1] ?? ''}`;
  return NAMES[place] ?? place;
}

/** Adds `name` to entries that carry a `place`. */
export function withPlaceNames<T extends { place?: unknown }>(entries: T[]): Array<T & { name?: string }> {
  return entries.map((entry) => (typeof entry.place === 'string' ? { ...entry, name: placeName(entry.place) } : entry));
}
