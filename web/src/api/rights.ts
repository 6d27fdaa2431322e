import { ApiClient, ApiError, RIGHTS, type Right } from './client';
import type { AccessPolicy, Instance } from './types';

/**
 * What the signed-in policy may do, found out by asking the server, never assumed: with ServiceConfig the policy list
 * names the rights exactly; without it, each right is probed by a call that changes nothing. The server answers a
 * valid caller without a right with "…needs the <Right> right.", and an invalid one with a bare "Unauthorized".
 */
export interface Capabilities {
  rights: ReadonlySet<Right>;
  instance: Instance | undefined;
}

/** An ID no real entry can be confused with; writes to it carry an If-Match that cannot match, so nothing changes. */
const PROBE_ID = 'portal-rights-probe';
const NEVER_MATCHES = '"portal-rights-probe-never-matches"';

export class SignInError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SignInError';
  }
}

export async function discoverCapabilities(client: ApiClient): Promise<Capabilities> {
  const rights = new Set<Right>();
  const instance = await outcome(client.get<Instance>(['instance']));
  if (instance.ok) {
    rights.add('ServiceConfig');
    const policies = await client.get<AccessPolicy[]>(['accessPolicies']);
    const mine = policies.find((policy) => policy.keyName.toLowerCase() === client.credentials.keyName.toLowerCase());
    for (const right of parseRights(mine?.rights ?? '')) rights.add(right);
    return { rights, instance: instance.value };
  }
  const probes: Array<[Right, () => Promise<unknown>]> = [
    ['EnrollmentRead', () => client.page(['enrollments', 'query'], { query: 'SELECT *' }, { pageSize: 1 })],
    ['RegistrationStatusRead', () => client.get(['registrations', PROBE_ID])],
    ['EnrollmentWrite', () => client.delete(['enrollments', PROBE_ID], { headers: { 'if-match': NEVER_MATCHES } })],
    ['RegistrationStatusWrite', () => client.delete(['registrations', PROBE_ID], { headers: { 'if-match': NEVER_MATCHES } })],
  ];
  const results = await Promise.all(probes.map(async ([right, probe]) => [right, await outcome(probe())] as const));
  const errors = [instance, ...results.map(([, result]) => result)].flatMap((result) => (result.ok ? [] : [result.error]));
  if (errors.length === results.length + 1 && errors.every((error) => error.kind === 'unauthenticated')) {
    throw new SignInError('The server did not accept these credentials: check the host name, the policy name and the key.');
  }
  const network = errors.find((error) => error.kind === 'network');
  if (network !== undefined) throw new SignInError(network.message);
  for (const [right, result] of results) {
    // Only "lacks the right" means no; a 404 or 412 means the route let the caller in.
    if (result.ok || result.error.kind !== 'missingRight') rights.add(right);
  }
  return { rights, instance: undefined };
}

export function parseRights(text: string): Right[] {
  const names = text.split(/[,\s]+/).map((name) => name.toLowerCase());
  return RIGHTS.filter((right) => names.includes(right.toLowerCase()));
}

type Outcome<T> = { ok: true; value: T } | { ok: false; error: ApiError };

async function outcome<T>(promise: Promise<T>): Promise<Outcome<T>> {
  try {
    return { ok: true, value: await promise };
  } catch (error) {
    if (error instanceof ApiError) return { ok: false, error };
    throw error;
  }
}
