import type { FastifyInstance, RouteOptions } from 'fastify';
import './route-docs.js';

/**
 * The OpenAPI 3.1 document, built from the routes' own schemas as they are registered, so it cannot drift from the
 * code. Served at /openapi.json. 3.1, not 3.0: the TypeBox schemas are JSON Schema 2020-12 (`const`, `type: "null"`,
 * `patternProperties`), which 3.1 takes as they are and 3.0 does not allow; test/openapi.test.ts validates it.
 */
export class OpenApiCollector {
  readonly #paths: Record<string, Record<string, unknown>> = {};

  attach(app: FastifyInstance): void {
    app.addHook('onRoute', (route) => this.#add(route));
  }

  #add(route: RouteOptions): void {
    const config = route.config;
    if (config?.operationId === undefined) return;
    const path = route.url.replace(/:([A-Za-z]+)/g, '{$1}').replace(/\/$/, '') || '/';
    const methods = Array.isArray(route.method) ? route.method : [route.method];
    const schema = (route.schema ?? {}) as Record<string, { properties?: Record<string, unknown>; required?: string[] } | undefined>;
    const parameters: unknown[] = [];
    for (const [location, key] of [['path', 'params'], ['query', 'querystring'], ['header', 'headers']] as const) {
      const part = schema[key];
      for (const [name, property] of Object.entries(part?.properties ?? {})) {
        parameters.push({
          name,
          in: location,
          required: location === 'path' || (part?.required ?? []).includes(name),
          schema: property,
        });
      }
    }
    const responses: Record<string, unknown> = {};
    for (const [status, response] of Object.entries(config.responses ?? {})) {
      const entry: Record<string, unknown> = { description: response.description };
      if (response.schema !== undefined) entry.content = { 'application/json': { schema: response.schema } };
      if (response.headers !== undefined) {
        entry.headers = Object.fromEntries(Object.entries(response.headers).map(([name, description]) => [name, { description, schema: { type: 'string' } }]));
      }
      responses[status] = entry;
    }
    const operation: Record<string, unknown> = {
      operationId: config.operationId,
      tags: config.tag === undefined ? [] : [config.tag],
      summary: config.summary,
      parameters,
      responses,
    };
    const rights = [...(config.right === undefined ? [] : [config.right]), ...(config.rights ?? [])];
    if (rights.length > 0 || config.sas === true) {
      operation.security = [{ sas: [] }];
      operation.description =
        rights.length === 0 ? 'Needs a valid service SAS token; the rights needed depend on the request (see the summary).' : `Needs the ${rights.join(' and ')} right${rights.length > 1 ? 's' : ''}.`;
    }
    if (schema.body !== undefined) operation.requestBody = { required: true, content: { 'application/json': { schema: schema.body } } };
    const item = (this.#paths[path] ??= {});
    for (const method of methods) if (method !== 'HEAD') item[method.toLowerCase()] = operation;
  }

  document(version: string): Record<string, unknown> {
    return {
      openapi: '3.1.0',
      info: {
        title: 'provisiond',
        version,
        description:
          'A self-hostable Device Provisioning Service, wire-compatible with Azure IoT Hub DPS (service API 2021-10-01). Every call takes ?api-version=; errors are {errorCode, trackingId, message, timestampUtc} with x-ms-error-code.',
      },
      components: {
        securitySchemes: {
          sas: {
            type: 'apiKey',
            in: 'header',
            name: 'Authorization',
            description: 'SharedAccessSignature sr=<host>&sig=<HMAC-SHA256(key, sr + "\\n" + se)>&se=<expiry>&skn=<policy>',
          },
        },
      },
      paths: this.#paths,
    };
  }
}
