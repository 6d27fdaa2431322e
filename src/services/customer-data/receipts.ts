import { generateKeyPairSync, randomBytes } from 'node:crypto';
import type { JsonMap } from '../../domain/enrollment.js';
import { keyIdOf, signReceipt } from '../../domain/receipt.js';
import type { InstanceRecord, Store } from '../../store/store.js';

export type InstanceSecrets = NonNullable<InstanceRecord['secrets']>;

/** The instance's subject-hash key and receipt signing key, created on first use. */
export async function instanceSecrets(store: Store, instance: InstanceRecord): Promise<InstanceSecrets> {
  // Once made they never change (an instance update keeps the stored ones: services/instances.ts), so the caller's copy
  // of the instance is as good as the store's: no transaction per use (an erase used them four times).
  if (instance.secrets !== undefined) return instance.secrets;
  return store.transaction(async (tx) => {
    const current = (await tx.getInstance(instance.id)) ?? instance;
    if (current.secrets !== undefined) return current.secrets;
    const { privateKey, publicKey } = generateKeyPairSync('ed25519');
    const secrets = {
      subjectHashKey: randomBytes(32).toString('base64'),
      receiptPrivateKeyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
      receiptPublicKeyPem: publicKey.export({ type: 'spki', format: 'pem' }).toString(),
    };
    await tx.updateInstance({ ...current, secrets });
    return secrets;
  });
}

/** The public half of the receipt signing key, as `GET /receiptSigningKey` shows it. */
export function signingKeyView(secrets: InstanceSecrets): JsonMap {
  return { keyId: keyIdOf(secrets.receiptPublicKeyPem), algorithm: 'Ed25519', publicKeyPem: secrets.receiptPublicKeyPem };
}

/** What an erase receipt attests: the request, the subject by its keyed hash, and the counts per place. */
export interface EraseReceiptContent {
  requestId: string;
  instance: string;
  subjectKind: string;
  subjectHash: string;
  completedDateTimeUtc: string;
  deleted: Array<{ place: string; count: number }>;
  pseudonymized: Array<{ place: string; count: number }>;
  nothingFound: boolean;
}

/** The signed receipt (docs/customer-data-api.md "Receipts"), verifiable offline with the instance's public key. */
export function signEraseReceipt(content: EraseReceiptContent, secrets: InstanceSecrets): JsonMap {
  const { nothingFound, ...rest } = content;
  return signReceipt({ ...rest, ...(nothingFound ? { nothingFound: true } : {}) }, secrets.receiptPrivateKeyPem, secrets.receiptPublicKeyPem) as unknown as JsonMap;
}
