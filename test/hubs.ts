import iothub from 'azure-iothub';
import { call, type TestServer } from './harness.js';
import type { Json } from './devices.js';

/** Extra built-in hubs named by loopback addresses (resolvable, covered by the test server certificate). */
export const HUB_HOST_NAMES = ['localhost', '127.0.0.1', '127.0.0.2', '127.0.0.3', '127.0.0.4'];

export async function linkHub(server: TestServer, name: string, body: Json): Promise<Json> {
  const response = await call('PUT', `/linkedHubs/${encodeURIComponent(name)}?api-version=2021-10-01`, {
    headers: { authorization: server.token() },
    body,
  });
  if (response.status !== 200) throw new Error(`linking ${name}: ${response.status} ${response.text}`);
  return response.body as Json;
}

export async function registryFor(server: TestServer, hubName: string): Promise<InstanceType<typeof iothub.Registry>> {
  const hub = await server.app.builtInHubs.ensureHub(hubName);
  return iothub.Registry.fromConnectionString(hub.connectionString);
}

export function twinOf(registry: InstanceType<typeof iothub.Registry>, deviceId: string): Promise<Json> {
  return new Promise((resolve, reject) => registry.getTwin(deviceId, (error, twin) => (error ? reject(error) : resolve(twin as unknown as Json))));
}

export function deviceOf(registry: InstanceType<typeof iothub.Registry>, deviceId: string): Promise<Json | undefined> {
  return new Promise((resolve, reject) =>
    registry.get(deviceId, (error, device) => {
      if (error?.constructor.name === 'DeviceNotFoundError') resolve(undefined);
      else if (error) reject(error);
      else resolve(device as unknown as Json);
    }),
  );
}
