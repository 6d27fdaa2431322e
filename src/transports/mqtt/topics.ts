import { parseRegistrationPath, type RegistrationPath } from '../registration-path.js';

/**
 * The DPS MQTT topic codec (dps-wire.md §5): the CONNECT username, the one subscription filter, the two request
 * topics and the response topic. Every topic the broker reads or writes goes through here.
 *
 * Query parts are split by hand rather than with URLSearchParams: `$rid` is an opaque client string that is echoed
 * verbatim (URLSearchParams would turn `+` into a space and re-encode `$`), and the Node SDK parses the reply with
 * `querystring`, the C SDKs by matching the literal `$rid=` and `retry-after=`.
 */
export const RESPONSE_FILTER = '$dps/registrations/res/#';
const REGISTER_PATH = '$dps/registrations/PUT/iotdps-register/';
const OPERATION_STATUS_PATH = '$dps/registrations/GET/iotdps-get-operationstatus/';
const RESPONSE_PREFIX = '$dps/registrations/res/';

export interface MqttUsername extends RegistrationPath {
  apiVersion: string;
  clientVersion: string | undefined;
}

export type DeviceRequestTopic =
  | { kind: 'register'; rid: string }
  | { kind: 'operationStatus'; rid: string; operationId: string };

/** `{idScope}/registrations/{registrationId}/api-version={v}[&ClientVersion={ua}]`; undefined when malformed. */
export function parseUsername(username: string): MqttUsername | undefined {
  const slashes = nthIndexOf(username, '/', 3);
  if (slashes < 0) return undefined;
  const path = parseRegistrationPath(username.slice(0, slashes));
  if (path === undefined) return undefined;
  const query = parseQuery(username.slice(slashes + 1));
  const apiVersion = query.get('api-version');
  if (apiVersion === undefined || apiVersion === '') return undefined;
  const clientVersion = query.get('ClientVersion');
  return { ...path, apiVersion: decode(apiVersion), clientVersion: clientVersion === undefined ? undefined : decode(clientVersion) };
}

/** The only filter a device may subscribe to (`#` only lets the properties ride in the topic). */
export function isResponseFilter(filter: string): boolean {
  return filter === RESPONSE_FILTER;
}

/** A register or operation-status request; undefined for any other topic. */
export function parseRequestTopic(topic: string): DeviceRequestTopic | undefined {
  const question = topic.indexOf('?');
  if (question < 0) return undefined;
  const path = topic.slice(0, question);
  const query = parseQuery(topic.slice(question + 1));
  const rid = query.get('$rid');
  if (rid === undefined) return undefined;
  if (path === REGISTER_PATH) return { kind: 'register', rid };
  if (path === OPERATION_STATUS_PATH) {
    const operationId = query.get('operationId');
    if (operationId === undefined || operationId === '') return undefined;
    return { kind: 'operationStatus', rid, operationId: decode(operationId) };
  }
  return undefined;
}

/** `$dps/registrations/res/{status}/?$rid={rid}[&retry-after={seconds}]`. */
export function responseTopic(status: number, rid: string, retryAfterSeconds?: number): string {
  const query = [`$rid=${rid}`];
  if (retryAfterSeconds !== undefined) query.push(`retry-after=${retryAfterSeconds}`);
  return `${RESPONSE_PREFIX}${status}/?${query.join('&')}`;
}

/** The reverse of responseTopic, for clients and tests. */
export function parseResponseTopic(topic: string): { status: number; rid: string; retryAfterSeconds: number | undefined } | undefined {
  if (!topic.startsWith(RESPONSE_PREFIX)) return undefined;
  const rest = topic.slice(RESPONSE_PREFIX.length);
  const match = /^(\d{3})\/\?(.*)$/.exec(rest);
  if (match === null) return undefined;
  const query = parseQuery(match[2] ?? '');
  const rid = query.get('$rid');
  if (rid === undefined) return undefined;
  const retryAfter = query.get('retry-after');
  return { status: Number(match[1]), rid, retryAfterSeconds: retryAfter === undefined ? undefined : Number(retryAfter) };
}

/** Raw `k=v&k=v` pairs, values undecoded; the first occurrence of a name wins. */
function parseQuery(text: string): Map<string, string> {
  const pairs = new Map<string, string>();
  for (const part of text.split('&')) {
    if (part === '') continue;
    const eq = part.indexOf('=');
    const name = eq < 0 ? part : part.slice(0, eq);
    if (!pairs.has(name)) pairs.set(name, eq < 0 ? '' : part.slice(eq + 1));
  }
  return pairs;
}

function decode(value: string): string {
  try {
    return decodeURIComponent(value);
  } catch {
    return value;
  }
}

function nthIndexOf(text: string, search: string, n: number): number {
  let index = -1;
  for (let found = 0; found < n; found += 1) {
    index = text.indexOf(search, index + 1);
    if (index < 0) return -1;
  }
  return index;
}
