import type { RegistrationState } from '../api/types';
import { Link, path } from '../router';
import { Badge, DateTime, Fields, JsonBlock } from './ui';

/** A registration record: where the device went, and why it did not when it failed. */
export function RegistrationRecord({ record, linkToRecord = true }: { record: RegistrationState; linkToRecord?: boolean }) {
  return (
    <div data-testid="registration-record">
      {record.status === 'failed' && (
        <div className="banner banner-error" role="note">
          <div>
            <strong>The last registration failed</strong>: {record.errorMessage ?? 'no message'}
            {record.errorCode !== undefined && <span className="muted"> (error {record.errorCode})</span>}
          </div>
        </div>
      )}
      <Fields
        rows={[
          ['Status', <Badge value={record.status} key="status" />],
          ['Registration ID', linkToRecord ? <Link to={path('registrations', record.registrationId)}>{record.registrationId}</Link> : record.registrationId],
          ['Device ID', record.deviceId],
          ['Assigned hub', record.assignedHub],
          ['Substatus', record.substatus],
          ['First registered', <DateTime value={record.createdDateTimeUtc} key="created" />],
          ['Last updated', <DateTime value={record.lastUpdatedDateTimeUtc} key="updated" />],
          record.errorCode !== undefined && ['Error', `${record.errorCode}: ${record.errorMessage ?? ''}`],
          record.payload !== undefined && ['Payload', <JsonBlock value={record.payload} key="payload" />],
        ]}
      />
    </div>
  );
}
