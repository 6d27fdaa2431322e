import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import Fastify from 'fastify';
import { chromium, type Browser, type BrowserContext, type Download, type Page } from 'playwright-core';
import { portalPlugin } from '../src/transports/http/portal.js';
import { randomBytes } from 'node:crypto';
import { createRootCertificate, createSelfSignedDeviceCertificate, createVerificationCertificate } from '../src/tls/x509-issuer.js';
import { deriveDeviceKey, rawRegister, sdkRegister, type Json } from './devices.js';
import { call, startServer, type TestServer } from './harness.js';

/**
 * The portal in a real browser (Debian's Chromium, driven by playwright-core) against a real server: the journey a
 * person takes — sign in, enroll, provision with the official device SDK, export, erase, check the receipt — and the
 * limits a wrong key or a read-only policy meets. Screenshots of the main pages go to test/artifacts.
 */
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const ARTIFACTS = join(process.cwd(), 'test', 'artifacts');
const ORIGIN = 'https://localhost';
const DESKTOP = { width: 1280, height: 860 };
const PHONE = { width: 390, height: 844 };
const DEVICE = 'portal-sensor-1';

let server: TestServer;
let browser: Browser;
/** Requests the pages tried to make to any other origin (the portal bundles everything). */
const foreignRequests: string[] = [];
const pageErrors: string[] = [];

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  server = await startServer();
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--disable-quic',
      '--no-first-run',
      '--disable-dev-shm-usage',
    ],
  });
});

after(async () => {
  await browser?.close();
  await server?.close();
});

async function newPage(viewport = DESKTOP): Promise<{ context: BrowserContext; page: Page }> {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport, acceptDownloads: true, locale: 'en-US', timezoneId: 'UTC' });
  await context.route('**/*', async (route) => {
    const url = route.request().url();
    if (url.startsWith(`${ORIGIN}/`) || url.startsWith('blob:') || url.startsWith('data:')) return route.continue();
    foreignRequests.push(url);
    return route.abort();
  });
  const page = await context.newPage();
  page.on('pageerror', (error) => pageErrors.push(error.message));
  page.setDefaultTimeout(15_000);
  return { context, page };
}

/** A fresh browser context for one scenario; a failure leaves a screenshot of where it stopped. */
async function withPage(name: string, viewport: { width: number; height: number }, body: (page: Page) => Promise<void>): Promise<void> {
  const { context, page } = await newPage(viewport);
  try {
    await body(page);
  } catch (error) {
    await screenshot(page, `failed-${name}`).catch(() => undefined);
    throw error;
  } finally {
    await context.close();
  }
}

async function screenshot(page: Page, name: string, options: { fullPage?: boolean } = {}): Promise<void> {
  const fullPage = options.fullPage ?? true;
  // Sticky headers are drawn where the page is scrolled to; a full-page picture wants them at the top.
  if (fullPage) await page.evaluate('window.scrollTo(0, 0)');
  await page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage });
}

async function signIn(page: Page, connectionString: string): Promise<void> {
  await page.goto(`${ORIGIN}/portal/`);
  await page.getByLabel('Service connection string').fill(connectionString);
  await page.getByRole('button', { name: 'Sign in' }).click();
}

function connectionStringFor(keyName: string, key: string): string {
  return `HostName=localhost;SharedAccessKeyName=${keyName};SharedAccessKey=${key}`;
}

async function savedJson(download: Download): Promise<Json> {
  const file = await download.path();
  return JSON.parse(readFileSync(file, 'utf8')) as Json;
}

async function api(method: string, path: string, body?: unknown): Promise<{ status: number; body: Json }> {
  const url = new URL(path, ORIGIN);
  url.searchParams.set('api-version', '2021-10-01');
  const response = await call(method, `${url.pathname}${url.search}`, { headers: { authorization: server.token() }, ...(body === undefined ? {} : { body }) });
  return { status: response.status, body: (response.body ?? {}) as Json };
}

test('the portal is served at /portal: files, the app for every other path, and a redirect from /', async () => {
  const index = await call('GET', '/portal/');
  assert.equal(index.status, 200);
  assert.match(index.headers.get('content-type') ?? '', /^text\/html/);
  assert.match(index.text, /<div id="root"><\/div>/);
  assert.match(index.headers.get('content-security-policy') ?? '', /default-src 'self'/);
  const script = /src="(\/portal\/assets\/[^"]+\.js)"/.exec(index.text)?.[1];
  assert.ok(script, 'index.html loads a bundled script');
  const asset = await call('GET', script);
  assert.equal(asset.status, 200);
  assert.match(asset.headers.get('cache-control') ?? '', /immutable/);
  assert.equal((await call('GET', '/portal/enrollments/dev-1')).text, index.text, 'an app route gets index.html');
  assert.equal((await call('GET', '/portal')).status, 200);
  assert.equal((await call('GET', '/portal/assets/missing.js')).status, 404);
  assert.equal((await call('GET', '/portal/..%2f..%2fpackage.json')).status, 404);
  const root = await fetch(`${ORIGIN}/`, { redirect: 'manual' });
  assert.equal(root.status, 302);
  assert.equal(root.headers.get('location'), '/portal/');
  // The portal has no API of its own: nothing under /portal answers JSON.
  assert.equal((await call('POST', '/portal/enrollments')).status, 404);
});

test('without a build, /portal says how to make one', async () => {
  const empty = mkdtempSync(join(tmpdir(), 'provisiond-portal-'));
  const app = Fastify();
  await app.register(portalPlugin({ dir: empty }));
  try {
    const response = await app.inject({ method: 'GET', url: '/portal/enrollments' });
    assert.equal(response.statusCode, 503);
    assert.match(response.body, /npm run build:web/);
  } finally {
    await app.close();
    rmSync(empty, { recursive: true, force: true });
  }
});

test('a wrong connection string is refused at sign-in, and nothing else is shown', async () => {
  await withPage('sign-in', DESKTOP, async (page) => {
    await page.goto(`${ORIGIN}/portal/`);
    await screenshot(page, 'portal-sign-in');
    const wrongKey = Buffer.alloc(32, 7).toString('base64');
    await signIn(page, connectionStringFor('provisioningserviceowner', wrongKey));
    await page.getByRole('alert').filter({ hasText: 'Could not sign in' }).waitFor();
    assert.match(await page.getByRole('alert').innerText(), /did not accept these credentials/);
    assert.equal(await page.getByRole('navigation', { name: 'Sections' }).count(), 0);
    await screenshot(page, 'portal-sign-in-refused');

    await page.getByLabel('Service connection string').fill('HostName=localhost;SharedAccessKeyName=owner');
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('alert').filter({ hasText: 'SharedAccessKey' }).waitFor();

    // Policy name and key, typed with the keyboard only.
    await page.getByText('Policy name and key').click();
    await page.getByLabel('Key', { exact: true }).fill(wrongKey);
    await page.getByLabel('Key', { exact: true }).press('Enter');
    await page.getByRole('alert').filter({ hasText: 'did not accept' }).waitFor();
    assert.equal(await page.evaluate('sessionStorage.length'), 0, 'refused credentials are not kept');
  });
});

test('a read-only policy sees lists and details but no way to change anything', async () => {
  const created = await api('PUT', '/accessPolicies/portal-reader', { rights: 'EnrollmentRead, RegistrationStatusRead' });
  assert.equal(created.status, 200);
  assert.equal((await api('PUT', '/enrollments/reader-visible', { registrationId: 'reader-visible', attestation: { type: 'symmetricKey' } })).status, 200);
  await withPage('read-only', DESKTOP, async (page) => {
    await signIn(page, connectionStringFor('portal-reader', created.body.primaryKey));
    await page.getByRole('heading', { name: 'Enrollments', level: 1 }).waitFor();
    const nav = page.getByRole('navigation', { name: 'Sections' });
    for (const visible of ['Enrollments', 'Enrollment groups', 'Registration records', 'Customer data', 'System log']) {
      assert.equal(await nav.getByRole('link', { name: visible, exact: true }).count(), 1, `${visible} is in the navigation`);
    }
    for (const hidden of ['Instance', 'Linked hubs', 'Access policies', 'CA certificates']) {
      assert.equal(await nav.getByRole('link', { name: hidden, exact: true }).count(), 0, `${hidden} is hidden`);
    }
    assert.equal(await page.getByRole('link', { name: 'New enrollment' }).count(), 0);
    await page.getByText('Your policy lacks the EnrollmentWrite right').waitFor();
    await page.getByRole('link', { name: 'reader-visible' }).click();
    await page.getByRole('heading', { name: /reader-visible/ }).waitFor();
    for (const button of ['Edit', 'Disable', 'Delete']) assert.equal(await page.getByRole('button', { name: button, exact: true }).count() + (await page.getByRole('link', { name: button, exact: true }).count()), 0);
    // Reading keys needs only EnrollmentRead, as in the service API.
    await page.getByRole('button', { name: 'Show keys' }).click();
    await page.getByTestId('primary-key').waitFor();
    await screenshot(page, 'portal-read-only-enrollment');

    await nav.getByRole('link', { name: 'Customer data' }).click();
    await page.getByRole('textbox', { name: 'Registration ID' }).waitFor();
    assert.equal(await page.getByRole('button', { name: 'Erase…' }).count(), 0);
    await page.getByText('Erasing needs the EnrollmentWrite and RegistrationStatusWrite rights').waitFor();
    // Without the erase rights, the preview is an export's manifest of where the data was found.
    await page.getByRole('textbox', { name: 'Registration ID' }).fill('reader-visible');
    await page.getByRole('button', { name: 'Preview' }).click();
    await page.getByTestId('preview-searched').getByText('Individual enrollment').waitFor();

    // A page the policy may not use, opened by its address, names the missing right.
    await page.goto(`${ORIGIN}/portal/settings/policies`);
    await page.getByText('Your policy lacks the ServiceConfig right').waitFor();
    await screenshot(page, 'portal-read-only-settings');
  });

  const enrollmentsOnly = await api('PUT', '/accessPolicies/portal-enrollments-only', { rights: 'EnrollmentRead' });
  await withPage('enrollments-only', DESKTOP, async (other) => {
    await signIn(other, connectionStringFor('portal-enrollments-only', enrollmentsOnly.body.primaryKey));
    await other.getByRole('heading', { name: 'Enrollments', level: 1 }).waitFor();
    const nav = other.getByRole('navigation', { name: 'Sections' });
    assert.equal(await nav.getByRole('link', { name: 'Customer data' }).count(), 0);
    await other.getByRole('link', { name: 'reader-visible' }).click();
    await other.getByText('Your policy lacks the EnrollmentRead and RegistrationStatusRead right, so the timeline is hidden.').waitFor();
    await other.goto(`${ORIGIN}/portal/registrations/reader-visible`);
    await other.getByText('Your policy lacks the RegistrationStatusRead right.').waitFor();
  });
});

test('sign in, enroll, provision with the device SDK, export, erase, verify the receipt: the device is gone everywhere', async () => {
  await withPage('journey', DESKTOP, async (page) => {
    await signIn(page, server.connectionString);
    await page.getByRole('heading', { name: 'Enrollments', level: 1 }).waitFor();
    assert.equal(await page.getByTestId('signed-in-policy').innerText(), 'provisioningserviceowner');

    // Create a symmetric-key enrollment with generated keys.
    await page.getByRole('link', { name: 'New enrollment' }).click();
    await page.getByRole('textbox', { name: 'Registration ID', exact: true }).fill(DEVICE);
    await page.getByRole('button', { name: 'Create enrollment' }).click();
    await page.getByRole('heading', { name: new RegExp(DEVICE) }).waitFor();
    // The create answer's keys are shown at once (test/portal-polish.test.ts).
    const primaryKey = (await page.getByTestId('primary-key').innerText()).trim();
    const secondaryKey = (await page.getByTestId('secondary-key').innerText()).trim();
    const stored = await api('POST', `/enrollments/${DEVICE}/attestationmechanism`);
    assert.deepEqual(stored.body.symmetricKey, { primaryKey, secondaryKey }, 'the page shows the keys the server holds');

    // A device with the wrong key fails; the timeline says why.
    const wrong = await rawRegister(server.info.idScope, DEVICE, Buffer.alloc(64, 1).toString('base64'));
    assert.equal(wrong.httpStatus, 401);
    // Then the real device registers with the official SDK and the portal's key.
    const registered = await sdkRegister(server.info.idScope, DEVICE, primaryKey);
    assert.equal(registered.status, 'assigned');
    assert.equal(registered.assignedHub, 'localhost');

    await page.getByRole('region', { name: 'Registration record' }).getByRole('button', { name: 'Refresh' }).click();
    const record = page.getByTestId('registration-record');
    await record.getByText('assigned', { exact: true }).waitFor();
    assert.match(await record.innerText(), /localhost/);
    await page.getByRole('region', { name: 'Timeline' }).getByRole('button', { name: 'Refresh' }).click();
    const timeline = page.getByTestId('timeline');
    await timeline.getByText('success').first().waitFor();
    await timeline.getByText(/Why it failed/).first().waitFor();
    await screenshot(page, 'portal-enrollment');

    // The list shows it, registered.
    await page.getByRole('navigation', { name: 'Sections' }).getByRole('link', { name: 'Enrollments' }).click();
    await page.getByRole('link', { name: DEVICE }).waitFor();
    await screenshot(page, 'portal-enrollments');
    await page.getByRole('navigation', { name: 'Sections' }).getByRole('link', { name: 'Registration records' }).click();
    await page.getByRole('link', { name: DEVICE }).waitFor();

    // Customer data: preview, export as a file.
    await page.getByRole('navigation', { name: 'Sections' }).getByRole('link', { name: 'Customer data' }).click();
    await page.getByRole('textbox', { name: 'Registration ID' }).fill(DEVICE);
    await page.getByRole('button', { name: 'Preview' }).click();
    const preview = page.getByTestId('preview-deleted');
    await preview.waitFor();
    const previewText = await preview.innerText();
    // Places by their human names, never table names (issue 10).
    for (const place of ['Individual enrollment', 'Registration records', 'Device identity and twin on hub localhost']) assert.ok(previewText.includes(place), place);
    assert.equal(/lifecycleEventOutbox|\(enrollments\)/.test(previewText), false);
    await screenshot(page, 'portal-data-request-preview');

    const [exportDownload] = await Promise.all([page.waitForEvent('download'), page.getByRole('button', { name: 'Export as a file' }).click()]);
    assert.match(exportDownload.suggestedFilename(), new RegExp(`^provisiond-export-${DEVICE}-.+\\.json$`));
    const bundle = await savedJson(exportDownload);
    assert.equal(bundle.individualEnrollment.registrationId, DEVICE);
    assert.equal(bundle.registrationRecords[0].registrationId, DEVICE);
    assert.equal(bundle.registrationRecords[0].status, 'assigned');
    assert.equal(bundle.hubDevices[0].hub, 'localhost');
    assert.equal(bundle.hubDevices[0].device.deviceId, DEVICE);
    assert.ok(bundle.auditEvents.some((event: Json) => event.kind === 'registration' && event.outcome === 'success'), 'the bundle holds the registration event');
    assert.ok(bundle.auditEvents.some((event: Json) => event.outcome === 'failure'), 'and the failed attempt');
    await page.getByTestId('export-file-name').waitFor();

    // Erase: the button stays disabled until the ID is typed.
    await page.getByRole('button', { name: 'Erase…' }).click();
    const dialog = page.getByRole('dialog');
    await dialog.waitFor();
    const erase = dialog.getByRole('button', { name: 'Erase', exact: true });
    assert.equal(await erase.isDisabled(), true);
    await dialog.getByLabel(/Type .* to confirm/).fill(`${DEVICE}x`);
    assert.equal(await erase.isDisabled(), true);
    await dialog.getByLabel(/Type .* to confirm/).fill(DEVICE);
    await screenshot(page, 'portal-erase-confirmation', { fullPage: false });
    await erase.click();
    await page.getByRole('heading', { name: /^Erasure / }).waitFor();
    await page.getByRole('region', { name: 'Status' }).getByText('completed', { exact: true }).waitFor({ timeout: 30_000 });

    const [receiptDownload] = await Promise.all([page.waitForEvent('download'), page.getByRole('button', { name: 'Download and verify the receipt' }).click()]);
    const receipt = await savedJson(receiptDownload);
    assert.ok(receipt.receipt.subjectHash, 'the receipt names the subject by hash');
    assert.ok(!JSON.stringify(receipt).includes(DEVICE), 'the receipt does not name the device');
    await page.getByTestId('receipt-verdict').getByText('Verified').waitFor();
    await screenshot(page, 'portal-erasure-receipt');

    // A tampered receipt file is caught.
    const tampered = { ...receipt, receipt: { ...receipt.receipt, completedDateTimeUtc: '2000-01-01T00:00:00.000Z' } };
    await page.locator('input[type=file]').setInputFiles({ name: 'tampered.json', mimeType: 'application/json', buffer: Buffer.from(JSON.stringify(tampered)) });
    await page.getByTestId('receipt-verdict').getByText('Signature does not match').waitFor();

    // Gone from every list.
    const nav = page.getByRole('navigation', { name: 'Sections' });
    await nav.getByRole('link', { name: 'Enrollments' }).click();
    await page.getByLabel('Search by registration ID').fill(DEVICE);
    await page.getByText('No enrollments match').waitFor();
    await nav.getByRole('link', { name: 'Registration records' }).click();
    await page.getByRole('region', { name: 'Records of individual enrollments' }).getByText('No individually enrolled device has registered yet').waitFor();
    // Every event that named the device before the erasure is pseudonymized.
    await nav.getByRole('link', { name: 'System log' }).click();
    await page.getByLabel(/^Subject/).fill(DEVICE);
    await page.getByRole('button', { name: 'Apply' }).click();
    await page.getByText('No events match').waitFor();
    await page.goto(`${ORIGIN}/portal/registrations/${DEVICE}`);
    await page.getByRole('alert').filter({ hasText: /not found/i }).waitFor();
    await nav.getByRole('link', { name: 'Customer data' }).click();
    // Earlier requests about the device keep only its hash too.
    const history = page.getByTestId('data-request-history');
    await history.getByText('erase', { exact: true }).waitFor();
    assert.ok(!(await history.innerText()).includes(DEVICE), 'the history of data requests no longer names the device');
    await page.getByRole('textbox', { name: 'Registration ID' }).fill(DEVICE);
    await page.getByRole('button', { name: 'Preview' }).click();
    await page.getByText('Nothing of this device is left to delete').waitFor();
    await screenshot(page, 'portal-data-requests');
    // The hub identity went too, as the hub's own registry API tells.
    assert.equal((await server.app.builtInHubs.listDevices('localhost', undefined)).some((device) => device.deviceId === DEVICE), false);

    // The system log keeps the erasure itself, without the device's ID.
    await nav.getByRole('link', { name: 'System log' }).click();
    await page.getByLabel('Kind').selectOption('dataRequest');
    await page.getByRole('button', { name: 'Apply' }).click();
    await page.getByTestId('audit-events').waitFor();
    assert.ok(!(await page.getByTestId('audit-events').innerText()).includes(DEVICE));
    await page.getByRole('button', { name: 'Clear' }).click();
    await page.getByTestId('audit-events').waitFor();
    await screenshot(page, 'portal-system-log', { fullPage: false });

    // Instance settings.
    await nav.getByRole('link', { name: 'Instance' }).click();
    await page.getByRole('main').getByText(server.info.idScope, { exact: true }).waitFor();
    await screenshot(page, 'portal-instance');
    await nav.getByRole('link', { name: 'Linked hubs' }).click();
    await page.getByRole('cell', { name: 'localhost', exact: true }).waitFor();
    await screenshot(page, 'portal-linked-hubs');
    await nav.getByRole('link', { name: 'Access policies' }).click();
    await page.getByRole('cell', { name: /^provisioningserviceowner/ }).waitFor();
    await nav.getByRole('link', { name: 'CA certificates' }).click();
    await page.getByText('No CA certificate yet').waitFor();

    // Signing out forgets the key.
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.getByLabel('Service connection string').waitFor();
    assert.equal(await page.evaluate('sessionStorage.length'), 0);
  });
});

test('groups, every attestation form, edits, CA proof of possession, linked hubs and access policies', async () => {
  const root = await createRootCertificate({ commonName: 'Portal Test Root' });
  const deviceCertificate = await createSelfSignedDeviceCertificate({ commonName: 'portal-x509-dev' });
  await withPage('forms', DESKTOP, async (page) => {
    await signIn(page, server.connectionString);
    const nav = page.getByRole('navigation', { name: 'Sections' });
    await page.getByRole('heading', { name: 'Enrollments', level: 1 }).waitFor();

    // A CA certificate, verified by proof of possession.
    await nav.getByRole('link', { name: 'CA certificates' }).click();
    await page.getByRole('button', { name: 'Upload a CA certificate' }).click();
    await page.getByLabel('Certificate file (PEM or DER)').setInputFiles({ name: 'portal-root.pem', mimeType: 'application/x-pem-file', buffer: Buffer.from(root.certPem) });
    await page.getByRole('dialog').getByRole('button', { name: 'Upload' }).click();
    await page.getByRole('heading', { name: /portal-root/ }).waitFor();
    await page.getByText('unverified', { exact: true }).waitFor();
    await page.getByRole('button', { name: 'Generate verification code' }).click();
    const code = (await page.locator('.steps li').first().locator('code').innerText()).trim();
    assert.match(code, /^[0-9A-Za-z]{8,}$/);
    const verification = await createVerificationCertificate(root, code);
    await page.getByLabel('Verification certificate').setInputFiles({ name: 'verification.pem', mimeType: 'application/x-pem-file', buffer: Buffer.from(verification.certPem) });
    await page.getByText('Verified: enrollment groups can name this CA').waitFor();
    await screenshot(page, 'portal-ca-certificate');

    // A symmetric-key group; a device registers with its derived key and shows up in the group's records.
    await nav.getByRole('link', { name: 'Enrollment groups' }).click();
    await page.getByText('No enrollment groups yet').waitFor();
    await page.getByRole('link', { name: 'New enrollment group' }).click();
    await page.getByLabel('Group ID').fill('portal-group');
    await page.getByRole('button', { name: 'Create enrollment group' }).click();
    await page.getByRole('heading', { name: /portal-group/ }).waitFor();
    const groupKey = (await page.getByTestId('primary-key').innerText()).trim();
    const registered = await sdkRegister(server.info.idScope, 'portal-group-dev-1', deriveDeviceKey(groupKey, 'portal-group-dev-1'));
    assert.equal(registered.status, 'assigned');
    const records = page.getByRole('region', { name: 'Registration records' });
    await records.getByRole('button', { name: 'Refresh' }).click();
    await records.getByRole('link', { name: 'portal-group-dev-1' }).waitFor();
    await records.getByLabel('Search by registration ID').fill('nothing-like-it');
    await records.getByText('No records match').waitFor();
    await records.getByLabel('Search by registration ID').fill('portal-group');
    await records.getByRole('link', { name: 'portal-group-dev-1' }).waitFor();
    await screenshot(page, 'portal-group');

    // An X.509 group that trusts the verified CA.
    await nav.getByRole('link', { name: 'Enrollment groups' }).click();
    await page.getByRole('link', { name: 'New enrollment group' }).click();
    await page.getByLabel('Group ID').fill('portal-ca-group');
    await page.getByRole('radio', { name: 'X.509 certificate' }).check();
    await page.getByRole('radio', { name: /A verified CA certificate/ }).check();
    await page.getByLabel('CA certificate (primary)').selectOption('portal-root');
    await screenshot(page, 'portal-group-form');
    await page.getByRole('button', { name: 'Create enrollment group' }).click();
    await page.getByRole('heading', { name: /portal-ca-group/ }).waitFor();
    await page.getByText('CA certificate (primary)').waitFor();

    // An X.509 enrollment from an uploaded certificate; a private key is refused before upload.
    await nav.getByRole('link', { name: 'Enrollments' }).click();
    await page.getByRole('link', { name: 'New enrollment' }).click();
    await page.getByRole('textbox', { name: 'Registration ID', exact: true }).fill('portal-x509-dev');
    await page.getByRole('radio', { name: 'X.509 certificate' }).check();
    const primaryCertificate = page.getByLabel('Device certificate (primary)');
    await primaryCertificate.setInputFiles({ name: 'device.key', mimeType: 'application/x-pem-file', buffer: Buffer.from(deviceCertificate.keyPem) });
    await page.getByText('That file holds a private key').waitFor();
    await primaryCertificate.setInputFiles({ name: 'device.pem', mimeType: 'application/x-pem-file', buffer: Buffer.from(deviceCertificate.certPem) });
    await page.getByText('Will upload device.pem.').waitFor();
    await page.getByRole('button', { name: 'Create enrollment' }).click();
    await page.getByRole('heading', { name: /portal-x509-dev/ }).waitFor();
    await page.getByText('CN=portal-x509-dev').first().waitFor();

    // A TPM enrollment by endorsement key; then an edit, with a JSON mistake caught in the form.
    await nav.getByRole('link', { name: 'Enrollments' }).click();
    await page.getByRole('link', { name: 'New enrollment' }).click();
    await page.getByRole('textbox', { name: 'Registration ID', exact: true }).fill('portal-tpm-dev');
    await page.getByRole('radio', { name: 'TPM' }).check();
    const endorsementKey = randomBytes(282).toString('base64');
    await page.getByLabel('Endorsement key (base64)').fill(endorsementKey);
    await page.getByRole('button', { name: 'Create enrollment' }).click();
    await page.getByRole('heading', { name: /portal-tpm-dev/ }).waitFor();
    await page.getByText(endorsementKey).waitFor();
    await page.getByRole('link', { name: 'Edit', exact: true }).click();
    await page.getByLabel(/^Device ID/).fill('tpm-device-renamed');
    await page.getByLabel('Enabled — devices may register').uncheck();
    await page.getByLabel(/^Tags/).fill('{"site": ');
    await page.getByRole('button', { name: 'Save changes' }).click();
    await page.getByText(/Tags is not valid JSON/).first().waitFor();
    await page.getByLabel(/^Tags/).fill('{"site": "line-1"}');
    await page.getByRole('button', { name: 'Save changes' }).click();
    await page.getByRole('heading', { name: /portal-tpm-dev/ }).getByText('disabled').waitFor();
    const edited = (await api('GET', '/enrollments/portal-tpm-dev')).body;
    assert.equal(edited.deviceId, 'tpm-device-renamed');
    assert.equal(edited.provisioningStatus, 'disabled');
    assert.deepEqual(edited.initialTwin.tags, { site: 'line-1' });
    assert.equal(edited.attestation.tpm.endorsementKey, endorsementKey);
    await page.getByRole('button', { name: 'Enable', exact: true }).click();
    await page.getByRole('heading', { name: /portal-tpm-dev/ }).getByText('enabled').waitFor();

    // Filters use the query API's WHERE support.
    await nav.getByRole('link', { name: 'Enrollments' }).click();
    await page.getByLabel('Attestation').selectOption('tpm');
    await page.getByRole('link', { name: 'portal-x509-dev' }).waitFor({ state: 'detached' });
    await page.getByRole('link', { name: 'portal-tpm-dev' }).waitFor();
    await page.getByLabel('Attestation').selectOption('');
    await page.getByLabel('Search by registration ID').fill('portal-x');
    await page.getByRole('link', { name: 'portal-tpm-dev' }).waitFor({ state: 'detached' });
    await page.getByRole('link', { name: 'portal-x509-dev' }).waitFor();

    // Delete with confirmation.
    await page.getByRole('link', { name: 'portal-x509-dev' }).click();
    await page.getByRole('button', { name: 'Delete', exact: true }).click();
    await page.getByRole('dialog').getByRole('button', { name: 'Delete' }).click();
    await page.getByRole('heading', { name: 'Enrollments', level: 1 }).waitFor();
    assert.equal((await api('GET', '/enrollments/portal-x509-dev')).status, 404);

    // Linked hubs: link, change, unlink.
    await nav.getByRole('link', { name: 'Linked hubs' }).click();
    await page.getByRole('button', { name: 'Link a hub' }).click();
    const hubDialog = page.getByRole('dialog');
    await hubDialog.getByLabel('Host the hub inside provisiond (built in)').check();
    await hubDialog.getByLabel('Hub host name').fill('second-hub.localhost');
    await hubDialog.getByLabel('Allocation weight (1–1000)').fill('3');
    await hubDialog.getByRole('button', { name: 'Save' }).click();
    const hubRow = page.getByRole('row').filter({ hasText: 'second-hub.localhost' });
    await hubRow.getByRole('cell', { name: '3', exact: true }).waitFor();
    await page.getByRole('button', { name: 'Edit second-hub.localhost' }).click();
    await hubDialog.getByLabel('Allocation weight (1–1000)').fill('7');
    await hubDialog.getByRole('button', { name: 'Save' }).click();
    await hubRow.getByRole('cell', { name: '7', exact: true }).waitFor();
    await page.getByRole('button', { name: 'Unlink second-hub.localhost' }).click();
    await page.getByRole('dialog').getByRole('button', { name: 'Unlink' }).click();
    await hubRow.waitFor({ state: 'detached' });

    // Access policies: a new one, its keys and connection string.
    await nav.getByRole('link', { name: 'Access policies' }).click();
    await page.getByRole('button', { name: 'New policy' }).click();
    await page.getByRole('dialog').getByLabel('Name').fill('portal-ops');
    await page.getByRole('dialog').getByRole('button', { name: 'Create' }).click();
    const keysDialog = page.getByRole('dialog', { name: 'Keys of portal-ops' });
    await keysDialog.waitFor();
    assert.match(await keysDialog.innerText(), /HostName=localhost;SharedAccessKeyName=portal-ops;SharedAccessKey=/);
    await screenshot(page, 'portal-access-policy-keys', { fullPage: false });
    await keysDialog.getByRole('button', { name: 'Close' }).click();
    await page.getByRole('cell', { name: 'portal-ops', exact: true }).waitFor();
    assert.equal((await api('POST', '/accessPolicies/portal-ops/listKeys')).body.rights, 'EnrollmentRead, RegistrationStatusRead');
    // The row's Keys button shows the same keys again; its Delete removes the policy after a confirmation.
    await page.getByRole('button', { name: 'Show the keys of portal-ops' }).click();
    await keysDialog.waitFor();
    assert.match(await keysDialog.innerText(), /SharedAccessKeyName=portal-ops;SharedAccessKey=/);
    await keysDialog.getByRole('button', { name: 'Close' }).click();
    await page.getByRole('button', { name: 'Delete portal-ops' }).click();
    const deleteDialog = page.getByRole('dialog', { name: 'Delete the policy portal-ops?' });
    await deleteDialog.getByRole('button', { name: 'Delete' }).click();
    await page.getByRole('cell', { name: 'portal-ops', exact: true }).waitFor({ state: 'detached' });
    assert.equal((await api('GET', '/accessPolicies/portal-ops')).status, 404);
  });
});

test('the pages work at a phone width and with the keyboard', async () => {
  assert.equal((await api('PUT', '/enrollments/phone-device', { registrationId: 'phone-device', attestation: { type: 'symmetricKey' } })).status, 200);
  await withPage('phone', PHONE, async (page) => {
    await signIn(page, server.connectionString);
    await page.getByRole('heading', { name: 'Enrollments', level: 1 }).waitFor();
    const width = await page.evaluate<number>('document.documentElement.scrollWidth');
    assert.ok(width <= PHONE.width, `no horizontal scrolling (page is ${width}px wide)`);
    await screenshot(page, 'portal-phone-enrollments');
    await page.getByRole('button', { name: 'Menu' }).click();
    await page.getByRole('navigation', { name: 'Sections' }).getByRole('link', { name: 'System log' }).waitFor();
    await screenshot(page, 'portal-phone-menu');
    await page.getByRole('navigation', { name: 'Sections' }).getByRole('link', { name: 'Enrollments' }).click();
    await page.getByRole('link', { name: 'phone-device' }).click();
    await page.getByRole('heading', { name: /phone-device/ }).waitFor();
    await screenshot(page, 'portal-phone-enrollment');

    // Keyboard: the delete dialog opens from the keyboard, takes the focus, and Escape closes it.
    await page.getByRole('button', { name: 'Delete', exact: true }).focus();
    await page.keyboard.press('Enter');
    const dialog = page.getByRole('dialog');
    await dialog.waitFor();
    assert.equal(await page.evaluate('document.activeElement?.textContent'), 'Cancel');
    await page.keyboard.press('Escape');
    await dialog.waitFor({ state: 'hidden' });
    assert.equal((await api('GET', '/enrollments/phone-device')).status, 200);
  });
});

test('the pages made no request to any other origin and threw no errors', () => {
  assert.deepEqual(foreignRequests, []);
  assert.deepEqual(pageErrors, []);
});
