import type { JsonMap } from './enrollment.js';
import type { StoredRegistration } from '../store/store.js';

/** A registration record as the service API shows it (`DeviceRegistrationState`, dps-wire.md §3): internals dropped. */
export function renderRegistration(record: StoredRegistration): JsonMap {
  const out: JsonMap = {
    registrationId: record.registrationId,
    createdDateTimeUtc: record.createdDateTimeUtc,
  };
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
  return { ...attestationSection, ...renderRegistration(record) };
}
