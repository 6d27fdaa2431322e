import { ProvisioningError } from '../domain/errors.js';
import { isExpired, parseSasToken, resourceCoversPath, signedByOneOf } from '../domain/sas.js';
import type { AccessPolicyRecord, InstanceRecord, Right } from '../store/store.js';
import type { ServiceDeps } from './deps.js';

/**
 * Authenticates a service API caller (dps-wire.md §2.1): the token's `sr` names the instance by its service host name,
 * the Host header must not name a different instance, `skn` names one of that instance's policies, one of the
 * policy's keys signed it, it has not expired, and the policy grants the right the route needs. Every failure is the
 * same 401 so a caller learns nothing about which part was wrong.
 */
export interface ServiceCaller {
  instance: InstanceRecord;
  policy: AccessPolicyRecord;
}

export class ServiceAuth {
  readonly #deps: ServiceDeps;

  constructor(deps: ServiceDeps) {
    this.#deps = deps;
  }

  async authenticate(authorization: string | undefined, hostHeader: string | undefined, requestPath: string): Promise<ServiceCaller> {
    const token = parseSasToken(authorization);
    if (token === undefined || token.keyName === undefined) throw unauthorized();
    if (isExpired(token, this.#deps.now().getTime())) throw unauthorized();
    const [hostPart] = token.resource.split('/');
    const resourceHost = stripPort(hostPart) ?? '';
    if (!resourceCoversPath(token.resource, requestPath)) throw unauthorized();
    const instance = await this.#deps.store.findInstanceByHostName(resourceHost);
    if (instance === undefined) throw unauthorized();
    const host = stripPort(hostHeader);
    if (host !== undefined && host.toLowerCase() !== resourceHost.toLowerCase()) {
      const hostInstance = await this.#deps.store.findInstanceByHostName(host);
      if (hostInstance !== undefined && hostInstance.id !== instance.id) throw unauthorized();
    }
    const policy = await this.#deps.store.getAccessPolicy(instance.id, token.keyName);
    if (policy === undefined || !signedByOneOf(token, [policy.primaryKey, policy.secondaryKey])) throw unauthorized();
    return { instance, policy };
  }

  static requireRight(caller: ServiceCaller, right: Right): void {
    if (!caller.policy.rights.includes(right)) {
      throw new ProvisioningError('Unauthorized', `Unauthorized: this operation needs the ${right} right.`);
    }
  }
}

function unauthorized(): ProvisioningError {
  return new ProvisioningError('Unauthorized');
}

export function stripPort(host: string | undefined): string | undefined {
  if (host === undefined) return undefined;
  if (host.startsWith('[')) return host.slice(1, host.indexOf(']'));
  const colon = host.lastIndexOf(':');
  return colon > 0 && host.indexOf(':') === colon ? host.slice(0, colon) : host;
}
