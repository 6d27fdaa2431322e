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
