import { Type } from '@sinclair/typebox';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { JsonMap } from '../../../domain/enrollment.js';
import { AUDIT_CLASSES, AUDIT_OUTCOMES } from '../../../domain/audit-class.js';
import { ProvisioningError } from '../../../domain/errors.js';
import { ErrorDetails, JsonObject, StringEnum } from '../../../domain/wire.js';
import { assertValid, compileSchema } from '../../../domain/validation.js';
import { dpsTimestamp } from '../../../domain/time.js';
import type { AuditLog } from '../../../services/audit-log.js';
import type { DataRequestBody, DataRequestService } from '../../../services/customer-data/data-request-service.js';
import { ServiceAuth, type ServiceCaller } from '../../../services/service-auth.js';
import type { Right } from '../../../store/store.js';
import { QUERY_SCAN_ROWS } from '../../../services/paging.js';
import { addServiceAuthHooks, callerOf } from './plugin.js';
import '../route-docs.js';

/**
 * Customer-data requests and the system log (docs/customer-data-api.md). An export needs the read rights, an erase
 * the write rights; a caller without them gets the same 401 whether or not the subject or request exists.
 */
export const EXPORT_RIGHTS: Right[] = ['EnrollmentRead', 'RegistrationStatusRead'];
export const ERASE_RIGHTS: Right[] = ['EnrollmentWrite', 'RegistrationStatusWrite'];

const ApiVersionQuery = Type.Object({ 'api-version': Type.String() });
const IdParams = Type.Object({ id: Type.String() });
const Subject = Type.Object({
  registrationId: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })),
  deviceId: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })),
  enrollmentGroupId: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })),
});
const DataRequestInput = Type.Object({
  type: StringEnum(['export', 'erase']),
  subject: Subject,
  dryRun: Type.Optional(Type.Boolean()),
  includeSecrets: Type.Optional(Type.Boolean()),
});
const DataRequest = Type.Object(
  {
    requestId: Type.String(),
    type: Type.String(),
    status: StringEnum(['running', 'completed', 'partiallyCompleted', 'failed']),
    subject: Type.Object({ kind: Type.String(), id: Type.Optional(Type.String()), hash: Type.String() }),
    dryRun: Type.Boolean(),
    includeSecrets: Type.Boolean(),
    progress: Type.Object({ done: Type.Integer(), total: Type.Integer() }),
    hasReceipt: Type.Boolean(),
    result: Type.Optional(JsonObject),
    error: Type.Optional(Type.String()),
  },
  { additionalProperties: true },
);
const AUDIT_KINDS = ['serviceApi', 'registration', 'hubWrite', 'webhook', 'dataRequest'];
const AuditQueryInput = Type.Object({
  subject: Type.Optional(Type.String({ maxLength: 128 })),
  from: Type.Optional(Type.String({ format: 'date-time' })),
  to: Type.Optional(Type.String({ format: 'date-time' })),
  actor: Type.Optional(Type.String({ maxLength: 128 })),
  outcome: Type.Optional(StringEnum([...AUDIT_OUTCOMES], { description: '`notFound`: a read that found nothing (neutral, not a failure).' })),
  kind: Type.Optional(StringEnum(AUDIT_KINDS)),
  class: Type.Optional(StringEnum([...AUDIT_CLASSES], { description: '`access`: reads (service-API reads and queries, exports); `change`: everything that writes or tries to.' })),
});
/** One system-log event (docs/customer-data-api.md "System log"). */
const AuditEventOutput = Type.Object(
  {
    eventId: Type.String(),
    timeUtc: Type.String(),
    kind: StringEnum(AUDIT_KINDS),
    class: StringEnum([...AUDIT_CLASSES]),
    operation: Type.String(),
    actor: Type.String(),
    source: Type.Optional(Type.String()),
    subject: Type.Object({
      registrationId: Type.Optional(Type.String()),
      deviceId: Type.Optional(Type.String()),
      enrollmentGroupId: Type.Optional(Type.String()),
      hash: Type.Optional(Type.String()),
    }),
    outcome: StringEnum([...AUDIT_OUTCOMES]),
    errorCode: Type.Optional(Type.Integer()),
    reason: Type.Optional(Type.String()),
    trackingId: Type.Optional(Type.String()),
    transport: Type.Optional(Type.String()),
    attestationType: Type.Optional(Type.String()),
    hub: Type.Optional(Type.String()),
    details: Type.Optional(JsonObject),
  },
  { additionalProperties: true },
);
const validateAuditQuery = compileSchema(AuditQueryInput);
const PagingHeaders = Type.Object({
  'x-ms-max-item-count': Type.Optional(Type.String()),
  'x-ms-continuation': Type.Optional(Type.String()),
});
const errors = {
  400: { description: 'Invalid request', schema: ErrorDetails },
  401: { description: 'Unauthorized (also when the rights are missing)', schema: ErrorDetails },
  404: { description: 'Not found', schema: ErrorDetails },
};
const tag = 'Customer data';

const hasAll = (caller: ServiceCaller, rights: Right[]): boolean => rights.every((right) => caller.policy.rights.includes(right));

function requireAll(caller: ServiceCaller, rights: Right[]): void {
  for (const right of rights) ServiceAuth.requireRight(caller, right);
}

/** Which kinds of request the caller may see: export needs the read rights, erase the write rights. */
function visibleType(caller: ServiceCaller): 'export' | 'erase' | undefined {
  const mayExport = hasAll(caller, EXPORT_RIGHTS);
  const mayErase = hasAll(caller, ERASE_RIGHTS);
  if (!mayExport && !mayErase) throw new ProvisioningError('Unauthorized', `Unauthorized: data requests need the ${EXPORT_RIGHTS.join(' and ')} rights (export) or the ${ERASE_RIGHTS.join(' and ')} rights (erase).`);
  return mayExport && mayErase ? undefined : mayExport ? 'export' : 'erase';
}

const requestIdOf = (request: FastifyRequest): string => (request.params as { id: string }).id;

export function customerDataPlugin(deps: { auth: ServiceAuth; dataRequests: DataRequestService; audit: AuditLog }) {
  const { dataRequests, audit } = deps;
  return async function register(app: FastifyInstance): Promise<void> {
    addServiceAuthHooks(app, deps.auth);

    app.put('/dataRequests/:id', {
      schema: { params: IdParams, querystring: ApiVersionQuery, body: DataRequestInput },
      config: {
        sas: true,
        operationId: 'DataRequest_Create',
        tag,
        summary:
          'Create an export or erase request for one subject (registrationId, deviceId, or enrollmentGroupId for erase). Idempotent by ID. Export needs EnrollmentRead and RegistrationStatusRead; erase needs EnrollmentWrite and RegistrationStatusWrite.',
        responses: { 200: { description: 'DataRequest', schema: DataRequest }, 409: { description: 'Same ID, different body', schema: ErrorDetails }, ...errors },
      },
      // A caller who may do neither kind is refused before the body is looked at: it learns nothing from validation.
      preValidation: async (request) => {
        visibleType(callerOf(request));
      },
      handler: async (request) => {
        const caller = callerOf(request);
        const body = request.body as DataRequestBody;
        requireAll(caller, body.type === 'export' ? EXPORT_RIGHTS : ERASE_RIGHTS);
        return dataRequests.create(caller.instance, requestIdOf(request), body, caller.policy.keyName);
      },
    });
    app.get('/dataRequests/:id', {
      schema: { params: IdParams, querystring: ApiVersionQuery },
      config: { sas: true, operationId: 'DataRequest_Get', tag, summary: 'A data request: status, progress and result.', responses: { 200: { description: 'DataRequest', schema: DataRequest }, ...errors } },
      handler: async (request) => {
        const caller = callerOf(request);
        visibleType(caller);
        // A request of a kind the caller's rights do not cover is a 401 naming the rights, as for creating one
        // (docs/customer-data-api.md), not a 404.
        const found = await dataRequests.get(caller.instance, requestIdOf(request));
        requireAll(caller, found.type === 'export' ? EXPORT_RIGHTS : ERASE_RIGHTS);
        return found;
      },
    });
    app.get('/dataRequests/:id/bundle', {
      schema: { params: IdParams, querystring: ApiVersionQuery },
      config: {
        rights: EXPORT_RIGHTS,
        operationId: 'DataRequest_GetBundle',
        tag,
        summary: 'The export bundle of a completed export, as a file.',
        responses: { 200: { description: 'Export bundle', schema: JsonObject }, ...errors },
      },
      handler: async (request, reply) => {
        const bundle: JsonMap = await dataRequests.bundle(callerOf(request).instance, requestIdOf(request));
        const name = requestIdOf(request).replace(/[^A-Za-z0-9._-]/g, '_');
        return reply.header('content-disposition', `attachment; filename="provisiond-export-${name}.json"`).send(bundle);
      },
    });
    app.get('/dataRequests/:id/receipt', {
      schema: { params: IdParams, querystring: ApiVersionQuery },
      config: {
        rights: ERASE_RIGHTS,
        operationId: 'DataRequest_GetReceipt',
        tag,
        summary: 'The signed receipt of a completed erase.',
        responses: { 200: { description: 'Signed receipt', schema: JsonObject }, ...errors },
      },
      handler: async (request, reply) => {
        const receipt = await dataRequests.receipt(callerOf(request).instance, requestIdOf(request));
        const name = requestIdOf(request).replace(/[^A-Za-z0-9._-]/g, '_');
        return reply.header('content-disposition', `attachment; filename="provisiond-receipt-${name}.json"`).send(receipt);
      },
    });
    app.post('/dataRequests/:id/retry', {
      schema: { params: IdParams, querystring: ApiVersionQuery },
      config: { rights: ERASE_RIGHTS, operationId: 'DataRequest_Retry', tag, summary: 'Run a partially completed erase again.', responses: { 200: { description: 'DataRequest', schema: DataRequest }, ...errors } },
      handler: async (request) => dataRequests.retry(callerOf(request).instance, requestIdOf(request)),
    });
    app.post('/dataRequests/query', {
      schema: { querystring: ApiVersionQuery, headers: PagingHeaders },
      config: {
        rights: EXPORT_RIGHTS,
        operationId: 'DataRequest_Query',
        tag,
        summary: "Past data requests, newest first; optional body {query: \"SELECT * WHERE type = 'erase' AND status = 'completed'\"}.",
        responses: { 200: { description: 'DataRequest[]', schema: Type.Array(DataRequest) }, ...errors },
      },
      handler: async (request, reply) => {
        const body = request.body as { query?: unknown } | undefined | null;
        // No body, `{}` and `{"query": …}` are the same request with and without a filter.
        if (body != null && (typeof body !== 'object' || Array.isArray(body) || Object.keys(body).some((name) => name !== 'query') || (body.query !== undefined && typeof body.query !== 'string'))) {
          throw new ProvisioningError('SchemaViolation', 'The body is optional; when sent it is {"query": "<string>"}.');
        }
        const header = (name: string): string | undefined => {
          const value = request.headers[name];
          return Array.isArray(value) ? value[0] : value;
        };
        const page = await dataRequests.query(callerOf(request).instance, {
          query: typeof body?.query === 'string' ? body.query : undefined,
          maxItemCount: header('x-ms-max-item-count'),
          continuation: header('x-ms-continuation'),
        });
        reply.header('x-ms-item-type', 'DataRequest').header('x-ms-max-item-count', String(page.maxItemCount));
        if (page.continuation !== undefined) reply.header('x-ms-continuation', page.continuation);
        return reply.send(page.items);
      },
    });
    app.get('/receiptSigningKey', {
      schema: { querystring: ApiVersionQuery },
      config: { sas: true, operationId: 'DataRequest_GetSigningKey', tag, summary: "The instance's public key that signs erase receipts.", responses: { 200: { description: 'Public key', schema: JsonObject }, ...errors } },
      handler: async (request) => dataRequests.signingKey(callerOf(request).instance),
    });

    app.post('/auditEvents/query', {
      schema: { querystring: ApiVersionQuery, headers: PagingHeaders },
      config: {
        rights: EXPORT_RIGHTS,
        operationId: 'AuditEvent_Query',
        tag: 'System log',
        summary:
          'The system log, newest first, filtered by subject, time range, actor, outcome, kind and class (access or change). Continuation pages are not logged again; see docs/customer-data.md "The system log".',
        responses: { 200: { description: 'AuditEvent[]', schema: Type.Array(AuditEventOutput) }, ...errors },
      },
      handler: async (request, reply) => {
        // The body is optional, so it is checked here rather than by the route schema.
        const { class: eventClass, ...filter } = assertValid<{ subject?: string; from?: string; to?: string; actor?: string; outcome?: string; kind?: string; class?: string }>(
          validateAuditQuery,
          request.body ?? {},
          'body',
        );
        const limitHeader = request.headers['x-ms-max-item-count'];
        const limitText = Array.isArray(limitHeader) ? limitHeader[0] : limitHeader;
        if (limitText !== undefined && !/^[1-9]\d{0,5}$/.test(limitText)) throw new ProvisioningError('InvalidHeader', 'x-ms-max-item-count must be a positive integer.');
        const limit = Math.min(Number(limitText ?? 100), 1000);
        const continuation = request.headers['x-ms-continuation'];
        let beforeKey: string | undefined;
        if (typeof continuation === 'string' && continuation !== '') {
          if (!/^[0-9a-f]{24}$/.test(continuation)) throw new ProvisioningError('InvalidContinuationToken');
          beforeKey = continuation;
        }
        // Timestamps are stored as DPS writes them (UTC, seven fractional digits); any ISO-8601 form the caller sends,
        // with an offset or without fractions, is brought to that form so the comparison is a time comparison.
        const asStored = (value: string | undefined): string | undefined => (value === undefined ? undefined : dpsTimestamp(new Date(value)));
        const from = asStored(filter.from);
        const to = asStored(filter.to);
        const page = await audit.query(callerOf(request).instance, {
          ...filter,
          ...(eventClass === undefined ? {} : { eventClass }),
          ...(from === undefined ? {} : { from }),
          ...(to === undefined ? {} : { to }),
          beforeKey,
          limit,
          scanLimit: QUERY_SCAN_ROWS,
        });
        reply.header('x-ms-item-type', 'AuditEvent').header('x-ms-max-item-count', String(limit));
        if (page.nextKey !== undefined) reply.header('x-ms-continuation', page.nextKey);
        return reply.send(page.items);
      },
    });
  };
}
