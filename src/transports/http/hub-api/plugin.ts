import { Type, type TSchema } from '@sinclair/typebox';
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { compileSchema, describeValidationError } from '../../../domain/validation.js';
import { hostWithoutPort, type BuiltInHubService } from '../../../hubs/built-in-hubs.js';
import {
  DeviceInput,
  DeviceQueryInput,
  HUB_API_VERSIONS,
  HubApiError,
  HubErrorBodySchema,
  hubErrorBody,
  RegistryStatistics,
  TwinInput,
  WireDevice,
  WireTwin,
} from '../../../hubs/hub-wire.js';
import type { HubRight } from '../../../store/hub-store.js';
import '../route-docs.js';

/**
 * The built-in hubs' registry REST API (the IoT Hub subset of sdk-clients.md §3), on the HTTPS listener. The hub is
 * the one whose name is the request's Host (the SDKs put the hub's host name there, and the same name in the token's
 * `sr`). This plugin is encapsulated: its hook authenticates with hub policies (not DPS policies) and its error handler
 * renders IoT Hub errors (`{"Message":"ErrorCode:…"}` + `iothub-errorcode`) — the service API's hooks and the DPS error
 * envelope never apply here, nor these there.
 */
declare module 'fastify' {
  interface FastifyContextConfig {
    /** The hub policy right a built-in hub route needs. */
    hubRight?: HubRight;
  }
  interface FastifyRequest {
    /** Set by the built-in hub hook: the hub this request addresses, authenticated. */
    builtInHub?: string;
  }
}

export interface BuiltInHubApiDeps {
  hubs: BuiltInHubService;
}

const TAG = 'Built-in IoT hub registry';
const IdParams = Type.Object({ id: Type.String() });
const ApiVersionQuery = Type.Object({ 'api-version': Type.String({ description: 'IoT Hub api-version, e.g. 2021-04-12.' }) });
const ListQuery = Type.Object({
  'api-version': Type.String(),
  top: Type.Optional(Type.String({ pattern: '^[0-9]{1,9}$', description: 'At most this many identities (1000 at most).' })),
});
const IfMatchHeaders = Type.Object({ 'if-match': Type.Optional(Type.String({ description: 'The etag the resource must have, or "*".' })) });
const PagingHeaders = Type.Object({
  'x-ms-max-item-count': Type.Optional(Type.String({ description: 'Page size (1000 at most).' })),
  'x-ms-continuation': Type.Optional(Type.String({ description: 'Token from the previous page.' })),
});
const errorResponses = {
  400: { description: 'Invalid request (ArgumentInvalid, InvalidProtocolVersion)', schema: HubErrorBodySchema },
  401: { description: 'IotHubUnauthorizedAccess', schema: HubErrorBodySchema },
  404: { description: 'DeviceNotFound, or IotHubNotFound when the Host names no built-in hub', schema: HubErrorBodySchema },
};
const preconditionResponse = { 412: { description: 'PreconditionFailed', schema: HubErrorBodySchema } };

/** An operation on one device (`/devices/{id}`, `/twins/{id}`). */
interface DeviceOperation {
  method: 'GET' | 'PUT' | 'PATCH' | 'DELETE';
  collection: 'devices' | 'twins';
  right: HubRight;
  operationId: string;
  summary: string;
  body?: TSchema;
  ifMatch?: boolean;
  responses: Record<number, { description: string; schema?: TSchema }>;
  run(hubs: BuiltInHubService, hub: string, id: string, request: FastifyRequest, reply: FastifyReply): Promise<unknown>;
}

const deviceOperations: readonly DeviceOperation[] = [
  {
    method: 'PUT',
    collection: 'devices',
    right: 'RegistryWrite',
    operationId: 'HubDevices_CreateOrUpdateIdentity',
    summary: 'Create a device identity; with If-Match ("*" or its etag) replace an existing one. A sas identity without keys gets generated keys.',
    body: DeviceInput,
    ifMatch: true,
    responses: { 200: { description: 'Device', schema: WireDevice }, 409: { description: 'DeviceAlreadyExists', schema: HubErrorBodySchema }, ...preconditionResponse },
    run: async (hubs, hub, id, request) => hubs.createOrUpdateDevice(hub, id, request.body as DeviceInput, ifMatchOf(request)),
  },
  {
    method: 'GET',
    collection: 'devices',
    right: 'RegistryRead',
    operationId: 'HubDevices_GetIdentity',
    summary: 'A device identity, with its keys.',
    responses: { 200: { description: 'Device', schema: WireDevice } },
    run: async (hubs, hub, id) => hubs.getDevice(hub, id),
  },
  {
    method: 'DELETE',
    collection: 'devices',
    right: 'RegistryWrite',
    operationId: 'HubDevices_DeleteIdentity',
    summary: 'Delete a device identity and its twin.',
    ifMatch: true,
    responses: { 204: { description: 'Deleted' }, ...preconditionResponse },
    run: async (hubs, hub, id, request, reply) => {
      await hubs.deleteDevice(hub, id, ifMatchOf(request));
      return reply.code(204).send();
    },
  },
  {
    method: 'GET',
    collection: 'twins',
    right: 'ServiceConnect',
    operationId: 'HubTwin_GetDeviceTwin',
    summary: 'A device twin.',
    responses: { 200: { description: 'Twin', schema: WireTwin } },
    run: async (hubs, hub, id) => hubs.getTwin(hub, id),
  },
  {
    method: 'PATCH',
    collection: 'twins',
    right: 'ServiceConnect',
    operationId: 'HubTwin_UpdateDeviceTwin',
    summary: 'Merge tags and desired properties (null removes a key); If-Match names the twin etag.',
    body: TwinInput,
    ifMatch: true,
    responses: { 200: { description: 'Twin', schema: WireTwin }, ...preconditionResponse },
    run: async (hubs, hub, id, request) => hubs.updateTwin(hub, id, request.body as TwinInput, ifMatchOf(request)),
  },
  {
    method: 'PUT',
    collection: 'twins',
    right: 'ServiceConnect',
    operationId: 'HubTwin_ReplaceDeviceTwin',
    summary: 'Replace tags and desired properties; If-Match names the twin etag.',
    body: TwinInput,
    ifMatch: true,
    responses: { 200: { description: 'Twin', schema: WireTwin }, ...preconditionResponse },
    run: async (hubs, hub, id, request) => hubs.replaceTwin(hub, id, request.body as TwinInput, ifMatchOf(request)),
  },
];

/** Body validators for operations reached through the long-ID fallback (the `:id` routes have Fastify's). */
const bodyValidators = new Map(deviceOperations.flatMap((operation) => (operation.body === undefined ? [] : [[operation, compileSchema(operation.body)] as const])));

/**
 * The router matches a parameter of at most `maxParamLength` (100) characters, but device IDs have up to 128 (and
 * percent-encoding triples some). Such a path falls through to the `/devices/*` and `/twins/*` routes, which find the
 * same operation here, so a long ID is served exactly like a short one.
 */
function longIdOperation(request: FastifyRequest): { operation: DeviceOperation; encodedId: string } | undefined {
  const path = request.url.split('?')[0] ?? '';
  const match = /^\/(devices|twins)\/([^/]+)\/?$/i.exec(path);
  if (match === null) return undefined;
  const collection = match[1]?.toLowerCase();
  const operation = deviceOperations.find((candidate) => candidate.collection === collection && candidate.method === request.method);
  return operation === undefined ? undefined : { operation, encodedId: match[2] ?? '' };
}

export function builtInHubPlugin(deps: BuiltInHubApiDeps) {
  const { hubs } = deps;
  return async function register(app: FastifyInstance): Promise<void> {
    app.setErrorHandler((error, request, reply) => handleHubError(error as FastifyError, request, reply));
    app.addHook('onRequest', async (request) => {
      checkApiVersion(request);
      const host = hostWithoutPort(request.headers.host ?? '').toLowerCase();
      const right = request.routeOptions.config.hubRight ?? longIdOperation(request)?.operation.right;
      const hub = await hubs.authorize(host, request.headers.authorization, right, request.url.split('?')[0] ?? '');
      request.builtInHub = hub.name;
    });

    for (const operation of deviceOperations) {
      app.route({
        method: operation.method,
        url: `/${operation.collection}/:id`,
        schema: {
          params: IdParams,
          querystring: ApiVersionQuery,
          ...(operation.ifMatch === true ? { headers: IfMatchHeaders } : {}),
          ...(operation.body === undefined ? {} : { body: operation.body }),
        },
        config: { hubRight: operation.right, operationId: operation.operationId, tag: TAG, summary: operation.summary, responses: { ...operation.responses, ...errorResponses } },
        handler: async (request, reply) => operation.run(hubs, hubOf(request), idOf(request), request, reply),
      });
    }

    app.get('/devices', {
      schema: { querystring: ListQuery },
      config: {
        hubRight: 'RegistryRead',
        operationId: 'HubDevices_GetDevices',
        tag: TAG,
        summary: 'The first identities in device ID order (at most 1000; use the query to page).',
        responses: { 200: { description: 'Device[]', schema: Type.Array(WireDevice) }, ...errorResponses },
      },
      handler: async (request) => {
        const top = (request.query as { top?: string }).top;
        return hubs.listDevices(hubOf(request), top === undefined ? undefined : Number(top));
      },
    });
    app.post('/devices/query', {
      schema: { querystring: ApiVersionQuery, headers: PagingHeaders, body: DeviceQueryInput },
      config: {
        hubRight: 'RegistryRead',
        operationId: 'HubDevices_QueryTwins',
        tag: TAG,
        summary: "SELECT * FROM devices [WHERE deviceId = '<id>']: twins, paged with x-ms-continuation.",
        responses: {
          200: { description: 'Twin[]', schema: Type.Array(WireTwin), headers: { 'x-ms-continuation': 'Present only when more pages follow.' } },
          ...errorResponses,
        },
      },
      handler: async (request, reply) => {
        const result = await hubs.queryDevices(hubOf(request), {
          query: (request.body as { query: string }).query,
          maxItemCount: headerOf(request, 'x-ms-max-item-count'),
          continuation: headerOf(request, 'x-ms-continuation'),
        });
        if (result.continuation !== undefined) reply.header('x-ms-continuation', result.continuation);
        return reply.send(result.items);
      },
    });
    app.get('/statistics/devices', {
      schema: { querystring: ApiVersionQuery },
      config: {
        hubRight: 'RegistryRead',
        operationId: 'HubStatistics_GetDeviceStatistics',
        tag: TAG,
        summary: 'Device counts.',
        responses: { 200: { description: 'RegistryStatistics', schema: RegistryStatistics }, ...errorResponses },
      },
      handler: async (request) => hubs.statistics(hubOf(request)),
    });

    // Long device IDs (see longIdOperation), and the rest of the hub's namespace (modules, bulk, messages…), which is
    // not hosted: said in the hub's own error format.
    const fallback = async (request: FastifyRequest, reply: FastifyReply): Promise<unknown> => {
      const found = longIdOperation(request);
      if (found === undefined) {
        throw new HubApiError('RequestNotFound', `${request.method} ${request.url.split('?')[0] ?? ''} is not supported by the built-in hub.`);
      }
      const validate = bodyValidators.get(found.operation);
      if (validate !== undefined && !validate(request.body)) throw new HubApiError('ArgumentInvalid', describeValidationError(validate.errors, 'body'));
      return found.operation.run(hubs, hubOf(request), decodeId(found.encodedId), request, reply);
    };
    app.all('/devices/*', fallback);
    app.all('/twins/*', fallback);
  };
}

function decodeId(encoded: string): string {
  try {
    return decodeURIComponent(encoded);
  } catch {
    throw new HubApiError('ArgumentInvalid', 'The device ID in the path is not valid percent-encoding.');
  }
}

function checkApiVersion(request: FastifyRequest): void {
  const version = (request.query as Record<string, unknown> | undefined)?.['api-version'];
  if (typeof version !== 'string' || version === '') {
    throw new HubApiError('InvalidProtocolVersion', 'The api-version query parameter is required (e.g. 2021-04-12).');
  }
  if (!HUB_API_VERSIONS.includes(version)) {
    throw new HubApiError('InvalidProtocolVersion', `api-version '${version.slice(0, 40)}' is not supported; use one of ${HUB_API_VERSIONS.join(', ')}.`);
  }
}

function hubOf(request: FastifyRequest): string {
  if (request.builtInHub === undefined) throw new HubApiError('IotHubUnauthorizedAccess');
  return request.builtInHub;
}

function idOf(request: FastifyRequest): string {
  return (request.params as { id: string }).id;
}

function headerOf(request: FastifyRequest, name: string): string | undefined {
  const value = request.headers[name];
  return Array.isArray(value) ? value[0] : value;
}

function ifMatchOf(request: FastifyRequest): string | undefined {
  const value = headerOf(request, 'if-match');
  return value === undefined || value.trim() === '' ? undefined : value;
}

/** Framework errors (bad JSON, wrong media type, schema) become IoT Hub errors; anything unknown is a logged 500. */
export function toHubApiError(error: FastifyError | Error): HubApiError {
  if (error instanceof HubApiError) return error;
  const fastifyError = error as FastifyError;
  if (fastifyError.validation !== undefined) {
    return new HubApiError('ArgumentInvalid', describeValidationError(fastifyError.validation as never, fastifyError.validationContext ?? 'body'));
  }
  switch (fastifyError.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new HubApiError('MessageTooLarge');
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return new HubApiError('ArgumentInvalid', 'Send the body as application/json.');
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return new HubApiError('ArgumentInvalid', 'The request body is empty but declared as JSON.');
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
      return new HubApiError('ArgumentInvalid', 'The request body is not valid JSON.');
    default:
      break;
  }
  if (error instanceof SyntaxError) return new HubApiError('ArgumentInvalid', 'The request body is not valid JSON.');
  if (fastifyError.statusCode !== undefined && fastifyError.statusCode >= 400 && fastifyError.statusCode < 500) {
    return new HubApiError('ArgumentInvalid', error.message);
  }
  return new HubApiError('ServerError');
}

function handleHubError(error: FastifyError | Error, request: FastifyRequest, reply: FastifyReply): FastifyReply {
  const hubError = toHubApiError(error);
  if (hubError.status >= 500) request.log.error({ err: error, trackingId: request.id }, 'built-in hub request failed');
  return reply
    .code(hubError.status)
    .header('iothub-errorcode', hubError.code)
    .header('content-type', 'application/json; charset=utf-8')
    .send(hubErrorBody(hubError, request.id.replaceAll('-', ''), new Date()));
}
