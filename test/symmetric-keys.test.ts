import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { createRequire, syncBuiltinESMExports } from 'node:module';
import { test } from 'node:test';
import { isValidSymmetricKey } from '../src/domain/ids.js';
import { createSasToken, parseSasToken, sasExpirySeconds, signedByOneOf, type SasToken } from '../src/domain/sas.js';
import { SymmetricKeyGroups } from '../src/services/symmetric-key-groups.js';
import type { Store } from '../src/store/store.js';

/** What the rule says (dps-wire.md §10), the slow way: the bytes the key decodes to, encoded again, are the key. */
function canonicalBase64Of16To64Bytes(key: string): boolean {
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(key) || key.length % 4 !== 0) return false;
  const bytes = Buffer.from(key, 'base64');
  return bytes.length >= 16 && bytes.length <= 64 && bytes.toString('base64') === key;
}

test('symmetric keys: canonical base64 of 16 to 64 bytes, and nothing else', () => {
  for (const size of [16, 17, 18, 32, 63, 64]) assert.equal(isValidSymmetricKey(randomBytes(size).toString('base64')), true, `${size} bytes`);
  for (const size of [1, 15, 65, 96]) assert.equal(isValidSymmetricKey(randomBytes(size).toString('base64')), false, `${size} bytes`);
  const cases: Array<[string, boolean]> = [
    ['AAAAAAAAAAAAAAAAAAAAAA==', true], // 16 zero bytes
    ['AAAAAAAAAAAAAAAAAAAAAB==', false], // the 4 unused bits not zero
    ['AAAAAAAAAAAAAAAAAAAAAAA=', true], // 17 bytes
    ['AAAAAAAAAAAAAAAAAAAAAAB=', false], // the 2 unused bits not zero
    ['AAAAAAAAAAAAAAAAAAAAAAE=', true], // …and zero
    ['AAAAAAAAAAAAAAAAAAAAAA', false], // padding left out
    ['AAAAAAAAAAAAAAAAAAAAAA=', false],
    ['AAAAAAAAAAAAAAAAAAAAA===', false],
    ['AAAAAAAAAAAAAAAAAAAAAAAA', true], // 18 bytes, no padding
    ['AAAAAAAAAAAAAAAAAAAA-_AA', false], // base64url
    ['AAAAAAAAAAAA AAAAAAAAAAA', false],
    ['AAAAAAAAAAAAAAAAAAAA=AAA', false],
    ['', false],
  ];
  for (const [key, valid] of cases) assert.equal(isValidSymmetricKey(key), valid, key);
});

test('symmetric keys: the check on the text agrees with decoding and encoding again, on 200,000 near-valid keys', () => {
  const characters = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_ .';
  let accepted = 0;
  for (let i = 0; i < 200_000; i += 1) {
    const chars = randomBytes(1 + (i % 70)).toString('base64').split('');
    if (i % 3 !== 0) chars[i % chars.length] = characters[i % characters.length] as string;
    if (i % 7 === 0) chars.push('=');
    if (i % 11 === 0) chars.pop();
    const key = chars.join('');
    const expected = canonicalBase64Of16To64Bytes(key);
    assert.equal(isValidSymmetricKey(key), expected, key);
    if (expected) accepted += 1;
  }
  assert.ok(accepted > 10_000, `the sample holds valid keys as well (${accepted})`);
});

test("a checked token's expiry read alone (sasExpirySeconds) is the one a full parse reads, whatever the fields' order, case and spacing", () => {
  const signature = encodeURIComponent(randomBytes(32).toString('base64'));
  const tokens = [
    `SharedAccessSignature sr=0ne00000001%2Fregistrations%2Fdev-1&sig=${signature}&se=1924992000&skn=registration`,
    `SharedAccessSignature se=1924992000&sr=0ne00000001/registrations/dev-1&sig=${signature}`,
    `SharedAccessSignature sig=${signature}&skn=registration&sr=0ne00000001/registrations/dev-1&SE=1924992000`,
    `SharedAccessSignature   sr=0ne00000001/registrations/dev-1&sig=${signature}&se=1924992000  `,
    // A field whose name ends in "se" is not the expiry.
    `SharedAccessSignature sr=0ne00000001/registrations/dev-1&sig=${signature}&xse=1&se=1924992000`,
  ];
  for (const token of tokens) {
    assert.equal(parseSasToken(token)?.expirySeconds, 1924992000, token);
    assert.equal(sasExpirySeconds(token), 1924992000, token);
  }
});

test('a token is checked against its keys until one signed it: a forged one against every key, a valid one no further', () => {
  const [primary, secondary, other] = [randomBytes(32), randomBytes(32), randomBytes(32)].map((key) => key.toString('base64')) as [string, string, string];
  const tokenOf = (key: string) => parseSasToken(createSasToken({ resource: '0ne00000001/registrations/dev-1', keyBase64: key, expirySeconds: 1_924_992_000 })) as SasToken;
  // Counts the HMACs sas.ts computes (its `createHmac` import follows node:crypto's export once synced).
  const nodeCrypto = createRequire(import.meta.url)('node:crypto') as { createHmac: (...args: unknown[]) => unknown };
  const original = nodeCrypto.createHmac;
  let hmacs = 0;
  nodeCrypto.createHmac = (...args: unknown[]) => {
    hmacs += 1;
    return original(...args);
  };
  syncBuiltinESMExports();
  const counted = (token: SasToken): { signed: boolean; hmacs: number } => {
    hmacs = 0;
    const signed = signedByOneOf(token, [primary, secondary]);
    return { signed, hmacs };
  };
  try {
    assert.deepEqual(counted(tokenOf(primary)), { signed: true, hmacs: 1 });
    assert.deepEqual(counted(tokenOf(secondary)), { signed: true, hmacs: 2 });
    assert.deepEqual(counted(tokenOf(other)), { signed: false, hmacs: 2 });
  } finally {
    nodeCrypto.createHmac = original;
    syncBuiltinESMExports();
  }
});

test('the cached group lists a lookup could no longer use are dropped by the sweep (an idle node keeps no erased group)', async () => {
  const group = { enrollmentGroupId: 'sweep-group', attestation: { type: 'symmetricKey', symmetricKey: { primaryKey: randomBytes(32).toString('base64'), secondaryKey: randomBytes(32).toString('base64') } } };
  const store = {
    changeCounter: async () => 1,
    queryEnrollmentGroups: async () => ({ items: [group], nextKey: undefined }),
  } as unknown as Store;
  const groups = new SymmetricKeyGroups(store);
  // A token no group signed: the lookup loads the instance's list (and finds nothing in it).
  const token = parseSasToken(createSasToken({ resource: 'scope/registrations/nobody', keyBase64: randomBytes(32).toString('base64'), keyName: 'registration', expirySeconds: Math.floor(Date.now() / 1000) + 60 }));
  assert.equal(await groups.match('instance-1', 'nobody', token as SasToken), undefined);
  assert.deepEqual(groups.cachedGroupIds('instance-1'), ['sweep-group']);
  groups.forgetStale(Date.now());
  assert.deepEqual(groups.cachedGroupIds('instance-1'), ['sweep-group'], 'a list a lookup may still use stays');
  groups.forgetStale(Date.now() + 31_000);
  assert.deepEqual(groups.cachedGroupIds('instance-1'), [], 'past its 30 s a list goes');
});
