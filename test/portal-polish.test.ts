import assert from 'node:assert/strict';
import { test } from 'node:test';
import { deriveDeviceKey, rawRegister } from './devices.js';
import { DESKTOP, PHONE, portalHarness } from './portal-browser.js';

/**
 * The portal where it used to leave people stuck or misled, in Chromium as test/portal.test.ts drives it: switching
 * lists, an etag conflict, the keys after a create, the system log on a phone, erased events, a group device's key,
 * and the instance settings that had no fields.
 */
const portal = portalHarness();
const { pageErrors, withPage, api, nav } = portal;

test('switching from enrollments to groups never shows the enrollments as group rows while the groups load', async () => {
  assert.equal((await api('PUT', '/enrollments/switch-device', { registrationId: 'switch-device', attestation: { type: 'symmetricKey' } })).status, 200);
  assert.equal((await api('PUT', '/enrollmentGroups/switch-group', { enrollmentGroupId: 'switch-group', attestation: { type: 'symmetricKey' } })).status, 200);
  await withPage(DESKTOP, async (page) => {
    await page.getByRole('link', { name: 'switch-device' }).waitFor();
    // The group query answers slowly, so what the page shows while it loads can be seen.
    let release: () => void = () => undefined;
    const released = new Promise<void>((resolve) => (release = resolve));
    await page.route('**/enrollmentGroups/query**', async (route) => {
      await released;
      await route.continue();
    });
    await nav(page).getByRole('link', { name: 'Enrollment groups' }).click();
    await page.getByRole('heading', { name: 'Enrollment groups', level: 1 }).waitFor();
    await page.getByText('Loading enrollment groups…').waitFor();
    assert.equal(await page.getByRole('link', { name: 'switch-device' }).count(), 0, 'no enrollment rows on the groups page');
    assert.equal(await page.locator('tbody tr').count(), 0);
    release();
    await page.getByRole('link', { name: 'switch-group' }).waitFor();
    assert.equal(await page.getByRole('link', { name: 'switch-device' }).count(), 0);
  });
});

test('after creating an enrollment its keys are on the page it leads to, as promised', async () => {
  await withPage(DESKTOP, async (page) => {
    await page.getByRole('link', { name: 'New enrollment' }).click();
    await page.getByRole('textbox', { name: 'Registration ID', exact: true }).fill('fresh-keys');
    await page.getByRole('button', { name: 'Create enrollment' }).click();
    await page.getByRole('heading', { name: /fresh-keys/ }).waitFor();
    await page.getByText('Created. The keys below are also available later with Show keys.').waitFor();
    const primaryKey = (await page.getByTestId('primary-key').innerText()).trim();
    const secondaryKey = (await page.getByTestId('secondary-key').innerText()).trim();
    const stored = await api('POST', '/enrollments/fresh-keys/attestationmechanism');
    assert.deepEqual(stored.body.symmetricKey, { primaryKey, secondaryKey });
    // Once: a later visit asks for them.
    await nav(page).getByRole('link', { name: 'Enrollments' }).click();
    await page.getByRole('link', { name: 'fresh-keys' }).click();
    await page.getByRole('button', { name: 'Show keys' }).waitFor();
    assert.equal(await page.getByTestId('primary-key').count(), 0);
  });
});

test('an etag conflict explains itself and reapplies the edit to the current version, keeping the other change', async () => {
  assert.equal(
    (await api('PUT', '/enrollments/conflict-device', { registrationId: 'conflict-device', attestation: { type: 'symmetricKey' }, initialTwin: { tags: { line: '1' } } })).status,
    200,
  );
  await withPage(DESKTOP, async (page) => {
    await page.getByRole('link', { name: 'conflict-device' }).click();
    await page.getByRole('link', { name: 'Edit' }).click();
    await page.getByRole('button', { name: 'Save changes' }).waitFor();

    // Someone else disables the enrollment meanwhile.
    const current = await api('GET', '/enrollments/conflict-device');
    assert.equal((await api('PUT', '/enrollments/conflict-device', { ...current.body, provisioningStatus: 'disabled' })).status, 200);

    await page.getByLabel(/^Tags/).fill('{"line": "2"}');
    await page.getByRole('button', { name: 'Save changes' }).click();
    await page.getByText('Someone changed this after you loaded it, so your change was not saved.').waitFor();
    await page.getByRole('button', { name: 'Load the current version and reapply my changes' }).click();
    await page.getByText(/applied your changes to it/).waitFor();
    await page.getByRole('button', { name: 'Save changes' }).click();
    await page.getByRole('heading', { name: /conflict-device/ }).waitFor();

    const saved = await api('GET', '/enrollments/conflict-device');
    assert.equal(saved.body.provisioningStatus, 'disabled', 'the other change is kept');
    assert.deepEqual(saved.body.initialTwin.tags, { line: '2' }, 'this change is applied');
  });
});

test('the system log fits a phone, and an erased device\'s failures say their reason was erased', async () => {
  const enrollment = await api('PUT', '/enrollments/log-device-with-a-rather-long-registration-id-0001', {
    registrationId: 'log-device-with-a-rather-long-registration-id-0001',
    attestation: { type: 'symmetricKey' },
  });
  assert.equal(enrollment.status, 200);
  const wrongKey = Buffer.alloc(32, 7).toString('base64');
  const refused = await rawRegister(portal.server.info.idScope, 'log-device-with-a-rather-long-registration-id-0001', wrongKey);
  assert.equal(refused.httpStatus, 401);
  const erase = await api('PUT', '/dataRequests/portal-polish-erase', { type: 'erase', subject: { registrationId: 'log-device-with-a-rather-long-registration-id-0001' } });
  assert.ok([200, 201, 202].includes(erase.status), JSON.stringify(erase.body));
  for (let i = 0; i < 100 && (await api('GET', '/dataRequests/portal-polish-erase')).body.status !== 'completed'; i += 1) {
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  // A failure that is not erased keeps its reason.
  await api('PUT', '/enrollments/log-device-kept', { registrationId: 'log-device-kept', attestation: { type: 'symmetricKey' } });
  await rawRegister(portal.server.info.idScope, 'log-device-kept', wrongKey);

  await withPage(PHONE, async (page) => {
    await page.getByRole('button', { name: 'Menu' }).click();
    await nav(page).getByRole('link', { name: 'System log' }).click();
    await page.getByRole('heading', { name: 'System log', level: 1 }).waitFor();
    await page.getByText('reason removed when the device\'s data was erased').first().waitFor();
    assert.equal(await page.getByText('no reason recorded').count(), 0);
    const width = await page.evaluate<number>('document.documentElement.scrollWidth');
    assert.ok(width <= PHONE.width, `the system log scrolls sideways at ${PHONE.width} px (page is ${width} px wide)`);
  });
});

test('a symmetric-key group page computes a device key the device registers with', async () => {
  const group = await api('PUT', '/enrollmentGroups/key-group', { enrollmentGroupId: 'key-group', attestation: { type: 'symmetricKey' } });
  const groupKey = group.body.attestation.symmetricKey.primaryKey as string;
  await withPage(DESKTOP, async (page) => {
    await nav(page).getByRole('link', { name: 'Enrollment groups' }).click();
    await page.getByRole('link', { name: 'key-group' }).click();
    await page.getByLabel('Registration ID of the device').fill('key-group-device-1');
    await page.getByRole('button', { name: 'Compute device key' }).click();
    const key = (await page.getByTestId('device-key').innerText()).trim();
    assert.equal(key, deriveDeviceKey(groupKey, 'key-group-device-1'));
    assert.equal((await rawRegister(portal.server.info.idScope, 'key-group-device-1', key)).status, 'assigned');

    await page.getByLabel('Registration ID of the device').fill('not valid!');
    await page.getByRole('button', { name: 'Compute device key' }).click();
    await page.getByText('A registration ID is up to 128 letters').waitFor();
    assert.equal(await page.getByTestId('device-key').count(), 0);
  });
});

test('instance settings set the system-log retention and the lifecycle-event webhook, and remove it', async () => {
  await withPage(DESKTOP, async (page) => {
    await nav(page).getByRole('link', { name: 'Instance' }).click();
    await page.getByRole('button', { name: 'Edit' }).click();
    await page.getByLabel('System log retention (days)').fill('45');
    await page.getByLabel('Lifecycle event webhook URL').fill('https://hooks.example.com/portal');
    await page.getByRole('button', { name: 'Save', exact: true }).click();
    await page.getByText('Webhook signing secret, shown only now').waitFor();
    await page.getByText('45 days').waitFor();
    const instance = await api('GET', '/instance');
    assert.equal(instance.body.auditRetentionDays, 45);
    assert.equal(instance.body.eventWebhookUrl, 'https://hooks.example.com/portal');

    await page.getByRole('button', { name: 'Edit' }).click();
    await page.getByLabel('Lifecycle event webhook URL').fill('');
    await page.getByRole('button', { name: 'Save', exact: true }).click();
    await page.getByRole('button', { name: 'Edit' }).waitFor();
    assert.equal((await api('GET', '/instance')).body.eventWebhookUrl, null);
  });
  assert.deepEqual(pageErrors, []);
});
