import { Type } from '@sinclair/typebox';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { ErrorDetails, X509CertificateInfo } from '../../../domain/wire.js';
import type { CaCertificateInput, CaCertificateService } from '../../../services/ca-certificates.js';
import type { ServiceAuth } from '../../../services/service-auth.js';
import { addServiceAuthHooks, callerOf } from './plugin.js';
import '../route-docs.js';

/**
 * CA certificates of the instance and their proof of possession (what Azure keeps under the DPS resource's
 * `certificates` in ARM): upload, generate a verification code, verify with a certificate signed by the CA whose CN
 * is the code. Enrollment groups name verified ones in `attestation.x509.caReferences`. Every route needs
 * ServiceConfig.
 */
const NameParams = Type.Object({ name: Type.String({ description: 'The name the certificate is known by (1-64 letters, digits, - . _).' }) });
const ApiVersionQuery = Type.Object({ 'api-version': Type.String() });
const IfMatchHeaders = Type.Object({ 'if-match': Type.Optional(Type.String({ description: 'Etag the certificate must have.' })) });
const CertificateText = Type.String({ minLength: 1, maxLength: 65536, description: 'PEM, base64 of PEM, or base64 of DER; never a private key.' });
const CaCertificate = Type.Object({
  name: Type.String(),
  certificate: Type.String({ description: 'PEM.' }),
  info: X509CertificateInfo,
  isVerified: Type.Boolean({ description: 'True once proof of possession succeeded; only then can caReferences use it.' }),
  etag: Type.String(),
  createdDateTimeUtc: Type.String(),
  lastUpdatedDateTimeUtc: Type.String(),
});
const CaCertificateUpload = Type.Object(
  {
    certificate: CertificateText,
    isVerified: Type.Optional(Type.Boolean({ description: 'Must be absent or false: a certificate is verified only by proof of possession.' })),
  },
  { additionalProperties: true },
);
const VerificationCode = Type.Composite([
  CaCertificate,
  Type.Object({ verificationCode: Type.String({ description: 'The CN the verification certificate must carry.' }) }),
]);
const VerificationInput = Type.Object({ certificate: CertificateText }, { additionalProperties: true });
const errors = {
  400: { description: 'Invalid request', schema: ErrorDetails },
  401: { description: 'Unauthorized', schema: ErrorDetails },
  404: { description: 'Not found', schema: ErrorDetails },
  412: { description: 'Etag mismatch', schema: ErrorDetails },
};
const tag = 'CA certificates';
const name = (request: FastifyRequest): string => (request.params as { name: string }).name;
const ifMatch = (request: FastifyRequest): string | undefined => {
  const value = request.headers['if-match'];
  return value === undefined || value === '' ? undefined : String(value);
};

export function caCertificatesPlugin(deps: { auth: ServiceAuth; certificates: CaCertificateService }) {
  const { certificates } = deps;
  return async function register(app: FastifyInstance): Promise<void> {
    addServiceAuthHooks(app, deps.auth);
    const common = { right: 'ServiceConfig' as const, tag };

    app.get('/certificates', {
      schema: { querystring: ApiVersionQuery },
      config: { ...common, operationId: 'Certificate_List', summary: 'The CA certificates of the instance, verified or not.', responses: { 200: { description: 'CA certificates', schema: Type.Array(CaCertificate) }, ...errors } },
      handler: async (request) => certificates.list(callerOf(request).instance),
    });
    app.get('/certificates/:name', {
      schema: { params: NameParams, querystring: ApiVersionQuery },
      config: { ...common, operationId: 'Certificate_Get', summary: 'One CA certificate.', responses: { 200: { description: 'CA certificate', schema: CaCertificate }, ...errors } },
      handler: async (request) => certificates.get(callerOf(request).instance, name(request)),
    });
    app.put('/certificates/:name', {
      schema: { params: NameParams, querystring: ApiVersionQuery, headers: IfMatchHeaders, body: CaCertificateUpload },
      config: {
        ...common,
        operationId: 'Certificate_CreateOrUpdate',
        summary: 'Upload a CA certificate (basicConstraints CA:true). It starts unverified; replacing it with another certificate makes it unverified again.',
        responses: { 200: { description: 'CA certificate', schema: CaCertificate }, 409: { description: 'The certificate is uploaded under another name', schema: ErrorDetails }, ...errors },
      },
      handler: async (request) => certificates.upload(callerOf(request).instance, name(request), request.body as CaCertificateInput, ifMatch(request)),
    });
    app.delete('/certificates/:name', {
      schema: { params: NameParams, querystring: ApiVersionQuery, headers: IfMatchHeaders },
      config: { ...common, operationId: 'Certificate_Delete', summary: 'Delete a CA certificate; groups whose caReferences name it stop provisioning devices.', responses: { 204: { description: 'Deleted' }, ...errors } },
      handler: async (request, reply) => {
        await certificates.delete(callerOf(request).instance, name(request), ifMatch(request));
        return reply.code(204).send();
      },
    });
    app.post('/certificates/:name/generateVerificationCode', {
      schema: { params: NameParams, querystring: ApiVersionQuery, headers: IfMatchHeaders },
      config: {
        ...common,
        operationId: 'Certificate_GenerateVerificationCode',
        summary: 'A new verification code: the CN of the certificate the CA must sign to prove possession of its key. It replaces any earlier code.',
        responses: { 200: { description: 'The certificate with its verificationCode', schema: VerificationCode }, ...errors },
      },
      handler: async (request) => certificates.generateVerificationCode(callerOf(request).instance, name(request), ifMatch(request)),
    });
    app.post('/certificates/:name/verify', {
      schema: { params: NameParams, querystring: ApiVersionQuery, headers: IfMatchHeaders, body: VerificationInput },
      config: {
        ...common,
        operationId: 'Certificate_Verify',
        summary: 'Prove possession of the CA key with a certificate it signed whose CN is the verification code; the CA becomes verified.',
        responses: { 200: { description: 'CA certificate', schema: CaCertificate }, ...errors },
      },
      handler: async (request) =>
        certificates.verify(callerOf(request).instance, name(request), request.body as { certificate: string }, ifMatch(request)),
    });
  };
}
