import { renderEnrollment, type JsonMap } from '../../domain/enrollment.js';
import { subjectHash } from '../../domain/receipt.js';
import { dpsTimestamp } from '../../domain/time.js';
import { renderRegistration } from '../../domain/registration.js';
import type { HubClientFactory } from '../../hubs/hub-client.js';
import type { AuditEvent, LinkedHubRecord, RegistrationIntent, Store } from '../../store/store.js';
import { pseudonymizedEvent } from './erase-fence.js';
import { issuedCertificateView } from './issued-certificates.js';
import { readRequestDoc, requestView, withoutItems, type DataRequestDoc } from './request-doc.js';
import { idsOf, type SubjectTrace } from './subject.js';

/**
 * The places a subject's data can live (docs/customer-data.md "Where data about a device lives"). Each place is one
 * object that knows how to find, export and erase its part; the export, the dry run, the erase and its re-check all
 * iterate the one list `placesOf` returns, so they can never disagree about which places exist. Adding a place is
 * adding one object here.
 */
export interface Place {
  /** The stable machine identifier the API, receipts and scripts use. */
  readonly key: string;
  /** What the CLI and the portal show; nobody should have to read a table name. */
  readonly humanName: string;
  /** What an erase does here: delete the items, or keep them without the subject's IDs. */
  readonly action: 'delete' | 'pseudonymize';
  /**
   * The place's rows are in provisiond's store and its erase writes only through `context.store`: an erase may run it
   * inside one transaction with the other such places (a hub is reached through its client, outside any transaction).
   */
  readonly inStore: boolean;
  /** Where the place's entries go in an export bundle. */
  readonly bundleField: BundleField;
  /** How many units of work an erase here takes (the request's progress). */
  size(trace: SubjectTrace): number;
  /** What is there now (a dry run lists it; the erase's re-check erases again wherever it finds something). */
  find(context: PlaceContext, trace: SubjectTrace): Promise<Finding>;
  export(context: PlaceContext, trace: SubjectTrace): Promise<JsonMap[]>;
  /** Erases the subject's part; returns how many items were actually deleted or pseudonymized. Idempotent. */
  erase(context: PlaceContext, trace: SubjectTrace): Promise<number>;
}

export type BundleField =
  | 'hubDevices'
  | 'registrationRecords'
  | 'operations'
  | 'registrationIntents'
  | 'hubDeviceLinks'
  | 'issuedCertificates'
  | 'individualEnrollments'
  | 'enrollmentGroups'
  | 'lifecycleEventOutbox'
  | 'dataRequests'
  | 'webhookExchanges'
  | 'auditEvents';

/** What a place holds about a subject now: how many items and, where they have IDs worth listing, which. */
export interface Finding {
  count: number;
  items?: string[];
}

export interface PlaceContext {
  readonly store: Store;
  readonly hubClients: HubClientFactory;
  readonly instanceId: string;
  /** The request at work: never one of the earlier requests it finds. */
  readonly requestId: string;
  readonly includeSecrets: boolean;
  /** Saves an earlier request once its mentions of the subject are scrubbed. */
  saveRequest(doc: DataRequestDoc): Promise<void>;
  /**
   * After each unit of an erase's work, with how many items it actually deleted or pseudonymized: the request's
   * progress and counts are stored as they grow (a crash loses little), and this is where a shutdown stops the job.
   */
  tick(erased: number): Promise<void>;
  /** The key of the subject hashes that replace IDs. */
  subjectHashKey(): Promise<string>;
  /**
   * How many units of this place's erase a run before a crash or stop already stored as done: a place that works item
   * by item starts after them (those items are gone already; repeating them is harmless, skipping them saves time).
   */
  readonly resumeAt: number;
}

/**
 * The loop of every place that erases item by item: from where a resumed run left off, each item ticked with how many
 * rows it actually removed; returns the total.
 */
/**
 * The finding of a place looked up one ID at a time: `countOf` says how many items an ID has there (0 or 1 for an
 * entry, any number for rows about it); the IDs with any are the items, in the trace's order.
 */
async function findEach(ids: readonly string[], countOf: (id: string) => Promise<number>): Promise<Finding> {
  const items: string[] = [];
  let count = 0;
  for (const id of ids) {
    const rows = await countOf(id);
    if (rows > 0) items.push(id);
    count += rows;
  }
  return { count, items };
}

async function eraseEach(context: PlaceContext, ids: readonly string[], eraseOne: (id: string) => Promise<number>): Promise<number> {
  let count = 0;
  for (const id of ids.slice(context.resumeAt)) {
    const erased = await eraseOne(id);
    count += erased;
    await context.tick(erased);
  }
  return count;
}

const REDACTED = '<redacted>';
/** How many hub lookups run at once: an external hub answers each device on its own round trip. */
const HUB_CONCURRENCY = 16;

/** Every place, in the order an erase works through them: hub identities first (the records say where devices live). */
export function placesOf(linkedHubs: readonly LinkedHubRecord[]): Place[] {
  return [
    ...linkedHubs.map(hubDevicesPlace),
    registrations,
    operations,
    registrationIntents,
    hubDeviceLinks,
    issuedCertificates,
    enrollments,
    enrollmentGroups,
    lifecycleEventOutbox,
    dataRequests,
    auditEventsPlace('webhookExchanges', 'Custom allocation webhook exchanges', (event) => event.kind === 'webhook'),
    auditEventsPlace('auditEvents', 'System log events', (event) => event.kind !== 'webhook'),
  ];
}

function hubDevicesPlace(hub: LinkedHubRecord): Place {
  return {
    key: `hub:${hub.name}/devices`,
    humanName: `Device identity and twin on hub ${hub.name}`,
    action: 'delete',
    inStore: false,
    bundleField: 'hubDevices',
    size: (trace) => trace.deviceIds.length,
    async find(context, trace) {
      const client = context.hubClients.forHub(hub);
      const present = new Set<string>();
      await inParallel(trace.deviceIds, HUB_CONCURRENCY, async (deviceId) => {
        if ((await client.getDevice(deviceId)) !== undefined) present.add(deviceId);
      });
      const items = trace.deviceIds.filter((deviceId) => present.has(deviceId));
      return { count: items.length, items };
    },
    async export(context, trace) {
      const client = context.hubClients.forHub(hub);
      const found: JsonMap[] = [];
      for (const deviceId of trace.deviceIds) {
        const device = await client.getDevice(deviceId);
        if (device === undefined) continue;
        const twin = await client.getTwin(deviceId);
        const shown = device as unknown as JsonMap;
        found.push({ hub: hub.name, device: context.includeSecrets ? shown : redactDevice(shown), twin: twin ?? null });
      }
      return found;
    },
    async erase(context, trace) {
      const client = context.hubClients.forHub(hub);
      return eraseEach(context, trace.deviceIds, async (deviceId) => (await client.deleteDevice(deviceId)) ? 1 : 0);
    },
  };
}

const registrations: Place = {
  key: 'registrations',
  humanName: 'Registration records',
  action: 'delete',
  inStore: true,
  bundleField: 'registrationRecords',
  size: (trace) => trace.registrationIds.length,
  find: (context, trace) => findEach(trace.registrationIds, async (id) => ((await context.store.getRegistration(context.instanceId, id)) === undefined ? 0 : 1)),
  async export(context, trace) {
    const found: JsonMap[] = [];
    for (const id of trace.registrationIds) {
      const record = await context.store.getRegistration(context.instanceId, id);
      // With every hub the device was ever assigned to (the previous assigned hub among them).
      if (record !== undefined) found.push({ ...renderRegistration(record), hubHistory: record.hubHistory ?? [] });
    }
    return found;
  },
  async erase(context, trace) {
    // (The devices' poll budgets go when the erase completes: DataRequestService, with the fences.)
    return eraseEach(context, trace.registrationIds, async (id) => (await context.store.deleteRegistration(context.instanceId, id)) ? 1 : 0);
  },
};

const operations: Place = {
  key: 'operations',
  humanName: 'Registration operations (with custom allocation payloads)',
  action: 'delete',
  inStore: true,
  bundleField: 'operations',
  size: (trace) => trace.registrationIds.length,
  find: (context, trace) => findEach(trace.registrationIds, (id) => context.store.countOperationsOfRegistration(context.instanceId, id)),
  async export(context, trace) {
    const found: JsonMap[] = [];
    for (const id of trace.registrationIds) {
      for (const operation of await context.store.listOperationsOfRegistration(context.instanceId, id)) found.push(operation as unknown as JsonMap);
    }
    return found;
  },
  async erase(context, trace) {
    return eraseEach(context, trace.registrationIds, (id) => context.store.deleteOperationsOfRegistration(context.instanceId, id));
  },
};

/**
 * Certificates the instance's issuing CA signed from the subject's CSRs (docs/certificate-issuance.md). An erase
 * revokes them: the CRL keeps each serial number and revocation time, nothing that names the device stays.
 */
const issuedCertificates: Place = {
  key: 'issuedCertificates',
  humanName: 'Certificates issued from CSRs (an erase revokes them)',
  action: 'delete',
  inStore: true,
  bundleField: 'issuedCertificates',
  size: (trace) => trace.registrationIds.length,
  find: (context, trace) => findEach(trace.registrationIds, async (id) => (await context.store.listIssuedCertificates(context.instanceId, id)).length),
  async export(context, trace) {
    const found: JsonMap[] = [];
    for (const id of trace.registrationIds) {
      for (const record of await context.store.listIssuedCertificates(context.instanceId, id)) found.push(issuedCertificateView(record));
    }
    return found;
  },
  async erase(context, trace) {
    const now = dpsTimestamp(new Date());
    return eraseEach(context, trace.registrationIds, (id) => context.store.revokeIssuedCertificates(context.instanceId, id, now));
  },
};

/**
 * Registration intents (issue 13.3) a crash left about the subject. The hub identity an intent was writing is among
 * the trace's devices, so the hub places before this one already removed it: deleting the intent finishes its roll
 * back, and the sweep never sees it.
 */
const registrationIntents: Place = {
  key: 'registrationIntents',
  humanName: 'Unfinished registrations (interrupted hub writes)',
  action: 'delete',
  inStore: true,
  bundleField: 'registrationIntents',
  size: () => 1,
  async find(context, trace) {
    const found = await intentsAbout(context, trace);
    return { count: found.length, items: [...new Set(found.map((intent) => intent.registrationId))] };
  },
  async export(context, trace) {
    // What it was writing, not the result section (it may carry attestation material).
    return (await intentsAbout(context, trace)).map((intent) => ({
      operationId: intent.operationId,
      registrationId: intent.registrationId,
      createdDateTimeUtc: intent.createdDateTimeUtc,
      targetHub: intent.targetHub,
      deviceId: intent.deviceId,
      ...(intent.leave === undefined ? {} : { leave: intent.leave }),
    }));
  },
  async erase(context, trace) {
    const found = await intentsAbout(context, trace);
    for (const intent of found) await context.store.deleteRegistrationIntent(context.instanceId, intent.operationId);
    await context.tick(found.length);
    return found.length;
  },
};

async function intentsAbout(context: PlaceContext, trace: SubjectTrace): Promise<RegistrationIntent[]> {
  const registrationIds = new Set(trace.registrationIds.map((id) => id.toLowerCase()));
  const deviceIds = new Set(trace.deviceIds.map((id) => id.toLowerCase()));
  return (await context.store.listRegistrationIntentsOf(context.instanceId)).filter(
    (intent) => registrationIds.has(intent.registrationId.toLowerCase()) || deviceIds.has(intent.deviceId.toLowerCase()),
  );
}

/** The explicit subject→hub-device links (what lets an erase find a device after everything else naming it went). */
const hubDeviceLinks: Place = {
  key: 'hubDeviceLinks',
  humanName: 'Hub devices provisiond created for the subject',
  action: 'delete',
  inStore: true,
  bundleField: 'hubDeviceLinks',
  size: () => 1,
  async find(context, trace) {
    const links = await context.store.findHubDeviceLinks(context.instanceId, idsOf(trace));
    return { count: links.length, items: [...new Set(links.map((link) => link.deviceId))] };
  },
  async export(context, trace) {
    return (await context.store.findHubDeviceLinks(context.instanceId, idsOf(trace))).map((link) => ({ ...link }));
  },
  async erase(context, trace) {
    const count = await context.store.deleteHubDeviceLinks(context.instanceId, idsOf(trace));
    await context.tick(count);
    return count;
  },
};

const enrollments: Place = {
  key: 'enrollments',
  humanName: 'Individual enrollment',
  action: 'delete',
  inStore: true,
  bundleField: 'individualEnrollments',
  size: (trace) => trace.enrollmentIds.length,
  find: (context, trace) => findEach(trace.enrollmentIds, async (id) => ((await context.store.getEnrollment(context.instanceId, id)) === undefined ? 0 : 1)),
  async export(context, trace) {
    const found: JsonMap[] = [];
    for (const id of trace.enrollmentIds) {
      const enrollment = await context.store.getEnrollment(context.instanceId, id);
      if (enrollment === undefined) continue;
      const rendered = renderEnrollment(enrollment, context.includeSecrets ? 'withSecrets' : 'public');
      if (context.includeSecrets && enrollment.attestation.type === 'symmetricKey') rendered.attestation = structuredClone(enrollment.attestation) as unknown as JsonMap;
      found.push(rendered);
    }
    return found;
  },
  async erase(context, trace) {
    return eraseEach(context, trace.enrollmentIds, async (id) => (await context.store.deleteEnrollment(context.instanceId, id)) ? 1 : 0);
  },
};

/**
 * The subject group itself (a group erase deletes it). A device's group describes many devices and is not the
 * device's data: the export shows the membership (from the records), and an erase of the device leaves the group.
 */
const enrollmentGroups: Place = {
  key: 'enrollmentGroups',
  humanName: 'Enrollment group (the subject group, or the device’s membership)',
  action: 'delete',
  inStore: true,
  bundleField: 'enrollmentGroups',
  size: (trace) => trace.groupIds.length,
  find: (context, trace) => findEach(trace.groupIds, async (id) => ((await context.store.getEnrollmentGroup(context.instanceId, id)) === undefined ? 0 : 1)),
  async export(context, trace) {
    const groups = new Map<string, string>();
    for (const id of trace.groupIds) groups.set(id.toLowerCase(), id);
    for (const id of trace.registrationIds) {
      const group = (await context.store.getRegistration(context.instanceId, id))?.enrollmentGroupId;
      if (group !== undefined && !groups.has(group.toLowerCase())) groups.set(group.toLowerCase(), group);
    }
    return [...groups.values()].map((enrollmentGroupId) => ({ enrollmentGroupId }));
  },
  async erase(context, trace) {
    return eraseEach(context, trace.groupIds, async (id) => (await context.store.deleteEnrollmentGroup(context.instanceId, id)) ? 1 : 0);
  },
};

/** Lifecycle events about the subject not yet delivered: dropped. */
const lifecycleEventOutbox: Place = {
  key: 'lifecycleEventOutbox',
  humanName: 'Undelivered lifecycle events',
  action: 'delete',
  inStore: true,
  bundleField: 'lifecycleEventOutbox',
  size: () => 1,
  async find(context, trace) {
    return { count: (await context.store.findOutboxEventsAbout(context.instanceId, idsOf(trace))).length };
  },
  async export(context, trace) {
    return (await context.store.findOutboxEventsAbout(context.instanceId, idsOf(trace))).map((event) => event.doc);
  },
  async erase(context, trace) {
    const events = await context.store.findOutboxEventsAbout(context.instanceId, idsOf(trace));
    for (const event of events) await context.store.deleteOutboxEvent(context.instanceId, event.eventId);
    await context.tick(events.length);
    return events.length;
  },
};

/** Earlier finished requests about the subject: their bundles and item lists go, their subject is kept as its hash. */
const dataRequests: Place = {
  key: 'dataRequests',
  humanName: 'Earlier data requests about the subject',
  action: 'pseudonymize',
  inStore: true,
  bundleField: 'dataRequests',
  size: () => 1,
  async find(context, trace) {
    return { count: (await requestsAbout(context, trace)).length };
  },
  async export(context, trace) {
    return (await requestsAbout(context, trace)).map(requestView);
  },
  async erase(context, trace) {
    const others = await requestsAbout(context, trace);
    const key = others.length === 0 ? '' : await context.subjectHashKey();
    for (const other of others) {
      other.subject = { kind: other.subject.kind, hash: subjectHash(key, other.subject.kind, other.subject.id ?? '') };
      delete other.bundle;
      delete other.plan;
      if (other.result !== undefined) other.result = withoutItems(other.result);
      await context.saveRequest(other);
    }
    await context.tick(others.length);
    return others.length;
  },
};

async function requestsAbout(context: PlaceContext, trace: SubjectTrace): Promise<DataRequestDoc[]> {
  const ids = [...trace.registrationIds, ...trace.deviceIds, ...trace.groupIds];
  const found = await context.store.findDataRequestsAbout(context.instanceId, ids);
  // The request at work (and any other still running) is left out by its row before any document is checked: its
  // document, with the plan and the trace, was the largest an erase checked, twice (issue 12 P5).
  return found
    .filter((record) => record.requestId.toLowerCase() !== context.requestId.toLowerCase() && record.status !== 'running')
    .map((record) => readRequestDoc(record.doc))
    .filter((other) => other.subject.id !== undefined);
}

/** System-log events about the subject (one slice of them): kept, with the subject's keyed hash instead of its IDs. */
function auditEventsPlace(key: 'auditEvents' | 'webhookExchanges', humanName: string, holds: (event: AuditEvent) => boolean): Place {
  const about = async (context: PlaceContext, trace: SubjectTrace): Promise<AuditEvent[]> =>
    (await context.store.findAuditEventsAbout(context.instanceId, { registrationIds: [...trace.registrationIds], deviceIds: [...trace.deviceIds], groupIds: [...trace.groupIds] })).filter(
      holds,
    );
  return {
    key,
    humanName,
    action: 'pseudonymize',
    inStore: true,
    bundleField: key,
    size: () => 1,
    async find(context, trace) {
      const events = await about(context, trace);
      return { count: events.length, items: events.map((event) => event.eventId) };
    },
    async export(context, trace) {
      return (await about(context, trace)) as unknown as JsonMap[];
    },
    async erase(context, trace) {
      // Found afresh, so events written since the plan (a device that tried again meanwhile) are covered too.
      const events = await about(context, trace);
      const hashKey = events.length === 0 ? '' : await context.subjectHashKey();
      await context.store.replaceAuditEvents(context.instanceId, events.map((event) => pseudonymize(event, hashKey)));
      await context.tick(events.length);
      return events.length;
    },
  };
}

/** What stays of an event about an erased subject: when, what kind, by whom, with what outcome — no IDs, no details. */
function pseudonymize(event: AuditEvent, key: string): AuditEvent {
  const id = event.subject.registrationId ?? event.subject.deviceId ?? event.subject.enrollmentGroupId;
  const kind = event.subject.registrationId !== undefined ? 'registrationId' : event.subject.deviceId !== undefined ? 'deviceId' : 'enrollmentGroupId';
  return pseudonymizedEvent(event, id === undefined ? event.subject.hash : subjectHash(key, kind, id));
}

function redactDevice(device: JsonMap): JsonMap {
  const copy = structuredClone(device);
  const authentication = copy.authentication as { symmetricKey?: { primaryKey?: string; secondaryKey?: string } } | undefined;
  if (authentication?.symmetricKey !== undefined) authentication.symmetricKey = { primaryKey: REDACTED, secondaryKey: REDACTED };
  return copy;
}

/** Runs `task` over the items, `width` at a time; after a failure no new item starts, and the first error is thrown once all in flight settled. */
async function inParallel<T>(items: readonly T[], width: number, task: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  let failure: { error: unknown } | undefined;
  const worker = async (): Promise<void> => {
    while (next < items.length && failure === undefined) {
      const item = items[next] as T;
      next += 1;
      try {
        await task(item);
      } catch (error) {
        failure ??= { error };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(width, items.length) }, worker));
  if (failure !== undefined) throw failure.error;
}
