import { Type, type Static, type TSchema } from '@sinclair/typebox';
import type { JsonMap } from '../domain/enrollment.js';

/**
 * The IoT Hub registry REST API subset provisiond speaks, both as a server (the built-in hubs) and as a client (every
 * linked hub): api-versions, the wire shapes, and IoT Hub's own error catalog. IoT Hub errors are not DPS errors: the
 * body is `{"Message":"ErrorCode:<Code>;<text>","ExceptionMessage":"Tracking ID:…"}` with an `iothub-errorcode`
 * header, and the azure-iothub SDK only recognises DeviceNotFound in that form (sdk-clients.md §3, §6.6).
 */

/** What the azure-iothub SDK sends (its version.js) and what the client sends to every hub. */
export const HUB_API_VERSION = '2021-04-12';
/** Published IoT Hub data-plane versions the SDKs in the field send; the subset used here is the same in each. */
export const HUB_API_VERSIONS: readonly string[] = [
  '2016-11-14',
  '2017-06-30',
  '2018-06-30',
  '2019-03-30',
  '2019-10-01',
  '2020-03-13',
  '2020-05-31-preview',
  '2020-09-30',
  '2021-04-12',
];

/** IoT Hub error codes with their HTTP status and default text. The text must not contain `;` (the SDK splits on it). */
export const hubErrorCatalog = Object.freeze({
  ArgumentInvalid: { status: 400, message: 'The request is invalid.' },
  InvalidProtocolVersion: { status: 400, message: 'The api-version is missing or not supported.' },
  IotHubUnauthorizedAccess: { status: 401, message: 'Unauthorized' },
  DeviceNotFound: { status: 404, message: 'The device is not registered.' },
  IotHubNotFound: { status: 404, message: 'The IoT hub was not found.' },
  RequestNotFound: { status: 404, message: 'The resource is not supported by this hub.' },
  DeviceAlreadyExists: { status: 409, message: 'A device with this ID already exists.' },
  /** provisiond's own: a customer-data erase of this device is running (docs/customer-data.md "The erase fence"). */
  DeviceBeingErased: { status: 409, message: 'A data request is erasing this device. It cannot be written until the erase is final.' },
  PreconditionFailed: { status: 412, message: 'The etag does not match the current resource.' },
  MessageTooLarge: { status: 413, message: 'The request body is too large.' },
  ServerError: { status: 500, message: 'An internal error occurred.' },
} as const);

export type HubErrorCode = keyof typeof hubErrorCatalog;

export class HubApiError extends Error {
  readonly code: HubErrorCode;
  readonly status: number;
  constructor(code: HubErrorCode, message?: string) {
    super((message ?? hubErrorCatalog[code].message).replaceAll(';', ','));
    this.name = 'HubApiError';
    this.code = code;
    this.status = hubErrorCatalog[code].status;
  }
}

export interface HubErrorBody {
  Message: string;
  ExceptionMessage: string;
}

/** IoT Hub writes the tracking timestamp as `MM/dd/yyyy HH:mm:ss` (UTC). */
export function hubErrorBody(error: HubApiError, trackingId: string, at: Date): HubErrorBody {
  const two = (n: number): string => String(n).padStart(2, '0');
  const stamp = `${two(at.getUTCMonth() + 1)}/${two(at.getUTCDate())}/${at.getUTCFullYear()} ${two(at.getUTCHours())}:${two(at.getUTCMinutes())}:${two(at.getUTCSeconds())}`;
  return { Message: `ErrorCode:${error.code};${error.message}`, ExceptionMessage: `Tracking ID:${trackingId}-TimeStamp:${stamp}` };
}

/** Reads an IoT Hub error body; undefined when the text is not one. */
export function parseHubErrorBody(text: string): { code: string; message: string } | undefined {
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (typeof body !== 'object' || body === null) return undefined;
  const message = (body as { Message?: unknown }).Message;
  if (typeof message !== 'string') return undefined;
  const match = /^ErrorCode:([^;]*);(.*)$/s.exec(message);
  return match === null ? undefined : { code: match[1] ?? '', message: match[2] ?? '' };
}

// ---- wire shapes

const NullableString = Type.Union([Type.String(), Type.Null()]);
/** A JSON object whose members the service checks itself (twin collections: key rules and depth). */
const JsonObject = Type.Unsafe<JsonMap>({ type: 'object' });

export const AuthenticationType = Type.Union([
  Type.Literal('sas'),
  Type.Literal('selfSigned'),
  Type.Literal('certificateAuthority'),
  Type.Literal('none'),
]);

/**
 * A device identity as clients send it. Read-only members (etag, generationId, connectionState, counters, times) are
 * accepted and ignored: the SDKs send back whatever they last read.
 */
export const DeviceInput = Type.Object({
  deviceId: Type.String({ description: 'Must equal the ID in the path.' }),
  status: Type.Optional(Type.Union([Type.Literal('enabled'), Type.Literal('disabled')])),
  statusReason: Type.Optional(NullableString),
  authentication: Type.Optional(
    Type.Union([
      Type.Null(),
      Type.Object({
        type: Type.Optional(AuthenticationType),
        symmetricKey: Type.Optional(
          Type.Union([Type.Null(), Type.Object({ primaryKey: Type.Optional(NullableString), secondaryKey: Type.Optional(NullableString) })]),
        ),
        x509Thumbprint: Type.Optional(
          Type.Union([
            Type.Null(),
            Type.Object({ primaryThumbprint: Type.Optional(NullableString), secondaryThumbprint: Type.Optional(NullableString) }),
          ]),
        ),
      }),
    ]),
  ),
  capabilities: Type.Optional(Type.Union([Type.Null(), Type.Object({ iotEdge: Type.Optional(Type.Boolean()) })])),
});
export type DeviceInput = Static<typeof DeviceInput>;

/** A twin patch (PATCH) or a whole twin (PUT): tags and desired properties; `null` members remove keys in a patch. */
export const TwinInput = Type.Object({
  tags: Type.Optional(Type.Union([Type.Null(), JsonObject])),
  properties: Type.Optional(
    Type.Union([
      Type.Null(),
      Type.Object({
        desired: Type.Optional(Type.Union([Type.Null(), JsonObject])),
        reported: Type.Optional(Type.Unknown()),
      }),
    ]),
  ),
});
export type TwinInput = Static<typeof TwinInput>;

export const DeviceQueryInput = Type.Object({
  query: Type.String({ description: "SELECT * FROM devices [WHERE deviceId = '<id>']" }),
});

const NullableThumbprints = Type.Object({ primaryThumbprint: NullableString, secondaryThumbprint: NullableString });

/** A device identity as IoT Hub returns it (api-version 2021-04-12). */
export const WireDevice = Type.Object({
  deviceId: Type.String(),
  generationId: Type.String(),
  etag: Type.String(),
  connectionState: Type.String(),
  status: Type.Union([Type.Literal('enabled'), Type.Literal('disabled')]),
  statusReason: NullableString,
  connectionStateUpdatedTime: Type.String(),
  statusUpdatedTime: Type.String(),
  lastActivityTime: Type.String(),
  cloudToDeviceMessageCount: Type.Integer(),
  authentication: Type.Object({
    symmetricKey: Type.Object({ primaryKey: NullableString, secondaryKey: NullableString }),
    x509Thumbprint: NullableThumbprints,
    type: AuthenticationType,
  }),
  capabilities: Type.Object({ iotEdge: Type.Boolean() }),
});
export type WireDevice = Static<typeof WireDevice>;

const WireTwinProperties = Type.Object({ $metadata: JsonObject, $version: Type.Integer() }, { additionalProperties: true });

/** A device twin as IoT Hub returns it (GET/PATCH/PUT /twins/{id}, and the items of the device query). */
export const WireTwin = Type.Object({
  deviceId: Type.String(),
  etag: Type.String(),
  deviceEtag: Type.String(),
  status: Type.Union([Type.Literal('enabled'), Type.Literal('disabled')]),
  statusReason: Type.Optional(Type.String()),
  statusUpdateTime: Type.String(),
  connectionState: Type.String(),
  lastActivityTime: Type.String(),
  cloudToDeviceMessageCount: Type.Integer(),
  authenticationType: AuthenticationType,
  x509Thumbprint: NullableThumbprints,
  modelId: Type.String(),
  version: Type.Integer(),
  tags: JsonObject,
  properties: Type.Object({ desired: WireTwinProperties, reported: WireTwinProperties }),
  capabilities: Type.Object({ iotEdge: Type.Boolean() }),
});
export type WireTwin = Static<typeof WireTwin>;

export const RegistryStatistics = Type.Object({
  totalDeviceCount: Type.Integer(),
  enabledDeviceCount: Type.Integer(),
  disabledDeviceCount: Type.Integer(),
});
export type RegistryStatistics = Static<typeof RegistryStatistics>;

export const HubErrorBodySchema: TSchema = Type.Object({ Message: Type.String(), ExceptionMessage: Type.String() });
