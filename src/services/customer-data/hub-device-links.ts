import type { HubDeviceLink, StoredRegistration } from '../../store/store.js';

/**
 * The link a registration record's assignment makes (the registration flow stores it with the record): which hub
 * device provisiond wrote for which registration, so an erase finds the device even after the enrollment, the record
 * and the log entries that named it are gone. None for a record that assigns nothing.
 */
export function hubDeviceLinkOf(record: StoredRegistration, linkedDateTimeUtc: string): HubDeviceLink | undefined {
  if (record.status !== 'assigned' || record.assignedHub === undefined || record.deviceId === undefined) return undefined;
  return {
    registrationId: record.registrationId,
    ...(record.enrollmentGroupId === undefined ? {} : { enrollmentGroupId: record.enrollmentGroupId }),
    hub: record.assignedHub,
    deviceId: record.deviceId,
    linkedDateTimeUtc,
  };
}
