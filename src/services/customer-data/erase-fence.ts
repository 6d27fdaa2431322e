import { ProvisioningError } from '../../domain/errors.js';
import { subjectHash } from '../../domain/receipt.js';
import type { HubClientFactory } from '../../hubs/hub-client.js';
import type { AuditEvent, EraseFence, FenceProbe, Store } from '../../store/store.js';

/**
 * The erase fence (docs/customer-data.md "The erase fence"). From the moment an erase starts until it is final, every
 * write about its subject — a registration on any transport, an enrollment or group write, a built-in hub write — is
 * refused with `SubjectBeingErased`, so nothing can be written behind the erase's back. The fence is rows in the
 * store, so it holds on every node that shares it.
 */
export type StandingFence = Pick<EraseFence, 'kind' | 'requestId' | 'subjectHash'>;

export function fenceRefusal(fence: StandingFence): ProvisioningError {
  return new ProvisioningError(
    'SubjectBeingErased',
    `Data request '${fence.requestId}' is erasing this ${fence.kind === 'enrollmentGroupId' ? 'enrollment group' : 'device'}; it cannot be written until the erase is final.`,
    { requestId: fence.requestId },
  );
}

export function isFenceRefusal(error: unknown): error is ProvisioningError {
  return error instanceof ProvisioningError && error.errorName === 'SubjectBeingErased';
}

/** Throws `SubjectBeingErased` when a fence stands on any of the IDs. Call it inside the write's transaction. */
export async function assertNotFenced(store: Store, instanceId: string, probe: FenceProbe): Promise<void> {
  const fence = await store.findEraseFence(instanceId, probe);
  if (fence !== undefined) throw fenceRefusal(fence);
}

/** The IDs an event is about, as a fence probe. */
export function probeOfEvent(subject: AuditEvent['subject']): FenceProbe {
  return {
    ...(subject.registrationId === undefined ? {} : { registrationIds: [subject.registrationId] }),
    ...(subject.deviceId === undefined ? {} : { deviceIds: [subject.deviceId] }),
    ...(subject.enrollmentGroupId === undefined ? {} : { groupIds: [subject.enrollmentGroupId] }),
  };
}

/**
 * What the system log keeps of an event about an erased (or fenced) subject: when, what kind, by whom, with what
 * outcome, and the subject's keyed hash — no IDs, no reasons, no details (they may quote IDs).
 */
export function pseudonymizedEvent(event: AuditEvent, hash: string | undefined): AuditEvent {
  const kept: AuditEvent = {
    eventId: event.eventId,
    timeUtc: event.timeUtc,
    kind: event.kind,
    operation: event.operation,
    actor: event.actor,
    subject: hash === undefined ? {} : { hash },
    outcome: event.outcome,
  };
  if (event.errorCode !== undefined) kept.errorCode = event.errorCode;
  if (event.transport !== undefined) kept.transport = event.transport;
  if (event.attestationType !== undefined) kept.attestationType = event.attestationType;
  if (event.hub !== undefined) kept.hub = event.hub;
  return kept;
}

/**
 * A registration an erase caught up with between its hub write and its record: the hub identity it wrote goes, and the
 * log entries of its hub writes (made after the erase was final, so not pseudonymized on the way in) keep only the
 * subject's hash. Afterwards nothing of the attempt remains but that.
 */
export async function undoInterruptedRegistration(
  store: Store,
  hubClients: HubClientFactory,
  instanceId: string,
  attempt: { registrationId: string; deviceId: string; assignedHub: string | undefined; sinceUtc: string },
): Promise<void> {
  const hub = attempt.assignedHub === undefined ? undefined : (await store.listLinkedHubs(instanceId)).find((linked) => linked.name === attempt.assignedHub);
  if (hub !== undefined) await hubClients.forHub(hub).deleteDevice(attempt.deviceId).catch(() => false);
  const key = (await store.getInstance(instanceId))?.secrets?.subjectHashKey;
  if (key === undefined) return;
  const events = await store.findAuditEventsAbout(instanceId, { registrationIds: [attempt.registrationId], deviceIds: [attempt.deviceId], groupIds: [] });
  const written = events.filter((event) => event.kind === 'hubWrite' && event.timeUtc >= attempt.sinceUtc);
  await store.replaceAuditEvents(instanceId, written.map((event) => pseudonymizedEvent(event, subjectHash(key, 'registrationId', attempt.registrationId))));
}
