import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { test } from 'node:test';
import type { Page } from 'playwright-core';
import { DESKTOP, portalHarness } from './portal-browser.js';

/**
 * The portal's Certificate issuance page (issue 14; docs/certificate-issuance.md), in Chromium as test/portal.test.ts
 * drives it: credential policies created, listed, edited, refused with the server's error and deleted; the issuing CA
 * shown read-only (never a key); the enrollment form choosing among the policies.
 */
const portal = portalHarness();
const { pageErrors, api, nav } = portal;
const withPage = (body: (page: Page) => Promise<void>): Promise<void> => portal.withPage(DESKTOP, body);

test('credential policies: create, list, edit, a clear error for a bad value, delete; the issuing CA without its key', async () => {
  await withPage(async (page) => {
    await nav(page).getByRole('link', { name: 'Certificate issuance' }).click();
    await page.getByRole('heading', { name: 'Certificate issuance', level: 1 }).waitFor();
    await page.getByText('No credential policy yet').waitFor();

    // The issuing CA, as the server has it: subject, thumbprint, validity, CRL URL.
    const ca = (await api('GET', '/issuingCa')).body;
    const section = page.locator('section', { has: page.getByRole('heading', { name: 'Issuing CA' }) });
    await section.getByText(ca.info.sha256Thumbprint as string).waitFor();
    await section.getByText(ca.info.subjectName as string, { exact: true }).first().waitFor();
    await section.getByText(ca.crlUrl as string).waitFor();
    assert.match(ca.crlUrl as string, /\/crl\/.+\.crl$/);
    assert.equal(new Date(ca.info.notAfterUtc as string).getTime(), new Date(new X509Certificate(ca.certificate as string).validTo).getTime());
    await section.locator(`time[datetime="${ca.info.notBeforeUtc as string}"]`).waitFor();
    await section.locator(`time[datetime="${ca.info.notAfterUtc as string}"]`).waitFor();
    assert.doesNotMatch(await page.content(), /PRIVATE KEY/, 'never a key on the page');

    // Create.
    await page.getByRole('button', { name: 'New credential policy' }).click();
    const dialog = page.getByRole('dialog');
    await dialog.getByLabel('Policy name').fill('portal-ec');
    await dialog.getByLabel(/rsa2048/).uncheck();
    await dialog.getByLabel(/rsa3072/).uncheck();
    await dialog.getByLabel(/rsa4096/).uncheck();
    await dialog.getByLabel('Certificate validity (days)').fill('90');
    await dialog.getByRole('button', { name: 'Save' }).click();
    await dialog.waitFor({ state: 'detached' });
    const row = page.getByTestId('credential-policy-portal-ec');
    await row.getByText('ecP256, ecP384').waitFor();
    await row.getByText('90', { exact: true }).waitFor();
    const created = await api('GET', '/credentialPolicies/portal-ec');
    assert.equal(created.status, 200);
    assert.deepEqual(created.body.keyTypes, ['ecP256', 'ecP384']);
    assert.equal(created.body.validityInDays, 90);

    // Creating one of the same name does not replace it.
    await page.getByRole('button', { name: 'New credential policy' }).click();
    await dialog.getByLabel('Policy name').fill('portal-ec');
    await dialog.getByRole('button', { name: 'Save' }).click();
    await dialog.getByRole('alert').getByText(/already exists; edit it instead/).waitFor();
    await dialog.getByRole('button', { name: 'Cancel' }).click();
    assert.equal((await api('GET', '/credentialPolicies/portal-ec')).body.validityInDays, 90);

    // Edit: a bad value is the server's error, in the dialog, and changes nothing.
    await page.getByRole('button', { name: 'Edit portal-ec' }).click();
    assert.equal(await dialog.getByLabel('Policy name').inputValue(), 'portal-ec');
    await dialog.getByLabel('Certificate validity (days)').fill('5000');
    await dialog.getByRole('button', { name: 'Save' }).click();
    const alert = dialog.getByRole('alert');
    await alert.getByText('validityInDays must be a whole number from 1 to 3650.').waitFor();
    await alert.getByText(/error 400031/).waitFor();
    assert.equal((await api('GET', '/credentialPolicies/portal-ec')).body.validityInDays, 90);
    // No key type at all is refused too.
    await dialog.getByLabel('Certificate validity (days)').fill('365');
    await dialog.getByLabel(/ecP256/).uncheck();
    await dialog.getByLabel(/ecP384/).uncheck();
    await dialog.getByRole('button', { name: 'Save' }).click();
    await alert.getByText('keyTypes must name at least one key type.').waitFor();
    await dialog.getByLabel(/rsa3072/).check();
    await dialog.getByRole('button', { name: 'Save' }).click();
    await dialog.waitFor({ state: 'detached' });
    await row.getByText('rsa3072', { exact: true }).waitFor();
    await row.getByText('365', { exact: true }).waitFor();
    const edited = await api('GET', '/credentialPolicies/portal-ec');
    assert.deepEqual(edited.body.keyTypes, ['rsa3072']);
    assert.equal(edited.body.validityInDays, 365);

    // The enrollment form chooses among the policies.
    await nav(page).getByRole('link', { name: 'Enrollments' }).click();
    await page.getByRole('link', { name: 'New enrollment' }).click();
    await page.getByRole('textbox', { name: 'Registration ID', exact: true }).fill('portal-csr-device');
    await page.getByLabel('Credential policy (certificates from CSRs)').selectOption('portal-ec');
    await page.getByRole('button', { name: 'Create enrollment' }).click();
    await page.getByRole('heading', { name: /portal-csr-device/ }).waitFor();
    assert.equal((await api('GET', '/enrollments/portal-csr-device')).body.credentialPolicyName, 'portal-ec');

    // Delete.
    await nav(page).getByRole('link', { name: 'Certificate issuance' }).click();
    await page.getByRole('button', { name: 'Delete portal-ec' }).click();
    await page.getByRole('dialog').getByRole('button', { name: 'Delete' }).click();
    await page.getByText('No credential policy yet').waitFor();
    assert.equal((await api('GET', '/credentialPolicies/portal-ec')).status, 404);
  });
  assert.deepEqual(pageErrors, []);
});
