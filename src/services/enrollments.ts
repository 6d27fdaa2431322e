import type { TSchema } from '@sinclair/typebox';
import {
  buildEnrollment,
  buildEnrollmentGroup,
  certificateThumbprints,
  fullAttestation,
  renderEnrollment,
  renderEnrollmentGroup,
  type JsonMap,
  type StoredAttestation,
  type StoredEnrollment,
  type StoredEnrollmentGroup,
  type Visibility,
} from '../domain/enrollment.js';
import { ProvisioningError, type ErrorName } from '../domain/errors.js';
import { assertValid, compileSchema } from '../domain/validation.js';
import { etagMatches, newEtag } from '../domain/etag.js';
import { assertEnrollmentGroupId, assertRegistrationId, idKey } from '../domain/ids.js';
import { renderRegistration } from '../domain/registration.js';
import { dpsTimestamp } from '../domain/time.js';
import { EnrollmentGroupInput, IndividualEnrollmentInput, type BulkMode } from '../domain/wire.js';
import { ENROLLMENT_FIELDS, GROUP_FIELDS, type InstanceRecord, type ListQuery, type Page, type Store } from '../store/store.js';
import type { ServiceDeps } from './deps.js';
import { assertNotFenced } from './customer-data/erase-fence.js';
import { encodeContinuation, readPageRequest, type PageRequest } from './paging.js';

/**
 * Individual enrollments and enrollment groups follow the same rules (dps-wire.md §2.2-2.5); what differs is
 * captured in an EnrollmentKindSpec, and one EnrollmentService serves both.
 */
interface EnrollmentDocument {
  attestation: StoredAttestation;
  etag: string;
  iotHubs?: string[];
  iotHubHostName?: string;
  credentialPolicyName?: string;
}

export interface EnrollmentKindSpec<Doc extends EnrollmentDocument> {
  readonly kind: 'individual' | 'group';
  /** `registrationId` or `enrollmentGroupId`. */
  readonly idField: string;
  readonly itemType: 'Enrollment' | 'EnrollmentGroup';
  readonly notFound: ErrorName;
  readonly queryFields: readonly string[];
  readonly inputSchema: TSchema;
  assertId(id: string): void;
  build(input: unknown, existing: Doc | undefined, stamp: { etag: string; now: string }): Doc;
  idOf(doc: Doc): string;
  get(store: Store, instanceId: string, id: string): Promise<Doc | undefined>;
  /** With `expectedEtag`: compare-and-swap, false when the stored etag is no longer that one; with null: create only. */
  put(store: Store, instanceId: string, doc: Doc, expectedEtag?: string | null): Promise<boolean>;
  remove(store: Store, instanceId: string, id: string, expectedEtag?: string): Promise<boolean>;
  query(store: Store, instanceId: string, query: ListQuery): Promise<Page<Doc>>;
  /**
   * Multi-row reads and writes for bulk import (individual enrollments, the kind imported by the million); a kind
   * without them is bulk-written item by item, still in one transaction.
   */
  many?: {
    get(store: Store, instanceId: string, ids: readonly string[]): Promise<Doc[]>;
    write(store: Store, instanceId: string, docs: readonly Doc[], mode: 'create' | 'replace'): Promise<string[]>;
  };
  /** Deletes the registration records that belong to the entry (the cascade rule). */
  cascade(store: Store, instanceId: string, id: string): Promise<number>;
  render(store: Store, instanceId: string, doc: Doc, visibility: Visibility): Promise<JsonMap>;
  /** A query's page rendered at once (one read of the page's records, not one per entry); `render` per entry without it. */
  renderPage?(store: Store, instanceId: string, docs: readonly Doc[]): Promise<JsonMap[]>;
}

export const individualSpec: EnrollmentKindSpec<StoredEnrollment> = {
  kind: 'individual',
  idField: 'registrationId',
  itemType: 'Enrollment',
  notFound: 'EnrollmentNotFound',
  queryFields: ENROLLMENT_FIELDS,
  inputSchema: IndividualEnrollmentInput,
  assertId: assertRegistrationId,
  build: (input, existing, stamp) => buildEnrollment(input as IndividualEnrollmentInput, existing, stamp),
  idOf: (doc) => doc.registrationId,
  get: (store, instanceId, id) => store.getEnrollment(instanceId, id),
  put: (store, instanceId, doc, expectedEtag) => store.putEnrollment(instanceId, doc, expectedEtag),
  remove: (store, instanceId, id, expectedEtag) => store.deleteEnrollment(instanceId, id, expectedEtag),
  query: (store, instanceId, query) => store.queryEnrollments(instanceId, query),
  many: {
    get: (store, instanceId, ids) => store.getEnrollments(instanceId, ids),
    write: (store, instanceId, docs, mode) => store.writeEnrollments(instanceId, docs, mode),
  },
  async cascade(store, instanceId, id) {
    const record = await store.getRegistration(instanceId, id);
    // Only the record of a device that registered through this enrollment; a group's device keeps its record.
    if (record === undefined || record.enrollmentGroupId !== undefined) return 0;
    return (await store.deleteRegistration(instanceId, id)) ? 1 : 0;
  },
  async render(store, instanceId, doc, visibility) {
    const record = await store.getRegistration(instanceId, doc.registrationId);
    const state = record !== undefined && record.enrollmentGroupId === undefined ? renderRegistration(record) : undefined;
    return renderEnrollment(doc, visibility, state);
  },
  async renderPage(store, instanceId, docs) {
    const records = new Map((await store.getRegistrations(instanceId, docs.map((doc) => doc.registrationId))).map((record) => [idKey(record.registrationId), record]));
    return docs.map((doc) => {
      const record = records.get(idKey(doc.registrationId));
      return renderEnrollment(doc, 'public', record !== undefined && record.enrollmentGroupId === undefined ? renderRegistration(record) : undefined);
    });
  },
};

export const groupSpec: EnrollmentKindSpec<StoredEnrollmentGroup> = {
  kind: 'group',
  idField: 'enrollmentGroupId',
  itemType: 'EnrollmentGroup',
  notFound: 'EnrollmentGroupNotFound',
  queryFields: GROUP_FIELDS,
  inputSchema: EnrollmentGroupInput,
  assertId: assertEnrollmentGroupId,
  build: (input, existing, stamp) => buildEnrollmentGroup(input as EnrollmentGroupInput, existing, stamp),
  idOf: (doc) => doc.enrollmentGroupId,
  get: (store, instanceId, id) => store.getEnrollmentGroup(instanceId, id),
  put: (store, instanceId, doc, expectedEtag) => store.putEnrollmentGroup(instanceId, doc, expectedEtag),
  remove: (store, instanceId, id, expectedEtag) => store.deleteEnrollmentGroup(instanceId, id, expectedEtag),
  query: (store, instanceId, query) => store.queryEnrollmentGroups(instanceId, query),
  cascade: (store, instanceId, id) => store.deleteRegistrationsOfGroup(instanceId, id),
  render: (_store, _instanceId, doc, visibility) => Promise.resolve(renderEnrollmentGroup(doc, visibility)),
};

export interface QueryResult {
  items: JsonMap[];
  continuation: string | undefined;
  itemType: string;
  maxItemCount: number;
}

export interface BulkResult {
  isSuccessful: boolean;
  errors?: JsonMap[];
}

export type EnrollmentChange = { change: 'created' | 'updated' | 'deleted'; id: string };

/** Told after every committed write (lifecycle events, caches); a bulk call's changes come in one list. */
export type EnrollmentChangeListener = (instance: InstanceRecord, changes: readonly EnrollmentChange[]) => void;

/**
 * The system log of a bulk call: one entry per item, with the item's own outcome, written in the bulk call's
 * transaction (transports/http/service-audit.ts builds it from the request).
 */
export interface BulkItemLog {
  write(store: Store, items: ReadonlyArray<{ id: string; error: ProvisioningError | undefined }>): Promise<void>;
}

/** One item of a bulk call that passed the checks made outside the transaction. */
interface BulkItem {
  index: number;
  id: string;
  input: unknown;
}

export class EnrollmentService<Doc extends EnrollmentDocument> {
  readonly #deps: ServiceDeps;
  readonly #spec: EnrollmentKindSpec<Doc>;
  readonly #validate;
  readonly #onChange: EnrollmentChangeListener;

  constructor(deps: ServiceDeps, spec: EnrollmentKindSpec<Doc>, onChange: EnrollmentChangeListener = () => undefined) {
    this.#deps = deps;
    this.#spec = spec;
    this.#onChange = onChange;
    this.#validate = compileSchema(spec.inputSchema);
  }

  get spec(): EnrollmentKindSpec<Doc> {
    return this.#spec;
  }

  async get(instance: InstanceRecord, id: string): Promise<JsonMap> {
    const doc = await this.#require(this.#deps.store, instance, id);
    return this.#spec.render(this.#deps.store, instance.id, doc, 'public');
  }

  async attestationMechanism(instance: InstanceRecord, id: string): Promise<JsonMap> {
    const doc = await this.#require(this.#deps.store, instance, id);
    return fullAttestation(doc.attestation);
  }

  /**
   * PUT: create or replace; with If-Match, only when the stored etag matches (412 otherwise); with `createOnly`
   * (If-None-Match: *), only when the entry does not exist (RFC 7232 §3.2: 412 otherwise), so a client creates without
   * reading first. The body has passed the input schema at the edge.
   */
  async createOrUpdate(instance: InstanceRecord, id: string, input: unknown, ifMatch: string | undefined, createOnly = false): Promise<JsonMap> {
    this.#spec.assertId(id);
    if (createOnly && ifMatch !== undefined) {
      throw new ProvisioningError('InvalidHeader', 'Give If-Match (replace a version) or If-None-Match: * (create only), not both.');
    }
    const bodyId = (input as Record<string, unknown>)[this.#spec.idField];
    if (typeof bodyId !== 'string' || idKey(bodyId) !== idKey(id)) {
      throw new ProvisioningError('IdMismatch', `The ${this.#spec.idField} in the body ('${String(bodyId)}') does not match the one in the path ('${id}').`);
    }
    const { doc, created } = await this.#deps.store.transaction((store) => this.#write(store, instance, id, input, ifMatch, 'update', createOnly));
    this.#onChange(instance, [{ change: created ? 'created' : 'updated', id: this.#spec.idOf(doc) }]);
    return this.#spec.render(this.#deps.store, instance.id, doc, 'withSecrets');
  }

  async delete(instance: InstanceRecord, id: string, ifMatch: string | undefined): Promise<void> {
    await this.#deps.store.transaction((store) => this.#delete(store, instance, id, ifMatch));
    this.#onChange(instance, [{ change: 'deleted', id }]);
  }

  async #delete(store: Store, instance: InstanceRecord, id: string, ifMatch: string | undefined): Promise<void> {
    // If-Match names a version; once the entry is gone none can match (RFC 7232 §3.1: 412, as on PUT), so of writers
    // racing with one etag exactly one deletes and the others learn they lost rather than that it never existed.
    // One read decides: on PostgreSQL a second read in the same transaction may already miss an entry that a
    // concurrent delete removed, which turned a loser's 412 into a 404.
    const existing = ifMatch === undefined ? await this.#require(store, instance, id) : await this.#spec.get(store, instance.id, id);
    if (existing === undefined) throw new ProvisioningError('PreconditionFailed', `'${id}' does not exist, so If-Match cannot match.`);
    if (ifMatch !== undefined && !etagMatches(ifMatch, existing.etag)) throw new ProvisioningError('PreconditionFailed');
    await this.#spec.cascade(store, instance.id, id);
    // Compare-and-swap on the etag just checked: a write that landed since (another request, another node) makes
    // this delete a 412, and the transaction (or the bulk item's savepoint) undoes the cascade.
    const removed = await this.#spec.remove(store, instance.id, id, ifMatch === undefined ? undefined : existing.etag);
    if (ifMatch !== undefined && !removed) throw new ProvisioningError('PreconditionFailed');
  }

  async query(instance: InstanceRecord, request: PageRequest): Promise<QueryResult> {
    const page = readPageRequest(request, this.#spec.queryFields, this.#deps.config);
    const result = await this.#spec.query(this.#deps.store, instance.id, page);
    const items =
      this.#spec.renderPage !== undefined
        ? await this.#spec.renderPage(this.#deps.store, instance.id, result.items)
        : await Promise.all(result.items.map((doc) => this.#spec.render(this.#deps.store, instance.id, doc, 'public')));
    return {
      items,
      continuation: result.nextKey === undefined ? undefined : encodeContinuation(result.nextKey, request.query ?? ''),
      itemType: this.#spec.itemType,
      maxItemCount: page.limit,
    };
  }

  /**
   * Bulk (dps-wire.md §2.5): each item succeeds or fails on its own and is reported on its own, and the whole call is
   * one transaction — multi-row statements where the kind has them, a savepoint per item otherwise — with one log
   * entry per item written in it.
   */
  async bulk(instance: InstanceRecord, requestedMode: BulkMode, items: unknown[], log?: BulkItemLog): Promise<BulkResult> {
    const mode = requestedMode === 'updateIfMatchEtag' ? 'updateIfMatchETag' : requestedMode;
    if (items.length > this.#deps.config.bulkMaxItems) {
      throw new ProvisioningError('BulkTooLarge', `A bulk operation takes at most ${this.#deps.config.bulkMaxItems} items; this one has ${items.length}.`);
    }
    const ids: string[] = [];
    const failed = new Map<number, ProvisioningError>();
    const valid: BulkItem[] = [];
    // Checks that need no store happen before the transaction, so it stays short.
    for (const [index, item] of items.entries()) {
      const rawId = typeof item === 'object' && item !== null ? (item as Record<string, unknown>)[this.#spec.idField] : undefined;
      const id = typeof rawId === 'string' ? rawId : '';
      ids.push(id);
      try {
        if (id === '') throw new ProvisioningError('SchemaViolation', `Item ${index} has no ${this.#spec.idField}.`);
        this.#spec.assertId(id);
        valid.push({ index, id, input: mode === 'delete' ? item : assertValid(this.#validate, item, `item ${index}`) });
      } catch (error) {
        if (!(error instanceof ProvisioningError)) throw error;
        failed.set(index, error);
      }
    }
    const changes: EnrollmentChange[] = [];
    await this.#deps.store.transaction(async (store) => {
      const rest = mode === 'create' || mode === 'update' ? await this.#writeMany(store, instance, mode, valid, failed, changes) : valid;
      for (const { index, id, input } of rest) {
        try {
          if (mode === 'delete') {
            const etag = (input as Record<string, unknown>).etag;
            await store.atomically((itemStore) => this.#delete(itemStore, instance, id, typeof etag === 'string' && etag !== '' ? etag : undefined));
            changes.push({ change: 'deleted', id });
          } else {
            const { created } = await store.atomically((itemStore) => this.#write(itemStore, instance, id, input, undefined, mode));
            changes.push({ change: created ? 'created' : 'updated', id });
          }
        } catch (error) {
          if (!(error instanceof ProvisioningError)) throw error;
          failed.set(index, error);
        }
      }
      await log?.write(store, ids.map((id, index) => ({ id, error: failed.get(index) })));
    });
    if (changes.length > 0) this.#onChange(instance, changes);
    const errors = [...failed.entries()]
      .sort(([a], [b]) => a - b)
      .map(([index, error]) => ({ [this.#spec.idField]: ids[index] ?? '', errorCode: error.errorCode, errorStatus: error.message }));
    return errors.length === 0 ? { isSuccessful: true } : { isSuccessful: false, errors };
  }

  /**
   * The multi-row path of bulk create/update: the existing entries read in one statement per 500, every check made
   * in memory, the writes in multi-row statements. Answers the items it leaves to the item-by-item path: a second
   * occurrence of an ID in the call, entries with certificates (their uniqueness is checked per certificate), and
   * every item when an erase fence stands on any of them.
   */
  async #writeMany(
    store: Store,
    instance: InstanceRecord,
    mode: 'create' | 'update',
    items: readonly BulkItem[],
    failed: Map<number, ProvisioningError>,
    changes: EnrollmentChange[],
  ): Promise<BulkItem[]> {
    const many = this.#spec.many;
    if (many === undefined || items.length === 0) return [...items];
    const existing = new Map((await many.get(store, instance.id, items.map((item) => item.id))).map((doc) => [idKey(this.#spec.idOf(doc)), doc]));
    const stamp = { etag: '', now: dpsTimestamp(this.#deps.now()) };
    const seen = new Set<string>();
    const rest: BulkItem[] = [];
    const ready: Array<{ item: BulkItem; doc: Doc; created: boolean }> = [];
    let linked: Set<string> | undefined;
    for (const item of items) {
      const key = idKey(item.id);
      if (seen.has(key)) {
        rest.push(item);
        continue;
      }
      seen.add(key);
      const prior = existing.get(key);
      try {
        if (mode === 'create' && prior !== undefined) throw this.#exists(item.id);
        const doc = this.#spec.build(item.input, prior, { ...stamp, etag: newEtag() });
        if (certificateThumbprints(doc.attestation).length > 0 || (prior !== undefined && certificateThumbprints(prior.attestation).length > 0)) {
          rest.push(item);
          continue;
        }
        const named = [...(doc.iotHubs ?? []), ...(doc.iotHubHostName === undefined ? [] : [doc.iotHubHostName])];
        if (named.length > 0) {
          linked ??= new Set((await store.listLinkedHubs(instance.id)).map((hub) => hub.name));
          const unknown = named.filter((hub) => !(linked as Set<string>).has(hub));
          if (unknown.length > 0) throw new ProvisioningError('InvalidAllocation', `These hubs are not linked to the instance: ${unknown.join(', ')}.`);
        }
        ready.push({ item, doc, created: prior === undefined });
      } catch (error) {
        if (!(error instanceof ProvisioningError)) throw error;
        failed.set(item.index, error);
      }
    }
    // Erase fences are rare: one probe for the whole call, and the item-by-item path (which names the fenced item)
    // when it finds one.
    const registrationIds: string[] = [];
    const deviceIds: string[] = [];
    for (const { item, doc } of ready) {
      registrationIds.push(item.id);
      deviceIds.push(item.id, (doc as unknown as StoredEnrollment).deviceId ?? item.id);
    }
    if (ready.length > 0 && (await store.findEraseFence(instance.id, { registrationIds, deviceIds })) !== undefined) {
      return [...ready.map(({ item }) => item), ...rest].sort((a, b) => a.index - b.index);
    }
    const written = new Set(await many.write(store, instance.id, ready.map(({ doc }) => doc), mode === 'create' ? 'create' : 'replace'));
    for (const { item, created } of ready) {
      // Not written on create: another writer created the ID after it was read above (the primary key said no).
      if (!written.has(idKey(item.id))) failed.set(item.index, this.#exists(item.id));
      else changes.push({ change: created ? 'created' : 'updated', id: item.id });
    }
    return rest;
  }

  #exists(id: string): ProvisioningError {
    return new ProvisioningError('Conflict', `The ${this.#spec.kind === 'individual' ? 'enrollment' : 'enrollment group'} '${id}' already exists.`);
  }

  #existsPrecondition(id: string): ProvisioningError {
    return new ProvisioningError('EntryExists', `The ${this.#spec.kind === 'individual' ? 'enrollment' : 'enrollment group'} '${id}' already exists; If-None-Match: * creates only.`);
  }

  async #write(
    store: Store,
    instance: InstanceRecord,
    id: string,
    input: unknown,
    ifMatch: string | undefined,
    mode: Exclude<BulkMode, 'delete' | 'updateIfMatchEtag'>,
    createOnly = false,
  ): Promise<{ doc: Doc; created: boolean }> {
    const existing = await this.#spec.get(store, instance.id, id);
    if (mode === 'create' && existing !== undefined) throw this.#exists(id);
    if (createOnly && existing !== undefined) throw this.#existsPrecondition(id);
    const expected = mode === 'updateIfMatchETag' ? ((input as Record<string, unknown>).etag as string | undefined) ?? '' : ifMatch;
    if (expected !== undefined) {
      // If-Match names a version of an existing entry: on a missing entry it cannot match (RFC 7232 §3.1: 412).
      if (existing === undefined) throw new ProvisioningError('PreconditionFailed', `'${id}' does not exist, so If-Match cannot match.`);
      if (!etagMatches(expected, existing.etag)) throw new ProvisioningError('PreconditionFailed');
    }
    const doc = this.#spec.build(input, existing, { etag: newEtag(), now: dpsTimestamp(this.#deps.now()) });
    // An erase running for this entry (or the device it names) refuses the write (docs/customer-data.md).
    await assertNotFenced(
      store,
      instance.id,
      this.#spec.kind === 'group' ? { groupIds: [id] } : { registrationIds: [id], deviceIds: [(doc as unknown as StoredEnrollment).deviceId ?? id] },
    );
    await this.#checkHubs(store, instance, doc);
    await this.#checkCredentialPolicy(store, instance, doc);
    await this.#checkCertificatesUnused(store, instance, doc);
    // With a precondition, the write is a compare-and-swap on the etag checked above: of concurrent writers holding
    // the same etag exactly one succeeds (on PostgreSQL the others' conditional UPDATE finds the new etag).
    // Create only: an insert that the primary key refuses when a concurrent creator got there first.
    // A bulk create is create-only too: two concurrent bulk creates of one ID must not both succeed, one overwriting.
    const insertOnly = createOnly || mode === 'create';
    const written = await this.#spec.put(store, instance.id, doc, insertOnly ? null : expected === undefined || existing === undefined ? undefined : existing.etag);
    if (!written) throw createOnly ? this.#existsPrecondition(id) : mode === 'create' ? this.#exists(id) : new ProvisioningError('PreconditionFailed');
    return { doc, created: existing === undefined };
  }

  /** Hubs named by an enrollment must be linked to the instance (dps-wire.md §8.2). */
  async #checkHubs(store: Store, instance: InstanceRecord, doc: Doc): Promise<void> {
    const named = [...(doc.iotHubs ?? []), ...(doc.iotHubHostName === undefined ? [] : [doc.iotHubHostName])];
    if (named.length === 0) return;
    const linked = new Set((await store.listLinkedHubs(instance.id)).map((hub) => hub.name));
    const unknown = named.filter((hub) => !linked.has(hub));
    if (unknown.length > 0) {
      throw new ProvisioningError('InvalidAllocation', `These hubs are not linked to the instance: ${unknown.join(', ')}.`);
    }
  }

  /** credentialPolicyName must name a credential policy of the instance (docs/certificate-issuance.md). */
  async #checkCredentialPolicy(store: Store, instance: InstanceRecord, doc: Doc): Promise<void> {
    const name = doc.credentialPolicyName;
    if (name === undefined || (await store.getCredentialPolicy(instance.id, name)) !== undefined) return;
    throw new ProvisioningError('CredentialPolicyUnknown', `credentialPolicyName '${name}' names no credential policy of this instance.`);
  }

  /** "A certificate can be specified in only one enrollment entry" (dps-wire.md §2.3, §4.4). */
  async #checkCertificatesUnused(store: Store, instance: InstanceRecord, doc: Doc): Promise<void> {
    for (const thumbprint of certificateThumbprints(doc.attestation)) {
      const owner = await store.findCertificateOwner(instance.id, thumbprint);
      if (owner !== undefined && !(owner.kind === this.#spec.kind && owner.id === idKey(this.#spec.idOf(doc)))) {
        throw new ProvisioningError(
          'CertificateInUse',
          `The certificate with SHA-256 thumbprint ${thumbprint} is already used by ${owner.kind === 'group' ? 'enrollment group' : 'enrollment'} '${owner.id}'; a certificate can be specified in only one enrollment entry.`,
        );
      }
    }
  }

  async #require(store: Store, instance: InstanceRecord, id: string): Promise<Doc> {
    const doc = await this.#spec.get(store, instance.id, id);
    if (doc === undefined) {
      throw new ProvisioningError(this.#spec.notFound, `${this.#spec.kind === 'individual' ? 'Enrollment' : 'Enrollment group'} '${id}' was not found.`);
    }
    return doc;
  }
}
