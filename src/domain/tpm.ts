import { constants, createCipheriv, createHash, createHmac, createPublicKey, publicEncrypt, randomBytes, type KeyObject } from 'node:crypto';

/**
 * TPM 2.0 attestation, server side (dps-wire.md §4.5; reference tpm.md §3): the activation blob DPS sends a device —
 * a MakeCredential to its endorsement key (EK) carrying a 16-byte inner wrap key, bound to its storage root key
 * (SRK), and an HMAC key duplicated to the SRK under that inner key. Only the TPM holding both the EK and the SRK can
 * import the HMAC key; the device then signs SAS tokens with it inside the TPM. Pure `node:crypto`; RSA-2048 EK/SRK
 * with nameAlg SHA-256 and AES-128-CFB symmetric parameters, which is what every SDK's templates create.
 */

const TPM_ALG_RSA = 0x0001;
const TPM_ALG_SHA256 = 0x000b;
const TPM_ALG_KEYEDHASH = 0x0008;
const TPM_ALG_HMAC = 0x0005;
/** sign | noDA | userWithAuth; fixedTPM and fixedParent must be clear or TPM2_Import refuses the key. */
const HMAC_KEY_ATTRIBUTES = 0x00040440;
/** The C and C# SDKs hard-code AES-128 for the inner wrapper. */
const INNER_KEY_BYTES = 16;
/** A keyed-hash key may not exceed the SHA-256 block size (TPM_RC_KEY_SIZE on import). */
export const MAX_TPM_HMAC_KEY_BYTES = 64;

/** An RSA storage key as the device sends it: TPM2B_PUBLIC bytes, parsed. */
export interface TpmRsaPublic {
  /** The TPMT_PUBLIC bytes (the TPM2B_PUBLIC without its size), hashed into the key's Name. */
  publicArea: Buffer;
  nameAlg: number;
  modulus: Buffer;
  exponent: number;
  key: KeyObject;
}

export class TpmKeyError extends Error {}

/** Parses a TPM2B_PUBLIC (or a bare TPMT_PUBLIC) holding an RSA key with nameAlg SHA-256. */
export function parseTpmRsaPublic(bytes: Buffer): TpmRsaPublic {
  let area = bytes;
  // A TPM2B_PUBLIC starts with its size; a TPMT_PUBLIC with the key type (0x0001 for RSA).
  if (bytes.length >= 2 && bytes.readUInt16BE(0) === bytes.length - 2) area = bytes.subarray(2);
  const reader = new Reader(area);
  const type = reader.u16();
  if (type !== TPM_ALG_RSA) throw new TpmKeyError(`the key is not an RSA key (TPM algorithm 0x${type.toString(16)})`);
  const nameAlg = reader.u16();
  if (nameAlg !== TPM_ALG_SHA256) throw new TpmKeyError('the key name algorithm is not SHA-256');
  reader.u32(); // objectAttributes
  reader.sized(); // authPolicy
  const symmetric = reader.u16();
  if (symmetric !== 0x0010) {
    reader.u16(); // keyBits
    reader.u16(); // mode
  }
  const scheme = reader.u16();
  if (scheme !== 0x0010) reader.u16(); // scheme hash
  const keyBits = reader.u16();
  const exponent = reader.u32() || 65537;
  const modulus = reader.sized();
  if (keyBits !== 2048 || modulus.length !== 256) throw new TpmKeyError('the key is not RSA-2048');
  if (reader.remaining() !== 0) throw new TpmKeyError('the key has trailing bytes');
  const e = Buffer.alloc(4);
  e.writeUInt32BE(exponent);
  const key = createPublicKey({ key: { kty: 'RSA', n: modulus.toString('base64url'), e: stripZeros(e).toString('base64url') }, format: 'jwk' });
  return { publicArea: Buffer.from(area), nameAlg, modulus, exponent, key };
}

/** Two EKs are the same key when modulus and exponent agree (attributes and policy may be marshalled differently). */
export function sameTpmKey(a: TpmRsaPublic, b: TpmRsaPublic): boolean {
  return a.exponent === b.exponent && a.modulus.equals(b.modulus);
}

/**
 * The DPS activation blob (tpm.md §3): A TPM2B_ID_OBJECT, B encrypted seed for the EK, C the duplicate,
 * D encrypted seed for the SRK, E `u16 || TPMT_PUBLIC` of the HMAC key, F an empty cipherText every SDK ignores.
 */
export function buildActivationBlob(ek: TpmRsaPublic, srk: TpmRsaPublic, hmacKey: Buffer): Buffer {
  if (hmacKey.length === 0 || hmacKey.length > MAX_TPM_HMAC_KEY_BYTES) throw new TpmKeyError(`an HMAC key has 1 to ${MAX_TPM_HMAC_KEY_BYTES} bytes`);
  const innerKey = randomBytes(INNER_KEY_BYTES);
  const srkName = nameOf(srk.publicArea);

  // MakeCredential to the EK, the credential being the inner wrap key, the object the SRK.
  const seedA = randomBytes(32);
  const encryptedSeedA = oaep(ek.key, seedA, 'IDENTITY');
  const credentialKey = kdfa(seedA, 'STORAGE', srkName, Buffer.alloc(0), 128);
  const encIdentity = aesCfb(credentialKey, sized(innerKey));
  const integrityKey = kdfa(seedA, 'INTEGRITY', Buffer.alloc(0), Buffer.alloc(0), 256);
  const integrity = hmac(integrityKey, encIdentity, srkName);
  const idObject = sized(Buffer.concat([sized(integrity), encIdentity]));

  // The HMAC key object and its sensitive part.
  const seedValue = randomBytes(32);
  const unique = createHash('sha256').update(seedValue).update(hmacKey).digest();
  const publicArea = Buffer.concat([u16(TPM_ALG_KEYEDHASH), u16(TPM_ALG_SHA256), u32(HMAC_KEY_ATTRIBUTES), sized(Buffer.alloc(0)), u16(TPM_ALG_HMAC), u16(TPM_ALG_SHA256), sized(unique)]);
  const objectName = nameOf(publicArea);
  const sensitive = sized(Buffer.concat([u16(TPM_ALG_KEYEDHASH), sized(Buffer.alloc(0)), sized(seedValue), sized(hmacKey)]));

  // Duplicate: inner wrap with the inner key, outer wrap to the SRK (TPM 2.0 Part 1, 23.3.2).
  const innerIntegrity = createHash('sha256').update(sensitive).update(objectName).digest();
  const inner = aesCfb(innerKey, Buffer.concat([sized(innerIntegrity), sensitive]));
  const seedD = randomBytes(32);
  const encryptedSeedD = oaep(srk.key, seedD, 'DUPLICATE');
  const duplicateKey = kdfa(seedD, 'STORAGE', objectName, Buffer.alloc(0), 128);
  const encDuplicate = aesCfb(duplicateKey, inner);
  const outerKey = kdfa(seedD, 'INTEGRITY', Buffer.alloc(0), Buffer.alloc(0), 256);
  const outerIntegrity = hmac(outerKey, encDuplicate, objectName);
  const duplicate = sized(Buffer.concat([sized(outerIntegrity), encDuplicate]));

  return Buffer.concat([idObject, sized(encryptedSeedA), duplicate, sized(encryptedSeedD), sized(publicArea), sized(Buffer.alloc(0))]);
}

/** Name = nameAlg || SHA-256(TPMT_PUBLIC), as the TPM computes it. */
function nameOf(publicArea: Buffer): Buffer {
  return Buffer.concat([u16(TPM_ALG_SHA256), createHash('sha256').update(publicArea).digest()]);
}

/** SP 800-108 counter-mode KDF with HMAC-SHA256, as TPM 2.0 Part 1 §11.4.10.2 defines KDFa. */
function kdfa(key: Buffer, label: string, contextU: Buffer, contextV: Buffer, bits: number): Buffer {
  const out: Buffer[] = [];
  let length = 0;
  for (let counter = 1; length * 8 < bits; counter += 1) {
    const block = createHmac('sha256', key).update(u32(counter)).update(label).update(Buffer.from([0])).update(contextU).update(contextV).update(u32(bits)).digest();
    out.push(block);
    length += block.length;
  }
  return Buffer.concat(out).subarray(0, bits / 8);
}

/** RSA-OAEP with SHA-256; the label includes its terminating NUL. */
function oaep(key: KeyObject, data: Buffer, label: string): Buffer {
  return publicEncrypt({ key, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256', oaepLabel: Buffer.from(`${label}\0`) }, data);
}

/** AES-128-CFB with an all-zero IV, as TPM parameter encryption uses it. */
function aesCfb(key: Buffer, data: Buffer): Buffer {
  const cipher = createCipheriv('aes-128-cfb', key, Buffer.alloc(16));
  return Buffer.concat([cipher.update(data), cipher.final()]);
}

function hmac(key: Buffer, ...parts: Buffer[]): Buffer {
  const mac = createHmac('sha256', key);
  for (const part of parts) mac.update(part);
  return mac.digest();
}

function u16(value: number): Buffer {
  const buffer = Buffer.alloc(2);
  buffer.writeUInt16BE(value);
  return buffer;
}

function u32(value: number): Buffer {
  const buffer = Buffer.alloc(4);
  buffer.writeUInt32BE(value >>> 0);
  return buffer;
}

/** TPM2B: a u16 size, then the bytes. */
function sized(bytes: Buffer): Buffer {
  return Buffer.concat([u16(bytes.length), bytes]);
}

function stripZeros(bytes: Buffer): Buffer {
  let start = 0;
  while (start < bytes.length - 1 && bytes[start] === 0) start += 1;
  return bytes.subarray(start);
}

class Reader {
  #offset = 0;
  readonly #bytes: Buffer;

  constructor(bytes: Buffer) {
    this.#bytes = bytes;
  }

  u16(): number {
    this.#need(2);
    const value = this.#bytes.readUInt16BE(this.#offset);
    this.#offset += 2;
    return value;
  }

  u32(): number {
    this.#need(4);
    const value = this.#bytes.readUInt32BE(this.#offset);
    this.#offset += 4;
    return value;
  }

  sized(): Buffer {
    const length = this.u16();
    this.#need(length);
    const value = this.#bytes.subarray(this.#offset, this.#offset + length);
    this.#offset += length;
    return value;
  }

  remaining(): number {
    return this.#bytes.length - this.#offset;
  }

  #need(length: number): void {
    if (this.#offset + length > this.#bytes.length) throw new TpmKeyError('the key is truncated');
  }
}
