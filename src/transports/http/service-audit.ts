import type { FastifyReply, FastifyRequest } from 'fastify';
import { auditClassOf } from '../../domain/audit-class.js';
import type { AuditLog } from '../../services/audit-log.js';
import type { BulkItemLog } from '../../services/enrollments.js';
import type { AuditEvent } from '../../store/store.js';
import './route-docs.js';
// Type-only: the request.caller augmentation, without a runtime import back into the plugin that imports this file.
import type {} from './service-api/plugin.js';

declare module 'fastify' {
  interface FastifyRequest {
    /** Set when a bulk call wrote its items' log entries in its own transaction (bulkItemLog). */
    itemsLogged?: boolean;
  }
}

/**
 * The log of a bulk call's items, written by the bulk call in its transaction: one entry per item with the item's own
 * outcome, as serviceCallAuditor would write it.
 */
export function bulkItemLog(audit: AuditLog, request: FastifyRequest, field: 'registrationId' | 'enrollmentGroupId'): BulkItemLog {
  return {
    async write(store, items) {
      const caller = request.caller;
      const operation = request.routeOptions.config.operationId;
      if (caller === undefined || operation === undefined) return;
      await audit.recordAll(
        store,
        caller.instance.id,
        items.map(({ id, error }) => ({
          kind: 'serviceApi',
          operation,
          actor: caller.policy.keyName,
          source: request.ip,
          outcome: error === undefined ? 'success' : 'failure',
          ...(error === undefined ? {} : { errorCode: error.errorCode, reason: error.message }),
          trackingId: request.id,
          details: { method: request.method, route: request.routeOptions.url ?? '', status: 200 },
          subject: id === '' ? {} : { [field]: id },
        })),
      );
      request.itemsLogged = true;
    },
  };
}

/**
 * The system-log entry of an authenticated service-API call: who (policy), from where, which operation on which
 * subject, whether it read (access) or wrote (change), and how it ended. A read that found nothing (404) is
 * `notFound`, neutral; a write that found nothing failed. A bulk call is logged once per item, so every item's subject
 * can be found and erased. The continuation pages of a query are part of that query: only its first page is logged.
 * A query of the log about one ID names that ID as its subject (who looked at a device's history). Paths are logged as
 * route patterns: the IDs in them go to the indexed subject fields only.
 */
export function serviceCallAuditor(audit: AuditLog) {
  return async function record(request: FastifyRequest, reply: FastifyReply): Promise<void> {
    const caller = request.caller;
    const config = request.routeOptions.config;
    if (caller === undefined || config.operationId === undefined) return;
    const eventClass = auditClassOf({ kind: 'serviceApi', operation: config.operationId });
    const continuation = request.headers['x-ms-continuation'];
    if (eventClass === 'access' && typeof continuation === 'string' && continuation !== '' && reply.statusCode < 400) return;
    // Written with the items (a call whose transaction failed answers 500 and is logged below instead).
    if (request.itemsLogged === true && reply.statusCode < 400) return;
    const base: Omit<AuditEvent, 'eventId' | 'timeUtc' | 'subject'> = {
      kind: 'serviceApi',
      operation: config.operationId,
      actor: caller.policy.keyName,
      source: request.ip,
      class: eventClass,
      outcome: reply.statusCode < 400 ? 'success' : reply.statusCode === 404 && eventClass === 'access' ? 'notFound' : 'failure',
      trackingId: request.id,
      details: { method: request.method, route: request.routeOptions.url ?? '', status: reply.statusCode },
    };
    if (request.provisioningError !== undefined) {
      base.errorCode = request.provisioningError.errorCode;
      base.reason = request.provisioningError.message;
    }
    if (config.operationId === 'AuditEvent_Query') {
      // The filter's subject may be a registration, device or group ID: the event names it as all three, so an erase
      // of any of them finds (and removes) the record of who read its history.
      const id = (request.body as { subject?: unknown } | undefined)?.subject;
      const subject = typeof id === 'string' && id !== '' ? { registrationId: id, deviceId: id, enrollmentGroupId: id } : {};
      await audit.record(caller.instance.id, { ...base, subject });
      return;
    }
    const field = config.auditSubject;
    const subjects: string[] = [];
    if (field !== undefined) {
      const id = (request.params as { id?: string } | undefined)?.id;
      if (id !== undefined) subjects.push(id);
      if (config.operationId.endsWith('_RunBulkOperation')) {
        const body = request.body as Record<string, unknown> | undefined;
        const items = (body?.enrollments ?? body?.enrollmentGroups) as Array<Record<string, unknown>> | undefined;
        for (const item of Array.isArray(items) ? items : []) {
          const itemId = item?.[field];
          if (typeof itemId === 'string') subjects.push(itemId);
        }
      }
    }
    if (field === undefined || subjects.length === 0) {
      await audit.record(caller.instance.id, { ...base, subject: {} });
      return;
    }
    for (const id of subjects) await audit.record(caller.instance.id, { ...base, subject: { [field]: id } });
  };
}
