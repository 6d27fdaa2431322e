import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FastifyBaseLogger } from 'fastify';
import { createApp, type App, type ServerInfo } from '../src/app.js';
import { loadConfig, type Config } from '../src/config/config.js';
import { createSasToken } from '../src/domain/sas.js';
import { openStore } from '../src/store/open-store.js';
import { dropPostgresDatabase, freshPostgresDatabase } from './postgres.js';

/**
 * A real provisiond on 127.0.0.1:443 (the official SDK clients cannot take a port), with a fresh data directory
 * seeded with the test CA that scripts/test.sh put in NODE_EXTRA_CA_CERTS. Test files run one after another, so they
 * take port 443 in turn; each closes its server.
 */
export const CA_DIR = join(process.cwd(), 'test', '.tmp', 'ca');

export interface TestServer {
  app: App;
  info: ServerInfo;
  config: Config;
  dataDir: string;
  connectionString: string;
  ownerKey: string;
  /** An Authorization header for the owner policy (or another policy). */
  token(options?: { keyName?: string; key?: string; resource?: string; expirySeconds?: number }): string;
  close(): Promise<void>;
}

/** `logger` replaces the silent one, for tests that read what the server logs; `now`, the services' clock. */
export async function startServer(overrides: Partial<Record<keyof Config, unknown>> = {}, options: { logger?: FastifyBaseLogger; now?: () => Date } = {}): Promise<TestServer> {
  const dataDir = mkdtempSync(join(tmpdir(), 'provisiond-test-'));
  mkdirSync(join(dataDir, 'tls'), { recursive: true });
  copyFileSync(join(CA_DIR, 'ca.pem'), join(dataDir, 'tls', 'ca.pem'));
  copyFileSync(join(CA_DIR, 'ca.key'), join(dataDir, 'tls', 'ca.key'));
  // PROVISIOND_TEST_STORE=postgres (scripts/test.sh's second pass): the same suites on a fresh PostgreSQL database.
  const ownDatabase = overrides.store === undefined && process.env.PROVISIOND_TEST_STORE === 'postgres' ? await freshPostgresDatabase(migratePostgres) : undefined;
  const store = overrides.store ?? ownDatabase;
  const config = loadConfig({
    flags: {
      dataDir,
      httpsPort: 443,
      mqttPort: 8883,
      amqpPort: 5671,
      listenHost: '127.0.0.1',
      logLevel: 'silent',
      ...overrides,
      ...(store === undefined ? {} : { store }),
    },
  });
  const app = await createApp({ config, ...(options.logger === undefined ? {} : { logger: options.logger }), ...(options.now === undefined ? {} : { now: options.now }) });
  await app.listen();
  const info = await app.info();
  const ownerKey = /SharedAccessKey=([^;]+)/.exec(info.serviceConnectionString)?.[1] ?? '';
  return {
    app,
    info,
    config,
    dataDir,
    connectionString: info.serviceConnectionString,
    ownerKey,
    token(options = {}) {
      return createSasToken({
        resource: options.resource ?? 'localhost',
        keyBase64: options.key ?? ownerKey,
        keyName: options.keyName ?? 'provisioningserviceowner',
        expirySeconds: options.expirySeconds ?? Math.floor(Date.now() / 1000) + 3600,
      });
    },
    async close() {
      await app.close();
      rmSync(dataDir, { recursive: true, force: true });
      if (ownDatabase !== undefined) await dropPostgresDatabase(ownDatabase);
    },
  };
}

async function migratePostgres(url: string): Promise<void> {
  await (await openStore(loadConfig({ flags: { store: url, storePoolSize: 1 } }))).store.close();
}

/** A small HTTPS JSON client for calls the SDK cannot make (raw headers, bad bodies). */
export async function call(
  method: string,
  path: string,
  options: { headers?: Record<string, string>; body?: unknown; rawBody?: string; host?: string } = {},
): Promise<{ status: number; headers: Headers; body: unknown; text: string }> {
  const headers: Record<string, string> = { ...options.headers };
  let body: string | undefined;
  if (options.rawBody !== undefined) body = options.rawBody;
  else if (options.body !== undefined) {
    body = JSON.stringify(options.body);
    headers['content-type'] ??= 'application/json; charset=utf-8';
  }
  const url = `https://${options.host ?? 'localhost'}${path}`;
  const init = { method, headers, ...(body === undefined ? {} : { body }) };
  let response: Response;
  try {
    response = await fetch(url, init);
  } catch (error) {
    // A keep-alive connection pooled from a server that a test has since stopped fails at its first reuse; a GET is
    // safe to send again on a fresh connection (as browsers and HTTP clients do). Anything else fails the test.
    if (method !== 'GET' || !/other side closed/.test(String((error as { cause?: unknown }).cause))) throw error;
    response = await fetch(url, init);
  }
  const text = await response.text();
  let parsed: unknown = undefined;
  try {
    parsed = text === '' ? undefined : JSON.parse(text);
  } catch {
    parsed = undefined;
  }
  return { status: response.status, headers: response.headers, body: parsed, text };
}

export function readCa(): string {
  return readFileSync(join(CA_DIR, 'ca.pem'), 'utf8');
}
