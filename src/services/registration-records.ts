import type { JsonMap } from '../domain/enrollment.js';
import { ProvisioningError } from '../domain/errors.js';
import { etagMatches } from '../domain/etag.js';
import { renderRegistration } from '../domain/registration.js';
import { REGISTRATION_FIELDS, type InstanceRecord } from '../store/store.js';
import type { ServiceDeps } from './deps.js';
import type { QueryResult } from './enrollments.js';
import { encodeContinuation, readPageRequest, type PageRequest } from './paging.js';

/** Registration records through the service API (dps-wire.md §2.2, §8.4): read, delete, query by group. */
export class RegistrationRecordService {
  readonly #deps: ServiceDeps;

  constructor(deps: ServiceDeps) {
    this.#deps = deps;
  }

  async get(instance: InstanceRecord, registrationId: string): Promise<JsonMap> {
    const record = await this.#deps.store.getRegistration(instance.id, registrationId);
    if (record === undefined) throw notFound(registrationId);
    return renderRegistration(record);
  }

  async delete(instance: InstanceRecord, registrationId: string, ifMatch: string | undefined): Promise<void> {
    await this.#deps.store.transaction(async (store) => {
      const record = await store.getRegistration(instance.id, registrationId);
      // If-Match on a record that is gone cannot match (RFC 7232 §3.1), as for enrollments.
      if (record === undefined && ifMatch !== undefined) throw new ProvisioningError('PreconditionFailed', `'${registrationId}' does not exist, so If-Match cannot match.`);
      if (record === undefined) throw notFound(registrationId);
      if (ifMatch !== undefined && !etagMatches(ifMatch, record.etag)) throw new ProvisioningError('PreconditionFailed');
      // Compare-and-swap on the etag just checked: a concurrent write or delete makes this one a 412.
      const deleted = await store.deleteRegistration(instance.id, registrationId, ifMatch === undefined ? undefined : record.etag);
      if (ifMatch !== undefined && !deleted) throw new ProvisioningError('PreconditionFailed');
    });
  }

  async queryByGroup(instance: InstanceRecord, groupId: string, request: PageRequest): Promise<QueryResult> {
    const group = await this.#deps.store.getEnrollmentGroup(instance.id, groupId);
    if (group === undefined) throw new ProvisioningError('EnrollmentGroupNotFound', `Enrollment group '${groupId}' was not found.`);
    const page = readPageRequest(request, REGISTRATION_FIELDS, this.#deps.config);
    const result = await this.#deps.store.queryRegistrations(instance.id, {
      ...page,
      filters: [...page.filters, { field: 'enrollmentGroupId', op: 'eq', values: [group.enrollmentGroupId] }],
    });
    return {
      items: result.items.map(renderRegistration),
      continuation: result.nextKey === undefined ? undefined : encodeContinuation(result.nextKey, request.query ?? ''),
      itemType: 'DeviceRegistration',
      maxItemCount: page.limit,
    };
  }
}

function notFound(registrationId: string): ProvisioningError {
  return new ProvisioningError('RegistrationNotFound', `Registration '${registrationId}' was not found.`);
}
