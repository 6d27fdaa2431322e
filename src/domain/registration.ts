import type { JsonMap } from './enrollment.js';
import type { RegistrationStatus, Substatus } from './wire.js';
import type { StoredRegistration } from '../store/store.js';

/** A registration record as the service API shows it (`DeviceRegistrationState`, dps-wire.md §3): internals dropped. */
export function renderRegistration(record: StoredRegistration): JsonMap {
  return renderInto({}, record);
}

/**
 * Adds the record's fields to `out` by assignment. (Objects here are built by assignment or Object.assign, never as
 * `{ ...a, more }`: on this V8 (Node 20) every field added to a spread's copy makes a hidden class per object, about
 * 2 µs and 400 bytes each — bench/README.md "Issue 12 P1/P6 outside the store (session 21, H3)".)
 */
function renderInto(out: JsonMap, record: StoredRegistration): JsonMap {
  out.registrationId = record.registrationId;
  out.createdDateTimeUtc = record.createdDateTimeUtc;
  if (record.assignedHub !== undefined) out.assignedHub = record.assignedHub;
  if (record.deviceId !== undefined) out.deviceId = record.deviceId;
  out.status = record.status;
  if (record.substatus !== undefined) out.substatus = record.substatus;
  if (record.errorCode !== undefined) out.errorCode = record.errorCode;
  if (record.errorMessage !== undefined) out.errorMessage = record.errorMessage;
  out.lastUpdatedDateTimeUtc = record.lastUpdatedDateTimeUtc;
  out.etag = record.etag;
  if (record.payload !== undefined) out.payload = record.payload;
  return out;
}

/**
 * The `registrationState` a device receives (`DeviceRegistrationResult`, dps-wire.md §4.2): the record plus the
 * attestation section, e.g. `symmetricKey: { enrollmentGroupId }` for a group device, `symmetricKey: {}` otherwise.
 */
export function renderDeviceRegistration(record: StoredRegistration, attestationSection: JsonMap): JsonMap {
  return renderInto(Object.assign({}, attestationSection), record);
}

/**
 * A registration's state as the device is told it (dps-wire.md §4.2): each status carries exactly its own fields. The
 * stored record is flat (one document per device); these are the only ways the flow changes it.
 */
export type RegistrationState =
  | { status: 'assigning' }
  | { status: 'assigned'; assignedHub: string; deviceId: string; substatus: Substatus; hubHistory: string[]; payload?: JsonMap }
  | { status: 'failed'; errorCode: number; errorMessage: string }
  | { status: 'disabled'; errorCode: number; errorMessage: string };

export type TerminalState = Exclude<RegistrationState, { status: 'assigning' }>;

/** assigning → assigned | failed | disabled. A terminal record starts over only with a new attempt (`startAttempt`). */
const TRANSITIONS: { readonly [From in RegistrationStatus]: readonly RegistrationStatus[] } = {
  unassigned: [],
  assigning: ['assigned', 'failed', 'disabled'],
  assigned: [],
  failed: [],
  disabled: [],
};

/**
 * A new attempt: the record says `assigning`, with a new etag, and keeps where the device was (hub, device ID, hub
 * history: reprovisioning and a failed attempt's record need them) and when it first registered.
 */
export function startAttempt(
  previous: StoredRegistration | undefined,
  attempt: { registrationId: string; attestationType: 'symmetricKey' | 'x509' | 'tpm'; enrollmentGroupId: string | undefined; now: string; etag: string },
): StoredRegistration {
  const record: StoredRegistration = {
    registrationId: attempt.registrationId,
    createdDateTimeUtc: previous?.createdDateTimeUtc ?? attempt.now,
    status: 'assigning',
    lastUpdatedDateTimeUtc: attempt.now,
    etag: attempt.etag,
    attestationType: attempt.attestationType,
  };
  if (attempt.enrollmentGroupId !== undefined) record.enrollmentGroupId = attempt.enrollmentGroupId;
  if (previous?.hubHistory !== undefined) record.hubHistory = previous.hubHistory;
  if (previous?.assignedHub !== undefined) record.assignedHub = previous.assignedHub;
  if (previous?.deviceId !== undefined) record.deviceId = previous.deviceId;
  return record;
}

/** The attempt's end: the record in `next`'s state; a transition the table above does not allow is a bug and throws. */
export function settle(record: StoredRegistration, next: TerminalState): StoredRegistration {
  if (!TRANSITIONS[record.status].includes(next.status)) throw new Error(`registration ${record.registrationId}: ${record.status} → ${next.status} is not a transition`);
  // The record without the previous outcome's fields, then the new state's (by assignment: see renderInto).
  const settled: Record<string, unknown> = {};
  for (const key of Object.keys(record)) if (!OUTCOME_FIELDS.has(key)) settled[key] = record[key as keyof StoredRegistration];
  return Object.assign(settled as Omit<StoredRegistration, 'status'>, next);
}

/** What an attempt's outcome sets; a new outcome replaces all of them. */
const OUTCOME_FIELDS: ReadonlySet<string> = new Set(['substatus', 'errorCode', 'errorMessage', 'payload']);
