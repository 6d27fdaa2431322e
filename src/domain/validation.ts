import type { TSchema } from '@sinclair/typebox';
import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';
import addFormatsModule from 'ajv-formats';
import { ProvisioningError } from './errors.js';

/**
 * One validator for every wire schema, used by the HTTP edge (Fastify's validator compiler) and by bulk items alike,
 * so a bad field reads the same wherever it arrives. No type coercion: a string where a boolean belongs is an error.
 */
const ajv = new Ajv({ coerceTypes: false, useDefaults: false, removeAdditional: false, allErrors: false, strict: false });
const addFormats = addFormatsModule as unknown as (instance: Ajv) => Ajv;
addFormats(ajv);

export function compileSchema(schema: TSchema | Record<string, unknown>): ValidateFunction {
  return ajv.compile(schema);
}

/** A sentence for the first validation error: where, and what was expected. */
export function describeValidationError(errors: readonly ErrorObject[] | null | undefined, root: string): string {
  const error = errors?.[0];
  if (error === undefined) return `${root} does not match the schema.`;
  const path = error.instancePath === '' ? root : `${root}${error.instancePath.replaceAll('/', '.')}`;
  switch (error.keyword) {
    case 'required':
      return `${path}.${String(error.params.missingProperty)} is required.`;
    case 'enum':
      return `${path} must be one of: ${(error.params.allowedValues as unknown[]).map(String).join(', ')}.`;
    case 'type':
      return `${path} must be of type ${String(error.params.type)}.`;
    default:
      return `${path} ${error.message ?? 'is invalid'}.`;
  }
}

export function assertValid<T>(validate: ValidateFunction, data: unknown, root: string): T {
  if (!validate(data)) throw new ProvisioningError('SchemaViolation', describeValidationError(validate.errors, root));
  return data as T;
}

/**
 * True when `value` nests objects or arrays more than `maxDepth` levels deep. Iterative, because the point is to refuse
 * input deep enough to overflow the stack of every recursive walker after it (JSON.stringify in the store, the
 * serializer). IoT Hub allows twins 10 levels deep, so a generous limit refuses nothing a hub would take.
 */
export function nestedDeeperThan(value: unknown, maxDepth: number): boolean {
  const pending: [unknown, number][] = [[value, 0]];
  for (let item = pending.pop(); item !== undefined; item = pending.pop()) {
    const [current, depth] = item;
    if (current === null || typeof current !== 'object') continue;
    if (depth >= maxDepth) return true;
    for (const child of Object.values(current)) pending.push([child, depth + 1]);
  }
  return false;
}
