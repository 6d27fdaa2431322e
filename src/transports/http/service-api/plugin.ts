import { Type } from '@sinclair/typebox';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { JsonMap } from '../../../domain/enrollment.js';
import { ProvisioningError } from '../../../domain/errors.js';
import { nestedDeeperThan } from '../../../domain/validation.js';
import {
  BulkEnrollmentGroupOperation,
  BulkEnrollmentOperation,
  BulkEnrollmentOperationResult,
  DeviceRegistrationState,
  EnrollmentGroup,
  EnrollmentGroupInput,
  ErrorDetails,
  AttestationMechanism,
  IndividualEnrollment,
  IndividualEnrollmentInput,
  QuerySpecification,
  type BulkMode,
} from '../../../domain/wire.js';
import type { EnrollmentService, QueryResult } from '../../../services/enrollments.js';
import type { RegistrationRecordService } from '../../../services/registration-records.js';
import type { AuditLog } from '../../../services/audit-log.js';
import { bulkItemLog } from '../service-audit.js';
import { ServiceAuth, type ServiceCaller } from '../../../services/service-auth.js';
import '../route-docs.js';

/**
 * The DPS service API (dps-wire.md §2.2), mounted on the HTTPS listener. Each route names the right it needs; the
 * onRequest hook checks `api-version` and authenticates before any body is read, so an unauthenticated caller never
 * learns anything from validation errors.
 */
export const SERVICE_API_VERSIONS = [
  '2017-08-31-preview',
  '2017-11-15',
  '2018-04-01',
  '2018-09-01-preview',
  '2019-03-31',
  '2021-10-01',
  '2021-11-01-preview',
  '2025-07-01-preview',
];

export interface ServiceApiDeps {
  auth: ServiceAuth;
  enrollments: EnrollmentService<never>;
  groups: EnrollmentService<never>;
  registrations: RegistrationRecordService;
  /** The system log, which bulk calls write their items' entries to in their own transaction. */
  audit?: AuditLog;
}

declare module 'fastify' {
  interface FastifyRequest {
    caller?: ServiceCaller;
  }
}

const IdParams = Type.Object({ id: Type.String() });
const ApiVersionQuery = Type.Object({ 'api-version': Type.String({ description: 'Service API version, e.g. 2021-10-01.' }) });
const IfMatchHeaders = Type.Object({ 'if-match': Type.Optional(Type.String({ description: 'Etag the entry must have.' })) });
const PutPreconditionHeaders = Type.Object({
  'if-match': Type.Optional(Type.String({ description: 'Etag the entry must have ("*": any existing entry).' })),
  'if-none-match': Type.Optional(Type.String({ description: '"*": create only; 412 (412003) when the entry exists.' })),
});
const PagingHeaders = Type.Object({
  'x-ms-max-item-count': Type.Optional(Type.String({ description: 'Page size.' })),
  'x-ms-continuation': Type.Optional(Type.String({ description: 'Token from the previous page.' })),
});
const errorResponses = {
  400: { description: 'Invalid request', schema: ErrorDetails },
  401: { description: 'Unauthorized', schema: ErrorDetails },
  404: { description: 'Not found', schema: ErrorDetails },
};
const pageHeaders = {
  'x-ms-continuation': 'Present only when more pages follow.',
  'x-ms-max-item-count': 'The page size used.',
  'x-ms-item-type': 'Enrollment, EnrollmentGroup or DeviceRegistration.',
};

export function checkApiVersion(request: FastifyRequest, supported: readonly string[]): void {
  const version = (request.query as Record<string, unknown> | undefined)?.['api-version'];
  // `?api-version=a&api-version=b` parses as a list: it is there, just not one version.
  if (Array.isArray(version)) throw new ProvisioningError('UnsupportedApiVersion', 'api-version must be given once.');
  if (typeof version !== 'string' || version === '') throw new ProvisioningError('MissingApiVersion');
  if (!supported.includes(version)) {
    throw new ProvisioningError('UnsupportedApiVersion', `api-version '${version}' is not supported; use one of ${supported.join(', ')}.`);
  }
}

export function callerOf(request: FastifyRequest): ServiceCaller {
  if (request.caller === undefined) throw new ProvisioningError('Unauthorized');
  return request.caller;
}

function sendPage(reply: FastifyReply, result: QueryResult): FastifyReply {
  reply.header('x-ms-item-type', result.itemType).header('x-ms-max-item-count', String(result.maxItemCount));
  if (result.continuation !== undefined) reply.header('x-ms-continuation', result.continuation);
  return reply.send(result.items);
}

function pageRequest(request: FastifyRequest): { query: string | undefined; maxItemCount: string | undefined; continuation: string | undefined } {
  const body = request.body as { query?: unknown } | undefined | null;
  if (body != null && (typeof body !== 'object' || typeof body.query !== 'string')) {
    throw new ProvisioningError('SchemaViolation', 'body.query must be a string such as "SELECT *".');
  }
  const header = (name: string): string | undefined => {
    const value = request.headers[name];
    return Array.isArray(value) ? value[0] : value;
  };
  return {
    query: typeof body?.query === 'string' ? body.query : undefined,
    maxItemCount: header('x-ms-max-item-count'),
    continuation: header('x-ms-continuation'),
  };
}

function ifMatch(request: FastifyRequest): string | undefined {
  const value = request.headers['if-match'];
  return value === undefined || value === '' ? undefined : String(value);
}

/**
 * If-None-Match on PUT: `*` means create only (RFC 7232 §3.2). An etag list would mean "replace unless it is one of
 * these versions", which no client needs and If-Match says better, so only `*` is taken.
 */
function createOnly(request: FastifyRequest): boolean {
  const value = request.headers['if-none-match'];
  if (value === undefined || value === '') return false;
  if (String(value).trim() === '*') return true;
  throw new ProvisioningError('InvalidHeader', 'If-None-Match takes only "*" (create only).');
}

/** Deeper bodies are refused before validation; see nestedDeeperThan. */
export const MAX_BODY_DEPTH = 32;

/**
 * Hooks shared by every authenticated API plugin: api-version, then SAS, then the route's right. Bodies are JSON only
 * (dps-wire.md §1): Fastify's built-in text/plain parser is removed in this scope, so any other content type is a 415
 * rather than a string that a body-less route (DELETE, attestationmechanism) would silently accept.
 */
export function addServiceAuthHooks(app: FastifyInstance, auth: ServiceAuth): void {
  app.removeContentTypeParser('text/plain');
  app.addHook('onRequest', async (request) => {
    checkApiVersion(request, SERVICE_API_VERSIONS);
    const caller = await auth.authenticate(request.headers.authorization, request.headers.host, request.url.split('?')[0] ?? '');
    const { right, rights } = request.routeOptions.config;
    if (right !== undefined) ServiceAuth.requireRight(caller, right);
    for (const needed of rights ?? []) ServiceAuth.requireRight(caller, needed);
    request.caller = caller;
  });
  refuseDeepBodies(app);
}

/** A body nested a few thousand levels deep parses fine but overflows the stack when stored: a 400, never a 500. */
export function refuseDeepBodies(app: FastifyInstance): void {
  // Callback-style: no promise per request (the device API's register passes here too).
  app.addHook('preValidation', (request, _reply, done) => {
    if (nestedDeeperThan(request.body, MAX_BODY_DEPTH)) {
      done(new ProvisioningError('SchemaViolation', `The request body is nested more than ${MAX_BODY_DEPTH} levels deep.`));
      return;
    }
    done();
  });
}

export function serviceApiPlugin(deps: ServiceApiDeps) {
  return async function register(app: FastifyInstance): Promise<void> {
    addServiceAuthHooks(app, deps.auth);

    const kinds = [
      {
        service: deps.enrollments,
        base: '/enrollments',
        tag: 'Individual enrollments',
        noun: 'IndividualEnrollment',
        input: IndividualEnrollmentInput,
        output: IndividualEnrollment,
        bulk: BulkEnrollmentOperation,
        bulkItems: 'enrollments',
        auditSubject: 'registrationId',
      },
      {
        service: deps.groups,
        base: '/enrollmentGroups',
        tag: 'Enrollment groups',
        noun: 'EnrollmentGroup',
        input: EnrollmentGroupInput,
        output: EnrollmentGroup,
        bulk: BulkEnrollmentGroupOperation,
        bulkItems: 'enrollmentGroups',
        auditSubject: 'enrollmentGroupId',
      },
    ] as const;

    for (const kind of kinds) {
      const { service, base, tag, noun } = kind;
      app.get(`${base}/:id`, {
        schema: { params: IdParams, querystring: ApiVersionQuery },
        config: { right: 'EnrollmentRead', auditSubject: kind.auditSubject, operationId: `${noun}_Get`, tag, summary: `Get an ${noun} (no secrets).`, responses: { 200: { description: noun, schema: kind.output }, ...errorResponses } },
        handler: async (request) => service.get(callerOf(request).instance, (request.params as { id: string }).id),
      });
      app.put(`${base}/:id`, {
        schema: { params: IdParams, querystring: ApiVersionQuery, headers: PutPreconditionHeaders, body: kind.input },
        config: {
          right: 'EnrollmentWrite',
          auditSubject: kind.auditSubject,
          operationId: `${noun}_CreateOrUpdate`,
          tag,
          summary: `Create or replace an ${noun}; with If-Match only if the etag matches, with If-None-Match: * only if it does not exist. The response carries generated keys.`,
          responses: { 200: { description: noun, schema: kind.output }, 412: { description: 'Etag mismatch, or If-None-Match: * and the entry exists', schema: ErrorDetails }, 409: { description: 'Certificate already used', schema: ErrorDetails }, ...errorResponses },
        },
        handler: async (request) =>
          service.createOrUpdate(callerOf(request).instance, (request.params as { id: string }).id, request.body, ifMatch(request), createOnly(request)),
      });
      app.delete(`${base}/:id`, {
        schema: { params: IdParams, querystring: ApiVersionQuery, headers: IfMatchHeaders },
        config: {
          right: 'EnrollmentWrite',
          auditSubject: kind.auditSubject,
          operationId: `${noun}_Delete`,
          tag,
          summary: `Delete an ${noun} and the registration records that belong to it.`,
          responses: { 204: { description: 'Deleted' }, 412: { description: 'Etag mismatch', schema: ErrorDetails }, ...errorResponses },
        },
        handler: async (request, reply) => {
          await service.delete(callerOf(request).instance, (request.params as { id: string }).id, ifMatch(request));
          return reply.code(204).send();
        },
      });
      app.post(`${base}/:id/attestationmechanism`, {
        schema: { params: IdParams, querystring: ApiVersionQuery },
        config: {
          right: 'EnrollmentRead',
          auditSubject: kind.auditSubject,
          operationId: `${noun}_GetAttestationMechanism`,
          tag,
          summary: 'The attestation mechanism with its secrets (symmetric keys, certificates).',
          responses: { 200: { description: 'AttestationMechanism', schema: AttestationMechanism }, ...errorResponses },
        },
        handler: async (request) => service.attestationMechanism(callerOf(request).instance, (request.params as { id: string }).id),
      });
      app.post(`${base}/query`, {
        schema: { querystring: ApiVersionQuery, headers: PagingHeaders, body: QuerySpecification },
        config: {
          right: 'EnrollmentRead',
          operationId: `${noun}_Query`,
          tag,
          summary: "Query with SELECT * [WHERE field = 'v' AND field LIKE 'prefix%' AND field IN (...)]; pages with x-ms-continuation.",
          responses: { 200: { description: `${noun}[]`, schema: Type.Array(kind.output), headers: pageHeaders }, ...errorResponses },
        },
        handler: async (request, reply) => sendPage(reply, await service.query(callerOf(request).instance, pageRequest(request))),
      });
      app.post(base, {
        schema: { querystring: ApiVersionQuery, body: kind.bulk },
        config: {
          right: 'EnrollmentWrite',
          auditSubject: kind.auditSubject,
          operationId: `${noun}_RunBulkOperation`,
          tag,
          summary: 'Bulk create/update/updateIfMatchETag/delete; each item is applied atomically and reported on its own.',
          responses: { 200: { description: 'BulkEnrollmentOperationResult', schema: BulkEnrollmentOperationResult }, ...errorResponses },
        },
        handler: async (request) => {
          const body = request.body as { mode: BulkMode } & Record<string, unknown[]>;
          const log = deps.audit === undefined ? undefined : bulkItemLog(deps.audit, request, kind.auditSubject);
          return service.bulk(callerOf(request).instance, body.mode, body[kind.bulkItems] ?? [], log);
        },
      });
    }

    app.get('/registrations/:id', {
      schema: { params: IdParams, querystring: ApiVersionQuery },
      config: {
        right: 'RegistrationStatusRead',
        auditSubject: 'registrationId',
        operationId: 'DeviceRegistrationState_Get',
        tag: 'Registration records',
        summary: 'Get the registration record of a device.',
        responses: { 200: { description: 'DeviceRegistrationState', schema: DeviceRegistrationState }, ...errorResponses },
      },
      handler: async (request): Promise<JsonMap> => deps.registrations.get(callerOf(request).instance, (request.params as { id: string }).id),
    });
    app.delete('/registrations/:id', {
      schema: { params: IdParams, querystring: ApiVersionQuery, headers: IfMatchHeaders },
      config: {
        right: 'RegistrationStatusWrite',
        auditSubject: 'registrationId',
        operationId: 'DeviceRegistrationState_Delete',
        tag: 'Registration records',
        summary: 'Delete a registration record (the device stays in its hub).',
        responses: { 204: { description: 'Deleted' }, 412: { description: 'Etag mismatch', schema: ErrorDetails }, ...errorResponses },
      },
      handler: async (request, reply) => {
        await deps.registrations.delete(callerOf(request).instance, (request.params as { id: string }).id, ifMatch(request));
        return reply.code(204).send();
      },
    });
    app.post('/registrations/:id/query', {
      schema: { params: IdParams, querystring: ApiVersionQuery, headers: PagingHeaders },
      config: {
        right: 'RegistrationStatusRead',
        auditSubject: 'enrollmentGroupId',
        operationId: 'DeviceRegistrationState_Query',
        tag: 'Registration records',
        summary: 'The registration records of the devices registered through an enrollment group (the body is optional).',
        responses: { 200: { description: 'DeviceRegistrationState[]', schema: Type.Array(DeviceRegistrationState), headers: pageHeaders }, ...errorResponses },
      },
      handler: async (request, reply) =>
        sendPage(reply, await deps.registrations.queryByGroup(callerOf(request).instance, (request.params as { id: string }).id, pageRequest(request))),
    });
  };
}
