import { Type } from '@sinclair/typebox';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { ProvisioningError } from '../../../domain/errors.js';
import { ErrorDetails, X509CertificateInfo } from '../../../domain/wire.js';
import type { CredentialPolicyInput, CredentialPolicyService } from '../../../services/attestation/credential-policies.js';
import type { IssuingCaInput, IssuingCaService } from '../../../services/attestation/issuing-ca.js';
import type { ServiceAuth } from '../../../services/service-auth.js';
import type { Store } from '../../../store/store.js';
import { CREDENTIAL_KEY_TYPES } from '../../../store/store.js';
import { addServiceAuthHooks, callerOf } from './plugin.js';
import '../route-docs.js';

/**
 * Certificate issuance on the control plane (docs/certificate-issuance.md): the instance's credential policies, which
 * enrollments name in `credentialPolicyName`, and its issuing CA (shown without its key; replaceable by the
 * operator's own). Every route needs ServiceConfig. The CRL is served apart, without a credential.
 */
const NameParams = Type.Object({ name: Type.String({ description: 'The policy name (1-64 letters, digits, - . _).' }) });
const ApiVersionQuery = Type.Object({ 'api-version': Type.String() });
const KeyType = Type.String({ enum: [...CREDENTIAL_KEY_TYPES] });
const CredentialPolicy = Type.Object({
  name: Type.String(),
  keyTypes: Type.Array(KeyType, { description: 'The CSR key types the policy accepts.' }),
  validityInDays: Type.Integer({ description: 'How long an issued certificate is valid.' }),
  etag: Type.String(),
  createdDateTimeUtc: Type.String(),
  lastUpdatedDateTimeUtc: Type.String(),
});
const CredentialPolicyBody = Type.Object(
  {
    keyTypes: Type.Optional(Type.Array(Type.String({ maxLength: 16 }), { maxItems: 16, description: `Default: all of ${CREDENTIAL_KEY_TYPES.join(', ')}.` })),
    validityInDays: Type.Optional(Type.Integer({ description: 'Default 30; 1-3650.' })),
  },
  { additionalProperties: true },
);
const IssuingCa = Type.Object({
  certificate: Type.String({ description: 'PEM.' }),
  info: X509CertificateInfo,
  chain: Type.Array(Type.String(), { description: 'PEM certificates above the CA up to the root; empty for a root.' }),
  source: Type.String({ enum: ['generated', 'operator'] }),
  createdDateTimeUtc: Type.String(),
  crlUrl: Type.Optional(Type.String({ description: 'Where the CRL of the CA is published.' })),
});
const IssuingCaBody = Type.Object({
  certificate: Type.String({ minLength: 1, maxLength: 65536, description: 'PEM CA certificate (basicConstraints CA:true).' }),
  privateKey: Type.String({ minLength: 1, maxLength: 65536, description: 'PEM private key of the certificate; never shown again.' }),
  chain: Type.Optional(Type.Array(Type.String({ maxLength: 65536 }), { maxItems: 8 })),
});
const errors = {
  400: { description: 'Invalid request', schema: ErrorDetails },
  401: { description: 'Unauthorized', schema: ErrorDetails },
  404: { description: 'Not found', schema: ErrorDetails },
};
const tag = 'Certificate issuance';
const name = (request: FastifyRequest): string => (request.params as { name: string }).name;

export function certificateIssuancePlugin(deps: { auth: ServiceAuth; policies: CredentialPolicyService; issuingCa: IssuingCaService }) {
  const { policies, issuingCa } = deps;
  return async function register(app: FastifyInstance): Promise<void> {
    addServiceAuthHooks(app, deps.auth);
    const common = { right: 'ServiceConfig' as const, tag };

    app.get('/credentialPolicies', {
      schema: { querystring: ApiVersionQuery },
      config: { ...common, operationId: 'CredentialPolicy_List', summary: 'The credential policies of the instance.', responses: { 200: { description: 'Credential policies', schema: Type.Array(CredentialPolicy) }, ...errors } },
      handler: async (request) => policies.list(callerOf(request).instance),
    });
    app.get('/credentialPolicies/:name', {
      schema: { params: NameParams, querystring: ApiVersionQuery },
      config: { ...common, operationId: 'CredentialPolicy_Get', summary: 'One credential policy.', responses: { 200: { description: 'Credential policy', schema: CredentialPolicy }, ...errors } },
      handler: async (request) => policies.get(callerOf(request).instance, name(request)),
    });
    app.put('/credentialPolicies/:name', {
      schema: { params: NameParams, querystring: ApiVersionQuery, body: CredentialPolicyBody },
      config: {
        ...common,
        operationId: 'CredentialPolicy_CreateOrUpdate',
        summary: 'Create or replace a credential policy: the CSR key types it accepts and the validity of the certificates issued under it.',
        responses: { 200: { description: 'Credential policy', schema: CredentialPolicy }, ...errors },
      },
      handler: async (request) => policies.put(callerOf(request).instance, name(request), request.body as CredentialPolicyInput),
    });
    app.delete('/credentialPolicies/:name', {
      schema: { params: NameParams, querystring: ApiVersionQuery },
      config: {
        ...common,
        operationId: 'CredentialPolicy_Delete',
        summary: 'Delete a credential policy; CSRs of devices whose enrollment names it are refused from then on. Issued certificates stay valid.',
        responses: { 204: { description: 'Deleted' }, ...errors },
      },
      handler: async (request, reply) => {
        await policies.delete(callerOf(request).instance, name(request));
        return reply.code(204).send();
      },
    });
    app.get('/issuingCa', {
      schema: { querystring: ApiVersionQuery },
      config: {
        ...common,
        operationId: 'IssuingCa_Get',
        summary: 'The issuing CA of the instance (created on first need), without its key, and the URL of its CRL.',
        responses: { 200: { description: 'Issuing CA', schema: IssuingCa }, ...errors },
      },
      handler: async (request) => issuingCa.view(callerOf(request).instance),
    });
    app.put('/issuingCa', {
      schema: { querystring: ApiVersionQuery, body: IssuingCaBody },
      config: {
        ...common,
        operationId: 'IssuingCa_Replace',
        summary: "Use the operator's own issuing CA (certificate, key, chain to the root). Certificates issued by the previous CA stop authenticating.",
        responses: { 200: { description: 'Issuing CA', schema: IssuingCa }, ...errors },
      },
      handler: async (request) => issuingCa.supply(callerOf(request).instance, request.body as IssuingCaInput),
    });
  };
}

/**
 * The CRL of an instance's issuing CA, at `GET /crl/{idScope}.crl` (DER, `application/pkix-crl`): public, like any
 * CRL distribution point — it names serial numbers only. An unknown ID scope is a 404.
 */
export function crlPlugin(deps: { store: Store; issuingCa: IssuingCaService }) {
  return async function register(app: FastifyInstance): Promise<void> {
    app.get('/crl/:file', {
      schema: { params: Type.Object({ file: Type.String({ pattern: '^[^/]+\\.crl$', description: '{idScope}.crl' }) }) },
      config: {
        operationId: 'IssuingCa_Crl',
        tag,
        summary: 'The CRL of the issuing CA of the instance with this ID scope (DER). No credential needed.',
        responses: { 200: { description: 'DER CRL (application/pkix-crl)' }, 404: { description: 'No such ID scope', schema: ErrorDetails } },
      },
      handler: async (request, reply) => {
        const idScope = (request.params as { file: string }).file.slice(0, -'.crl'.length);
        const instance = await deps.store.findInstanceByIdScope(idScope);
        if (instance === undefined) throw new ProvisioningError('InstanceNotFound', `No instance has the ID scope '${idScope.slice(0, 64)}'.`);
        const crl = await deps.issuingCa.crl(instance);
        return reply.header('content-type', 'application/pkix-crl').header('cache-control', 'max-age=300').send(crl);
      },
    });
  };
}
