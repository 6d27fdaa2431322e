import assert from 'node:assert/strict';
import { ALL_RIGHTS, type Right, type Store } from '../src/store/store.js';
import { call } from './harness.js';

/**
 * What the edge tests (auth, bad input) share: the service API and control-plane routes as the app itself documents
 * them, the whole DPS error envelope of a response, and a snapshot of everything a store holds so a test can prove
 * that a refused request changed nothing.
 */
export const API_VERSION = '2021-10-01';

export interface Response {
  status: number;
  headers: Headers;
  body: unknown;
  text: string;
}

export interface Route {
  method: string;
  /** OpenAPI path template, e.g. `/enrollments/{id}`. */
  template: string;
  operationId: string;
  /** The (first) right the route needs; undefined when the rights depend on the request or any policy may call. */
  right: Right | undefined;
  /** Every right the route needs. */
  rights: Right[];
  hasBody: boolean;
}

/** A request path: the template filled with URL-encoded parameters, and `?api-version=` unless it is null. */
export function apiPath(template: string, params: Record<string, string> = {}, apiVersion: string | null = API_VERSION): string {
  const url = new URL(template.replace(/\{(\w+)\}/g, (_, name: string) => encodeURIComponent(params[name] ?? name)), 'https://localhost');
  if (apiVersion !== null) url.searchParams.set('api-version', apiVersion);
  return `${url.pathname}${url.search}`;
}

/**
 * Every operation of /openapi.json that authenticates with a service SAS token, with the right it needs. The app
 * builds that document from its routes, so a new route shows up here without a test change. The built-in hub registry
 * and the device runtime API authenticate with hub and device credentials and are tested in their own files; any
 * other operation without the SAS scheme fails here, or it would escape every edge test.
 */
export async function discoverRoutes(): Promise<Route[]> {
  const response = await call('GET', apiPath('/openapi.json', {}, null));
  assert.equal(response.status, 200, response.text);
  type Operation = { operationId: string; security?: unknown[]; description?: string; requestBody?: unknown };
  const paths = (response.body as { paths: Record<string, Record<string, Operation>> }).paths;
  const routes: Route[] = [];
  for (const [template, operations] of Object.entries(paths)) {
    for (const [method, operation] of Object.entries(operations)) {
      if ((operation.security ?? []).length === 0) {
        // The CRL is public, like any CRL distribution point (docs/certificate-issuance.md); it names serial numbers only.
        assert.match(operation.operationId, /^(Hub|RuntimeRegistration_|IssuingCa_Crl$)/, `${operation.operationId} declares no authentication`);
        continue;
      }
      const description = operation.description ?? '';
      const named = /Needs the ([\w ]+?) rights?\./.exec(description)?.[1]?.split(' and ');
      // Routes whose rights depend on the request (e.g. export vs erase) say so instead of naming one.
      const dependsOnRequest = /rights needed depend on the request/.test(description);
      assert.ok(
        dependsOnRequest || (named !== undefined && named.every((right) => (ALL_RIGHTS as readonly string[]).includes(right))),
        `${operation.operationId} names its right`,
      );
      const rights = (named ?? []) as Right[];
      routes.push({ method: method.toUpperCase(), template, operationId: operation.operationId, right: rights[0], rights, hasBody: operation.requestBody !== undefined });
    }
  }
  assert.ok(routes.length > 0, 'the OpenAPI document lists authenticated routes');
  return routes;
}

const GUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
/** DPS timestamps: ISO-8601 UTC with up to 7 fractional digits (dps-wire.md §1). */
const TIMESTAMP = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,7})?Z$/;

/**
 * The response is `status` with exactly `{errorCode, trackingId, message, timestampUtc}` (dps-wire.md §1.1), the
 * errorCode's first three digits are the status, `x-ms-error-code` is set and the body is JSON. Returns the body.
 */
export function assertDpsError(
  response: Response,
  status: number,
  expected: { errorCode?: number; errorName?: string; message?: RegExp } = {},
  context = '',
): { errorCode: number; trackingId: string; message: string; timestampUtc: string } {
  const where = `${context} → ${response.status} ${response.text.slice(0, 300)}`;
  assert.equal(response.status, status, `status ${where}`);
  assert.match(response.headers.get('content-type') ?? '', /^application\/json\b/, `content-type ${where}`);
  const body = response.body as Record<string, unknown>;
  assert.equal(typeof body, 'object', `body ${where}`);
  assert.deepEqual(Object.keys(body).sort(), ['errorCode', 'message', 'timestampUtc', 'trackingId'], `body keys ${where}`);
  assert.equal(typeof body.errorCode, 'number', `errorCode ${where}`);
  const errorCode = body.errorCode as number;
  assert.ok(Number.isInteger(errorCode) && errorCode >= 100000 && errorCode <= 999999, `six-digit errorCode ${where}`);
  assert.equal(Math.floor(errorCode / 1000), status, `errorCode matches status ${where}`);
  if (expected.errorCode !== undefined) assert.equal(errorCode, expected.errorCode, `errorCode ${where}`);
  assert.match(String(body.trackingId), GUID, `trackingId ${where}`);
  assert.match(String(body.timestampUtc), TIMESTAMP, `timestampUtc ${where}`);
  assert.equal(typeof body.message, 'string', `message ${where}`);
  assert.ok((body.message as string).length > 0, `message ${where}`);
  if (expected.message !== undefined) assert.match(body.message as string, expected.message, `message ${where}`);
  const errorHeader = response.headers.get('x-ms-error-code');
  assert.ok(errorHeader !== null && errorHeader.length > 0, `x-ms-error-code ${where}`);
  if (expected.errorName !== undefined) assert.equal(errorHeader, expected.errorName, `x-ms-error-code ${where}`);
  return body as { errorCode: number; trackingId: string; message: string; timestampUtc: string };
}

/** Everything the store holds, per instance, in a stable order; deepEqual of two snapshots means nothing changed. */
export async function snapshotStore(store: Store): Promise<unknown> {
  const everything = { filters: [], limit: 1_000_000 };
  const instances = (await store.listInstances()).sort((a, b) => a.id.localeCompare(b.id));
  return Promise.all(
    instances.map(async (instance) => ({
      instance,
      policies: (await store.listAccessPolicies(instance.id)).sort((a, b) => a.keyName.localeCompare(b.keyName)),
      hubs: (await store.listLinkedHubs(instance.id)).sort((a, b) => a.name.localeCompare(b.name)),
      enrollments: (await store.queryEnrollments(instance.id, everything)).items,
      groups: (await store.queryEnrollmentGroups(instance.id, everything)).items,
      registrations: (await store.queryRegistrations(instance.id, everything)).items,
      caCertificates: await store.listCaCertificates(instance.id),
      credentialPolicies: await store.listCredentialPolicies(instance.id),
      issuingCa: (await store.getIssuingCa(instance.id)) ?? null,
    })),
  );
}
