import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { errorBody, ProvisioningError } from '../../domain/errors.js';
import { dpsTimestamp } from '../../domain/time.js';
import { describeValidationError } from '../../domain/validation.js';

/**
 * The HTTP rendering of every error: the DPS envelope, `x-ms-error-code`, `application/json` (sdk-clients.md §6.4).
 * Framework errors (bad JSON, too large, wrong media type, schema) become catalog errors here; anything unknown is a
 * 500 with a tracking ID and a log line, never a stack trace.
 */
export function toProvisioningError(error: FastifyError | Error): ProvisioningError {
  if (error instanceof ProvisioningError) return error;
  const fastifyError = error as FastifyError;
  if (fastifyError.validation !== undefined) {
    const root = fastifyError.validationContext ?? 'body';
    if (root === 'querystring' && fastifyError.validation[0]?.params?.missingProperty === 'api-version') {
      return new ProvisioningError('MissingApiVersion');
    }
    return new ProvisioningError('SchemaViolation', describeValidationError(fastifyError.validation as never, root));
  }
  switch (fastifyError.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new ProvisioningError('PayloadTooLarge');
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return new ProvisioningError('UnsupportedMediaType', 'Send the body as application/json.');
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return new ProvisioningError('InvalidJson', 'The request body is empty but declared as JSON.');
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
      return new ProvisioningError('InvalidJson');
    case 'FST_ERR_BAD_URL':
      return new ProvisioningError('BadRequest', 'The URL is not valid: a path segment has a broken percent-encoding.');
    case 'FST_ERR_MAX_PARAM_LENGTH':
      return new ProvisioningError('BadRequest', 'A path parameter is too long.');
    default:
      break;
  }
  if (error instanceof SyntaxError || fastifyError.statusCode === 400) {
    return new ProvisioningError('InvalidJson', `The request body is not valid JSON: ${error.message}`);
  }
  if (fastifyError.statusCode !== undefined && fastifyError.statusCode >= 400 && fastifyError.statusCode < 500) {
    return new ProvisioningError('BadRequest', error.message);
  }
  return new ProvisioningError('InternalError');
}

declare module 'fastify' {
  interface FastifyRequest {
    /** The error this request was answered with (the system log records its code). */
    provisioningError?: ProvisioningError;
  }
}

export function sendError(request: FastifyRequest, reply: FastifyReply, provisioningError: ProvisioningError): FastifyReply {
  request.provisioningError = provisioningError;
  const body = errorBody(provisioningError, request.id, dpsTimestamp(new Date()));
  // Throttling says when to come back (dps-wire.md §10).
  const retryAfter = provisioningError.info?.['Retry-After'];
  if (retryAfter !== undefined) reply.header('retry-after', retryAfter);
  return reply
    .code(provisioningError.httpStatus)
    .header('x-ms-error-code', provisioningError.errorName)
    .header('content-type', 'application/json; charset=utf-8')
    .send(body);
}

export function handleError(error: FastifyError | Error, request: FastifyRequest, reply: FastifyReply): FastifyReply {
  const provisioningError = toProvisioningError(error);
  if (provisioningError.httpStatus >= 500) {
    request.log.error({ err: error, trackingId: request.id }, 'request failed');
  }
  return sendError(request, reply, provisioningError);
}
