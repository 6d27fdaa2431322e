import { after, before } from 'node:test';
import { chromium, type Browser, type Locator, type Page } from 'playwright-core';
import type { Json } from './devices.js';
import { call, startServer, type TestServer } from './harness.js';

/**
 * A portal test file's setup, as test/portal.test.ts drives the portal: one server and one headless Debian Chromium
 * for the file (started in `before`, closed in `after`), a signed-in page per scenario, the service API beside it for
 * arranging and checking, and the page errors seen (a test ends by asserting there were none).
 */
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
export const ORIGIN = 'https://localhost';
export const DESKTOP = { width: 1280, height: 860 };
export const PHONE = { width: 390, height: 844 };

export interface PortalHarness {
  /** The file's server (set once `before` has run). */
  readonly server: TestServer;
  /** Every uncaught error of any page so far. */
  readonly pageErrors: string[];
  /** A fresh browser context signed in with the owner connection string, on the Enrollments page. */
  withPage(viewport: { width: number; height: number }, body: (page: Page) => Promise<void>): Promise<void>;
  /** The service API as the owner (api-version 2021-10-01). */
  api(method: string, path: string, body?: unknown): Promise<{ status: number; body: Json }>;
  /** The portal's section navigation. */
  nav(page: Page): Locator;
}

export function portalHarness(): PortalHarness {
  let server: TestServer | undefined;
  let browser: Browser | undefined;
  const pageErrors: string[] = [];
  const started = (): TestServer => {
    if (server === undefined) throw new Error('the portal harness is used before its before() hook ran');
    return server;
  };

  before(async () => {
    server = await startServer();
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-dev-shm-usage'],
    });
  });
  after(async () => {
    await browser?.close();
    await server?.close();
  });

  return {
    get server() {
      return started();
    },
    pageErrors,
    async withPage(viewport, body) {
      if (browser === undefined) throw new Error('the portal harness is used before its before() hook ran');
      const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport, locale: 'en-US', timezoneId: 'UTC' });
      const page = await context.newPage();
      page.on('pageerror', (error) => pageErrors.push(error.message));
      page.setDefaultTimeout(15_000);
      try {
        await page.goto(`${ORIGIN}/portal/`);
        await page.getByLabel('Service connection string').fill(started().connectionString);
        await page.getByRole('button', { name: 'Sign in' }).click();
        await page.getByRole('heading', { name: 'Enrollments', level: 1 }).waitFor();
        await body(page);
      } finally {
        await context.close();
      }
    },
    async api(method, path, body) {
      const url = new URL(path, ORIGIN);
      url.searchParams.set('api-version', '2021-10-01');
      const response = await call(method, `${url.pathname}${url.search}`, { headers: { authorization: started().token() }, ...(body === undefined ? {} : { body }) });
      return { status: response.status, body: (response.body ?? {}) as Json };
    },
    nav: (page) => page.getByRole('navigation', { name: 'Sections' }),
  };
}
