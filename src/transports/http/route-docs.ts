import type { TSchema } from '@sinclair/typebox';
import type { Right } from '../../store/store.js';

/** What a route declares beyond Fastify's schema: the right it needs and how the OpenAPI document describes it. */
declare module 'fastify' {
  interface FastifyContextConfig {
    right?: Right;
    /** Every one of these rights is needed (routes that need more than one). */
    rights?: Right[];
    /** Authenticated with a service SAS token, with rights checked by the handler (they depend on the request). */
    sas?: boolean;
    /** What the route's `:id` names, for the system log. */
    auditSubject?: 'registrationId' | 'enrollmentGroupId';
    operationId?: string;
    summary?: string;
    tag?: string;
    /** Response schemas by status, for the OpenAPI document (responses are documents and are not re-serialized). */
    responses?: Record<number, { description: string; schema?: TSchema; headers?: Record<string, string> }>;
  }
}
export {};
