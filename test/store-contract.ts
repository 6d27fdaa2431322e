import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, test } from 'node:test';
import type { StoredAttestation, StoredCertificate, StoredEnrollment, StoredEnrollmentGroup } from '../src/domain/enrollment.js';
import type { Filter } from '../src/domain/query.js';
import type {
  AuditEvent,
  AuditQuery,
  DataRequestRecord,
  AccessPolicyRecord,
  CaCertificateRecord,
  CredentialPolicyRecord,
  InstanceRecord,
  IssuedCertificateRecord,
  IssuingCaRecord,
  LinkedHubRecord,
  ListQuery,
  Page,
  Store,
  StoredOperation,
  StoredRegistration,
} from '../src/store/store.js';

/**
 * The contract every Store implementation passes (STYLE.md: one store, one contract suite run against each dialect).
 * `open` returns a fresh, empty, migrated store; each test gets its own and closes it.
 */
export function runStoreContract(name: string, open: () => Promise<Store>): void {
  describe(`Store contract: ${name}`, () => {
    let store: Store;
    let a: InstanceRecord;
    let b: InstanceRecord;

    beforeEach(async () => {
      store = await open();
      a = instance('a', '0ne0000000A', ['dps-a.example.net', 'a.local']);
      b = instance('b', '0ne0000000B', ['dps-b.example.net']);
      await store.insertInstance(a);
      await store.insertInstance(b);
    });
    afterEach(async () => {
      await store.close();
    });

    describe('instances', () => {
      test('insert, get, list', async () => {
        assert.deepEqual(await store.getInstance(a.id), a);
        assert.deepEqual(await store.getInstance(b.id), b);
        assert.equal(await store.getInstance('no-such-instance'), undefined);
        const all = await store.listInstances();
        assert.deepEqual(sortBy(all, (i) => i.id), sortBy([a, b], (i) => i.id));
      });

      test('find by ID scope and by host name, both case-insensitively', async () => {
        assert.deepEqual(await store.findInstanceByIdScope('0NE0000000a'), a);
        assert.deepEqual(await store.findInstanceByIdScope('0ne0000000b'), b);
        assert.equal(await store.findInstanceByIdScope('0ne0000000C'), undefined);
        assert.deepEqual(await store.findInstanceByHostName('DPS-A.Example.NET'), a);
        assert.deepEqual(await store.findInstanceByHostName('a.local'), a);
        assert.deepEqual(await store.findInstanceByHostName('dps-b.example.net'), b);
        assert.equal(await store.findInstanceByHostName('dps-c.example.net'), undefined);
      });

      test('update replaces the document and the host names', async () => {
        const updated: InstanceRecord = { ...a, serviceHostNames: ['dps-a2.example.net'], allocationPolicy: 'static' };
        await store.updateInstance(updated);
        assert.deepEqual(await store.getInstance(a.id), updated);
        assert.equal(await store.findInstanceByHostName('dps-a.example.net'), undefined);
        assert.equal(await store.findInstanceByHostName('a.local'), undefined);
        assert.deepEqual(await store.findInstanceByHostName('DPS-A2.example.net'), updated);
        assert.deepEqual(await store.findInstanceByHostName('dps-b.example.net'), b, 'the other instance keeps its host name');
      });

      test('delete removes the instance and everything that belongs to it, and nothing of another instance', async () => {
        for (const owner of [a, b]) {
          await store.putAccessPolicy(owner.id, policy('owner'));
          await store.putLinkedHub(owner.id, hub('hub1.example.net'));
          await store.putEnrollment(owner.id, enrollment('dev-1', { attestation: x509Client(`AA${owner.name}`) }));
          await store.putEnrollmentGroup(owner.id, group('grp-1', { attestation: x509Signing(`BB${owner.name}`) }));
          await store.putRegistration(owner.id, registration('dev-1'));
        }
        assert.equal(await store.deleteInstance(a.id), true);
        assert.equal(await store.getInstance(a.id), undefined);
        assert.equal(await store.findInstanceByIdScope(a.idScope), undefined);
        assert.equal(await store.findInstanceByHostName('dps-a.example.net'), undefined);
        assert.deepEqual(await store.listAccessPolicies(a.id), []);
        assert.deepEqual(await store.listLinkedHubs(a.id), []);
        assert.equal(await store.getEnrollment(a.id, 'dev-1'), undefined);
        assert.equal(await store.getEnrollmentGroup(a.id, 'grp-1'), undefined);
        assert.equal(await store.getRegistration(a.id, 'dev-1'), undefined);
        assert.equal(await store.findCertificateOwner(a.id, 'AAa'), undefined);
        assert.equal(await store.findCertificateOwner(a.id, 'BBa'), undefined);
        assert.deepEqual((await store.queryEnrollments(a.id, all())).items, []);
        // The other instance is untouched.
        assert.deepEqual(await store.listInstances(), [b]);
        assert.deepEqual(await store.findInstanceByHostName('dps-b.example.net'), b);
        assert.deepEqual(await store.listAccessPolicies(b.id), [policy('owner')]);
        assert.deepEqual(await store.listLinkedHubs(b.id), [hub('hub1.example.net')]);
        assert.deepEqual(await store.getEnrollment(b.id, 'dev-1'), enrollment('dev-1', { attestation: x509Client('AAb') }));
        assert.deepEqual(await store.getRegistration(b.id, 'dev-1'), registration('dev-1'));
        assert.deepEqual(await store.findCertificateOwner(b.id, 'BBb'), { kind: 'group', id: 'grp-1' });
        // A second delete finds nothing.
        assert.equal(await store.deleteInstance(a.id), false);
      });

      test('a host name belongs to one instance: another instance cannot take it', async () => {
        const thief = instance('c', '0ne0000000C', ['DPS-A.example.net']);
        await assert.rejects(store.transaction((trx) => trx.insertInstance(thief)));
        assert.equal(await store.getInstance(thief.id), undefined);
        await assert.rejects(store.transaction((trx) => trx.updateInstance({ ...b, serviceHostNames: ['a.local'] })));
        assert.deepEqual(await store.findInstanceByHostName('a.local'), a);
        assert.deepEqual(await store.getInstance(b.id), b);
      });

      test('an instance can be inserted again after delete, with the same host names', async () => {
        await store.deleteInstance(a.id);
        const again = instance('a2', '0ne0000000A', ['dps-a.example.net']);
        await store.insertInstance(again);
        assert.deepEqual(await store.findInstanceByHostName('dps-a.example.net'), again);
        assert.deepEqual(await store.findInstanceByIdScope('0ne0000000A'), again);
      });
    });

    describe('access policies and linked hubs', () => {
      test('access policies: put, get by name case-insensitively, list, replace, delete', async () => {
        const owner = policy('provisioningserviceowner');
        const reader = policy('EnrollmentRead', ['EnrollmentRead']);
        await store.putAccessPolicy(a.id, reader);
        await store.putAccessPolicy(a.id, owner);
        assert.deepEqual(await store.getAccessPolicy(a.id, 'ProvisioningServiceOwner'), owner);
        assert.deepEqual(await store.getAccessPolicy(a.id, 'enrollmentread'), reader);
        assert.equal(await store.getAccessPolicy(a.id, 'nobody'), undefined);
        assert.deepEqual(
          sortBy(await store.listAccessPolicies(a.id), (p) => p.keyName.toLowerCase()),
          [reader, owner],
        );
        const rotated: AccessPolicyRecord = { ...reader, primaryKey: 'cm90YXRlZC1wcmltYXJ5LWtleQ==' };
        await store.putAccessPolicy(a.id, { ...rotated, keyName: 'ENROLLMENTREAD' });
        assert.equal((await store.listAccessPolicies(a.id)).length, 2, 'a put under the same name (any case) replaces');
        assert.deepEqual(await store.getAccessPolicy(a.id, 'EnrollmentRead'), { ...rotated, keyName: 'ENROLLMENTREAD' });
        assert.equal(await store.deleteAccessPolicy(a.id, 'enrollmentREAD'), true);
        assert.equal(await store.deleteAccessPolicy(a.id, 'enrollmentREAD'), false);
        assert.deepEqual(await store.listAccessPolicies(a.id), [owner]);
        assert.deepEqual(await store.listAccessPolicies(b.id), []);
      });

      test('linked hubs: put, get by name case-insensitively, list, replace, delete', async () => {
        const one = hub('hub1.example.net');
        const two: LinkedHubRecord = { ...hub('hub2.example.net'), builtIn: true, location: 'westeurope', allocationWeight: 5 };
        await store.putLinkedHub(a.id, two);
        await store.putLinkedHub(a.id, one);
        assert.deepEqual(await store.getLinkedHub(a.id, 'HUB2.example.net'), two);
        assert.deepEqual(sortBy(await store.listLinkedHubs(a.id), (h) => h.name), [one, two]);
        const reweighted: LinkedHubRecord = { ...one, allocationWeight: 100, applyAllocationPolicy: false };
        await store.putLinkedHub(a.id, reweighted);
        assert.deepEqual(await store.getLinkedHub(a.id, 'hub1.example.net'), reweighted);
        assert.equal((await store.listLinkedHubs(a.id)).length, 2);
        assert.equal(await store.deleteLinkedHub(a.id, 'Hub1.Example.Net'), true);
        assert.equal(await store.deleteLinkedHub(a.id, 'hub1.example.net'), false);
        assert.deepEqual(await store.listLinkedHubs(a.id), [two]);
        assert.equal(await store.getLinkedHub(b.id, 'hub2.example.net'), undefined);
      });
    });

    describe('enrollments and enrollment groups', () => {
      test('enrollment: put, get by registration ID case-insensitively, upsert replaces, delete returns whether it existed', async () => {
        const doc = enrollment('Dev-Mixed.Case_1', { deviceId: 'Device-1' });
        await store.putEnrollment(a.id, doc);
        assert.deepEqual(await store.getEnrollment(a.id, 'dev-mixed.case_1'), doc);
        assert.deepEqual(await store.getEnrollment(a.id, 'DEV-MIXED.CASE_1'), doc);
        const replaced = enrollment('DEV-MIXED.CASE_1', { provisioningStatus: 'disabled', etag: '"e2"' });
        await store.putEnrollment(a.id, replaced);
        assert.deepEqual(await store.getEnrollment(a.id, 'Dev-Mixed.Case_1'), replaced, 'the whole document is replaced');
        assert.equal((await store.queryEnrollments(a.id, all())).items.length, 1);
        assert.equal(await store.deleteEnrollment(a.id, 'dev-mixed.CASE_1'), true);
        assert.equal(await store.getEnrollment(a.id, 'Dev-Mixed.Case_1'), undefined);
        assert.equal(await store.deleteEnrollment(a.id, 'dev-mixed.CASE_1'), false);
      });

      test('enrollment group: put, get case-insensitively, upsert replaces, delete returns whether it existed', async () => {
        const doc = group('Group-One');
        await store.putEnrollmentGroup(a.id, doc);
        assert.deepEqual(await store.getEnrollmentGroup(a.id, 'GROUP-ONE'), doc);
        const replaced = group('group-one', { attestation: x509CaReference('my-ca'), etag: '"g2"' });
        await store.putEnrollmentGroup(a.id, replaced);
        assert.deepEqual(await store.getEnrollmentGroup(a.id, 'Group-One'), replaced);
        assert.equal((await store.queryEnrollmentGroups(a.id, all())).items.length, 1);
        assert.equal(await store.deleteEnrollmentGroup(a.id, 'GROUP-one'), true);
        assert.equal(await store.getEnrollmentGroup(a.id, 'group-one'), undefined);
        assert.equal(await store.deleteEnrollmentGroup(a.id, 'group-one'), false);
      });

      test('put with expectedEtag null only creates: false (and nothing written, certificates included) when the ID exists in any case', async () => {
        const first = enrollment('Create-Only', { attestation: x509Client('C011') });
        assert.equal(await store.putEnrollment(a.id, first, null), true);
        assert.equal(await store.putEnrollment(a.id, enrollment('CREATE-ONLY', { provisioningStatus: 'disabled', attestation: x509Client('C012') }), null), false);
        assert.deepEqual(await store.getEnrollment(a.id, 'create-only'), first);
        assert.deepEqual(await store.findCertificateOwner(a.id, 'C011'), { kind: 'individual', id: 'create-only' });
        assert.equal(await store.findCertificateOwner(a.id, 'C012'), undefined);
        const firstGroup = group('Create-Only-Group', { attestation: x509Signing('C021') });
        assert.equal(await store.putEnrollmentGroup(a.id, firstGroup, null), true);
        assert.equal(await store.putEnrollmentGroup(a.id, group('create-only-group', { attestation: x509Signing('C022') }), null), false);
        assert.deepEqual(await store.getEnrollmentGroup(a.id, 'CREATE-ONLY-GROUP'), firstGroup);
        assert.equal(await store.findCertificateOwner(a.id, 'C022'), undefined);
        // Another instance's entry of the same ID is no obstacle.
        assert.equal(await store.putEnrollment(b.id, enrollment('create-only'), null), true);
      });

      test('an enrollment and a group may share an ID; they are separate', async () => {
        await store.putEnrollment(a.id, enrollment('same'));
        await store.putEnrollmentGroup(a.id, group('same'));
        assert.equal(await store.deleteEnrollment(a.id, 'same'), true);
        assert.deepEqual(await store.getEnrollmentGroup(a.id, 'same'), group('same'));
      });

      test('the certificate owner index follows put, replace and delete', async () => {
        await store.putEnrollment(a.id, enrollment('Dev-X', { attestation: x509Client('AA11', 'AA22') }));
        await store.putEnrollmentGroup(a.id, group('Grp-X', { attestation: x509Signing('BB11') }));
        assert.deepEqual(await store.findCertificateOwner(a.id, 'AA11'), { kind: 'individual', id: 'dev-x' });
        assert.deepEqual(await store.findCertificateOwner(a.id, 'aa22'), { kind: 'individual', id: 'dev-x' }, 'thumbprints compare case-insensitively');
        assert.deepEqual(await store.findCertificateOwner(a.id, 'BB11'), { kind: 'group', id: 'grp-x' });
        assert.equal(await store.findCertificateOwner(a.id, 'CC11'), undefined);

        // Replacing the enrollment with other certificates moves the index.
        await store.putEnrollment(a.id, enrollment('dev-x', { attestation: x509Client('AA33') }));
        assert.equal(await store.findCertificateOwner(a.id, 'AA11'), undefined);
        assert.equal(await store.findCertificateOwner(a.id, 'AA22'), undefined);
        assert.deepEqual(await store.findCertificateOwner(a.id, 'AA33'), { kind: 'individual', id: 'dev-x' });

        // Switching to another attestation type drops the entries.
        await store.putEnrollmentGroup(a.id, group('grp-x'));
        assert.equal(await store.findCertificateOwner(a.id, 'BB11'), undefined);

        // The same certificate in primary and secondary is one entry.
        await store.putEnrollmentGroup(a.id, group('grp-y', { attestation: x509Signing('DD11', 'DD11') }));
        assert.deepEqual(await store.findCertificateOwner(a.id, 'DD11'), { kind: 'group', id: 'grp-y' });

        await store.deleteEnrollment(a.id, 'DEV-X');
        assert.equal(await store.findCertificateOwner(a.id, 'AA33'), undefined);
        await store.deleteEnrollmentGroup(a.id, 'GRP-Y');
        assert.equal(await store.findCertificateOwner(a.id, 'DD11'), undefined);
      });

      test('deleting a group leaves an individual enrollment of the same ID in the certificate index', async () => {
        await store.putEnrollment(a.id, enrollment('same', { attestation: x509Client('EE11') }));
        await store.putEnrollmentGroup(a.id, group('same', { attestation: x509Signing('EE22') }));
        await store.deleteEnrollmentGroup(a.id, 'same');
        assert.deepEqual(await store.findCertificateOwner(a.id, 'EE11'), { kind: 'individual', id: 'same' });
        assert.equal(await store.findCertificateOwner(a.id, 'EE22'), undefined);
      });
    });

    describe('paging and filters', () => {
      // 25 enrollments Dev-00 … Dev-24 with mixed case; every third is disabled, every fifth is x509.
      const ids = Array.from({ length: 25 }, (_, i) => `${i % 2 === 0 ? 'Dev' : 'DEV'}-${String(i).padStart(2, '0')}`);
      const docs = ids.map((id, i) =>
        enrollment(id, {
          provisioningStatus: i % 3 === 0 ? 'disabled' : 'enabled',
          ...(i % 5 === 0 ? { attestation: x509Client(`F${i}`) } : {}),
          ...(i === 7 ? { deviceId: 'Custom-Device' } : {}),
        }),
      );
      const keys = ids.map((id) => id.toLowerCase());
      const byKey = (page: Page<StoredEnrollment>): string[] => page.items.map((doc) => doc.registrationId.toLowerCase());

      beforeEach(async () => {
        // Inserted out of order: paging order must come from the key, not insertion.
        for (const doc of [...docs].reverse()) await store.putEnrollment(a.id, doc);
        await store.putEnrollment(b.id, enrollment('dev-99'));
      });

      test('keyset paging: limit, nextKey, afterKey, in key order', async () => {
        const first = await store.queryEnrollments(a.id, { filters: [], limit: 10 });
        assert.deepEqual(byKey(first), keys.slice(0, 10));
        assert.deepEqual(first.items[0], docs[0], 'items are the stored documents');
        assert.equal(typeof first.nextKey, 'string');
        const second = await store.queryEnrollments(a.id, { filters: [], limit: 10, afterKey: first.nextKey });
        assert.deepEqual(byKey(second), keys.slice(10, 20));
        const third = await store.queryEnrollments(a.id, { filters: [], limit: 10, afterKey: second.nextKey });
        assert.deepEqual(byKey(third), keys.slice(20));
        assert.equal(third.nextKey, undefined, 'no nextKey on the last page');
      });

      test('a page that ends exactly at the last item has no nextKey', async () => {
        const page = await store.queryEnrollments(a.id, { filters: [], limit: 25 });
        assert.equal(page.items.length, 25);
        assert.equal(page.nextKey, undefined);
        const almost = await store.queryEnrollments(a.id, { filters: [], limit: 24 });
        assert.equal(almost.items.length, 24);
        assert.notEqual(almost.nextKey, undefined);
      });

      test('paging continues after a key that was deleted between pages', async () => {
        const first = await store.queryEnrollments(a.id, { filters: [], limit: 10 });
        assert.equal(first.nextKey, 'dev-09');
        await store.deleteEnrollment(a.id, 'dev-09');
        await store.deleteEnrollment(a.id, 'dev-10');
        const second = await store.queryEnrollments(a.id, { filters: [], limit: 10, afterKey: first.nextKey });
        assert.deepEqual(byKey(second), keys.slice(11, 21));
      });

      test('prefix is literal: SQL wildcard characters in it match only themselves', async () => {
        await store.putEnrollment(a.id, enrollment('a_b-1'));
        await store.putEnrollment(a.id, enrollment('axb-1'));
        await store.putEnrollment(a.id, enrollment('a%b-1'));
        assert.deepEqual(byKey(await query(store, a.id, [f('registrationId', 'prefix', 'a_')])), ['a_b-1']);
        assert.deepEqual(byKey(await query(store, a.id, [f('registrationId', 'prefix', 'a%')])), ['a%b-1']);
        assert.deepEqual(byKey(await query(store, a.id, [f('registrationId', 'eq', 'a_b-1')])), ['a_b-1']);
      });

      test('eq and ne on the ID column compare case-insensitively', async () => {
        assert.deepEqual(byKey(await query(store, a.id, [f('registrationId', 'eq', 'dev-03')])), ['dev-03']);
        assert.deepEqual(byKey(await query(store, a.id, [f('registrationId', 'eq', 'DEV-04')])), ['dev-04']);
        const ne = byKey(await query(store, a.id, [f('registrationId', 'ne', 'Dev-00')]));
        assert.deepEqual(ne, keys.slice(1));
      });

      test('in and prefix, case-insensitive on ID columns', async () => {
        assert.deepEqual(byKey(await query(store, a.id, [f('registrationId', 'in', 'DEV-01', 'dev-02', 'Dev-24', 'dev-77')])), [
          'dev-01',
          'dev-02',
          'dev-24',
        ]);
        assert.deepEqual(byKey(await query(store, a.id, [f('registrationId', 'prefix', 'DEV-1')])), keys.slice(10, 20));
        assert.deepEqual(byKey(await query(store, a.id, [f('registrationId', 'prefix', 'dev-2')])), keys.slice(20));
        assert.deepEqual(byKey(await query(store, a.id, [f('registrationId', 'prefix', 'nope')])), []);
        assert.deepEqual(byKey(await query(store, a.id, [f('registrationId', 'prefix', '')])), keys, 'an empty prefix matches everything');
      });

      test('deviceId, provisioningStatus and attestationType filters', async () => {
        assert.deepEqual(byKey(await query(store, a.id, [f('deviceId', 'eq', 'custom-DEVICE')])), ['dev-07']);
        const disabled = keys.filter((_, i) => i % 3 === 0);
        assert.deepEqual(byKey(await query(store, a.id, [f('provisioningStatus', 'eq', 'disabled')])), disabled);
        const x509 = keys.filter((_, i) => i % 5 === 0);
        assert.deepEqual(byKey(await query(store, a.id, [f('attestationType', 'eq', 'x509')])), x509);
        assert.deepEqual(
          byKey(await query(store, a.id, [f('attestationType', 'in', 'x509', 'tpm')])),
          x509,
        );
        assert.deepEqual(
          byKey(await query(store, a.id, [f('attestationType', 'ne', 'x509'), f('provisioningStatus', 'eq', 'disabled')])),
          keys.filter((_, i) => i % 3 === 0 && i % 5 !== 0),
          'filters are AND-joined',
        );
      });

      test('filters combine with paging', async () => {
        const enabled = keys.filter((_, i) => i % 3 !== 0);
        const first = await store.queryEnrollments(a.id, { filters: [f('provisioningStatus', 'eq', 'enabled')], limit: 6 });
        const rest = await store.queryEnrollments(a.id, { filters: [f('provisioningStatus', 'eq', 'enabled')], limit: 100, afterKey: first.nextKey });
        assert.deepEqual([...byKey(first), ...byKey(rest)], enabled);
        assert.equal(rest.nextKey, undefined);
      });

      test('a scan limit bounds the rows one page of an unindexed filter reads; the continuation leads to every match', async () => {
        const filters = [f('provisioningStatus', 'eq', 'disabled')];
        const first = await store.queryEnrollments(a.id, { filters, limit: 100, scanLimit: 4 });
        assert.deepEqual([byKey(first), first.nextKey], [['dev-00', 'dev-03'], 'dev-03'], 'the page ends with its window of 4 rows');
        const found = byKey(first);
        let afterKey = first.nextKey;
        let pages = 1;
        while (afterKey !== undefined) {
          const page = await store.queryEnrollments(a.id, { filters, limit: 100, afterKey, scanLimit: 4 });
          found.push(...byKey(page));
          afterKey = page.nextKey;
          pages += 1;
        }
        assert.deepEqual(found, keys.filter((_, i) => i % 3 === 0));
        assert.equal(pages, 7, '25 rows in windows of 4');
        const empty = await store.queryEnrollments(a.id, { filters: [f('attestationType', 'eq', 'tpm')], limit: 100, scanLimit: 10 });
        assert.deepEqual([byKey(empty), empty.nextKey], [[], 'dev-09'], 'a window with no match is an empty page that goes on');
        const byDevice = await store.queryEnrollments(a.id, { filters: [f('deviceId', 'eq', 'custom-DEVICE'), f('provisioningStatus', 'eq', 'enabled')], limit: 100, scanLimit: 2 });
        assert.deepEqual([byKey(byDevice), byDevice.nextKey], [['dev-07'], undefined], 'the window counts only the rows the indexed filter leaves');
      });

      test('groups page and filter the same way', async () => {
        for (const id of ['G-b', 'g-A', 'G-c']) await store.putEnrollmentGroup(a.id, group(id));
        await store.putEnrollmentGroup(a.id, group('other', { provisioningStatus: 'disabled', attestation: x509CaReference('ca') }));
        const first = await store.queryEnrollmentGroups(a.id, { filters: [f('enrollmentGroupId', 'prefix', 'G-')], limit: 2 });
        assert.deepEqual(first.items.map((g) => g.enrollmentGroupId), ['g-A', 'G-b']);
        const second = await store.queryEnrollmentGroups(a.id, { filters: [f('enrollmentGroupId', 'prefix', 'G-')], limit: 2, afterKey: first.nextKey });
        assert.deepEqual(second.items.map((g) => g.enrollmentGroupId), ['G-c']);
        assert.equal(second.nextKey, undefined);
        const disabled = await store.queryEnrollmentGroups(a.id, { filters: [f('provisioningStatus', 'eq', 'disabled'), f('attestationType', 'eq', 'x509')], limit: 10 });
        assert.deepEqual(disabled.items, [group('other', { provisioningStatus: 'disabled', attestation: x509CaReference('ca') })]);
        assert.deepEqual((await store.queryEnrollmentGroups(a.id, { filters: [f('enrollmentGroupId', 'in', 'G-A', 'OTHER')], limit: 10 })).items.map((g) => g.enrollmentGroupId), ['g-A', 'other']);
      });
    });

    describe('registration records', () => {
      test('getRegistrations reads many records at once, any case, skipping IDs without one', async () => {
        for (const id of ['Rec-1', 'rec-2', 'REC-3']) await store.putRegistration(a.id, registration(id));
        await store.putRegistration(b.id, registration('rec-4'));
        const many = Array.from({ length: 1200 }, (_, i) => `none-${i}`);
        const found = await store.getRegistrations(a.id, ['REC-1', 'rec-3', 'rec-4', ...many, 'Rec-2']);
        assert.deepEqual(found.map((record) => record.registrationId).sort(), ['REC-3', 'Rec-1', 'rec-2']);
        assert.deepEqual(await store.getRegistrations(a.id, []), []);
      });

      test('put, get case-insensitively, upsert replaces, delete returns whether it existed', async () => {
        const record = registration('Reg-1', { payload: { a: 1 }, hubHistory: ['hub1.example.net'] });
        await store.putRegistration(a.id, record);
        assert.deepEqual(await store.getRegistration(a.id, 'REG-1'), record);
        const replaced = registration('reg-1', { status: 'failed', errorCode: 401002, errorMessage: 'no' });
        await store.putRegistration(a.id, replaced);
        assert.deepEqual(await store.getRegistration(a.id, 'Reg-1'), replaced);
        assert.equal(await store.deleteRegistration(a.id, 'REG-1'), true);
        assert.equal(await store.getRegistration(a.id, 'reg-1'), undefined);
        assert.equal(await store.deleteRegistration(a.id, 'reg-1'), false);
      });

      // SQLite writes a re-registration without touching the key columns' indexes when the keys stay (session 21): a
      // record whose device ID or group changes must still be found by the new key, and no longer by the old one.
      test('a record put again under another device ID or group is found by the new key only', async () => {
        const byDevice = async (deviceId: string) =>
          (await store.queryRegistrations(a.id, { filters: [{ field: 'deviceId', op: 'eq', values: [deviceId] }], limit: 10 })).items.map((found) => found.registrationId);
        await store.putRegistration(a.id, registration('Moving-1', { deviceId: 'Dev-Old', enrollmentGroupId: 'Grp-Old' }));
        await store.putRegistration(a.id, registration('Moving-1', { deviceId: 'Dev-Old', enrollmentGroupId: 'Grp-Old', status: 'failed' }));
        assert.equal((await store.getRegistration(a.id, 'moving-1'))?.status, 'failed');
        await store.putRegistration(a.id, registration('Moving-1', { deviceId: 'Dev-New', enrollmentGroupId: 'Grp-Old' }));
        assert.deepEqual(await byDevice('dev-new'), ['Moving-1']);
        assert.deepEqual(await byDevice('dev-old'), []);
        await store.putRegistration(a.id, registration('Moving-1', { deviceId: 'Dev-New', enrollmentGroupId: 'Grp-New' }));
        assert.equal(await store.deleteRegistrationsOfGroup(a.id, 'grp-old'), 0);
        assert.equal((await store.getRegistration(a.id, 'moving-1'))?.enrollmentGroupId, 'Grp-New');
        assert.equal(await store.deleteRegistrationsOfGroup(a.id, 'GRP-NEW'), 1);

        const none = { registrationIds: [], deviceIds: [], groupIds: [] };
        const link = { registrationId: 'Moving-1', enrollmentGroupId: 'Grp-Old', hub: 'hub-a', deviceId: 'Dev-New', linkedDateTimeUtc: '2024-01-01T00:00:00.0000000Z' };
        await store.putHubDeviceLink(a.id, link);
        await store.putHubDeviceLink(a.id, { ...link, enrollmentGroupId: 'Grp-New' });
        assert.deepEqual(await store.findHubDeviceLinks(a.id, { ...none, groupIds: ['grp-old'] }), []);
        assert.deepEqual(await store.findHubDeviceLinks(a.id, { ...none, groupIds: ['grp-new'] }), [{ ...link, enrollmentGroupId: 'Grp-New' }]);
      });

      test('query by group, by status and by assigned hub; deleteRegistrationsOfGroup deletes only that group', async () => {
        await store.putRegistration(a.id, registration('g1-dev-b', { enrollmentGroupId: 'Group-1' }));
        await store.putRegistration(a.id, registration('G1-dev-a', { enrollmentGroupId: 'group-1', assignedHub: 'Hub2.example.net' }));
        await store.putRegistration(a.id, registration('g2-dev', { enrollmentGroupId: 'group-2', status: 'failed' }));
        await store.putRegistration(a.id, registration('solo'));
        await store.putRegistration(b.id, registration('g1-dev-other', { enrollmentGroupId: 'group-1' }));

        const ofGroup = await store.queryRegistrations(a.id, { filters: [f('enrollmentGroupId', 'eq', 'GROUP-1')], limit: 10 });
        assert.deepEqual(ofGroup.items.map((r) => r.registrationId), ['G1-dev-a', 'g1-dev-b']);
        assert.equal(ofGroup.nextKey, undefined);
        const paged = await store.queryRegistrations(a.id, { filters: [f('enrollmentGroupId', 'eq', 'group-1')], limit: 1 });
        assert.deepEqual(paged.items.map((r) => r.registrationId), ['G1-dev-a']);
        const paged2 = await store.queryRegistrations(a.id, { filters: [f('enrollmentGroupId', 'eq', 'group-1')], limit: 1, afterKey: paged.nextKey });
        assert.deepEqual(paged2.items.map((r) => r.registrationId), ['g1-dev-b']);
        assert.equal(paged2.nextKey, undefined);

        assert.deepEqual((await query(store, a.id, [f('status', 'eq', 'failed')], 'registrations')).items.map((r) => r.registrationId), ['g2-dev']);
        assert.deepEqual((await query(store, a.id, [f('assignedHub', 'eq', 'HUB2.example.net')], 'registrations')).items.map((r) => r.registrationId), ['G1-dev-a']);
        assert.deepEqual((await query(store, a.id, [f('deviceId', 'eq', 'SOLO')], 'registrations')).items.map((r) => r.registrationId), ['solo']);
        assert.deepEqual((await query(store, a.id, [f('registrationId', 'prefix', 'G1-')], 'registrations')).items.map((r) => r.registrationId), ['G1-dev-a', 'g1-dev-b']);

        assert.equal(await store.deleteRegistrationsOfGroup(a.id, 'Group-1'), 2);
        assert.equal(await store.getRegistration(a.id, 'g1-dev-b'), undefined);
        assert.equal(await store.getRegistration(a.id, 'g1-dev-a'), undefined);
        assert.notEqual(await store.getRegistration(a.id, 'g2-dev'), undefined);
        assert.notEqual(await store.getRegistration(a.id, 'solo'), undefined);
        assert.notEqual(await store.getRegistration(b.id, 'g1-dev-other'), undefined, 'the other instance keeps its records');
        assert.equal(await store.deleteRegistrationsOfGroup(a.id, 'group-1'), 0);
      });

      test('a record without a group is not matched by an empty group filter on another record', async () => {
        await store.putRegistration(a.id, registration('solo'));
        await store.putRegistration(a.id, registration('member', { enrollmentGroupId: 'g' }));
        assert.deepEqual((await query(store, a.id, [f('enrollmentGroupId', 'eq', 'g')], 'registrations')).items.map((r) => r.registrationId), ['member']);
        assert.equal(await store.deleteRegistrationsOfGroup(a.id, 'g'), 1);
        assert.notEqual(await store.getRegistration(a.id, 'solo'), undefined);
      });
    });

    describe('operations', () => {
      test('put, get by exact operation ID, upsert replaces; per instance; deleteInstance removes them', async () => {
        const assigning = operation('4.abc.Op-1', 'dev-1', 'assigning', '2024-01-01T00:00:00.0000000Z');
        await store.putOperation(a.id, assigning);
        assert.deepEqual(await store.getOperation(a.id, '4.abc.Op-1'), assigning);
        assert.equal(await store.getOperation(b.id, '4.abc.Op-1'), undefined, 'an operation belongs to its instance');
        assert.equal(await store.getOperation(a.id, '4.abc.op-1'), undefined, 'operation IDs are opaque: compared exactly');
        const assigned: StoredOperation = {
          ...operation('4.abc.Op-1', 'dev-1', 'assigned', '2024-01-01T00:00:05.0000000Z'),
          registrationState: { registrationId: 'dev-1', status: 'assigned', assignedHub: 'hub1.example.net' },
        };
        await store.putOperation(a.id, assigned);
        assert.deepEqual(await store.getOperation(a.id, '4.abc.Op-1'), assigned);
        await store.putOperation(b.id, operation('4.abc.Op-1', 'dev-1', 'failed', '2024-01-01T00:00:00.0000000Z'));
        assert.deepEqual(await store.getOperation(a.id, '4.abc.Op-1'), assigned, 'the same ID in another instance is another operation');
        await store.deleteInstance(b.id);
        assert.equal(await store.getOperation(b.id, '4.abc.Op-1'), undefined);
        assert.deepEqual(await store.getOperation(a.id, '4.abc.Op-1'), assigned);
      });

      test('deleteOperationsBefore removes only operations last updated before the cutoff', async () => {
        await store.putOperation(a.id, operation('old-a', 'dev-1', 'assigned', '2024-01-01T00:00:00.0000000Z'));
        await store.putOperation(b.id, operation('old-b', 'dev-2', 'failed', '2024-01-01T00:59:59.9990000Z'));
        await store.putOperation(a.id, operation('new-a', 'dev-3', 'assigning', '2024-01-01T01:00:00.0000000Z'));
        assert.equal(await store.deleteOperationsBefore('2024-01-01T01:00:00.0000000Z'), 2);
        assert.equal(await store.getOperation(a.id, 'old-a'), undefined);
        assert.equal(await store.getOperation(b.id, 'old-b'), undefined);
        assert.notEqual(await store.getOperation(a.id, 'new-a'), undefined);
        assert.equal(await store.deleteOperationsBefore('2024-01-01T01:00:00.0000000Z'), 0);
      });
    });

    describe('the operations epoch', () => {
      test('one writer: it moves with every fence written or removed and every operation deleted, and as such a transaction ends; else undefined', async () => {
        const start = store.operationsEpoch();
        if (!store.capabilities.singleWriter) {
          assert.equal(start, undefined, 'several writers: nothing is answered from memory');
          return;
        }
        assert.equal(typeof start, 'number');
        let last = start as number;
        const moved = async (what: string, write: () => Promise<unknown>) => {
          await write();
          const now = store.operationsEpoch() as number;
          assert.ok(now > last, `${what} moves the epoch`);
          last = now;
        };
        // What a registration writes does not move it.
        await store.putOperation(a.id, operation('epoch-1', 'dev-epoch', 'assigned', '2024-01-01T00:00:00.0000000Z'));
        await store.putRegistration(a.id, registration('dev-epoch'));
        assert.equal(store.operationsEpoch(), last);
        await moved('a fence', () => store.putEraseFences(a.id, [{ kind: 'registrationId', id: 'dev-epoch', requestId: 'req-epoch', subjectHash: 'h' }]));
        await moved('a fence removed', () => store.deleteEraseFences(a.id, 'req-epoch'));
        await moved('the operations of a registration deleted', () => store.deleteOperationsOfRegistration(a.id, 'dev-epoch'));
        await moved('the purge', () => store.deleteOperationsBefore('2024-01-01T00:00:00.0000000Z', 10));
        await moved('an instance deleted', () => store.deleteInstance(b.id));
        // Inside a transaction: it moves at the write and again as the transaction ends (committed or rolled back).
        let inside = 0;
        await moved('a fence in a transaction', () =>
          store.transaction(async (tx) => {
            await tx.putEraseFences(a.id, [{ kind: 'deviceId', id: 'dev-epoch', requestId: 'req-epoch-2', subjectHash: 'h' }]);
            inside = tx.operationsEpoch() as number;
          }),
        );
        assert.ok(last > inside, 'the end of the transaction moved it past what was read inside');
        await assert.rejects(
          store.transaction(async (tx) => {
            await tx.deleteEraseFences(a.id, 'req-epoch-2');
            inside = tx.operationsEpoch() as number;
            throw new Error('rolled back');
          }),
        );
        assert.ok((store.operationsEpoch() as number) > inside, 'a rolled-back transaction moves it as it ends too');
      });
    });

    describe('CA certificates', () => {
      test('put, get by name case-insensitively, list in name order, replace, delete', async () => {
        const root = caCertificate('Root-CA', 'AA01');
        const other = caCertificate('another', 'AA02', { isVerified: true });
        await store.putCaCertificate(a.id, root);
        await store.putCaCertificate(a.id, other);
        assert.deepEqual(await store.getCaCertificate(a.id, 'root-ca'), root);
        assert.deepEqual(await store.getCaCertificate(a.id, 'ROOT-CA'), root);
        assert.equal(await store.getCaCertificate(a.id, 'nothing'), undefined);
        assert.deepEqual(await store.listCaCertificates(a.id), [other, root]);
        const pending: CaCertificateRecord = { ...root, name: 'ROOT-ca', verificationCode: 'C0DE', etag: '"r2"' };
        await store.putCaCertificate(a.id, pending);
        assert.deepEqual(await store.getCaCertificate(a.id, 'Root-CA'), pending, 'a put under the same name (any case) replaces');
        assert.equal((await store.listCaCertificates(a.id)).length, 2);
        assert.equal(await store.deleteCaCertificate(a.id, 'root-CA'), true);
        assert.equal(await store.deleteCaCertificate(a.id, 'root-CA'), false);
        assert.deepEqual(await store.listCaCertificates(a.id), [other]);
      });

      test('find by sha256 thumbprint, any case; the index follows replace and delete', async () => {
        await store.putCaCertificate(a.id, caCertificate('root', 'AB01'));
        assert.equal((await store.findCaCertificateByThumbprint(a.id, 'ab01'))?.name, 'root');
        assert.equal(await store.findCaCertificateByThumbprint(a.id, 'AB02'), undefined);
        await store.putCaCertificate(a.id, caCertificate('root', 'AB02'));
        assert.equal(await store.findCaCertificateByThumbprint(a.id, 'AB01'), undefined, 'a replaced certificate leaves the index');
        assert.equal((await store.findCaCertificateByThumbprint(a.id, 'AB02'))?.name, 'root');
        await store.deleteCaCertificate(a.id, 'root');
        assert.equal(await store.findCaCertificateByThumbprint(a.id, 'AB02'), undefined);
      });

      test('per instance: the same name in two instances is two certificates; deleteInstance removes only its own', async () => {
        await store.putCaCertificate(a.id, caCertificate('root', 'AC01'));
        await store.putCaCertificate(b.id, caCertificate('root', 'AC02', { isVerified: true }));
        assert.equal((await store.getCaCertificate(a.id, 'root'))?.info.sha256Thumbprint, 'AC01');
        assert.equal((await store.getCaCertificate(b.id, 'root'))?.isVerified, true);
        assert.equal(await store.findCaCertificateByThumbprint(a.id, 'AC02'), undefined);
        assert.equal(await store.deleteCaCertificate(a.id, 'nothing'), false);
        await store.deleteInstance(a.id);
        assert.deepEqual(await store.listCaCertificates(a.id), []);
        assert.equal(await store.findCaCertificateByThumbprint(a.id, 'AC01'), undefined);
        assert.deepEqual(await store.listCaCertificates(b.id), [caCertificate('root', 'AC02', { isVerified: true })]);
      });
    });

    describe('certificate issuance', () => {
      const issuingCa = (label: string): IssuingCaRecord => ({ certificate: `cert ${label}`, chain: [], privateKey: `key ${label}`, source: 'generated', createdDateTimeUtc: '2025-01-01T00:00:00.0000000Z' });
      const issued = (serialNumber: string, registrationId: string, sha256Thumbprint: string): IssuedCertificateRecord => ({
        serialNumber,
        registrationId,
        credentialPolicyName: 'p',
        sha256Thumbprint,
        sha1Thumbprint: 'S1',
        notBeforeUtc: '2025-01-01T00:00:00.0000000Z',
        notAfterUtc: '2025-02-01T00:00:00.0000000Z',
        issuedDateTimeUtc: `2025-01-01T00:00:0${serialNumber.length % 10}.0000000Z`,
      });

      test('the issuing CA: insert-if-absent keeps the first, replace overwrites; one per instance', async () => {
        assert.equal(await store.getIssuingCa(a.id), undefined);
        assert.equal(await store.putIssuingCa(a.id, issuingCa('first'), false), true);
        assert.equal(await store.putIssuingCa(a.id, issuingCa('second'), false), false, 'a second node loses the race');
        assert.deepEqual(await store.getIssuingCa(a.id), issuingCa('first'));
        assert.equal(await store.putIssuingCa(a.id, { ...issuingCa('operator'), source: 'operator' }, true), true);
        assert.equal((await store.getIssuingCa(a.id))?.source, 'operator');
        assert.equal(await store.getIssuingCa(b.id), undefined);
      });

      test('credential policies: put, get any case, list, delete, per instance', async () => {
        const policy: CredentialPolicyRecord = { name: 'Fleet', keyTypes: ['ecP256'], validityInDays: 30, etag: '"1"', createdDateTimeUtc: 't', lastUpdatedDateTimeUtc: 't' };
        await store.putCredentialPolicy(a.id, policy);
        assert.deepEqual(await store.getCredentialPolicy(a.id, 'fleet'), policy);
        assert.equal(await store.getCredentialPolicy(b.id, 'fleet'), undefined);
        assert.deepEqual(await store.listCredentialPolicies(a.id), [policy]);
        assert.equal(await store.deleteCredentialPolicy(a.id, 'FLEET'), true);
        assert.equal(await store.deleteCredentialPolicy(a.id, 'FLEET'), false);
      });

      test('issued certificates: by thumbprint and registration ID; revoking forgets the ID and feeds the CRL', async () => {
        await store.putIssuedCertificate(a.id, issued('0A', 'Dev-1', 'ab'));
        await store.putIssuedCertificate(a.id, issued('0B01', 'dev-1', 'CD'));
        await store.putIssuedCertificate(a.id, issued('0C', 'dev-2', 'EF'));
        assert.equal((await store.findIssuedCertificate(a.id, 'AB'))?.serialNumber, '0A');
        assert.equal(await store.findIssuedCertificate(b.id, 'AB'), undefined);
        assert.deepEqual((await store.listIssuedCertificates(a.id, 'DEV-1')).map((record) => record.serialNumber), ['0A', '0B01']);
        assert.deepEqual(await store.listRevokedCertificates(a.id), []);

        assert.equal(await store.revokeIssuedCertificates(a.id, 'dev-1', '2025-01-05T00:00:00.0000000Z'), 2);
        assert.deepEqual(await store.listIssuedCertificates(a.id, 'dev-1'), []);
        const revoked = await store.findIssuedCertificate(a.id, 'ab');
        assert.equal(revoked?.revokedDateTimeUtc, '2025-01-05T00:00:00.0000000Z');
        assert.equal(revoked?.registrationId, undefined, 'nothing names the device any more');
        assert.equal(revoked?.credentialPolicyName, undefined);
        assert.deepEqual(await store.listRevokedCertificates(a.id), [
          { serialNumber: '0A', revokedDateTimeUtc: '2025-01-05T00:00:00.0000000Z' },
          { serialNumber: '0B01', revokedDateTimeUtc: '2025-01-05T00:00:00.0000000Z' },
        ]);
        assert.equal((await store.listIssuedCertificates(a.id, 'dev-2')).length, 1);
        await store.deleteInstance(a.id);
        assert.equal(await store.findIssuedCertificate(a.id, 'EF'), undefined);
      });
    });

    describe('transactions', () => {
      test('work that throws leaves nothing behind', async () => {
        await store.putEnrollment(a.id, enrollment('kept', { etag: '"v1"' }));
        await assert.rejects(
          store.transaction(async (trx) => {
            await trx.putEnrollment(a.id, enrollment('kept', { etag: '"v2"' }));
            await trx.putEnrollment(a.id, enrollment('new-one'));
            await trx.putRegistration(a.id, registration('new-one'));
            await trx.deleteAccessPolicy(a.id, 'nothing');
            assert.deepEqual(await trx.getEnrollment(a.id, 'new-one'), enrollment('new-one'), 'the transaction sees its own writes');
            throw new Error('boom');
          }),
          /boom/,
        );
        assert.deepEqual(await store.getEnrollment(a.id, 'kept'), enrollment('kept', { etag: '"v1"' }));
        assert.equal(await store.getEnrollment(a.id, 'new-one'), undefined);
        assert.equal(await store.getRegistration(a.id, 'new-one'), undefined);
      });

      test('work that succeeds commits and returns its value; a nested transaction joins the outer one', async () => {
        const result = await store.transaction(async (trx) => {
          await trx.putEnrollment(a.id, enrollment('one'));
          return trx.transaction(async (inner) => {
            await inner.putEnrollment(a.id, enrollment('two'));
            return 42;
          });
        });
        assert.equal(result, 42);
        assert.deepEqual((await store.queryEnrollments(a.id, all())).items.map((e) => e.registrationId), ['one', 'two']);

        await assert.rejects(
          store.transaction(async (trx) => {
            await trx.transaction(async (inner) => inner.putEnrollment(a.id, enrollment('three')));
            throw new Error('outer fails');
          }),
          /outer fails/,
        );
        assert.equal(await store.getEnrollment(a.id, 'three'), undefined, 'the inner write rolls back with the outer transaction');
      });
    });

    describe('isolation between instances', () => {
      test('the same IDs in two instances are separate entries; no read, query or delete crosses', async () => {
        for (const owner of [a, b]) {
          const tag = owner.name;
          await store.putEnrollment(owner.id, enrollment('shared', { deviceId: `device-${tag}`, attestation: x509Client(`CERT-${tag}`) }));
          await store.putEnrollmentGroup(owner.id, group('shared-group', { etag: `"${tag}"` }));
          await store.putRegistration(owner.id, registration('shared', { deviceId: `device-${tag}`, enrollmentGroupId: 'shared-group' }));
          await store.putAccessPolicy(owner.id, policy(`policy-${tag}`));
          await store.putLinkedHub(owner.id, hub(`hub-${tag}.example.net`));
        }
        assert.equal((await store.getEnrollment(a.id, 'shared'))?.deviceId, 'device-a');
        assert.equal((await store.getEnrollment(b.id, 'shared'))?.deviceId, 'device-b');
        assert.equal((await store.getEnrollmentGroup(b.id, 'shared-group'))?.etag, '"b"');
        assert.equal((await store.getRegistration(b.id, 'shared'))?.deviceId, 'device-b');
        assert.deepEqual((await store.queryEnrollments(a.id, all())).items.map((e) => e.deviceId), ['device-a']);
        assert.deepEqual((await store.queryEnrollmentGroups(a.id, all())).items.map((g) => g.etag), ['"a"']);
        assert.deepEqual((await query(store, a.id, [f('enrollmentGroupId', 'eq', 'shared-group')], 'registrations')).items.map((r) => r.deviceId), ['device-a']);
        assert.deepEqual((await store.listAccessPolicies(a.id)).map((p) => p.keyName), ['policy-a']);
        assert.deepEqual((await store.listLinkedHubs(b.id)).map((h) => h.name), ['hub-b.example.net']);
        assert.equal(await store.getAccessPolicy(a.id, 'policy-b'), undefined);
        assert.equal(await store.getLinkedHub(a.id, 'hub-b.example.net'), undefined);
        assert.equal(await store.findCertificateOwner(a.id, 'CERT-b'), undefined);
        assert.deepEqual(await store.findCertificateOwner(b.id, 'CERT-b'), { kind: 'individual', id: 'shared' });

        // Deletes in instance a leave instance b alone.
        assert.equal(await store.deleteEnrollment(a.id, 'shared'), true);
        assert.equal(await store.deleteEnrollmentGroup(a.id, 'shared-group'), true);
        assert.equal(await store.deleteRegistrationsOfGroup(a.id, 'shared-group'), 1);
        assert.equal(await store.deleteAccessPolicy(a.id, 'policy-b'), false);
        assert.equal(await store.deleteLinkedHub(a.id, 'hub-b.example.net'), false);
        assert.equal(await store.deleteRegistration(a.id, 'shared'), false);
        assert.equal((await store.getEnrollment(b.id, 'shared'))?.deviceId, 'device-b');
        assert.notEqual(await store.getEnrollmentGroup(b.id, 'shared-group'), undefined);
        assert.notEqual(await store.getRegistration(b.id, 'shared'), undefined);
        assert.deepEqual(await store.findCertificateOwner(b.id, 'CERT-b'), { kind: 'individual', id: 'shared' });
        // And the certificate is free in instance a: the index is per instance.
        await store.putEnrollment(a.id, enrollment('other', { attestation: x509Client('CERT-b') }));
        assert.deepEqual(await store.findCertificateOwner(a.id, 'CERT-b'), { kind: 'individual', id: 'other' });
        assert.deepEqual(await store.findCertificateOwner(b.id, 'CERT-b'), { kind: 'individual', id: 'shared' });
      });
    });

    describe('operations of a registration', () => {
      test('count and delete every operation of one registration ID (any case), and nothing else', async () => {
        await store.putOperation(a.id, operation('op-1', 'Dev-1', 'assigned', '2024-01-01T00:00:00.0000000Z'));
        await store.putOperation(a.id, operation('op-2', 'dev-1', 'assigning', '2024-01-01T00:00:01.0000000Z'));
        await store.putOperation(a.id, operation('op-3', 'dev-2', 'assigned', '2024-01-01T00:00:02.0000000Z'));
        await store.putOperation(b.id, operation('op-4', 'dev-1', 'assigned', '2024-01-01T00:00:03.0000000Z'));
        assert.equal(await store.countOperationsOfRegistration(a.id, 'DEV-1'), 2);
        assert.equal(await store.countOperationsOfRegistration(a.id, 'nobody'), 0);
        assert.equal(await store.deleteOperationsOfRegistration(a.id, 'dev-1'), 2);
        assert.equal(await store.countOperationsOfRegistration(a.id, 'dev-1'), 0);
        assert.equal(await store.getOperation(a.id, 'op-1'), undefined);
        assert.notEqual(await store.getOperation(a.id, 'op-3'), undefined);
        assert.equal(await store.countOperationsOfRegistration(b.id, 'dev-1'), 1, 'another instance keeps its own');
      });
    });

    describe('the system log', () => {
      const event = (eventId: string, timeUtc: string, subject: AuditEvent['subject'], overrides: Partial<AuditEvent> = {}): AuditEvent => ({
        eventId,
        timeUtc,
        kind: 'registration',
        operation: 'register',
        actor: 'device',
        subject,
        outcome: 'success',
        ...overrides,
      });

      test('append and query newest first, with every filter and keyset paging', async () => {
        // Event IDs begin with their time's milliseconds (services/audit-log.ts), which a time range searches by.
        const timed = (label: string, timeUtc: string, subject: AuditEvent['subject'], overrides: Partial<AuditEvent> = {}): AuditEvent =>
          event(`${Date.parse(timeUtc).toString(16).padStart(12, '0')}${label}`, timeUtc, subject, overrides);
        const events = [
          timed('e1', '2024-01-01T00:00:01.0000000Z', { registrationId: 'Dev-1', deviceId: 'dev-1' }),
          timed('e2', '2024-01-01T00:00:02.0000000Z', { registrationId: 'dev-2', enrollmentGroupId: 'grp' }, { outcome: 'failure', errorCode: 401002 }),
          timed('e3', '2024-01-01T00:00:03.0000000Z', {}, { kind: 'serviceApi', operation: 'putEnrollment', actor: 'owner' }),
          timed('e4', '2024-01-01T00:00:04.0000000Z', { deviceId: 'DEV-1' }, { kind: 'hubWrite' }),
        ];
        for (const item of events) await store.appendAuditEvent(a.id, item);
        await store.appendAuditEvent(b.id, timed('e5', '2024-01-01T00:00:05.0000000Z', { registrationId: 'dev-1' }));
        const label = (eventId: string | undefined) => eventId?.slice(12);
        const ids = async (query: Partial<AuditQuery>) => (await store.queryAuditEvents(a.id, { limit: 10, ...query })).items.map((item) => label(item.eventId));
        assert.deepEqual(await ids({}), ['e4', 'e3', 'e2', 'e1']);
        assert.deepEqual((await store.queryAuditEvents(a.id, { limit: 10 })).items[3], { ...events[0], class: 'change' }, 'the event comes back whole, classified');
        const listed = (await store.queryAuditEvents(a.id, { limit: 10 })).items.find((item) => item.eventId === events[2]?.eventId);
        assert.ok(listed !== undefined);
        assert.deepEqual(await store.getAuditEvent(a.id, listed.eventId), listed, 'one event by its ID, as a page has it');
        assert.equal(await store.getAuditEvent(a.id, `${events[2]?.eventId ?? ''}x`), undefined, 'an unknown ID');
        assert.equal(await store.getAuditEvent(b.id, events[2]?.eventId ?? ''), undefined, "another instance's event");
        assert.deepEqual(await ids({ subject: 'dev-1' }), ['e4', 'e1'], 'registration or device ID, any case');
        assert.deepEqual(await ids({ subject: 'GRP' }), ['e2']);
        assert.deepEqual(await ids({ from: '2024-01-01T00:00:02.0000000Z', to: '2024-01-01T00:00:03.0000000Z' }), ['e3', 'e2']);
        assert.deepEqual(await ids({ actor: 'owner' }), ['e3']);
        assert.deepEqual(await ids({ outcome: 'failure' }), ['e2']);
        assert.deepEqual(await ids({ kind: 'hubWrite' }), ['e4']);
        assert.deepEqual(await ids({ eventClass: 'change' }), ['e4', 'e3', 'e2', 'e1']);
        await store.appendAuditEvent(a.id, timed('e6', '2024-01-01T00:00:06.0000000Z', { registrationId: 'dev-6' }, { kind: 'serviceApi', operation: 'IndividualEnrollment_Get', actor: 'owner', outcome: 'notFound' }));
        assert.deepEqual(await ids({ eventClass: 'access' }), ['e6'], 'a read is an access');
        assert.deepEqual(await ids({ outcome: 'notFound' }), ['e6']);
        assert.equal(await store.deleteAuditEvents(a.id, [`${Date.parse('2024-01-01T00:00:06.0000000Z').toString(16).padStart(12, '0')}e6`]), 1);
        const first = await store.queryAuditEvents(a.id, { limit: 3 });
        assert.deepEqual([first.items.map((item) => label(item.eventId)), label(first.nextKey)], [['e4', 'e3', 'e2'], 'e2']);
        const second = await store.queryAuditEvents(a.id, { limit: 3, beforeKey: first.nextKey });
        assert.deepEqual([second.items.map((item) => label(item.eventId)), second.nextKey], [['e1'], undefined]);
        // Every filter at once: each is a condition with its own argument in one statement, none may take another's.
        const every: Partial<AuditQuery> = {
          subject: 'DEV-2',
          from: '2024-01-01T00:00:01.0000000Z',
          to: '2024-01-01T00:00:03.0000000Z',
          actor: 'device',
          outcome: 'failure',
          kind: 'registration',
          eventClass: 'change',
          beforeKey: first.items[1]?.eventId ?? '',
        };
        assert.deepEqual(await ids(every), ['e2'], 'every filter at once');
        for (const [name, other] of [['subject', 'dev-1'], ['from', '2024-01-01T00:00:03.0000000Z'], ['to', '2024-01-01T00:00:01.0000000Z'], ['actor', 'owner'], ['outcome', 'success'], ['kind', 'hubWrite'], ['eventClass', 'access'], ['beforeKey', first.items[2]?.eventId ?? '']] as const) {
          assert.deepEqual(await ids({ ...every, [name]: other }), [], `every filter at once, ${name} excluding it`);
        }
        const unindexed: AuditQuery = { ...every, limit: 10, scanLimit: 2 };
        delete unindexed.subject;
        const windowed = await store.queryAuditEvents(a.id, unindexed);
        assert.deepEqual(windowed.items.map((item) => label(item.eventId)), ['e2'], 'every filter but the subject, in a window of the scan limit');
      });

      test('a scan limit bounds the events one page of an unindexed filter reads; the continuation leads to every match', async () => {
        const at = (second: number) => `2024-01-01T00:00:${String(second).padStart(2, '0')}.0000000Z`;
        const idAt = (second: number) => `${Date.parse(at(second)).toString(16).padStart(12, '0')}0000aaaaaaaa`;
        for (let second = 1; second <= 10; second += 1) {
          await store.appendAuditEvent(a.id, event(idAt(second), at(second), { registrationId: `dev-${second}` }, second % 4 === 0 ? { outcome: 'failure', errorCode: 401002 } : {}));
        }
        const failures: string[] = [];
        let beforeKey: string | undefined;
        const nextKeys: Array<string | undefined> = [];
        do {
          const page = await store.queryAuditEvents(a.id, { outcome: 'failure', limit: 100, scanLimit: 3, beforeKey });
          failures.push(...page.items.map((item) => item.eventId));
          nextKeys.push(page.nextKey);
          beforeKey = page.nextKey;
        } while (beforeKey !== undefined);
        assert.deepEqual(failures, [idAt(8), idAt(4)]);
        assert.deepEqual(nextKeys, [idAt(8), idAt(5), idAt(2), undefined], 'windows of 3 events: 10–8, 7–5, 4–2, then the rest');
        const recent = await store.queryAuditEvents(a.id, { from: at(3), to: at(5), limit: 100, scanLimit: 100 });
        assert.deepEqual(recent.items.map((item) => item.eventId), [idAt(5), idAt(4), idAt(3)], 'a time range, both ends included');
        await store.appendAuditEvent(a.id, event(idAt(11), at(11), {}, { kind: 'serviceApi', operation: 'IndividualEnrollment_Get', actor: 'owner' }));
        const changes = await store.queryAuditEvents(a.id, { eventClass: 'change', outcome: 'failure', limit: 100, scanLimit: 3 });
        assert.deepEqual([changes.items.map((item) => item.eventId), changes.nextKey], [[idAt(8)], idAt(8)], 'a window counts the events of the class asked for');
        const subject = await store.queryAuditEvents(a.id, { subject: 'DEV-4', outcome: 'failure', limit: 100, scanLimit: 1 });
        assert.deepEqual([subject.items.map((item) => item.eventId), subject.nextKey], [[idAt(4)], undefined], 'a subject is found by its indexes, not windowed');
      });

      test('find events about subjects, replace them (pseudonymize), delete by ID and by age', async () => {
        // Event IDs begin with their time's milliseconds (services/audit-log.ts), which the age purge searches by.
        const idOf = (label: string, timeUtc: string) => `${Date.parse(timeUtc).toString(16).padStart(12, '0')}${label}`;
        const timed = (label: string, timeUtc: string, subject: AuditEvent['subject']): AuditEvent => event(idOf(label, timeUtc), timeUtc, subject);
        const label = (item: AuditEvent) => item.eventId.slice(12);
        await store.appendAuditEvent(a.id, timed('e1', '2024-01-01T00:00:01.0000000Z', { registrationId: 'dev-1' }));
        await store.appendAuditEvent(a.id, timed('e2', '2024-01-02T00:00:00.0000000Z', { deviceId: 'Dev-9' }));
        await store.appendAuditEvent(a.id, timed('e3', '2024-01-03T00:00:00.0000000Z', { enrollmentGroupId: 'grp' }));
        await store.appendAuditEvent(a.id, timed('e4', '2024-01-04T00:00:00.0000000Z', { registrationId: 'other' }));
        await store.appendAuditEvent(b.id, timed('e5', '2024-01-04T00:00:00.0000000Z', { registrationId: 'dev-1' }));
        const found = await store.findAuditEventsAbout(a.id, { registrationIds: ['DEV-1'], deviceIds: ['dev-9'], groupIds: ['grp'] });
        assert.deepEqual(found.map(label), ['e1', 'e2', 'e3']);
        assert.deepEqual(await store.findAuditEventsAbout(a.id, { registrationIds: [], deviceIds: [], groupIds: [] }), []);
        const many = Array.from({ length: 1200 }, (_, i) => `x-${i}`);
        assert.deepEqual((await store.findAuditEventsAbout(a.id, { registrationIds: [...many, 'dev-1'], deviceIds: [], groupIds: [] })).map(label), ['e1'], 'long lists are chunked');
        await store.replaceAuditEvents(a.id, [{ ...(found[0] as AuditEvent), actor: 'hashed', subject: { hash: 'h1' } }]);
        assert.deepEqual(await store.findAuditEventsAbout(a.id, { registrationIds: ['dev-1'], deviceIds: [], groupIds: [] }), [], 'the replaced event no longer names the subject');
        assert.deepEqual((await store.queryAuditEvents(a.id, { limit: 10, actor: 'hashed' })).items.map((item) => item.subject), [{ hash: 'h1' }]);
        assert.equal(await store.deleteAuditEvents(a.id, [idOf('e2', '2024-01-02T00:00:00.0000000Z'), 'no-such']), 1);
        assert.equal(await store.deleteAuditEventsBefore(a.id, '2024-01-03T12:00:00.0000000Z'), 2);
        assert.deepEqual((await store.queryAuditEvents(a.id, { limit: 10 })).items.map(label), ['e4']);
        assert.deepEqual((await store.queryAuditEvents(b.id, { limit: 10 })).items.map(label), ['e5'], 'another instance keeps its log');
      });
    });

    describe('data requests and the lifecycle-event outbox', () => {
      const request = (requestId: string, sortKey: string, status: string, type = 'erase'): DataRequestRecord => ({
        requestId,
        sortKey,
        status,
        type,
        doc: { requestId, sortKey, status, type, subject: { kind: 'registrationId', id: requestId } },
      });

      test('put, get (any case), replace, query with filters and paging, list by status across instances', async () => {
        await store.putDataRequest(a.id, request('Req-1', '3', 'running'));
        await store.putDataRequest(a.id, request('req-2', '1', 'completed', 'export'));
        await store.putDataRequest(a.id, request('req-3', '2', 'running', 'export'));
        await store.putDataRequest(b.id, request('req-4', '0', 'running'));
        assert.deepEqual(await store.getDataRequest(a.id, 'REQ-1'), request('Req-1', '3', 'running'));
        assert.equal(await store.getDataRequest(b.id, 'req-1'), undefined);
        await store.putDataRequest(a.id, request('Req-1', '3', 'completed'));
        assert.equal((await store.getDataRequest(a.id, 'req-1'))?.status, 'completed');
        const page = await store.queryDataRequests(a.id, { filters: [], limit: 2 });
        assert.deepEqual([page.items.map((item) => item.requestId), page.nextKey], [['req-2', 'req-3'], '2']);
        const rest = await store.queryDataRequests(a.id, { filters: [], limit: 2, afterKey: page.nextKey });
        assert.deepEqual(rest.items.map((item) => item.requestId), ['Req-1']);
        const exports = await store.queryDataRequests(a.id, { filters: [f('type', 'eq', 'EXPORT'), f('status', 'eq', 'running')], limit: 10 });
        assert.deepEqual(exports.items.map((item) => item.requestId), ['req-3']);
        const running = await store.listDataRequestsByStatus(['running']);
        assert.deepEqual(sortBy(running.map((item) => `${item.instanceId === a.id ? 'a' : 'b'}:${item.requestId}`), (x) => x), ['a:req-3', 'b:req-4']);
        assert.deepEqual(await store.listDataRequestsByStatus([]), []);
      });

      test('outbox: append, list oldest first per instance, delete, and which instances have events', async () => {
        assert.deepEqual(await store.listInstancesWithOutboxEvents(), []);
        await store.appendOutboxEvent(a.id, { eventId: 'ev-2', doc: { n: 2 } });
        await store.appendOutboxEvent(a.id, { eventId: 'ev-1', doc: { n: 1 } });
        await store.appendOutboxEvent(b.id, { eventId: 'ev-3', doc: { n: 3 } });
        assert.deepEqual(await store.listOutboxEvents(a.id, 10), [
          { eventId: 'ev-1', doc: { n: 1 } },
          { eventId: 'ev-2', doc: { n: 2 } },
        ]);
        assert.deepEqual(await store.listOutboxEvents(a.id, 1), [{ eventId: 'ev-1', doc: { n: 1 } }]);
        assert.deepEqual(sortBy(await store.listInstancesWithOutboxEvents(), (id) => id), sortBy([a.id, b.id], (id) => id));
        await store.deleteOutboxEvent(a.id, 'ev-1');
        await store.deleteOutboxEvent(a.id, 'ev-2');
        assert.deepEqual(await store.listOutboxEvents(a.id, 10), []);
        assert.deepEqual(await store.listInstancesWithOutboxEvents(), [b.id]);
      });
    });

    describe('customer-data lookups by subject (hub-device links, requests and outbox events about an ID)', () => {
      test('hub-device links: put (idempotent), find by registration, device or group ID in any case, delete, per instance', async () => {
        const link = { registrationId: 'Link-R1', enrollmentGroupId: 'Link-G', hub: 'hub-a', deviceId: 'Link-D1', linkedDateTimeUtc: '2024-01-01T00:00:00.0000000Z' };
        await store.putHubDeviceLink(a.id, link);
        // The same link again (a re-registration to the same hub device): it keeps the time it was made.
        await store.putHubDeviceLink(a.id, { ...link, linkedDateTimeUtc: '2024-01-02T00:00:00.0000000Z' });
        await store.putHubDeviceLink(a.id, { registrationId: 'link-r2', hub: 'hub-b', deviceId: 'link-d2', linkedDateTimeUtc: '2024-01-01T00:00:00.0000000Z' });
        await store.putHubDeviceLink(b.id, { ...link });
        const none = { registrationIds: [], deviceIds: [], groupIds: [] };
        assert.deepEqual(await store.findHubDeviceLinks(a.id, { ...none, registrationIds: ['link-r1'] }), [link]);
        assert.deepEqual((await store.findHubDeviceLinks(a.id, { ...none, deviceIds: ['LINK-D1', 'link-d2'] })).map((found) => found.deviceId).sort(), ['Link-D1', 'link-d2']);
        assert.deepEqual((await store.findHubDeviceLinks(a.id, { ...none, groupIds: ['link-g'] })).map((found) => found.registrationId), ['Link-R1']);
        assert.deepEqual(await store.findHubDeviceLinks(a.id, none), []);
        // A link that says something new of the same hub device (here an ID's case) is rewritten, with its time.
        const recased = { ...link, registrationId: 'LINK-R1', linkedDateTimeUtc: '2024-01-03T00:00:00.0000000Z' };
        await store.putHubDeviceLink(a.id, recased);
        assert.deepEqual(await store.findHubDeviceLinks(a.id, { ...none, registrationIds: ['link-r1'] }), [recased]);
        assert.equal(await store.deleteHubDeviceLinks(a.id, { ...none, groupIds: ['LINK-G'] }), 1);
        assert.deepEqual((await store.findHubDeviceLinks(a.id, { ...none, registrationIds: ['link-r1', 'link-r2'] })).map((found) => found.registrationId), ['link-r2']);
        assert.equal((await store.findHubDeviceLinks(b.id, { ...none, registrationIds: ['link-r1'] })).length, 1, 'another instance keeps its links');
      });

      test('data requests and outbox events about an ID are found by it (any case), not by listing', async () => {
        const about = (requestId: string, id: string | undefined): DataRequestRecord => ({
          requestId,
          subjectId: id,
          sortKey: requestId,
          status: 'completed',
          type: 'export',
          doc: { requestId, subject: id === undefined ? { hash: 'h' } : { id } },
        });
        await store.putDataRequest(a.id, about('about-1', 'Subject-X'));
        await store.putDataRequest(a.id, about('about-2', 'subject-y'));
        await store.putDataRequest(a.id, about('about-3', undefined));
        await store.putDataRequest(b.id, about('about-4', 'subject-x'));
        assert.deepEqual((await store.findDataRequestsAbout(a.id, ['SUBJECT-X', 'nobody'])).map((found) => found.requestId), ['about-1']);
        await store.putDataRequest(a.id, about('about-1', undefined));
        assert.deepEqual(await store.findDataRequestsAbout(a.id, ['subject-x']), [], 'a request that forgot its subject is not found by it');

        await store.appendOutboxEvent(a.id, { eventId: 'ox-1', doc: { data: { registrationId: 'Reg-X', deviceId: 'dev-x' } } });
        await store.appendOutboxEvent(a.id, { eventId: 'ox-2', doc: { data: { enrollmentGroupId: 'grp-x' } } });
        await store.appendOutboxEvent(a.id, { eventId: 'ox-3', doc: { data: { requestId: 'r' } } });
        const none = { registrationIds: [], deviceIds: [], groupIds: [] };
        assert.deepEqual((await store.findOutboxEventsAbout(a.id, { ...none, registrationIds: ['reg-x'] })).map((event) => event.eventId), ['ox-1']);
        assert.deepEqual((await store.findOutboxEventsAbout(a.id, { ...none, deviceIds: ['DEV-X'], groupIds: ['grp-x'] })).map((event) => event.eventId), ['ox-1', 'ox-2']);
        assert.deepEqual(await store.findOutboxEventsAbout(b.id, { ...none, registrationIds: ['reg-x'] }), []);
        for (const eventId of ['ox-1', 'ox-2', 'ox-3']) await store.deleteOutboxEvent(a.id, eventId);
      });
    });

    describe('several writers (compare-and-swap, unique constraints, collation)', () => {
      test('20 concurrent etag-guarded writes of one entry: exactly one wins, on every kind of entry', async () => {
        await store.putEnrollment(a.id, enrollment('race', { etag: 'e0' }));
        await store.putEnrollmentGroup(a.id, group('race', { etag: 'e0' }));
        await store.putCaCertificate(a.id, caCertificate('race', 'C0FFEE', { etag: 'e0' }));
        const writes = Array.from({ length: 20 }, (_, i) => i);
        const enrollmentWins = await Promise.all(writes.map((i) => store.putEnrollment(a.id, enrollment('race', { etag: `e${i + 1}` }), 'e0')));
        const groupWins = await Promise.all(writes.map((i) => store.putEnrollmentGroup(a.id, group('race', { etag: `e${i + 1}` }), 'e0')));
        const caWins = await Promise.all(writes.map((i) => store.putCaCertificate(a.id, caCertificate('race', 'C0FFEE', { etag: `e${i + 1}` }), 'e0')));
        for (const wins of [enrollmentWins, groupWins, caWins]) assert.equal(wins.filter(Boolean).length, 1);
        const winner = `e${enrollmentWins.indexOf(true) + 1}`;
        assert.equal((await store.getEnrollment(a.id, 'race'))?.etag, winner, 'the stored entry is the winner\'s');
        assert.equal(await store.putEnrollment(a.id, enrollment('race', { etag: 'late' }), 'e0'), false, 'a stale etag never writes');
        assert.equal(await store.putEnrollment(a.id, enrollment('nobody', { etag: 'x' }), 'e0'), false, 'a guarded write never creates');
        assert.equal(await store.getEnrollment(a.id, 'nobody'), undefined);
      });

      test('20 concurrent etag-guarded deletes: exactly one deletes; a stale etag deletes nothing', async () => {
        await store.putEnrollment(a.id, enrollment('gone', { etag: 'e1' }));
        await store.putRegistration(a.id, registration('gone', { etag: 'r1' }));
        assert.equal(await store.deleteEnrollment(a.id, 'gone', 'stale'), false);
        assert.equal(await store.deleteRegistration(a.id, 'gone', 'stale'), false);
        assert.notEqual(await store.getEnrollment(a.id, 'gone'), undefined);
        const deletes = await Promise.all(Array.from({ length: 20 }, () => store.deleteEnrollment(a.id, 'gone', 'e1')));
        assert.equal(deletes.filter(Boolean).length, 1);
        const recordDeletes = await Promise.all(Array.from({ length: 20 }, () => store.deleteRegistration(a.id, 'gone', 'r1')));
        assert.equal(recordDeletes.filter(Boolean).length, 1);
        await store.putEnrollmentGroup(a.id, group('g-gone', { etag: 'g1' }));
        await store.putCaCertificate(a.id, caCertificate('ca-gone', 'BEEF', { etag: 'c1' }));
        assert.equal(await store.deleteEnrollmentGroup(a.id, 'g-gone', 'stale'), false);
        assert.equal(await store.deleteCaCertificate(a.id, 'ca-gone', 'stale'), false);
        assert.equal(await store.deleteEnrollmentGroup(a.id, 'g-gone', 'g1'), true);
        assert.equal(await store.deleteCaCertificate(a.id, 'ca-gone', 'c1'), true);
      });

      test('instance names, ID scopes and host names are unique in the schema (409), whatever checks the caller made', async () => {
        const twinName = instance('A', '0ne0000000C', ['dps-c.example.net']);
        await assert.rejects(store.insertInstance(twinName), (error: Error & { errorCode?: number }) => error.errorCode === 409001);
        await assert.rejects(store.insertInstance(instance('c', '0NE0000000a', ['dps-c.example.net'])), /already belongs/);
        await assert.rejects(store.insertInstance(instance('c', '0ne0000000C', ['DPS-B.example.net'])), /already belongs/);
        await assert.rejects(store.updateInstance({ ...b, name: 'a' }), /already belongs/);
        assert.deepEqual(await store.findInstanceByHostName('dps-b.example.net'), b, 'a refused update changes nothing');
        const racers = await Promise.allSettled(Array.from({ length: 10 }, (_, i) => store.insertInstance(instance('same', `0ne00000${String(i).padStart(3, '0')}`, [`h${i}.example.net`]))));
        assert.equal(racers.filter((result) => result.status === 'fulfilled').length, 1);
      });

      test('one certificate in one enrollment entry: the second entry naming it is refused by the schema', async () => {
        await store.putEnrollment(a.id, enrollment('cert-1', { attestation: x509Client('AB12') }));
        await assert.rejects(store.putEnrollmentGroup(a.id, group('cert-2', { attestation: x509Signing('ab12') })), /only one enrollment entry/);
        assert.equal(await store.getEnrollmentGroup(a.id, 'cert-2'), undefined, 'the refused write left nothing');
        assert.deepEqual(await store.findCertificateOwner(a.id, 'AB12'), { kind: 'individual', id: 'cert-1' });
      });

      test('keys compare byte-wise: a prefix filter for abc never matches ab-cd or ab_c, whatever the database locale', async () => {
        for (const id of ['abc', 'abc-1', 'abcd', 'ab-cd', 'ab_c', 'ab.cx', 'abd', 'ab']) await store.putEnrollment(a.id, enrollment(id));
        const page = await query(store, a.id, [f('registrationId', 'prefix', 'abc')]);
        assert.deepEqual(page.items.map((item) => item.registrationId), ['abc', 'abc-1', 'abcd']);
        const everything = await store.queryEnrollments(a.id, all());
        const ids = everything.items.map((item) => item.registrationId);
        assert.deepEqual(ids, [...ids].sort((x, y) => (Buffer.from(x) < Buffer.from(y) ? -1 : 1)), 'keyset order is byte order');
      });
    });

    describe('state shared by nodes', () => {
      test('rate tokens: a bucket starts full, empties, refills with time, and never goes negative on a late clock', async () => {
        const t0 = 1_000_000;
        const taken = [];
        for (let i = 0; i < 5; i += 1) taken.push(await store.takeRateToken('k1', 2, 4, t0));
        assert.deepEqual(taken, [true, true, true, true, false]);
        assert.equal(await store.takeRateToken('k1', 2, 4, t0 + 400), false, '0.8 token after 400 ms at 2/s');
        assert.equal(await store.takeRateToken('k1', 2, 4, t0 + 500), true, 'one token after 500 ms');
        assert.equal(await store.takeRateToken('k1', 2, 4, t0 - 10_000), false, 'an earlier clock adds nothing');
        assert.equal(await store.takeRateToken('k2', 2, 4, t0), true, 'buckets are separate');
        const concurrent = await Promise.all(Array.from({ length: 30 }, () => store.takeRateToken('k3', 1, 10, t0)));
        assert.equal(concurrent.filter(Boolean).length, 10, 'concurrent takers share one bucket exactly');
      });

      test('rate buckets are deleted by key, and the purge deletes those idle since a time, in batches', async () => {
        const t0 = 3_000_000;
        for (const key of ['d1', 'd2', 'd3']) assert.equal(await store.takeRateToken(key, 1, 2, t0), true);
        assert.equal(await store.takeRateToken('d4', 1, 2, t0 + 5_000), true);
        assert.equal(await store.deleteRateBuckets(['d1', 'nope']), 1);
        assert.equal(await store.deleteRateBuckets([]), 0);
        // A group's erase names every device of the group: more keys than one statement may bind.
        const many = Array.from({ length: 70_000 }, (_, i) => `many-${i}`);
        assert.equal(await store.takeRateToken('many-69999', 1, 2, t0), true);
        assert.equal(await store.deleteRateBuckets(many), 1);
        // d1 is gone: a take finds a full bucket again (two tokens), as for a key never seen.
        assert.deepEqual([await store.takeRateToken('d1', 1, 2, t0), await store.takeRateToken('d1', 1, 2, t0), await store.takeRateToken('d1', 1, 2, t0)], [true, true, false]);
        // Idle since t0 + 1 s: d1, d2 and d3 (last taken at t0), not d4; in batches of two, each going on after the
        // last key of the one before; d4 is looked past, not deleted.
        assert.deepEqual(await store.deleteRateBucketsIdleSince(t0 + 1_000, 2), { deleted: 2, lastKey: 'd2' });
        assert.deepEqual(await store.deleteRateBucketsIdleSince(t0 + 1_000, 2, 'd2'), { deleted: 1, lastKey: undefined });
        assert.deepEqual(await store.deleteRateBucketsIdleSince(t0 + 1_000, 2), { deleted: 0, lastKey: undefined });
        assert.equal(await store.takeRateToken('d4', 1, 2, t0 + 5_000), true, 'd4 kept its bucket: one token left of two');
        assert.equal(await store.takeRateToken('d4', 1, 2, t0 + 5_000), false);
      });

      test('rate tokens by the handful: all or none, from the same bucket as single takes', async () => {
        const t0 = 2_000_000;
        // 10 a second, burst 20: four handfuls of 5, then none, and not a single token either.
        const handfuls = [];
        for (let i = 0; i < 5; i += 1) handfuls.push(await store.takeRateToken('h1', 10, 20, t0, 5));
        assert.deepEqual(handfuls, [true, true, true, true, false]);
        assert.equal(await store.takeRateToken('h1', 10, 20, t0), false);
        // 300 ms later 3 tokens: not a handful of 5 (and that refusal takes nothing), but three single tokens.
        assert.equal(await store.takeRateToken('h1', 10, 20, t0 + 300, 5), false);
        const singles = [];
        for (let i = 0; i < 4; i += 1) singles.push(await store.takeRateToken('h1', 10, 20, t0 + 300));
        assert.deepEqual(singles, [true, true, true, false]);
        // A new bucket gives a handful from its burst.
        assert.equal(await store.takeRateToken('h2', 10, 20, t0, 20), true);
        assert.equal(await store.takeRateToken('h2', 10, 20, t0, 1), false);
      });

      test('leases: one holder at a time; renewal, release and expiry hand it over', async () => {
        assert.equal(await store.claimLease('job/1', 'node-a', 1000, 5000), true);
        assert.equal(await store.claimLease('job/1', 'node-b', 1000, 5500), false, 'held by another');
        assert.equal(await store.claimLease('job/1', 'node-a', 1000, 5500), true, 'the holder may claim again');
        assert.equal(await store.renewLease('job/1', 'node-a', 1000, 6000), true);
        assert.equal(await store.renewLease('job/1', 'node-b', 1000, 6000), false);
        assert.equal(await store.claimLease('job/1', 'node-b', 1000, 6900), false, 'renewed until 7000');
        assert.equal(await store.claimLease('job/1', 'node-b', 1000, 7001), true, 'expired: another node takes it');
        assert.equal(await store.renewLease('job/1', 'node-a', 1000, 7002), false, 'the old holder learns it lost it');
        await store.releaseLease('job/1', 'node-a');
        assert.equal(await store.claimLease('job/1', 'node-c', 1000, 7003), false, 'only the holder releases');
        await store.releaseLease('job/1', 'node-b');
        assert.equal(await store.claimLease('job/1', 'node-c', 1000, 7003), true);
        const racers = await Promise.all(['p', 'q', 'r', 's', 't'].map((owner) => store.claimLease('job/2', owner, 1000, 9000)));
        assert.equal(racers.filter(Boolean).length, 1);
      });

      test('enrollment-group writes bump the instance\'s change counter; other instances\' stay', async () => {
        const counter = `groups/${a.id}`;
        const before = await store.changeCounter(counter);
        await store.putEnrollmentGroup(a.id, group('g1', { etag: 'x1' }));
        const afterPut = await store.changeCounter(counter);
        assert.ok(afterPut > before);
        // The group and the counter read together (the symmetric-key lookup's confirmation), the group's ID in any case.
        assert.deepEqual(await store.enrollmentGroupAndCounter(a.id, 'G1', counter), { group: await store.getEnrollmentGroup(a.id, 'g1'), version: afterPut });
        assert.deepEqual(await store.enrollmentGroupAndCounter(b.id, 'g1', `groups/${b.id}`), { group: undefined, version: 0 });
        await store.putEnrollmentGroup(a.id, group('g1', { etag: 'x2' }), 'x1');
        const afterUpdate = await store.changeCounter(counter);
        assert.ok(afterUpdate > afterPut);
        await store.deleteEnrollmentGroup(a.id, 'g1');
        assert.ok((await store.changeCounter(counter)) > afterUpdate);
        assert.deepEqual(await store.enrollmentGroupAndCounter(a.id, 'g1', counter), { group: undefined, version: await store.changeCounter(counter) });
        assert.equal(await store.changeCounter(`groups/${b.id}`), 0);
        await store.putEnrollment(a.id, enrollment('not-a-group'));
        assert.equal(await store.changeCounter(`groups/${b.id}`), 0);
      });

      test('withLock runs the work and returns its value; work under one name never overlaps', async () => {
        let inside = 0;
        let most = 0;
        const results = await Promise.all(
          Array.from({ length: 5 }, (_, i) =>
            store.withLock('device/x', async () => {
              inside += 1;
              most = Math.max(most, inside);
              await new Promise((resolve) => setTimeout(resolve, 10));
              inside -= 1;
              return i;
            }),
          ),
        );
        assert.deepEqual(results, [0, 1, 2, 3, 4]);
        if (store.capabilities.advisoryLocks) assert.equal(most, 1);
        await assert.rejects(store.withLock('device/y', () => Promise.reject(new Error('boom'))), /boom/);
        assert.equal(await store.withLock('device/y', () => Promise.resolve('free again')), 'free again');
      });

      test('reclaimDeleted runs after deletes (VACUUM where the dialect keeps dead rows)', async () => {
        await store.putEnrollment(a.id, enrollment('vac'));
        await store.deleteEnrollment(a.id, 'vac');
        await store.reclaimDeleted(['enrollments', 'enrollment_certificates', 'audit_events']);
        assert.equal(await store.getEnrollment(a.id, 'vac'), undefined);
      });
    });

    describe('bulk writes and bounded purges (issue 12)', () => {
      const ids = (count: number, prefix = 'bulk') => Array.from({ length: count }, (_, i) => `${prefix}-${String(i).padStart(4, '0')}`);

      test('getEnrollments reads many at once, any case, only what exists, in this instance', async () => {
        await store.putEnrollment(a.id, enrollment('Many-1'));
        await store.putEnrollment(a.id, enrollment('many-2'));
        await store.putEnrollment(b.id, enrollment('many-3'));
        const found = await store.getEnrollments(a.id, ['MANY-1', 'many-2', 'many-3', ...ids(1200, 'absent')]);
        assert.deepEqual(sortBy(found, (e) => e.registrationId), [enrollment('Many-1'), enrollment('many-2')]);
        assert.deepEqual(await store.getEnrollments(a.id, []), []);
      });

      test('writeEnrollments create inserts only free IDs and never overwrites; replace creates or replaces', async () => {
        await store.putEnrollment(a.id, enrollment('bulk-0001', { provisioningStatus: 'disabled' }));
        const docs = ids(1100).map((id) => enrollment(id.toUpperCase()));
        const created = await store.writeEnrollments(a.id, docs, 'create');
        assert.equal(created.length, 1099);
        assert.deepEqual(new Set(created), new Set(ids(1100).filter((id) => id !== 'bulk-0001')));
        assert.equal((await store.getEnrollment(a.id, 'bulk-0001'))?.provisioningStatus, 'disabled', 'the existing one is untouched');
        assert.deepEqual(await store.getEnrollment(a.id, 'bulk-0500'), enrollment('BULK-0500'));
        const page = await store.queryEnrollments(a.id, { filters: [f('registrationId', 'prefix', 'bulk-')], limit: 2000 });
        assert.equal(page.items.length, 1100);
        const replaced = await store.writeEnrollments(a.id, [enrollment('bulk-0001'), enrollment('bulk-0002', { provisioningStatus: 'disabled' }), enrollment('new-one')], 'replace');
        assert.deepEqual(new Set(replaced), new Set(['bulk-0001', 'bulk-0002', 'new-one']));
        assert.equal((await store.getEnrollment(a.id, 'bulk-0001'))?.provisioningStatus, 'enabled');
        assert.equal((await store.getEnrollment(a.id, 'bulk-0002'))?.provisioningStatus, 'disabled');
        assert.deepEqual(await store.getEnrollments(b.id, ['bulk-0001']), [], 'nothing crosses instances');
      });

      test('writeEnrollments keeps certificates in step: replaced ones go, new ones are owned', async () => {
        await store.putEnrollment(a.id, enrollment('cert-1', { attestation: x509Client('AA11') }));
        await store.writeEnrollments(a.id, [enrollment('cert-1', { attestation: x509Client('BB22') }), enrollment('cert-2', { attestation: x509Client('CC33') })], 'replace');
        assert.equal(await store.findCertificateOwner(a.id, 'AA11'), undefined);
        assert.deepEqual(await store.findCertificateOwner(a.id, 'bb22'), { kind: 'individual', id: 'cert-1' });
        assert.deepEqual(await store.findCertificateOwner(a.id, 'CC33'), { kind: 'individual', id: 'cert-2' });
      });

      test('concurrent creates of the same IDs: each ID goes to exactly one writer', async () => {
        const wanted = ids(600, 'race');
        const results = await Promise.all(
          [0, 1, 2, 3].map((writer) =>
            store.transaction((trx) => trx.writeEnrollments(a.id, (writer % 2 === 0 ? wanted : [...wanted].reverse()).map((id) => enrollment(id, { deviceId: `w${writer}` })), 'create')),
          ),
        );
        const owner = new Map<string, number>();
        for (const [writer, keys] of results.entries()) {
          for (const key of keys) {
            assert.equal(owner.get(key), undefined, `${key} created by ${owner.get(key)} and ${writer}`);
            owner.set(key, writer);
          }
        }
        assert.equal(owner.size, wanted.length);
        for (const id of [wanted[0] as string, wanted[599] as string]) assert.equal((await store.getEnrollment(a.id, id))?.deviceId, `w${owner.get(id)}`);
      });

      test('atomically: a failing part of a transaction undoes only its own writes, also after a failed statement', async () => {
        await store.putEnrollment(a.id, enrollment('owner', { attestation: x509Client('DD44') }));
        await store.transaction(async (trx) => {
          await trx.putEnrollment(a.id, enrollment('kept-1'));
          await assert.rejects(
            trx.atomically(async (part) => {
              await part.putEnrollment(a.id, enrollment('undone'));
              // The certificate's primary key refuses this one: a failed statement inside the transaction.
              await part.putEnrollment(a.id, enrollment('thief', { attestation: x509Client('DD44') }));
            }),
            (error: Error & { errorCode?: number }) => error.errorCode === 409002,
          );
          assert.equal(await trx.atomically(async (part) => (await part.putEnrollment(a.id, enrollment('kept-2'))) && 'done'), 'done');
        });
        assert.deepEqual(
          (await store.getEnrollments(a.id, ['kept-1', 'kept-2', 'undone', 'thief'])).map((e) => e.registrationId).sort(),
          ['kept-1', 'kept-2'],
        );
        assert.deepEqual(await store.findCertificateOwner(a.id, 'DD44'), { kind: 'individual', id: 'owner' });
      });

      test('deleteOperationsBefore with a limit deletes the oldest first, at most that many', async () => {
        for (let i = 0; i < 7; i += 1) await store.putOperation(i % 2 === 0 ? a.id : b.id, operation(`op-${i}`, 'dev-1', 'assigned', `2024-01-01T00:00:0${i}.0000000Z`));
        await store.putOperation(a.id, operation('fresh', 'dev-1', 'assigned', '2024-02-01T00:00:00.0000000Z'));
        const cutoff = '2024-01-02T00:00:00.0000000Z';
        assert.equal(await store.deleteOperationsBefore(cutoff, 3), 3);
        assert.equal(await store.getOperation(a.id, 'op-0'), undefined);
        assert.equal(await store.getOperation(b.id, 'op-1'), undefined);
        assert.notEqual(await store.getOperation(a.id, 'op-4'), undefined, 'younger ones wait for the next batch');
        assert.equal(await store.deleteOperationsBefore(cutoff, 3), 3);
        assert.equal(await store.deleteOperationsBefore(cutoff, 3), 1);
        assert.equal(await store.deleteOperationsBefore(cutoff, 3), 0);
        assert.notEqual(await store.getOperation(a.id, 'fresh'), undefined);
      });

      test('appendAuditEvents writes many; deleteAuditEventsBefore with a limit deletes the oldest first', async () => {
        const timeOf = (i: number) => `2024-01-01T00:${String(Math.floor(i / 60) % 60).padStart(2, '0')}:${String(i % 60).padStart(2, '0')}.0000000Z`;
        const event = (i: number): AuditEvent => ({
          // Event IDs begin with their time's milliseconds (services/audit-log.ts), which the age purge searches by.
          eventId: `${Date.parse(timeOf(i)).toString(16).padStart(12, '0')}${String(i).padStart(5, '0')}`,
          timeUtc: timeOf(i),
          kind: 'serviceApi',
          operation: 'IndividualEnrollment_RunBulkOperation',
          actor: 'owner',
          subject: { registrationId: `Dev-${i}` },
          outcome: i % 2 === 0 ? 'success' : 'failure',
          // A bulk call changes enrollments (src/domain/audit-class.ts); the store returns the class it keeps.
          class: 'change',
        });
        const events = Array.from({ length: 1200 }, (_, i) => event(i));
        await store.appendAuditEvents(a.id, events);
        await store.appendAuditEvents(b.id, [event(0)]);
        const page = await store.queryAuditEvents(a.id, { limit: 2000 });
        assert.equal(page.items.length, 1200);
        assert.deepEqual(page.items.at(-1), events[0]);
        assert.deepEqual((await store.queryAuditEvents(a.id, { subject: 'dev-7', limit: 10 })).items, [events[7]]);
        assert.equal(await store.deleteAuditEventsBefore(a.id, '2024-01-01T00:00:10.0000000Z', 4), 4);
        assert.deepEqual((await store.queryAuditEvents(a.id, { limit: 2000 })).items.at(-1), events[4]);
        assert.equal(await store.deleteAuditEventsBefore(a.id, '2024-01-01T00:00:10.0000000Z', 100), 6);
        assert.equal((await store.queryAuditEvents(b.id, { limit: 10 })).items.length, 1, 'another instance keeps its log');
      });
    });
    describe('reads that travel together (issue 11)', () => {
      test("a device's enrollment and record in one read: each, both or neither, case-insensitively, per instance", async () => {
        const none = { enrollment: undefined, registration: undefined, group: undefined };
        assert.deepEqual(await store.getEnrollmentAndRegistration(a.id, 'together'), none);
        await store.putRegistration(a.id, registration('Together'));
        assert.deepEqual(await store.getEnrollmentAndRegistration(a.id, 'TOGETHER'), { ...none, registration: registration('Together') });
        await store.putEnrollment(a.id, enrollment('together'));
        assert.deepEqual(await store.getEnrollmentAndRegistration(a.id, 'together'), { ...none, enrollment: enrollment('together'), registration: registration('Together') });
        assert.deepEqual(await store.getEnrollmentAndRegistration(b.id, 'together'), none);
      });

      test("a device request's first reads: the instance by ID scope with the device's reads in it, case-insensitively", async () => {
        const none = { enrollment: undefined, registration: undefined, group: undefined };
        /** The reads without the groups counter, which a store may add (checked below). */
        const first = async (idScope: string, registrationId: string) => {
          const found = await store.findDeviceByIdScope(idScope, registrationId);
          if (found === undefined) return undefined;
          const { groupsVersion, ...reads } = found.reads;
          // Where it comes along (PostgreSQL), it is the instance's groups counter as changeCounter reads it.
          if (groupsVersion !== undefined) assert.equal(groupsVersion, await store.changeCounter(`groups/${found.instance.id}`));
          return { instance: found.instance, reads };
        };
        assert.equal(await first('0ne00000NONE', 'first-dev'), undefined);
        assert.deepEqual(await first(a.idScope.toLowerCase(), 'first-dev'), { instance: a, reads: none });
        const named = registration('First-Dev', { enrollmentGroupId: 'First-Group' });
        await store.putRegistration(a.id, named);
        await store.putEnrollment(a.id, enrollment('first-dev'));
        await store.putEnrollmentGroup(a.id, group('first-group'));
        // The reads are the instance's own: another instance with the same device and group names has none of them.
        await store.putEnrollmentGroup(b.id, group('first-group'));
        await store.putEnrollmentGroup(b.id, group('second-group'));
        assert.deepEqual(await first(a.idScope, 'FIRST-DEV'), {
          instance: a,
          reads: { enrollment: enrollment('first-dev'), registration: named, group: group('first-group') },
        });
        assert.deepEqual(await first(b.idScope, 'first-dev'), { instance: b, reads: none });
        // As getEnrollmentAndRegistration answers, read for read.
        assert.deepEqual((await first(a.idScope, 'first-dev'))?.reads, await store.getEnrollmentAndRegistration(a.id, 'first-dev'));
      });

      test('the group a record names comes with it, case-insensitively, from its own instance, and not once it is gone', async () => {
        const named = registration('Grouped-Dev', { enrollmentGroupId: 'Together-Group' });
        await store.putRegistration(a.id, named);
        assert.deepEqual(await store.getEnrollmentAndRegistration(a.id, 'grouped-dev'), { enrollment: undefined, registration: named, group: undefined });
        // Another instance's group of that name, and another group of this one, are not the record's.
        await store.putEnrollmentGroup(b.id, group('together-group'));
        await store.putEnrollmentGroup(a.id, group('other-group'));
        assert.equal((await store.getEnrollmentAndRegistration(a.id, 'grouped-dev')).group, undefined);
        await store.putEnrollmentGroup(a.id, group('TOGETHER-group'));
        assert.deepEqual(await store.getEnrollmentAndRegistration(a.id, 'GROUPED-DEV'), { enrollment: undefined, registration: named, group: group('TOGETHER-group') });
        // A record without a group names none, whatever groups exist.
        await store.putRegistration(a.id, registration('grouped-dev'));
        assert.equal((await store.getEnrollmentAndRegistration(a.id, 'grouped-dev')).group, undefined);
        await store.putRegistration(a.id, named);
        assert.equal(await store.deleteEnrollmentGroup(a.id, 'together-group'), true);
        assert.equal((await store.getEnrollmentAndRegistration(a.id, 'grouped-dev')).group, undefined);
      });

      test("a poll's operation unless fenced: the fence alone when one stands, else the operation, as findEraseFence and getOperation answer", async () => {
        const polled = operation('op-together', 'dev-together', 'assigned', '2024-01-01T00:00:01.0000000Z');
        await store.putOperation(a.id, polled);
        const probe = { registrationIds: ['dev-together'], deviceIds: ['device-together'], groupIds: ['group-together'] };
        assert.deepEqual(await store.getOperationUnlessFenced(a.id, 'op-together', probe), { operation: polled });
        assert.deepEqual(await store.getOperationUnlessFenced(a.id, 'op-absent', probe), {});
        await store.putEraseFences(a.id, [{ kind: 'deviceId', id: 'Device-Together', requestId: 'req-1', subjectHash: 'hash-1' }]);
        const fenced = await store.getOperationUnlessFenced(a.id, 'op-together', probe);
        assert.deepEqual(fenced, { fence: await store.findEraseFence(a.id, probe) });
        assert.equal(fenced.fence?.requestId, 'req-1');
        assert.deepEqual(await store.getOperationUnlessFenced(b.id, 'op-together', probe), {}, 'another instance');
        // A probe of several IDs per kind (not a device's own) answers the same.
        const wide = { registrationIds: ['other', 'dev-together'], deviceIds: ['x', 'device-together'] };
        assert.deepEqual(await store.getOperationUnlessFenced(a.id, 'op-together', wide), { fence: await store.findEraseFence(a.id, wide) });
      });

      test("a poll's rate token and its read at once: the read only when a token was taken, from the bucket takeRateToken uses", async () => {
        const polled = operation('op-token', 'dev-token', 'assigned', '2024-01-01T00:00:01.0000000Z');
        await store.putOperation(a.id, polled);
        const probe = { registrationIds: ['dev-token'], deviceIds: ['dev-token'] };
        const t0 = 1_700_000_000_000;
        const token = (nowMs: number) => ({ bucketKey: 'poll-token', ratePerSecond: 1, burst: 2, nowMs });
        assert.deepEqual(await store.takeRateTokenAndGetOperationUnlessFenced(token(t0), a.id, 'op-token', probe), { taken: true, operation: polled });
        assert.deepEqual(await store.takeRateTokenAndGetOperationUnlessFenced(token(t0), a.id, 'op-absent', probe), { taken: true });
        // The burst is spent: nothing is read, and the refusal took nothing (a second later, one token is back).
        assert.deepEqual(await store.takeRateTokenAndGetOperationUnlessFenced(token(t0), a.id, 'op-token', probe), { taken: false });
        assert.equal(await store.takeRateToken('poll-token', 1, 2, t0 + 500), false, 'the same bucket as takeRateToken');
        assert.deepEqual(await store.takeRateTokenAndGetOperationUnlessFenced(token(t0 + 1000), a.id, 'op-token', probe), { taken: true, operation: polled });
        // A fence answers alone, as getOperationUnlessFenced does, for a device's own probe and a wider one.
        await store.putEraseFences(a.id, [{ kind: 'registrationId', id: 'DEV-TOKEN', requestId: 'req-token', subjectHash: 'hash-token' }]);
        const fenced = await store.takeRateTokenAndGetOperationUnlessFenced(token(t0 + 3000), a.id, 'op-token', probe);
        assert.deepEqual(fenced, { taken: true, fence: await store.findEraseFence(a.id, probe) });
        assert.equal(fenced.fence?.requestId, 'req-token');
        const wide = { registrationIds: ['other', 'dev-token'], deviceIds: ['x'] };
        assert.deepEqual(await store.takeRateTokenAndGetOperationUnlessFenced(token(t0 + 5000), a.id, 'op-token', wide), { taken: true, fence: await store.findEraseFence(a.id, wide) });
        assert.deepEqual(await store.takeRateTokenAndGetOperationUnlessFenced(token(t0 + 5000), b.id, 'op-token', { registrationIds: ['dev-token'] }), { taken: true }, 'another instance');
        assert.deepEqual(await store.takeRateTokenAndGetOperationUnlessFenced(token(t0 + 5000), a.id, 'op-token', probe), { taken: false });
      });

      test("a registration's enrollment or group unless fenced, as each read alone answers, case-insensitively, per instance", async () => {
        const probe = { registrationIds: ['Admitted'], deviceIds: ['admitted'], groupIds: ['Line-4'] };
        assert.deepEqual(await store.getEnrollmentGroupUnlessFenced(a.id, 'line-4', probe), {});
        assert.deepEqual(await store.getEnrollmentUnlessFenced(a.id, 'admitted', probe), {});
        await store.putEnrollmentGroup(a.id, group('line-4'));
        assert.deepEqual(await store.getEnrollmentGroupUnlessFenced(a.id, 'LINE-4', probe), { group: group('line-4') });
        await store.putEnrollment(a.id, enrollment('admitted'));
        assert.deepEqual(await store.getEnrollmentUnlessFenced(a.id, 'ADMITTED', probe), { enrollment: enrollment('admitted') });
        assert.deepEqual(await store.getEnrollmentUnlessFenced(b.id, 'admitted', probe), {}, 'another instance');
        await store.putEraseFences(a.id, [{ kind: 'enrollmentGroupId', id: 'line-4', requestId: 'req-2', subjectHash: 'hash-2' }]);
        const fence = await store.findEraseFence(a.id, probe);
        assert.equal(fence?.requestId, 'req-2');
        assert.deepEqual(await store.getEnrollmentGroupUnlessFenced(a.id, 'line-4', probe), { fence });
        assert.deepEqual(await store.getEnrollmentUnlessFenced(a.id, 'admitted', probe), { fence });
        const wide = { registrationIds: ['admitted'], deviceIds: ['admitted', 'other'], groupIds: ['line-4'] };
        assert.deepEqual(await store.getEnrollmentUnlessFenced(a.id, 'admitted', wide), { fence: await store.findEraseFence(a.id, wide) });
      });
    });
  });
}

// ---- fixtures

function instance(name: string, idScope: string, serviceHostNames: string[]): InstanceRecord {
  return {
    id: `instance-${name}-${Math.random().toString(36).slice(2)}`,
    name,
    idScope,
    serviceHostNames,
    allocationPolicy: 'hashed',
    createdDateTimeUtc: '2024-01-01T00:00:00.0000000Z',
  };
}

function policy(keyName: string, rights: AccessPolicyRecord['rights'] = ['ServiceConfig', 'EnrollmentRead', 'EnrollmentWrite']): AccessPolicyRecord {
  return { keyName, primaryKey: 'cHJpbWFyeS1rZXktMTIzNDU2Nzg=', secondaryKey: 'c2Vjb25kYXJ5LWtleS0xMjM0NTY=', rights };
}

function hub(name: string): LinkedHubRecord {
  return {
    name,
    builtIn: false,
    connectionString: `HostName=${name};SharedAccessKeyName=iothubowner;SharedAccessKey=a2V5LWtleS1rZXk=`,
    allocationWeight: 1,
    applyAllocationPolicy: true,
  };
}

const symmetric: StoredAttestation = {
  type: 'symmetricKey',
  symmetricKey: { primaryKey: 'cHJpbWFyeS1wcmltYXJ5LWtleQ==', secondaryKey: 'c2Vjb25kYXJ5LXNlY29uZGFyeQ==' },
};

function certificate(sha256Thumbprint: string): StoredCertificate {
  return {
    certificate: `-----BEGIN CERTIFICATE-----\n${sha256Thumbprint}\n-----END CERTIFICATE-----\n`,
    info: {
      subjectName: 'CN=test',
      sha1Thumbprint: `SHA1-${sha256Thumbprint}`,
      sha256Thumbprint,
      issuerName: 'CN=test',
      notBeforeUtc: '2024-01-01T00:00:00.0000000Z',
      notAfterUtc: '2034-01-01T00:00:00.0000000Z',
      serialNumber: '01',
      version: 3,
    },
  };
}

function pair(primary: string, secondary?: string): { primary: StoredCertificate; secondary?: StoredCertificate } {
  return secondary === undefined ? { primary: certificate(primary) } : { primary: certificate(primary), secondary: certificate(secondary) };
}

function x509Client(primary: string, secondary?: string): StoredAttestation {
  return { type: 'x509', x509: { clientCertificates: pair(primary, secondary) } };
}

function x509Signing(primary: string, secondary?: string): StoredAttestation {
  return { type: 'x509', x509: { signingCertificates: pair(primary, secondary) } };
}

function x509CaReference(name: string): StoredAttestation {
  return { type: 'x509', x509: { caReferences: { primary: name } } };
}

const common = {
  attestation: symmetric,
  capabilities: { iotEdge: false },
  etag: '"e1"',
  provisioningStatus: 'enabled' as const,
  reprovisionPolicy: { updateHubAssignment: true, migrateDeviceData: true },
  createdDateTimeUtc: '2024-01-01T00:00:00.0000000Z',
  lastUpdatedDateTimeUtc: '2024-01-02T00:00:00.0000000Z',
};

function caCertificate(name: string, sha256Thumbprint: string, overrides: Partial<CaCertificateRecord> = {}): CaCertificateRecord {
  const { certificate: pem, info } = certificate(sha256Thumbprint);
  return {
    name,
    certificate: pem,
    info,
    isVerified: false,
    etag: `"${name}-1"`,
    createdDateTimeUtc: '2024-01-01T00:00:00.0000000Z',
    lastUpdatedDateTimeUtc: '2024-01-01T00:00:00.0000000Z',
    ...overrides,
  };
}

function enrollment(registrationId: string, overrides: Partial<StoredEnrollment> = {}): StoredEnrollment {
  return { registrationId, ...common, ...overrides };
}

function group(enrollmentGroupId: string, overrides: Partial<StoredEnrollmentGroup> = {}): StoredEnrollmentGroup {
  return { enrollmentGroupId, ...common, ...overrides };
}

function registration(registrationId: string, overrides: Partial<StoredRegistration> = {}): StoredRegistration {
  return {
    registrationId,
    createdDateTimeUtc: '2024-01-01T00:00:00.0000000Z',
    assignedHub: 'hub1.example.net',
    deviceId: registrationId,
    status: 'assigned',
    substatus: 'initialAssignment',
    lastUpdatedDateTimeUtc: '2024-01-01T00:00:01.0000000Z',
    etag: `"${registrationId}-1"`,
    attestationType: 'symmetricKey',
    ...overrides,
  };
}

function operation(operationId: string, registrationId: string, status: StoredOperation['status'], lastUpdatedDateTimeUtc: string): StoredOperation {
  return { operationId, registrationId, status, createdDateTimeUtc: '2024-01-01T00:00:00.0000000Z', lastUpdatedDateTimeUtc };
}

function f(field: string, op: Filter['op'], ...values: string[]): Filter {
  return { field, op, values };
}

function all(): ListQuery {
  return { filters: [], limit: 1000 };
}

function query(store: Store, instanceId: string, filters: Filter[]): Promise<Page<StoredEnrollment>>;
function query(store: Store, instanceId: string, filters: Filter[], table: 'registrations'): Promise<Page<StoredRegistration>>;
function query(store: Store, instanceId: string, filters: Filter[], table?: 'registrations'): Promise<Page<StoredEnrollment> | Page<StoredRegistration>> {
  return table === 'registrations'
    ? store.queryRegistrations(instanceId, { filters, limit: 1000 })
    : store.queryEnrollments(instanceId, { filters, limit: 1000 });
}

function sortBy<T>(items: readonly T[], key: (item: T) => string): T[] {
  return [...items].sort((x, y) => (key(x) < key(y) ? -1 : key(x) > key(y) ? 1 : 0));
}
