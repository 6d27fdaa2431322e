import { Type, type Static } from '@sinclair/typebox';
import { idKey } from '../../domain/ids.js';
import type { Store, SubjectIds, SubjectKind } from '../../store/store.js';

/** What a data request is about: one ID of one kind (an enrollment group only for an erase). */
export interface Subject {
  kind: SubjectKind;
  id: string;
}

/**
 * Everything one subject leads to, as typed lists of IDs: what every place is searched for. Stored with an erase's
 * plan (so a resumed erase works on what it found), checked on read like the rest of the request document.
 */
export const SubjectTraceShape = Type.Object({
  registrationIds: Type.Array(Type.String()),
  deviceIds: Type.Array(Type.String()),
  /** The subject group only: a device's group is not the device's data, so it is never searched for as such. */
  groupIds: Type.Array(Type.String()),
  /** Registration IDs of the individual enrollments found. */
  enrollmentIds: Type.Array(Type.String()),
});
export type SubjectTrace = Static<typeof SubjectTraceShape>;

export function emptyTrace(): SubjectTrace {
  return { registrationIds: [], deviceIds: [], groupIds: [], enrollmentIds: [] };
}

/** The union of two traces (case-insensitive, the first spelling kept). */
export function mergeTraces(a: SubjectTrace, b: SubjectTrace): SubjectTrace {
  return {
    registrationIds: unique([...a.registrationIds, ...b.registrationIds]),
    deviceIds: unique([...a.deviceIds, ...b.deviceIds]),
    groupIds: unique([...a.groupIds, ...b.groupIds]),
    enrollmentIds: unique([...a.enrollmentIds, ...b.enrollmentIds]),
  };
}

/** The trace as the IDs a store lookup is about. */
export function idsOf(trace: SubjectTrace): SubjectIds {
  return { registrationIds: trace.registrationIds, deviceIds: trace.deviceIds, groupIds: trace.groupIds };
}

/** Every ID of the trace with its kind (what an erase fences). */
export function fencedIdsOf(trace: SubjectTrace): Subject[] {
  return [
    ...trace.registrationIds.map((id) => ({ kind: 'registrationId' as const, id })),
    ...trace.deviceIds.map((id) => ({ kind: 'deviceId' as const, id })),
    ...trace.groupIds.map((id) => ({ kind: 'enrollmentGroupId' as const, id })),
  ];
}

/**
 * Finds what a subject leads to through every trace provisiond keeps, not only the live enrollment (issue 10, defect
 * 2): enrollments and records, the explicit hub-device links (which outlive both), the operations' results, the log's
 * registration and hub-write entries, and registration intents a crash left behind.
 */
export async function traceSubject(store: Store, instanceId: string, subject: Subject): Promise<SubjectTrace> {
  const registrationIds = new IdSet();
  const deviceIds = new IdSet();
  const groupIds = new IdSet();
  const enrollmentIds = new IdSet();

  const addRecordsWhere = async (field: 'deviceId' | 'enrollmentGroupId', value: string): Promise<void> => {
    let afterKey: string | undefined;
    do {
      const page = await store.queryRegistrations(instanceId, { filters: [{ field, op: 'eq', values: [value] }], afterKey, limit: 1000 });
      for (const record of page.items) {
        registrationIds.add(record.registrationId);
        if (record.deviceId !== undefined) deviceIds.add(record.deviceId);
      }
      afterKey = page.nextKey;
    } while (afterKey !== undefined);
  };
  const addTracesOf = async (ids: SubjectIds): Promise<void> => {
    for (const link of await store.findHubDeviceLinks(instanceId, ids)) {
      registrationIds.add(link.registrationId);
      deviceIds.add(link.deviceId);
    }
    for (const registrationId of ids.registrationIds) {
      for (const operation of await store.listOperationsOfRegistration(instanceId, registrationId)) {
        const deviceId = operation.registrationState?.deviceId;
        if (typeof deviceId === 'string' && deviceId !== '') deviceIds.add(deviceId);
      }
    }
    for (const event of await store.findAuditEventsAbout(instanceId, { registrationIds: [...ids.registrationIds], deviceIds: [...ids.deviceIds], groupIds: [...ids.groupIds] })) {
      if (event.kind !== 'registration' && event.kind !== 'hubWrite') continue;
      if (event.subject.registrationId !== undefined) registrationIds.add(event.subject.registrationId);
      if (event.subject.deviceId !== undefined) deviceIds.add(event.subject.deviceId);
    }
  };

  if (subject.kind === 'registrationId') {
    registrationIds.add(subject.id);
    const enrollment = await store.getEnrollment(instanceId, subject.id);
    const record = await store.getRegistration(instanceId, subject.id);
    if (enrollment !== undefined) {
      enrollmentIds.add(enrollment.registrationId);
      deviceIds.add(enrollment.deviceId ?? enrollment.registrationId);
    }
    if (record?.deviceId !== undefined) deviceIds.add(record.deviceId);
    // DPS's default device ID is the registration ID.
    if (enrollment === undefined && record === undefined) deviceIds.add(subject.id);
    await addTracesOf({ registrationIds: [subject.id], deviceIds: [], groupIds: [] });
  } else if (subject.kind === 'deviceId') {
    deviceIds.add(subject.id);
    await addRecordsWhere('deviceId', subject.id);
    let afterKey: string | undefined;
    do {
      const page = await store.queryEnrollments(instanceId, { filters: [{ field: 'deviceId', op: 'eq', values: [subject.id] }], afterKey, limit: 1000 });
      for (const enrollment of page.items) {
        enrollmentIds.add(enrollment.registrationId);
        registrationIds.add(enrollment.registrationId);
      }
      afterKey = page.nextKey;
    } while (afterKey !== undefined);
    await addTracesOf({ registrationIds: [], deviceIds: [subject.id], groupIds: [] });
  } else {
    groupIds.add(subject.id);
    await addRecordsWhere('enrollmentGroupId', subject.id);
    await addTracesOf({ registrationIds: [], deviceIds: [], groupIds: [subject.id] });
  }
  // The registrations found so far may lead to more devices of their own (a device ID shared by several registrations).
  if (subject.kind !== 'registrationId') await addTracesOf({ registrationIds: registrationIds.values(), deviceIds: [], groupIds: [] });

  // An intent a crash left names the device it was writing (and the one it was leaving).
  for (const intent of await store.listRegistrationIntentsOf(instanceId)) {
    if (!registrationIds.has(intent.registrationId) && !deviceIds.has(intent.deviceId)) continue;
    registrationIds.add(intent.registrationId);
    deviceIds.add(intent.deviceId);
    if (intent.leave !== undefined) deviceIds.add(intent.leave.deviceId);
  }
  return { registrationIds: registrationIds.values(), deviceIds: deviceIds.values(), groupIds: groupIds.values(), enrollmentIds: enrollmentIds.values() };
}

/** IDs compared as DPS compares them (case-insensitively), keeping the first spelling seen. */
class IdSet {
  readonly #byKey = new Map<string, string>();
  add(id: string): void {
    if (!this.#byKey.has(idKey(id))) this.#byKey.set(idKey(id), id);
  }
  has(id: string): boolean {
    return this.#byKey.has(idKey(id));
  }
  values(): string[] {
    return [...this.#byKey.values()];
  }
}

function unique(ids: string[]): string[] {
  const set = new IdSet();
  for (const id of ids) set.add(id);
  return set.values();
}
