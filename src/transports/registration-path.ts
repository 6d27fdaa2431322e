/**
 * `{idScope}/registrations/{registrationId}`: the name a device gives itself on every transport — the SAS `sr`, the
 * MQTT username prefix (dps-wire.md §5), the AMQP SASL PLAIN username and link address (§6). Neither part may
 * contain `/`; the registration ID's own rules are checked by the registration service.
 */
export interface RegistrationPath {
  idScope: string;
  registrationId: string;
}

export function parseRegistrationPath(text: string): RegistrationPath | undefined {
  const parts = text.split('/');
  if (parts.length !== 3 || parts[1]?.toLowerCase() !== 'registrations') return undefined;
  const [idScope, , registrationId] = parts;
  if (idScope === undefined || registrationId === undefined || idScope === '' || registrationId === '') return undefined;
  return { idScope, registrationId };
}

export function formatRegistrationPath(path: RegistrationPath): string {
  return [path.idScope, 'registrations', path.registrationId].join('/');
}

export type LinkAddress = { ok: true; path: RegistrationPath } | { ok: false; reason: string };

/**
 * An AMQP link address (dps-wire.md §6): the bare `{idScope}/registrations/{registrationId}` the Node and C# SDKs
 * attach at, or the URI form `amqps://{host}/{idScope}/registrations/{registrationId}` of Microsoft's C device SDK,
 * whose host must be one of `hostNames` (the names this server answers to).
 */
export function parseLinkAddress(address: string, hostNames: readonly string[]): LinkAddress {
  let path = address;
  if (/^amqps?:\/\//i.test(address)) {
    let url: URL;
    try {
      url = new URL(address);
    } catch {
      return { ok: false, reason: 'the address is not a valid URI' };
    }
    const host = url.hostname.toLowerCase().replace(/^\[(.*)\]$/, '$1');
    if (!hostNames.includes(host)) return { ok: false, reason: `the host '${host}' is not one of this server's host names (${hostNames.join(', ')})` };
    path = decodeURIComponent(url.pathname.replace(/^\//, ''));
  }
  const parsed = parseRegistrationPath(path);
  if (parsed === undefined) return { ok: false, reason: 'the address is not {idScope}/registrations/{registrationId} (or its amqps:// URI form)' };
  return { ok: true, path: parsed };
}
