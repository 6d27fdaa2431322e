import { Type, type Static, type TSchema } from '@sinclair/typebox';
import type { JsonMap } from '../domain/enrollment.js';
import { compileSchema } from '../domain/validation.js';
import type { HubAuthentication, HubDevice, HubDeviceRecord, HubTwin } from './hub-client.js';
import type { DeviceInput } from './hub-wire.js';

/**
 * What both hub clients share: a hub connection string read, and the registry's device and twin shapes in both
 * directions. RegistryRestClient reads them off the wire; BuiltInHubClient gets the same shapes from the built-in hub
 * service directly. Its own module so that neither client imports the other for them.
 */

// ---- connection strings

export function parseConnectionString(connectionString: string, fallbackHost: string): { hostName: string; keyName: string; key: string } | undefined {
  const fields = new Map<string, string>();
  for (const part of connectionString.split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0) fields.set(part.slice(0, eq).trim().toLowerCase(), part.slice(eq + 1).trim());
  }
  const keyName = fields.get('sharedaccesskeyname');
  const key = fields.get('sharedaccesskey');
  if (keyName === undefined || key === undefined || keyName === '' || key === '') return undefined;
  return { hostName: fields.get('hostname') || fallbackHost, keyName, key };
}

// ---- wire shapes read back (lenient: only what the interface needs; hubs add members over time)

export interface Checked<T extends TSchema> {
  schema: T;
  validate: (value: unknown) => boolean;
}

function checked<T extends TSchema>(schema: T): Checked<T> {
  const validator = compileSchema(schema);
  return { schema, validate: (value) => validator(value) };
}

const NullableString = Type.Union([Type.String(), Type.Null()]);
const JsonObject = Type.Unsafe<JsonMap>({ type: 'object' });

export const DeviceResponse = checked(
  Type.Object({
    deviceId: Type.String(),
    generationId: Type.String(),
    etag: Type.String(),
    status: Type.Union([Type.Literal('enabled'), Type.Literal('disabled')]),
    authentication: Type.Optional(
      Type.Object({
        type: Type.Optional(Type.String()),
        symmetricKey: Type.Optional(Type.Union([Type.Null(), Type.Object({ primaryKey: Type.Optional(NullableString), secondaryKey: Type.Optional(NullableString) })])),
        x509Thumbprint: Type.Optional(
          Type.Union([Type.Null(), Type.Object({ primaryThumbprint: Type.Optional(NullableString), secondaryThumbprint: Type.Optional(NullableString) })]),
        ),
      }),
    ),
    capabilities: Type.Optional(Type.Union([Type.Null(), Type.Object({ iotEdge: Type.Optional(Type.Boolean()) })])),
  }),
);

export const TwinResponse = checked(
  Type.Object({
    etag: Type.String(),
    tags: Type.Optional(JsonObject),
    properties: Type.Optional(Type.Object({ desired: Type.Optional(JsonObject), reported: Type.Optional(JsonObject) })),
  }),
);

export function deviceBody(device: HubDevice): DeviceInput {
  const auth = device.authentication;
  const authentication: DeviceInput['authentication'] =
    auth.type === 'sas'
      ? { type: 'sas', symmetricKey: { ...auth.symmetricKey }, x509Thumbprint: { primaryThumbprint: null, secondaryThumbprint: null } }
      : auth.type === 'selfSigned'
        ? {
            type: 'selfSigned',
            symmetricKey: { primaryKey: null, secondaryKey: null },
            x509Thumbprint: { primaryThumbprint: auth.x509Thumbprint.primaryThumbprint, secondaryThumbprint: auth.x509Thumbprint.secondaryThumbprint ?? null },
          }
        : { type: 'certificateAuthority', symmetricKey: { primaryKey: null, secondaryKey: null }, x509Thumbprint: { primaryThumbprint: null, secondaryThumbprint: null } };
  return { deviceId: device.deviceId, status: device.status, authentication, capabilities: { iotEdge: device.capabilities.iotEdge } };
}

export function deviceRecordOf(device: Static<typeof DeviceResponse.schema>): HubDeviceRecord {
  return {
    deviceId: device.deviceId,
    etag: device.etag,
    generationId: device.generationId,
    status: device.status,
    capabilities: { iotEdge: device.capabilities?.iotEdge ?? false },
    authentication: authenticationOf(device.authentication),
  };
}

function authenticationOf(wire: Static<typeof DeviceResponse.schema>['authentication']): HubAuthentication {
  const thumbprints = wire?.x509Thumbprint ?? undefined;
  const keys = wire?.symmetricKey ?? undefined;
  switch (wire?.type) {
    case 'selfSigned': {
      const secondary = thumbprints?.secondaryThumbprint;
      return {
        type: 'selfSigned',
        x509Thumbprint: { primaryThumbprint: thumbprints?.primaryThumbprint ?? '', ...(typeof secondary === 'string' ? { secondaryThumbprint: secondary } : {}) },
      };
    }
    case 'certificateAuthority':
    case 'none':
      return { type: 'certificateAuthority' };
    default:
      return { type: 'sas', symmetricKey: { primaryKey: keys?.primaryKey ?? '', secondaryKey: keys?.secondaryKey ?? '' } };
  }
}

/** The twin's content without IoT Hub's read-only `$metadata` / `$version` members. */
export function twinOf(twin: Static<typeof TwinResponse.schema>): HubTwin {
  return {
    etag: twin.etag,
    tags: twin.tags ?? {},
    desired: withoutReadOnly(twin.properties?.desired ?? {}),
    reported: withoutReadOnly(twin.properties?.reported ?? {}),
  };
}

function withoutReadOnly(collection: JsonMap): JsonMap {
  const { $metadata: _metadata, $version: _version, ...content } = collection;
  return content;
}
