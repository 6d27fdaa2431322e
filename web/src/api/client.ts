import type { Credentials } from './credentials';
import { SasSigner } from './sas';

/**
 * The portal's only way to the server: the service API on the same origin, with a SAS token per call. Errors carry
 * the server's own message (the DPS error body), and a 401 tells apart "these credentials are not accepted" from
 * "this policy lacks a right" by the message the server gives for the latter.
 */
export const API_VERSION = '2021-10-01';

export const RIGHTS = ['ServiceConfig', 'EnrollmentRead', 'EnrollmentWrite', 'RegistrationStatusRead', 'RegistrationStatusWrite', 'DeviceConnect'] as const;
export type Right = (typeof RIGHTS)[number];

export type ApiErrorKind = 'unauthenticated' | 'missingRight' | 'notFound' | 'conflict' | 'invalid' | 'network' | 'server';

export class ApiError extends Error {
  readonly status: number;
  readonly kind: ApiErrorKind;
  readonly errorCode: number | undefined;
  readonly trackingId: string | undefined;
  /** The right the server said the call needs, on a 401 for an authenticated caller. */
  readonly missingRight: Right | undefined;

  constructor(status: number, message: string, body?: { errorCode?: unknown; trackingId?: unknown }) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.errorCode = typeof body?.errorCode === 'number' ? body.errorCode : undefined;
    this.trackingId = typeof body?.trackingId === 'string' ? body.trackingId : undefined;
    const right = /needs the (\w+) right/.exec(message)?.[1];
    this.missingRight = RIGHTS.find((name) => name === right);
    this.kind =
      status === 0
        ? 'network'
        : status === 401 || status === 403
          ? this.missingRight === undefined && !/needs|lacks|only the operator/i.test(message)
            ? 'unauthenticated'
            : 'missingRight'
          : status === 404
            ? 'notFound'
            : status === 409 || status === 412
              ? 'conflict'
              : status >= 400 && status < 500
                ? 'invalid'
                : 'server';
  }
}

export interface Page<T> {
  items: T[];
  continuation: string | undefined;
}

export interface RequestOptions {
  body?: unknown;
  headers?: Record<string, string>;
  signal?: AbortSignal;
}

export interface RawResponse {
  status: number;
  headers: Headers;
  text: string;
}

export class ApiClient {
  readonly credentials: Credentials;
  readonly #signer: SasSigner;

  constructor(credentials: Credentials) {
    this.credentials = credentials;
    this.#signer = new SasSigner(credentials);
  }

  /** `/enrollments/{id}` from segments, each percent-encoded, with `?api-version=`. */
  static url(segments: readonly string[]): URL {
    const url = new URL(`/${segments.map(encodeURIComponent).join('/')}`, window.location.origin);
    url.searchParams.set('api-version', API_VERSION);
    return url;
  }

  async raw(method: string, segments: readonly string[], options: RequestOptions = {}): Promise<RawResponse> {
    const headers = new Headers(options.headers);
    headers.set('authorization', await this.#signer.token());
    headers.set('accept', 'application/json');
    let body: string | undefined;
    if (options.body !== undefined) {
      body = JSON.stringify(options.body);
      headers.set('content-type', 'application/json; charset=utf-8');
    }
    const send = () =>
      fetch(ApiClient.url(segments), {
        method,
        headers,
        cache: 'no-store',
        ...(body === undefined ? {} : { body }),
        ...(options.signal === undefined ? {} : { signal: options.signal }),
      });
    let response: Response;
    try {
      response = await send().catch(async (error: unknown) => {
        // A keep-alive connection the server closed just as it was reused fails without an answer; a call that is
        // safe to repeat is sent once more.
        if (!isRepeatable(method, segments) || (error instanceof DOMException && error.name === 'AbortError')) throw error;
        await new Promise((resolve) => setTimeout(resolve, 250));
        return send();
      });
    } catch (error) {
      if (error instanceof DOMException && error.name === 'AbortError') throw error;
      throw new ApiError(0, 'The server could not be reached. Check that provisiond is running, then try again.');
    }
    const text = await response.text();
    if (!response.ok) throw errorFrom(response.status, text);
    return { status: response.status, headers: response.headers, text };
  }

  async request<T>(method: string, segments: readonly string[], options: RequestOptions = {}): Promise<T> {
    const response = await this.raw(method, segments, options);
    return (response.text === '' ? undefined : JSON.parse(response.text)) as T;
  }

  get<T>(segments: readonly string[], options?: RequestOptions): Promise<T> {
    return this.request<T>('GET', segments, options);
  }

  post<T>(segments: readonly string[], body?: unknown, options: RequestOptions = {}): Promise<T> {
    return this.request<T>('POST', segments, { ...options, ...(body === undefined ? {} : { body }) });
  }

  put<T>(segments: readonly string[], body: unknown, options: RequestOptions = {}): Promise<T> {
    return this.request<T>('PUT', segments, { ...options, body });
  }

  patch<T>(segments: readonly string[], body: unknown): Promise<T> {
    return this.request<T>('PATCH', segments, { body });
  }

  async delete(segments: readonly string[], options: RequestOptions = {}): Promise<void> {
    await this.raw('DELETE', segments, options);
  }

  /** One page of a DPS query: `x-ms-max-item-count` and `x-ms-continuation` in, the next token out. */
  async page<T>(segments: readonly string[], body: unknown, paging: { pageSize: number; continuation?: string | undefined; signal?: AbortSignal }): Promise<Page<T>> {
    const headers: Record<string, string> = { 'x-ms-max-item-count': String(paging.pageSize) };
    if (paging.continuation !== undefined) headers['x-ms-continuation'] = paging.continuation;
    const response = await this.raw('POST', segments, {
      headers,
      ...(body === undefined ? {} : { body }),
      ...(paging.signal === undefined ? {} : { signal: paging.signal }),
    });
    const items = (response.text === '' ? [] : JSON.parse(response.text)) as T[];
    return { items, continuation: response.headers.get('x-ms-continuation') ?? undefined };
  }
}

/** GET, PUT and DELETE are idempotent; of the POSTs, only the ones that read. */
function isRepeatable(method: string, segments: readonly string[]): boolean {
  if (method !== 'POST') return true;
  const last = segments[segments.length - 1]?.toLowerCase();
  return last === 'query' || last === 'attestationmechanism' || last === 'listkeys';
}

function errorFrom(status: number, text: string): ApiError {
  let body: { message?: unknown; errorCode?: unknown; trackingId?: unknown } | undefined;
  try {
    body = JSON.parse(text) as typeof body;
  } catch {
    body = undefined;
  }
  const message = typeof body?.message === 'string' && body.message !== '' ? body.message : `The server answered ${status}${text === '' ? '' : `: ${text.slice(0, 200)}`}`;
  return new ApiError(status, message, body);
}

/** A WHERE value as the query grammar quotes it: single quotes, a quote inside doubled. */
export function quote(value: string): string {
  return `'${value.replaceAll("'", "''")}'`;
}

/** `SELECT * [WHERE a AND b …]` from the conditions that are set. */
export function selectWhere(conditions: ReadonlyArray<string | undefined>): string {
  const set = conditions.filter((condition): condition is string => condition !== undefined && condition !== '');
  return set.length === 0 ? 'SELECT *' : `SELECT * WHERE ${set.join(' AND ')}`;
}
