import type { JsonMap } from '../../domain/enrollment.js';
import { NOTHING_FOUND } from './request-doc.js';
import type { BundleField, Place, PlaceContext } from './places.js';
import type { Store } from '../../store/store.js';
import type { Subject, SubjectTrace } from './subject.js';

/** The reads an export's trace and several places repeat with the same arguments (see {@link readOnce}). */
const REPEATED_READS = new Set<string>([
  'getEnrollment',
  'getRegistration',
  'findAuditEventsAbout',
  'listOperationsOfRegistration',
  'listRegistrationIntentsOf',
  'findHubDeviceLinks',
]);

/**
 * The store as one export sees it: each of the reads above made once per set of arguments, its answer reused. The
 * trace and the places ask the same questions (the subject's log events three times, its record three times: ~40
 * statements per export, a fifth of them repeats), and one answer for the whole export is also the more consistent
 * bundle. Only for an export: an erase's re-check must read afresh. The answers are shared, never changed by a place.
 */
export function readOnce(store: Store): Store {
  const answers = new Map<string, unknown>();
  return new Proxy(store, {
    get(target, property) {
      // Read on the store itself, never through the proxy: its getters use private fields.
      const value: unknown = Reflect.get(target, property);
      if (typeof value !== 'function') return value;
      const method = value as (...args: unknown[]) => unknown;
      if (typeof property !== 'string' || !REPEATED_READS.has(property)) return method.bind(target);
      return (...args: unknown[]) => {
        const key = `${property}\u0000${JSON.stringify(args)}`;
        if (!answers.has(key)) answers.set(key, method.apply(target, args));
        return answers.get(key);
      };
    },
  });
}

/** One place in an export's `manifest.searched` (and `result.searched`). */
export interface Searched {
  place: string;
  name: string;
  count: number;
  error?: string;
}

/**
 * An export: every place's part, in the one order of places. A place that cannot be searched (a hub that does not
 * answer) is listed with its error, and the rest of the bundle is complete.
 */
export async function exportEverything(
  context: PlaceContext,
  places: readonly Place[],
  subject: Subject,
  trace: SubjectTrace,
  manifest: { requestId: string; generatedDateTimeUtc: string; secretsIncluded: boolean },
): Promise<{ bundle: JsonMap; result: JsonMap; searched: Searched[] }> {
  const parts = new Map<BundleField, JsonMap[]>();
  const searched: Searched[] = [];
  for (const place of places) {
    const entries = parts.get(place.bundleField) ?? [];
    parts.set(place.bundleField, entries);
    try {
      const found = await place.export(context, trace);
      entries.push(...found);
      searched.push({ place: place.key, name: place.humanName, count: found.length });
    } catch (error) {
      searched.push({ place: place.key, name: place.humanName, count: 0, error: error instanceof Error ? error.message : String(error) });
    }
  }
  const nothingFound = searched.every((entry) => entry.count === 0 && entry.error === undefined);
  const part = (field: BundleField): JsonMap[] => parts.get(field) ?? [];
  const bundle: JsonMap = {
    manifest: { requestId: manifest.requestId, subject, generatedDateTimeUtc: manifest.generatedDateTimeUtc, secretsIncluded: manifest.secretsIncluded, searched, ...(nothingFound ? { nothingFound: true } : {}) },
    individualEnrollment: part('individualEnrollments')[0] ?? null,
    individualEnrollments: part('individualEnrollments'),
    enrollmentGroups: part('enrollmentGroups'),
    registrationRecords: part('registrationRecords'),
    operations: part('operations'),
    registrationIntents: part('registrationIntents'),
    hubDeviceLinks: part('hubDeviceLinks'),
    issuedCertificates: part('issuedCertificates'),
    hubDevices: part('hubDevices'),
    webhookExchanges: part('webhookExchanges'),
    auditEvents: part('auditEvents'),
    dataRequests: part('dataRequests'),
    lifecycleEventOutbox: part('lifecycleEventOutbox'),
  };
  const result: JsonMap = { searched, ...(nothingFound ? { nothingFound: true, warning: NOTHING_FOUND } : {}) };
  return { bundle, result, searched };
}
