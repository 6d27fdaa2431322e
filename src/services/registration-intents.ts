import type { FastifyBaseLogger } from 'fastify';
import { ProvisioningError } from '../domain/errors.js';
import { idKey } from '../domain/ids.js';
import { renderDeviceRegistration } from '../domain/registration.js';
import { dpsTimestamp } from '../domain/time.js';
import type { HubClientFactory } from '../hubs/hub-client.js';
import type { RegistrationIntent, StoredOperation, StoredRegistration } from '../store/store.js';
import type { AuditLog } from './audit-log.js';
import { hubDeviceLinkOf } from './customer-data/hub-device-links.js';
import type { ServiceDeps } from './deps.js';

/**
 * Settling a registration intent left behind by a process that died between its hub writes and its record (issue
 * 13.3; docs/reliability.md). The record is the truth a device was told, so the hub is brought to agree with it:
 *
 * - the record already names the intent's hub and device ID → nothing to do (the write finished);
 * - the registration was moving the device (another hub, or another device ID) and the old identity is already gone,
 *   while the new one is there → finish it: the record becomes what the intent says (the new identity and its twin were
 *   written before the old one was removed, so it is complete);
 * - otherwise → roll back: the new identity, which no record names, is deleted.
 *
 * Either way the operation ends (`assigned` when finished, `failed` with RegistrationInterrupted when rolled back —
 * the device registers again) and the intent is removed.
 */
export interface IntentSettlerDeps extends ServiceDeps {
  hubClients: HubClientFactory;
  logger: FastifyBaseLogger;
  audit?: AuditLog | undefined;
}

export type IntentOutcome = 'finished' | 'completed' | 'rolledBack' | 'unreachable';

export async function settleIntent(deps: IntentSettlerDeps, instanceId: string, intent: RegistrationIntent): Promise<IntentOutcome> {
  const { store } = deps;
  const linked = new Map((await store.listLinkedHubs(instanceId)).map((hub) => [hub.name, hub]));
  const record = await store.getRegistration(instanceId, intent.registrationId);
  const owns = (hub: string, deviceId: string): boolean =>
    record?.assignedHub === hub && record.deviceId !== undefined && idKey(record.deviceId) === idKey(deviceId);
  const exists = async (hub: string, deviceId: string): Promise<boolean | undefined> => {
    const linkedHub = linked.get(hub);
    if (linkedHub === undefined) return undefined;
    return (await deps.hubClients.forHub(linkedHub).getDevice(deviceId)) !== undefined;
  };

  if (owns(intent.targetHub, intent.deviceId)) {
    await store.deleteRegistrationIntent(instanceId, intent.operationId);
    return 'finished';
  }
  const now = dpsTimestamp(deps.now());
  const operation = await store.getOperation(instanceId, intent.operationId);
  const leave = intent.leave;
  if (leave !== undefined && owns(leave.hub, leave.deviceId)) {
    const [oldThere, newThere] = await Promise.all([exists(leave.hub, leave.deviceId), exists(intent.targetHub, intent.deviceId)]);
    if (oldThere === false && newThere === true) {
      const finished: StoredRegistration = { ...intent.assigned, lastUpdatedDateTimeUtc: now };
      await store.transaction(async (tx) => {
        await tx.putRegistration(instanceId, finished);
        const link = hubDeviceLinkOf(finished, now);
        if (link !== undefined) await tx.putHubDeviceLink(instanceId, link);
        if (operation !== undefined && operation.status === 'assigning') {
          await tx.putOperation(instanceId, {
            ...operation,
            status: 'assigned',
            lastUpdatedDateTimeUtc: now,
            registrationState: renderDeviceRegistration(finished, intent.resultSection),
          });
        }
        await tx.deleteRegistrationIntent(instanceId, intent.operationId);
      });
      deps.logger.warn({ operationId: intent.operationId, hub: intent.targetHub }, 'an interrupted registration was finished (its old identity was already removed)');
      return 'completed';
    }
  }

  // Roll back: the identity the intent was writing is named by no record.
  const target = linked.get(intent.targetHub);
  if (target === undefined) {
    // The hub was unlinked since: nothing here can reach it. The intent is dropped; the log says so.
    deps.logger.warn({ operationId: intent.operationId, hub: intent.targetHub }, 'an interrupted registration names a hub that is no longer linked; dropped');
  } else {
    const entry = {
      kind: 'hubWrite' as const,
      operation: 'deleteDevice',
      actor: 'provisiond',
      subject: { registrationId: intent.registrationId, deviceId: intent.deviceId },
      hub: intent.targetHub,
    };
    try {
      const deleted = await deps.hubClients.forHub(target).deleteDevice(intent.deviceId);
      if (deleted) await deps.audit?.record(instanceId, { ...entry, outcome: 'success', reason: 'rolled back a registration interrupted by a restart' });
    } catch (error) {
      await deps.audit?.record(instanceId, { ...entry, outcome: 'failure', reason: error instanceof Error ? error.message : String(error) });
      // Kept for the next sweep: the hub may be back by then.
      return 'unreachable';
    }
  }
  const interrupted = new ProvisioningError('RegistrationInterrupted');
  await store.transaction(async (tx) => {
    if (operation !== undefined && operation.status === 'assigning') {
      const failed: StoredOperation = {
        ...operation,
        status: 'failed',
        lastUpdatedDateTimeUtc: now,
        registrationState: {
          registrationId: intent.registrationId,
          status: 'failed',
          errorCode: interrupted.errorCode,
          errorMessage: interrupted.message,
          lastUpdatedDateTimeUtc: now,
        },
      };
      await tx.putOperation(instanceId, failed);
    }
    await tx.deleteRegistrationIntent(instanceId, intent.operationId);
  });
  return 'rolledBack';
}
