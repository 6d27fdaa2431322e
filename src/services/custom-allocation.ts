import type { JsonMap } from '../domain/enrollment.js';
import { ProvisioningError } from '../domain/errors.js';

/**
 * The custom allocation webhook (dps-wire.md §7): POST the AllocationRequest, get back the hub (one of linkedHubs),
 * optionally an initial twin and a payload for the device. Bounded in time; every failure is a clear
 * CustomAllocationFailed that ends the registration `failed`.
 */
export interface AllocationRequest {
  individualEnrollment?: JsonMap;
  enrollmentGroup?: JsonMap;
  deviceRuntimeContext: JsonMap;
  linkedHubs: string[];
}

export interface AllocationAnswer {
  iotHubHostName: string;
  initialTwin?: JsonMap;
  payload?: JsonMap;
}

export interface WebhookExchange {
  url: string;
  request: AllocationRequest;
  status?: number;
  response?: unknown;
  error?: string;
  durationMs: number;
}

const isObject = (value: unknown): value is JsonMap => typeof value === 'object' && value !== null && !Array.isArray(value);

export async function callAllocationWebhook(
  url: string,
  request: AllocationRequest,
  timeoutMs: number,
  onExchange?: (exchange: WebhookExchange) => void,
): Promise<AllocationAnswer> {
  const started = Date.now();
  const exchange: WebhookExchange = { url, request, durationMs: 0 };
  const fail = (message: string): ProvisioningError => {
    exchange.error = message;
    return new ProvisioningError('CustomAllocationFailed', `Custom allocation failed: ${message}`);
  };
  try {
    let response: Response;
    try {
      response = await fetch(url, {
        method: 'POST',
        headers: { 'content-type': 'application/json; charset=utf-8', accept: 'application/json' },
        body: JSON.stringify(request),
        signal: AbortSignal.timeout(timeoutMs),
      });
    } catch (error) {
      const reason = (error as Error).name === 'TimeoutError' ? `no answer within ${timeoutMs} ms` : `the webhook could not be reached (${describe(error)})`;
      throw fail(reason);
    }
    exchange.status = response.status;
    const text = await response.text();
    let body: unknown;
    try {
      body = text === '' ? undefined : JSON.parse(text);
    } catch {
      body = undefined;
    }
    exchange.response = body ?? text.slice(0, 2000);
    if (response.status !== 200) throw fail(`the webhook answered HTTP ${response.status}`);
    if (!isObject(body)) throw fail('the webhook did not answer with a JSON object');
    const hub = body.iotHubHostName;
    if (typeof hub !== 'string' || hub === '') throw fail('the answer has no iotHubHostName');
    if (!request.linkedHubs.includes(hub.toLowerCase())) {
      throw fail(`the answer names hub '${hub}', which is not one of the device's linked hubs (${request.linkedHubs.join(', ')})`);
    }
    const answer: AllocationAnswer = { iotHubHostName: hub.toLowerCase() };
    if (body.initialTwin != null) {
      if (!isObject(body.initialTwin)) throw fail('initialTwin must be an object');
      answer.initialTwin = body.initialTwin;
    }
    if (body.payload != null) {
      if (!isObject(body.payload)) throw fail('payload must be a JSON object');
      answer.payload = body.payload;
    }
    return answer;
  } finally {
    exchange.durationMs = Date.now() - started;
    onExchange?.(exchange);
  }
}

function describe(error: unknown): string {
  const cause = (error as { cause?: { code?: string; message?: string } }).cause;
  return cause?.code ?? cause?.message ?? (error as Error).message;
}
