import deviceSdk from 'azure-iot-provisioning-device';
import httpTransport from 'azure-iot-provisioning-device-http';
import symmetricKeySecurity from 'azure-iot-security-symmetric-key';
import { createHmac } from 'node:crypto';
import { createSasToken } from '../src/domain/sas.js';
import { call } from './harness.js';

/** Device-side helpers: the unmodified official SDK, and raw HTTP registrations for bulk runs. */
const { ProvisioningDeviceClient } = deviceSdk;
const { Http } = httpTransport;
const { SymmetricKeySecurityClient } = symmetricKeySecurity;

export type Json = Record<string, any>;

/** Registers with the official SDK over HTTP (callback form) and resolves with its registrationState. */
export function sdkRegister(idScope: string, registrationId: string, key: string, payload?: Json): Promise<Json> {
  const client = ProvisioningDeviceClient.create('localhost', idScope, new Http(), new SymmetricKeySecurityClient(registrationId, key) as never);
  if (payload !== undefined) client.setProvisioningPayload(payload);
  return new Promise((resolve, reject) => {
    client.register((error?: Error, result?: unknown) => (error ? reject(error) : resolve(result as Json)));
  });
}

/**
 * A group device's key, computed here rather than with the server's own `deriveDeviceKey`, so a wrong formula on the
 * server cannot pass unnoticed: base64(HMAC-SHA256(key = base64-decoded group key, message = UTF-8 registration ID))
 * (dps-wire.md §4.3). test/device-credentials.test.ts pins it to vectors computed with openssl.
 */
export function deriveDeviceKey(groupKeyBase64: string, registrationId: string): string {
  return createHmac('sha256', Buffer.from(groupKeyBase64, 'base64')).update(Buffer.from(registrationId, 'utf8')).digest('base64');
}

export function deviceToken(idScope: string, registrationId: string, key: string): string {
  return createSasToken({
    resource: `${idScope}/registrations/${registrationId}`,
    keyBase64: key,
    keyName: 'registration',
    expirySeconds: Math.floor(Date.now() / 1000) + 3600,
  });
}

/** Register + poll over raw HTTPS, as the SDK does; resolves with the final operation body. */
export async function rawRegister(idScope: string, registrationId: string, key: string, payload?: Json): Promise<Json> {
  const authorization = deviceToken(idScope, registrationId, key);
  const registered = await call('PUT', `/${idScope}/registrations/${registrationId}/register?api-version=2019-03-31`, {
    headers: { authorization },
    body: { registrationId, ...(payload === undefined ? {} : { payload }) },
  });
  if (registered.status !== 202) return { httpStatus: registered.status, ...(registered.body as Json) };
  const operationId = (registered.body as Json).operationId as string;
  for (let attempt = 0; attempt < 200; attempt += 1) {
    const polled = await call('GET', `/${idScope}/registrations/${registrationId}/operations/${operationId}?api-version=2019-03-31`, {
      headers: { authorization },
    });
    if (polled.status !== 202) return { httpStatus: polled.status, ...(polled.body as Json) };
    await new Promise((resolve) => setTimeout(resolve, Number(polled.headers.get('retry-after') ?? '1') * 1000));
  }
  throw new Error(`registration of ${registrationId} did not finish`);
}

/** Runs tasks with at most `width` in flight. */
export async function inBatches<T>(items: readonly T[], width: number, task: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(width, items.length) }, async () => {
      while (next < items.length) {
        const item = items[next] as T;
        next += 1;
        await task(item);
      }
    }),
  );
}
