import { ApiClient, ApiError, RIGHTS, type Right } from './client';
import type { Instance } from './types';

/**
 * What the signed-in policy may do, as the server says: GET /caller names the calling policy's rights (any valid
 * policy may ask). The instance settings are read too when the policy holds ServiceConfig.
 */
export interface Capabilities {
  rights: ReadonlySet<Right>;
  instance: Instance | undefined;
}

export class SignInError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SignInError';
  }
}

interface Caller {
  keyName: string;
  rights: string;
}

export async function discoverCapabilities(client: ApiClient): Promise<Capabilities> {
  const caller = await outcome(client.get<Caller>(['caller']));
  if (!caller.ok) {
    if (caller.error.kind === 'network') throw new SignInError(caller.error.message);
    throw new SignInError('The server did not accept these credentials: check the host name, the policy name and the key.');
  }
  const rights = new Set<Right>(parseRights(caller.value.rights));
  const instance = rights.has('ServiceConfig') ? await client.get<Instance>(['instance']) : undefined;
  return { rights, instance };
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
