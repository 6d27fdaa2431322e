import { Type } from '@sinclair/typebox';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { ErrorDetails, JsonObject } from '../../../domain/wire.js';
import type { DeviceRequest, OperationReply, RegistrationService } from '../../../services/registrations.js';
import { checkRegistrationBody, deviceCredential, refuseLookupCsr, registerCsr, type RegistrationBody } from '../../device-requests.js';
import { peerCertificateChain } from '../../tls-peer.js';
import { checkApiVersion, refuseDeepBodies } from '../service-api/plugin.js';
import '../route-docs.js';

/**
 * The device API over HTTPS (dps-wire.md §4): register, operation status, registration status lookup. The ID scope
 * in the path selects the instance; the device proves itself with a SAS token in Authorization, without one with the
 * client certificate chain it presented in the TLS handshake (X.509, §4.4), or with the TPM keys in its register body
 * and the 401 challenge (§4.5).
 */
export const DEVICE_API_VERSIONS = [
  '2017-08-31-preview',
  '2017-11-15',
  '2018-04-01',
  '2018-09-01-preview',
  '2018-11-01',
  '2019-03-31',
  '2021-06-01',
  '2021-10-01',
  '2025-07-01-preview',
];

const DeviceRegistration = Type.Object({
  registrationId: Type.Optional(Type.String({ maxLength: 512 })),
  payload: Type.Optional(Type.Union([JsonObject, Type.Null()])),
  tpm: Type.Optional(Type.Union([Type.Object({ endorsementKey: Type.String(), storageRootKey: Type.Optional(Type.String()) }), Type.Null()])),
  csr: Type.Optional(
    Type.Union([
      Type.String({ maxLength: 16384, description: 'api-version 2025-07-01-preview: base64 DER PKCS#10 whose CN is the registration ID (register only).' }),
      Type.Null(),
    ]),
  ),
});
const Params = Type.Object({ idScope: Type.String(), registrationId: Type.String() });
const OperationParams = Type.Object({ idScope: Type.String(), registrationId: Type.String(), operationId: Type.String() });
const ApiVersionQuery = Type.Object({ 'api-version': Type.String() });
const RegistrationOperationStatus = Type.Object(
  { operationId: Type.String(), status: Type.String(), registrationState: Type.Optional(JsonObject) },
  { additionalProperties: true },
);
const errors = {
  400: { description: 'Invalid request', schema: ErrorDetails },
  401: { description: 'The credential does not prove an enrollment', schema: ErrorDetails },
  429: { description: 'Throttled; see Retry-After', schema: ErrorDetails },
};
const tag = 'Device API';

type DeviceParams = { idScope: string; registrationId: string };

/**
 * The request as the registration service takes it; `body` is the checked DeviceRegistration (register, lookup), and
 * `extra` the fields of one call (payload and csr, operationId), set on the object here: a spread of this object with
 * more fields would give each request a hidden class of its own on this V8 (see audit-log.ts `event`).
 */
function deviceRequest<Extra extends object>(request: FastifyRequest, body: RegistrationBody | undefined, extra: Extra): DeviceRequest & Extra {
  const { idScope, registrationId } = request.params as DeviceParams;
  const credential = deviceCredential({ authorization: request.headers.authorization, chain: peerCertificateChain(request.raw.socket), tpm: body?.tpm });
  return Object.assign({ idScope, registrationId, credential, transport: 'http' as const, source: request.ip }, extra);
}

function checkBody(request: FastifyRequest): RegistrationBody {
  return checkRegistrationBody(request.body, (request.params as DeviceParams).registrationId);
}

/**
 * Sets the reply's status and headers and gives back the body for the async handler to return. (Returning the body,
 * not `reply.send(...)`'s reply: an async handler that resolves to the reply — a thenable — makes Fastify wait for the
 * response stream to end through end-of-stream listeners, several objects and microtask turns per device request.)
 */
function sendOperation(request: FastifyRequest, reply: FastifyReply, result: OperationReply): OperationReply['body'] {
  if (result.retryAfterSeconds !== undefined) reply.header('retry-after', String(result.retryAfterSeconds));
  if (result.httpStatus === 202) {
    const { idScope, registrationId } = request.params as DeviceParams;
    const location = new URL(`https://${request.headers.host ?? 'localhost'}`);
    location.pathname = `/${encodeURIComponent(idScope)}/registrations/${encodeURIComponent(registrationId)}/register`;
    reply.header('location', location.toString());
  }
  reply.code(result.httpStatus);
  return result.body;
}

export function deviceApiPlugin(deps: { registrations: RegistrationService }) {
  return async function register(app: FastifyInstance): Promise<void> {
    // Callback-style: no promise per device request for a synchronous check.
    app.addHook('onRequest', (request, _reply, done) => {
      try {
        checkApiVersion(request, DEVICE_API_VERSIONS);
      } catch (error) {
        done(error as Error);
        return;
      }
      done();
    });
    // A device payload is stored and forwarded to webhooks: the same depth limit as the service API.
    refuseDeepBodies(app);

    app.put('/:idScope/registrations/:registrationId/register', {
      schema: { params: Params, querystring: ApiVersionQuery, body: DeviceRegistration },
      config: {
        operationId: 'RuntimeRegistration_RegisterDevice',
        tag,
        summary: 'Register a device: 202 with an operation to poll (Retry-After: 0 when the assignment is already done).',
        responses: { 202: { description: 'RegistrationOperationStatus', schema: RegistrationOperationStatus, headers: { 'retry-after': 'Seconds until the first poll.', location: 'The register URL.' } }, ...errors },
      },
      handler: async (request, reply) => {
        const body = checkBody(request);
        const csr = registerCsr(body, (request.query as { 'api-version': string })['api-version']);
        return sendOperation(request, reply, await deps.registrations.register(deviceRequest(request, body, { payload: body.payload, csr })));
      },
    });
    app.get('/:idScope/registrations/:registrationId/operations/:operationId', {
      schema: { params: OperationParams, querystring: ApiVersionQuery },
      config: {
        operationId: 'RuntimeRegistration_OperationStatusLookup',
        tag,
        summary: 'Poll an operation: 202 while assigning, 200 with registrationState when assigned, failed or disabled.',
        responses: { 200: { description: 'RegistrationOperationStatus', schema: RegistrationOperationStatus }, 202: { description: 'Still assigning', schema: RegistrationOperationStatus }, ...errors },
      },
      handler: async (request, reply) =>
        sendOperation(
          request,
          reply,
          await deps.registrations.operationStatus(deviceRequest(request, undefined, { operationId: (request.params as { operationId: string }).operationId })),
        ),
    });
    app.post('/:idScope/registrations/:registrationId', {
      schema: { params: Params, querystring: ApiVersionQuery, body: DeviceRegistration },
      config: {
        operationId: 'RuntimeRegistration_DeviceRegistrationStatusLookup',
        tag,
        summary: "The device's registration record (DeviceRegistrationResult).",
        responses: { 200: { description: 'DeviceRegistrationResult', schema: JsonObject }, ...errors },
      },
      handler: async (request) => {
        const body = checkBody(request);
        refuseLookupCsr(body);
        return deps.registrations.statusLookup(deviceRequest(request, body, {}));
      },
    });
  };
}
