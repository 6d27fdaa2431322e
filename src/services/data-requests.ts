import { Type } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import { createHash, generateKeyPairSync, randomBytes } from 'node:crypto';
import type { FastifyBaseLogger } from 'fastify';
import { renderEnrollment, type JsonMap, type StoredEnrollment } from '../domain/enrollment.js';
import { ProvisioningError } from '../domain/errors.js';
import { isValidId } from '../domain/ids.js';
import { canonicalJson, keyIdOf, signReceipt, subjectHash } from '../domain/receipt.js';
import { renderRegistration } from '../domain/registration.js';
import { dpsTimestamp } from '../domain/time.js';
import type { HubClientFactory } from '../hubs/hub-client.js';
import { DATA_REQUEST_FIELDS, type AuditEvent, type EraseFence, type InstanceRecord, type LinkedHubRecord, type OutboxEvent, type SubjectKind } from '../store/store.js';
import { pseudonymizedEvent } from './customer-data/erase-fence.js';
import { withPlaceNames } from './customer-data/place-names.js';
import type { AuditLog } from './audit-log.js';
import type { ServiceDeps } from './deps.js';
import type { LifecycleEvents } from './lifecycle-events.js';
import { encodeContinuation, readPageRequest, type PageRequest } from './paging.js';

/**
 * Customer-data requests (docs/customer-data.md): export everything about one subject, or erase it everywhere —
 * enrollments, registration records, operations, device identities and twins on every linked hub, and the system
 * log. An erase is a job: its plan is stored before anything is deleted, progress is stored as it goes, and a
 * request left running by a crash is finished when the server starts again. Each finished erase yields a receipt
 * signed with the instance's Ed25519 key. Afterwards the request remembers the subject only by its keyed hash.
 */
export type { SubjectKind };

export interface DataRequestBody {
  type: 'export' | 'erase';
  subject: Partial<Record<SubjectKind, string>>;
  dryRun?: boolean;
  includeSecrets?: boolean;
}

interface EraseStep {
  place: string;
  action: 'delete' | 'pseudonymize';
  /** Registration IDs, device IDs or group IDs the step works through (removed once the request completes). */
  items: string[];
  done: number;
  count: number;
  hub?: string;
  error?: string;
  completed: boolean;
}

interface Subjects {
  registrationIds: string[];
  deviceIds: string[];
  groupIds: string[];
  enrollments: StoredEnrollment[];
}

export type DataRequestDoc = JsonMap & {
  requestId: string;
  sortKey: string;
  type: 'export' | 'erase';
  status: 'running' | 'completed' | 'partiallyCompleted' | 'failed';
  dryRun: boolean;
  includeSecrets: boolean;
  subject: { kind: SubjectKind; id?: string; hash: string };
  bodyFingerprint: string;
  requestedBy: string;
  createdDateTimeUtc: string;
  lastUpdatedDateTimeUtc: string;
  progress: { done: number; total: number };
  plan?: EraseStep[];
  result?: JsonMap;
  error?: string;
  bundle?: JsonMap;
  receipt?: JsonMap;
};

export interface DataRequestDeps extends ServiceDeps {
  hubClients: HubClientFactory;
  audit: AuditLog;
  events: LifecycleEvents;
  logger: FastifyBaseLogger;
  /** How long a create call waits for its job before answering `running`. */
  waitMs: number;
  /** This node, as the holder of job leases; and how long a lease lasts unrenewed. */
  nodeId?: string;
  leaseMs?: number;
}

const REDACTED = '<redacted>';
const PERSIST_EVERY = 50;
/** How many times the erase searches every place again before it gives up on signing (writes were under way). */
const RECHECK_PASSES = 5;
const PREVIEW_CONCURRENCY = 16;
/** Said (API `result.warning`, CLI warning and exit code) when a subject is unknown: not the same as a fulfilled request. */
const NOTHING_FOUND = 'Nothing was found for the subject in any place; nothing was exported, deleted or pseudonymized.';

export class DataRequestService {
  readonly #deps: DataRequestDeps;
  /** Jobs running on this node, so one request never runs twice at once. */
  readonly #jobs = new Map<string, Promise<void>>();
  #stopping = false;

  constructor(deps: DataRequestDeps) {
    this.#deps = deps;
  }

  // ---- the instance's secrets

  /** The subject-hash key and receipt signing key, created on first use. */
  async secrets(instance: InstanceRecord): Promise<NonNullable<InstanceRecord['secrets']>> {
    return this.#deps.store.transaction(async (store) => {
      const current = (await store.getInstance(instance.id)) ?? instance;
      if (current.secrets !== undefined) return current.secrets;
      const { privateKey, publicKey } = generateKeyPairSync('ed25519');
      const secrets = {
        subjectHashKey: randomBytes(32).toString('base64'),
        receiptPrivateKeyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
        receiptPublicKeyPem: publicKey.export({ type: 'spki', format: 'pem' }).toString(),
      };
      await store.updateInstance({ ...current, secrets });
      return secrets;
    });
  }

  async signingKey(instance: InstanceRecord): Promise<JsonMap> {
    const { receiptPublicKeyPem } = await this.secrets(instance);
    return { keyId: keyIdOf(receiptPublicKeyPem), algorithm: 'Ed25519', publicKeyPem: receiptPublicKeyPem };
  }

  // ---- requests

  async create(instance: InstanceRecord, requestId: string, body: DataRequestBody, requestedBy: string): Promise<JsonMap> {
    if (!isValidId(requestId)) {
      throw new ProvisioningError('BadRequest', `The request ID '${requestId}' is invalid: use 1-128 letters, digits, '-', '.', '_' or ':'.`);
    }
    const subject = this.#checkSubject(body);
    const fingerprint = createHash('sha256').update(canonicalJson({ ...body, dryRun: body.dryRun === true, includeSecrets: body.includeSecrets === true })).digest('hex');
    const existing = await this.#deps.store.getDataRequest(instance.id, requestId);
    if (existing !== undefined) {
      // Idempotent by ID: the same request again is the same request; a different one under that ID is a conflict.
      if (existing.doc.bodyFingerprint !== fingerprint) {
        throw new ProvisioningError('Conflict', `Data request '${requestId}' already exists with a different body.`);
      }
      return this.#view(readRequestDoc(existing.doc));
    }
    const { subjectHashKey } = await this.secrets(instance);
    const now = this.#deps.now();
    const doc: DataRequestDoc = {
      requestId,
      sortKey: `${(9_999_999_999_999 - now.getTime()).toString().padStart(13, '0')}:${requestId.toLowerCase()}`,
      type: body.type,
      status: 'running',
      dryRun: body.type === 'erase' && body.dryRun === true,
      includeSecrets: body.type === 'export' && body.includeSecrets === true,
      subject: { kind: subject.kind, id: subject.id, hash: subjectHash(subjectHashKey, subject.kind, subject.id) },
      bodyFingerprint: fingerprint,
      requestedBy,
      createdDateTimeUtc: dpsTimestamp(now),
      lastUpdatedDateTimeUtc: dpsTimestamp(now),
      progress: { done: 0, total: 0 },
    };
    await this.#save(instance, doc);
    await this.#waitFor(this.#start(instance, doc));
    return this.get(instance, requestId, body.type);
  }

  /** Reads a request; `type` restricts which kind the caller may see (rights differ per kind). */
  async get(instance: InstanceRecord, requestId: string, type?: 'export' | 'erase'): Promise<JsonMap> {
    return this.#view(await this.#require(instance, requestId, type));
  }

  async bundle(instance: InstanceRecord, requestId: string): Promise<JsonMap> {
    const doc = await this.#require(instance, requestId, 'export');
    if (doc.bundle === undefined) {
      throw new ProvisioningError('DataRequestResultUnavailable', `Data request '${requestId}' has no bundle yet (status ${doc.status}).`);
    }
    return doc.bundle;
  }

  async receipt(instance: InstanceRecord, requestId: string): Promise<JsonMap> {
    const doc = await this.#require(instance, requestId, 'erase');
    if (doc.receipt === undefined) {
      throw new ProvisioningError('DataRequestResultUnavailable', `Data request '${requestId}' has no receipt${doc.dryRun ? ' (a dry run changes nothing)' : ` yet (status ${doc.status})`}.`);
    }
    return doc.receipt;
  }

  async retry(instance: InstanceRecord, requestId: string): Promise<JsonMap> {
    const doc = await this.#require(instance, requestId, 'erase');
    if (doc.status === 'partiallyCompleted' || doc.status === 'failed') {
      doc.status = 'running';
      delete doc.error;
      for (const step of doc.plan ?? []) delete step.error;
      await this.#save(instance, doc);
      await this.#waitFor(this.#start(instance, doc));
    }
    return this.get(instance, requestId, 'erase');
  }

  async query(instance: InstanceRecord, request: PageRequest): Promise<{ items: JsonMap[]; continuation: string | undefined; maxItemCount: number }> {
    const page = readPageRequest(request, DATA_REQUEST_FIELDS, this.#deps.config);
    const result = await this.#deps.store.queryDataRequests(instance.id, page);
    return {
      items: result.items.map((item) => this.#view(readRequestDoc(item.doc))),
      continuation: result.nextKey === undefined ? undefined : encodeContinuation(result.nextKey, request.query ?? ''),
      maxItemCount: page.limit,
    };
  }

  /** After a restart: finish every request a crash left running. */
  async resumeUnfinished(): Promise<number> {
    const unfinished = await this.#deps.store.listDataRequestsByStatus(['running']);
    for (const record of unfinished) {
      const instance = await this.#deps.store.getInstance(record.instanceId);
      if (instance !== undefined) void this.#start(instance, readRequestDoc(record.doc));
    }
    return unfinished.length;
  }

  /** Shutdown: jobs stop between two items and stay `running`, so the next start finishes them. */
  async stop(): Promise<void> {
    this.#stopping = true;
    await this.idle();
  }

  /** Waits for every job running on this node (tests, shutdown). */
  async idle(): Promise<void> {
    while (this.#jobs.size > 0) await Promise.allSettled([...this.#jobs.values()]);
  }

  #checkSubject(body: DataRequestBody): { kind: SubjectKind; id: string } {
    const given = (['registrationId', 'deviceId', 'enrollmentGroupId'] as const).filter((kind) => body.subject[kind] !== undefined);
    if (given.length !== 1) {
      throw new ProvisioningError('BadRequest', 'subject names exactly one of registrationId, deviceId or enrollmentGroupId.');
    }
    const kind = given[0] as SubjectKind;
    const id = body.subject[kind] as string;
    if (id === '' || id.length > 128) throw new ProvisioningError('BadRequest', `subject.${kind} must be 1-128 characters.`);
    if (kind === 'enrollmentGroupId' && body.type !== 'erase') {
      throw new ProvisioningError('BadRequest', 'An enrollment group can be the subject of an erase, not of an export.');
    }
    return { kind, id };
  }

  async #require(instance: InstanceRecord, requestId: string, type?: 'export' | 'erase'): Promise<DataRequestDoc> {
    const record = await this.#deps.store.getDataRequest(instance.id, requestId);
    // A request of the other kind is "not found" for a caller who may only see this kind.
    if (record === undefined || (type !== undefined && record.type !== type)) {
      throw new ProvisioningError('DataRequestNotFound', `Data request '${requestId}' was not found.`);
    }
    return readRequestDoc(record.doc);
  }

  #view(doc: DataRequestDoc): JsonMap {
    const { bodyFingerprint: _fingerprint, sortKey: _sortKey, plan: _plan, bundle: _bundle, receipt, ...view } = doc;
    return { ...view, hasReceipt: receipt !== undefined };
  }

  async #save(instance: InstanceRecord, doc: DataRequestDoc): Promise<void> {
    doc.lastUpdatedDateTimeUtc = dpsTimestamp(this.#deps.now());
    await this.#deps.store.putDataRequest(instance.id, { requestId: doc.requestId, sortKey: doc.sortKey, status: doc.status, type: doc.type, doc });
  }

  async #waitFor(job: Promise<void>): Promise<void> {
    await Promise.race([job, new Promise((resolve) => setTimeout(resolve, this.#deps.waitMs).unref())]);
  }

  #start(instance: InstanceRecord, given: DataRequestDoc): Promise<void> {
    const key = `${instance.id}/${given.requestId.toLowerCase()}`;
    const running = this.#jobs.get(key);
    if (running !== undefined) return running;
    let doc = given;
    const job = this.#leased(key, async () => {
      // Read again under the lease: another node may have finished (or advanced) it since it was listed.
      const current = await this.#deps.store.getDataRequest(instance.id, given.requestId);
      if (current === undefined || current.status !== 'running') return;
      doc = current.doc as DataRequestDoc;
      await (doc.type === 'export' ? this.#runExport(instance, doc) : this.#runErase(instance, doc));
    })
      .catch(async (error: unknown) => {
        if (error instanceof Stopped) return;
        this.#deps.logger.error({ err: error, requestId: doc.requestId }, 'data request failed');
        doc.status = 'failed';
        doc.error = error instanceof Error ? error.message : String(error);
        await this.#save(instance, doc).catch(() => undefined);
      })
      .finally(() => this.#jobs.delete(key));
    this.#jobs.set(key, job);
    return job;
  }

  /**
   * Runs a job while this node holds its lease in the store, so that of several nodes sharing the database one at a
   * time works on a request; the lease is renewed every third of its length, and a node that dies (SIGKILL, power)
   * stops renewing, so another node's periodic resumeUnfinished takes the job over once it expires. On a
   * single-writer store there is one server (the data-directory lock), and this node's job map is enough.
   */
  async #leased(key: string, work: () => Promise<void>): Promise<void> {
    const store = this.#deps.store;
    const { nodeId, leaseMs = 30_000 } = this.#deps;
    if (store.capabilities.singleWriter || nodeId === undefined) return work();
    const lease = `dataRequest/${key}`;
    if (!(await store.claimLease(lease, nodeId, leaseMs, Date.now()))) return;
    const renew = setInterval(() => {
      void store.renewLease(lease, nodeId, leaseMs, Date.now()).then(
        (held) => {
          if (!held) this.#deps.logger.warn({ lease }, 'data request lease lost to another node; its steps are idempotent');
        },
        (error: unknown) => this.#deps.logger.warn({ err: error, lease }, 'data request lease renewal failed'),
      );
    }, Math.max(100, Math.floor(leaseMs / 3)));
    renew.unref();
    try {
      await work();
    } finally {
      clearInterval(renew);
      await store.releaseLease(lease, nodeId).catch(() => undefined);
    }
  }

  // ---- finding the subject's data

  async #subjects(instance: InstanceRecord, kind: SubjectKind, id: string): Promise<Subjects> {
    const store = this.#deps.store;
    const registrationIds = new Set<string>();
    const deviceIds = new Set<string>();
    const groupIds = new Set<string>();
    const enrollments: StoredEnrollment[] = [];
    const addRecordsWhere = async (field: 'deviceId' | 'enrollmentGroupId', value: string) => {
      let afterKey: string | undefined;
      do {
        const page = await store.queryRegistrations(instance.id, { filters: [{ field, op: 'eq', values: [value] }], afterKey, limit: 1000 });
        for (const record of page.items) {
          registrationIds.add(record.registrationId);
          if (record.deviceId !== undefined) deviceIds.add(record.deviceId);
        }
        afterKey = page.nextKey;
      } while (afterKey !== undefined);
    };
    /**
     * Devices a registration ID wrote to a hub, from every trace provisiond keeps — so an erase still finds the hub
     * device after the enrollment (and with it the record) was deleted: the operations' results and the log's hub
     * writes and registrations.
     */
    const addTracesOf = async (ids: { registrationIds: string[]; deviceIds: string[]; groupIds: string[] }) => {
      for (const registrationId of ids.registrationIds) {
        for (const operation of await store.listOperationsOfRegistration(instance.id, registrationId)) {
          const deviceId = operation.registrationState?.deviceId;
          if (typeof deviceId === 'string' && deviceId !== '') deviceIds.add(deviceId);
        }
      }
      for (const event of await store.findAuditEventsAbout(instance.id, ids)) {
        if (event.kind !== 'registration' && event.kind !== 'hubWrite') continue;
        if (event.subject.registrationId !== undefined) registrationIds.add(event.subject.registrationId);
        if (event.subject.deviceId !== undefined) deviceIds.add(event.subject.deviceId);
      }
    };
    if (kind === 'registrationId') {
      registrationIds.add(id);
      const enrollment = await store.getEnrollment(instance.id, id);
      const record = await store.getRegistration(instance.id, id);
      if (enrollment !== undefined) {
        enrollments.push(enrollment);
        deviceIds.add(enrollment.deviceId ?? enrollment.registrationId);
      }
      if (record?.deviceId !== undefined) deviceIds.add(record.deviceId);
      if (enrollment === undefined && record === undefined) deviceIds.add(id);
    } else if (kind === 'deviceId') {
      deviceIds.add(id);
      await addRecordsWhere('deviceId', id);
      let afterKey: string | undefined;
      do {
        const page = await store.queryEnrollments(instance.id, { filters: [{ field: 'deviceId', op: 'eq', values: [id] }], afterKey, limit: 1000 });
        for (const enrollment of page.items) {
          enrollments.push(enrollment);
          registrationIds.add(enrollment.registrationId);
        }
        afterKey = page.nextKey;
      } while (afterKey !== undefined);
    } else {
      groupIds.add(id);
      await addRecordsWhere('enrollmentGroupId', id);
    }
    await addTracesOf({ registrationIds: kind === 'registrationId' ? [id] : [], deviceIds: kind === 'deviceId' ? [id] : [], groupIds: [...groupIds] });
    // The devices found so far may have registrations of their own (a device ID shared by several registrations).
    if (kind !== 'registrationId') await addTracesOf({ registrationIds: [...registrationIds], deviceIds: [], groupIds: [] });
    return { registrationIds: [...registrationIds], deviceIds: [...deviceIds], groupIds: [...groupIds], enrollments };
  }

  // ---- export

  async #runExport(instance: InstanceRecord, doc: DataRequestDoc): Promise<void> {
    const { kind, id } = doc.subject;
    if (id === undefined) throw new Error('the subject of an export is gone');
    const store = this.#deps.store;
    const subjects = await this.#subjects(instance, kind, id);
    const searched: JsonMap[] = [];
    const visibility = doc.includeSecrets ? 'withSecrets' : 'public';

    const enrollments = subjects.enrollments.map((enrollment) => {
      const rendered = renderEnrollment(enrollment, visibility);
      if (doc.includeSecrets && enrollment.attestation.type === 'symmetricKey') rendered.attestation = structuredClone(enrollment.attestation) as unknown as JsonMap;
      return rendered;
    });
    searched.push({ place: 'enrollments', count: enrollments.length });

    const records = [];
    for (const registrationId of subjects.registrationIds) {
      const record = await store.getRegistration(instance.id, registrationId);
      if (record !== undefined) records.push(record);
    }
    searched.push({ place: 'registrations', count: records.length });
    const groups = [...new Set(records.flatMap((record) => (record.enrollmentGroupId === undefined ? [] : [record.enrollmentGroupId])))];
    searched.push({ place: 'enrollmentGroups (membership)', count: groups.length });

    const hubDevices: JsonMap[] = [];
    for (const hub of await store.listLinkedHubs(instance.id)) {
      const client = this.#deps.hubClients.forHub(hub);
      let count = 0;
      try {
        for (const deviceId of subjects.deviceIds) {
          const device = await client.getDevice(deviceId);
          if (device === undefined) continue;
          const twin = await client.getTwin(deviceId);
          hubDevices.push({ hub: hub.name, device: doc.includeSecrets ? device : redactDevice(device as unknown as JsonMap), twin: twin ?? null });
          count += 1;
        }
        searched.push({ place: `hub:${hub.name}/devices`, count });
      } catch (error) {
        searched.push({ place: `hub:${hub.name}/devices`, count, error: (error as Error).message });
      }
    }

    // Every operation (the device's registration results, with what a custom allocation webhook returned).
    const operations: JsonMap[] = [];
    for (const registrationId of subjects.registrationIds) {
      for (const operation of await store.listOperationsOfRegistration(instance.id, registrationId)) operations.push(operation as unknown as JsonMap);
    }
    searched.push({ place: 'operations', count: operations.length });
    const ids = new Set([...subjects.registrationIds, ...subjects.deviceIds, ...subjects.groupIds].map((value) => value.toLowerCase()));
    const earlierRequests = (await this.#requestsAbout(instance, doc, ids)).map((other) => this.#view(other));
    searched.push({ place: 'dataRequests', count: earlierRequests.length });
    const undelivered = (await this.#outboxAbout(instance, ids)).map((event) => event.doc);
    searched.push({ place: 'lifecycleEventOutbox', count: undelivered.length });

    const events = await store.findAuditEventsAbout(instance.id, subjects);
    const webhookExchanges = events.filter((event) => event.kind === 'webhook');
    const auditEvents = events.filter((event) => event.kind !== 'webhook');
    searched.push({ place: 'webhookExchanges', count: webhookExchanges.length }, { place: 'auditEvents', count: auditEvents.length });

    const nothingFound = searched.every((entry) => entry.count === 0 && entry.error === undefined);
    doc.bundle = {
      manifest: {
        requestId: doc.requestId,
        subject: { kind, id },
        generatedDateTimeUtc: dpsTimestamp(this.#deps.now()),
        secretsIncluded: doc.includeSecrets,
        searched: withPlaceNames(searched),
        ...(nothingFound ? { nothingFound: true } : {}),
      },
      individualEnrollment: enrollments[0] ?? null,
      individualEnrollments: enrollments,
      enrollmentGroups: groups.map((enrollmentGroupId) => ({ enrollmentGroupId })),
      // With every hub the device was ever assigned to (the previous assigned hub among them).
      registrationRecords: records.map((record) => ({ ...renderRegistration(record), hubHistory: record.hubHistory ?? [] })),
      operations,
      hubDevices,
      webhookExchanges,
      auditEvents,
      dataRequests: earlierRequests,
      lifecycleEventOutbox: undelivered,
    };
    doc.result = { searched: withPlaceNames(searched), ...(nothingFound ? { nothingFound: true, warning: NOTHING_FOUND } : {}) };
    doc.status = searched.some((entry) => entry.error !== undefined) ? 'partiallyCompleted' : 'completed';
    if (doc.status === 'partiallyCompleted') doc.error = 'Some hubs could not be searched; see result.searched.';
    doc.progress = { done: searched.length, total: searched.length };
    // Logged before the request reads completed: whoever sees it completed finds its log entry too.
    await this.#deps.audit.record(instance.id, {
      kind: 'dataRequest',
      operation: 'export',
      actor: doc.requestedBy,
      subject: subjectFields(kind, id),
      outcome: 'success',
      details: { requestId: doc.requestId, includeSecrets: doc.includeSecrets },
    });
    await this.#save(instance, doc);
    await this.#deps.events.emit(instance, 'dataRequest.completed', { requestId: doc.requestId, type: 'export', status: doc.status });
  }

  // ---- erase

  async #plan(instance: InstanceRecord, doc: DataRequestDoc): Promise<EraseStep[]> {
    const { kind, id } = doc.subject;
    if (id === undefined) throw new Error('the subject of an erase is gone');
    const store = this.#deps.store;
    const subjects = await this.#subjects(instance, kind, id);
    const step = (place: string, items: string[], extra: Partial<EraseStep> = {}): EraseStep => ({
      place,
      action: 'delete',
      items,
      done: 0,
      count: 0,
      completed: false,
      ...extra,
    });
    const steps: EraseStep[] = [];
    // Hub identities first: the records below are what says where a device lives.
    for (const hub of await store.listLinkedHubs(instance.id)) steps.push(step(`hub:${hub.name}/devices`, subjects.deviceIds, { hub: hub.name }));
    steps.push(step('registrations', subjects.registrationIds));
    steps.push(step('operations', subjects.registrationIds));
    steps.push(step('enrollments', subjects.enrollments.map((enrollment) => enrollment.registrationId)));
    if (kind === 'enrollmentGroupId') steps.push(step('enrollmentGroups', [id]));
    // Earlier requests about the subject (export bundles, dry-run lists) and undelivered lifecycle events name it too.
    const mentions = [...subjects.registrationIds.map((x) => `r:${x}`), ...subjects.deviceIds.map((x) => `d:${x}`), ...subjects.groupIds.map((x) => `g:${x}`)];
    steps.push(step('dataRequests', mentions, { action: 'pseudonymize' }));
    steps.push(step('lifecycleEventOutbox', mentions));
    steps.push(
      step('auditEvents', [...subjects.registrationIds.map((x) => `r:${x}`), ...subjects.deviceIds.map((x) => `d:${x}`), ...subjects.groupIds.map((x) => `g:${x}`)], {
        action: 'pseudonymize',
      }),
    );
    return steps;
  }

  /**
   * Fences every ID the erase is about (docs/customer-data.md "The erase fence"): the subject itself first, so a
   * registration starting while the rest is being found is refused already, then every ID found for it.
   */
  async #fence(instance: InstanceRecord, doc: DataRequestDoc, ids: Array<[SubjectKind, string]>): Promise<void> {
    const { subjectHashKey } = await this.secrets(instance);
    const fences: EraseFence[] = ids.map(([kind, id]) => ({ kind, id, requestId: doc.requestId, subjectHash: subjectHash(subjectHashKey, kind, id) }));
    await this.#deps.store.putEraseFences(instance.id, fences);
  }

  async #runErase(instance: InstanceRecord, doc: DataRequestDoc): Promise<void> {
    if (doc.plan === undefined) {
      const { kind, id } = doc.subject;
      if (!doc.dryRun && id !== undefined) await this.#fence(instance, doc, [[kind, id]]);
      doc.plan = await this.#plan(instance, doc);
      if (!doc.dryRun) await this.#fence(instance, doc, fencedIdsOf(doc.plan));
      doc.progress = { done: 0, total: doc.plan.reduce((sum, step) => sum + step.items.length, 0) };
      await this.#save(instance, doc);
    }
    if (doc.dryRun) {
      doc.result = await this.#preview(instance, doc, doc.plan);
      doc.status = 'completed';
      await this.#save(instance, doc);
      return;
    }
    const { subjectHashKey } = await this.secrets(instance);
    for (const step of doc.plan) {
      if (step.completed) continue;
      try {
        await this.#execute(instance, doc, step, subjectHashKey);
        step.completed = true;
      } catch (error) {
        if (error instanceof Stopped) throw error;
        step.error = error instanceof Error ? error.message : String(error);
      }
      await this.#save(instance, doc);
    }
    // The re-check: every place is searched again for everything the plan named and everything found for the subject
    // now; whatever turned up (a write that was already under way when the fence went up) is erased and counted, and
    // the receipt is signed only when a pass finds nothing.
    if (!doc.plan.some((step) => step.error !== undefined)) {
      let clean = false;
      for (let pass = 0; pass < RECHECK_PASSES && !clean; pass += 1) {
        const again = await this.#recheckPlan(instance, doc);
        const preview = await this.#preview(instance, doc, again);
        const found = [...(preview.deleted as JsonMap[]), ...(preview.pseudonymized as JsonMap[])].filter((entry) => Number(entry.count) > 0 || entry.error !== undefined);
        clean = found.length === 0;
        if (clean) break;
        for (const step of again) {
          // Delete steps go through what the re-check found; the set-based places search afresh anyway.
          const foundHere = (preview.deleted as JsonMap[]).find((entry) => entry.place === step.place);
          if (step.action === 'delete' && Array.isArray(foundHere?.items)) step.items = foundHere.items as string[];
          doc.progress.total += step.items.length;
          await this.#execute(instance, doc, step, subjectHashKey);
          const original = doc.plan.find((planned) => planned.place === step.place);
          if (original !== undefined) original.count += step.count;
        }
        await this.#save(instance, doc);
      }
      if (!clean) {
        const step = doc.plan.at(-1);
        if (step !== undefined) step.error = `data about the subject kept appearing after ${RECHECK_PASSES} re-checks`;
      }
    }
    const failed = doc.plan.filter((step) => step.error !== undefined);
    const summary = (action: EraseStep['action']) =>
      doc.plan?.filter((step) => step.action === action).map((step) => ({ place: step.place, count: step.count })) ?? [];
    const nothingFound = failed.length === 0 && doc.plan.every((step) => step.count === 0);
    doc.result = {
      deleted: withPlaceNames(summary('delete')),
      pseudonymized: withPlaceNames(summary('pseudonymize')),
      failures: withPlaceNames(failed.map((step) => ({ place: step.place, reason: step.error }))),
      ...(nothingFound ? { nothingFound: true, warning: NOTHING_FOUND } : {}),
    };
    if (failed.length > 0) {
      doc.status = 'partiallyCompleted';
      doc.error = failed.map((step) => `${step.place}: ${step.error ?? ''}`).join('; ');
      await this.#save(instance, doc);
      return;
    }
    // From here on the request knows the subject only by its keyed hash; the fences (which hold the IDs) go in the
    // same transaction, and the freed bytes are wiped from the store's files before the receipt is signed.
    delete doc.subject.id;
    for (const step of doc.plan) step.items = [];
    const finalUtc = dpsTimestamp(this.#deps.now());
    await this.#deps.store.transaction(async (store) => {
      doc.lastUpdatedDateTimeUtc = finalUtc;
      await store.putDataRequest(instance.id, { requestId: doc.requestId, sortKey: doc.sortKey, status: doc.status, type: doc.type, doc });
      await store.deleteEraseFences(instance.id, doc.requestId);
    });
    await this.#deps.store.reclaimErasedSpace();
    const secrets = await this.secrets(instance);
    // The erase is final when its fences go: the receipt says so, and an event logged in clear after that moment (a
    // device trying again) bears a later time (services/audit-log.ts).
    const completed = finalUtc;
    doc.receipt = signReceipt(
      {
        requestId: doc.requestId,
        instance: instance.idScope,
        subjectKind: doc.subject.kind,
        subjectHash: doc.subject.hash,
        completedDateTimeUtc: completed,
        deleted: summary('delete'),
        pseudonymized: summary('pseudonymize'),
        ...(nothingFound ? { nothingFound: true } : {}),
      },
      secrets.receiptPrivateKeyPem,
      secrets.receiptPublicKeyPem,
    ) as unknown as JsonMap;
    doc.status = 'completed';
    await this.#save(instance, doc);
    // PostgreSQL keeps the old versions of deleted and rewritten rows until VACUUM: reclaim them now, so the erased
    // values leave the tables' pages (docs/customer-data.md says what WAL and backups still hold, and for how long).
    await this.#deps.store
      .reclaimDeleted(['enrollments', 'enrollment_groups', 'enrollment_certificates', 'registrations', 'operations', 'audit_events', 'data_requests', 'event_outbox', 'hub_devices'])
      .catch((error: unknown) => this.#deps.logger.warn({ err: error, requestId: doc.requestId }, 'VACUUM after erase failed'));
    await this.#deps.audit.record(instance.id, {
      kind: 'dataRequest',
      operation: 'erase',
      actor: doc.requestedBy,
      subject: { hash: doc.subject.hash },
      outcome: 'success',
      details: { requestId: doc.requestId, deleted: summary('delete'), pseudonymized: summary('pseudonymize') },
    });
    await this.#deps.events.emit(instance, 'dataRequest.completed', { requestId: doc.requestId, type: 'erase', status: 'completed', subjectHash: doc.subject.hash });
  }

  /** A fresh plan for the re-check: what the subject leads to now, plus every ID the original plan named. */
  async #recheckPlan(instance: InstanceRecord, doc: DataRequestDoc): Promise<EraseStep[]> {
    const fresh = await this.#plan(instance, doc);
    for (const step of fresh) {
      const planned = doc.plan?.find((original) => original.place === step.place);
      step.items = [...new Set([...step.items, ...(planned?.items ?? [])])];
    }
    return fresh;
  }

  async #execute(instance: InstanceRecord, doc: DataRequestDoc, step: EraseStep, subjectHashKey: string): Promise<void> {
    const store = this.#deps.store;
    if (step.place === 'dataRequests' || step.place === 'lifecycleEventOutbox') {
      const ids = new Set(step.items.map((item) => item.slice(2).toLowerCase()));
      step.count += step.place === 'dataRequests' ? await this.#scrubDataRequests(instance, doc, ids, subjectHashKey) : await this.#scrubOutbox(instance, ids);
      step.done = step.items.length;
      doc.progress.done += step.items.length;
      return;
    }
    if (step.action === 'pseudonymize') {
      const subjects = { registrationIds: [] as string[], deviceIds: [] as string[], groupIds: [] as string[] };
      for (const item of step.items) {
        const value = item.slice(2);
        if (item.startsWith('r:')) subjects.registrationIds.push(value);
        else if (item.startsWith('d:')) subjects.deviceIds.push(value);
        else subjects.groupIds.push(value);
      }
      // Found afresh, so events written since the plan (a device that tried again meanwhile) are covered too.
      const events = await store.findAuditEventsAbout(instance.id, subjects);
      await store.replaceAuditEvents(instance.id, events.map((event) => pseudonymize(event, subjectHashKey)));
      step.count += events.length;
      step.done = step.items.length;
      doc.progress.done += step.items.length;
      return;
    }
    const hub = step.hub === undefined ? undefined : (await store.listLinkedHubs(instance.id)).find((linked) => linked.name === step.hub);
    for (let index = step.done; index < step.items.length; index += 1) {
      if (this.#stopping) {
        await this.#save(instance, doc);
        throw new Stopped();
      }
      const item = step.items[index] as string;
      step.count += await this.#deleteOne(instance, step, item, hub);
      step.done = index + 1;
      doc.progress.done += 1;
      if (step.done % PERSIST_EVERY === 0) await this.#save(instance, doc);
    }
  }

  /** Other finished data requests that name one of these IDs (lower-cased) as their subject. */
  async #requestsAbout(instance: InstanceRecord, current: DataRequestDoc, ids: Set<string>): Promise<DataRequestDoc[]> {
    const found: DataRequestDoc[] = [];
    let afterKey: string | undefined;
    do {
      const page = await this.#deps.store.queryDataRequests(instance.id, { filters: [], afterKey, limit: 500 });
      for (const record of page.items) {
        const other = readRequestDoc(record.doc);
        if (other.requestId.toLowerCase() === current.requestId.toLowerCase()) continue;
        const mentioned = other.subject.id !== undefined && ids.has(other.subject.id.toLowerCase());
        if (mentioned && other.status !== 'running') found.push(other);
      }
      afterKey = page.nextKey;
    } while (afterKey !== undefined);
    return found;
  }

  /** Other data requests about the subject: their bundles and item lists go, their subject is kept as its hash. */
  async #scrubDataRequests(instance: InstanceRecord, current: DataRequestDoc, ids: Set<string>, key: string, countOnly = false): Promise<number> {
    const others = await this.#requestsAbout(instance, current, ids);
    if (countOnly) return others.length;
    for (const other of others) {
      other.subject = { kind: other.subject.kind, hash: subjectHash(key, other.subject.kind, other.subject.id as string) };
      delete other.bundle;
      delete other.plan;
      if (other.result !== undefined) other.result = withoutItems(other.result);
      await this.#save(instance, other);
    }
    return others.length;
  }

  /** Lifecycle events not yet delivered that name one of these IDs (lower-cased). */
  async #outboxAbout(instance: InstanceRecord, ids: Set<string>): Promise<OutboxEvent[]> {
    return (await this.#deps.store.listOutboxEvents(instance.id, 100_000)).filter((event) => {
      const data = (event.doc.data ?? {}) as Record<string, unknown>;
      return ['registrationId', 'deviceId', 'enrollmentGroupId'].some((field) => typeof data[field] === 'string' && ids.has((data[field] as string).toLowerCase()));
    });
  }

  /** Lifecycle events not yet delivered that name the subject are dropped. */
  async #scrubOutbox(instance: InstanceRecord, ids: Set<string>, countOnly = false): Promise<number> {
    const events = await this.#outboxAbout(instance, ids);
    if (!countOnly) for (const event of events) await this.#deps.store.deleteOutboxEvent(instance.id, event.eventId);
    return events.length;
  }

  /** Deletes one item of a step; returns how many rows went. Idempotent, so a resumed step may repeat an item. */
  async #deleteOne(instance: InstanceRecord, step: EraseStep, item: string, hub: LinkedHubRecord | undefined): Promise<number> {
    const store = this.#deps.store;
    const one = (deleted: boolean): number => (deleted ? 1 : 0);
    if (step.hub !== undefined) {
      // An unlinked hub is no longer provisiond's to clean; nothing there is reachable through the instance.
      if (hub === undefined) return 0;
      return one(await this.#deps.hubClients.forHub(hub).deleteDevice(item));
    }
    switch (step.place) {
      case 'registrations':
        return one(await store.deleteRegistration(instance.id, item));
      case 'operations':
        return store.deleteOperationsOfRegistration(instance.id, item);
      case 'enrollments':
        return one(await store.deleteEnrollment(instance.id, item));
      case 'enrollmentGroups':
        return one(await store.deleteEnrollmentGroup(instance.id, item));
      default:
        throw new Error(`unknown erase step ${step.place}`);
    }
  }

  async #preview(instance: InstanceRecord, current: DataRequestDoc, plan: EraseStep[]): Promise<JsonMap> {
    const store = this.#deps.store;
    const deleted: JsonMap[] = [];
    let pseudonymized: JsonMap[] = [];
    const pseudonymizedExtra: JsonMap[] = [];
    const hubs = await store.listLinkedHubs(instance.id);
    for (const step of plan) {
      const present: string[] = [];
      if (step.place === 'dataRequests' || step.place === 'lifecycleEventOutbox') {
        const ids = new Set(step.items.map((item) => item.slice(2).toLowerCase()));
        const count = step.place === 'dataRequests' ? await this.#scrubDataRequests(instance, current, ids, '', true) : await this.#scrubOutbox(instance, ids, true);
        (step.action === 'pseudonymize' ? pseudonymizedExtra : deleted).push({ place: step.place, count });
        continue;
      }
      if (step.action === 'pseudonymize') {
        const subjects = { registrationIds: [] as string[], deviceIds: [] as string[], groupIds: [] as string[] };
        for (const item of step.items) (item.startsWith('r:') ? subjects.registrationIds : item.startsWith('d:') ? subjects.deviceIds : subjects.groupIds).push(item.slice(2));
        const events = await store.findAuditEventsAbout(instance.id, subjects);
        pseudonymized = [{ place: step.place, count: events.length, items: events.map((event) => event.eventId) }];
        continue;
      }
      const entry: JsonMap = { place: step.place };
      try {
        const hub = hubs.find((linked) => linked.name === step.hub);
        // A few lookups at once: an external hub answers each device on its own round trip.
        await inParallel(step.items, PREVIEW_CONCURRENCY, async (item) => {
          const exists =
            step.hub !== undefined
              ? hub !== undefined && (await this.#deps.hubClients.forHub(hub).getDevice(item)) !== undefined
              : step.place === 'registrations'
                ? (await store.getRegistration(instance.id, item)) !== undefined
                : step.place === 'operations'
                  ? (await store.countOperationsOfRegistration(instance.id, item)) > 0
                  : step.place === 'enrollments'
                    ? (await store.getEnrollment(instance.id, item)) !== undefined
                    : (await store.getEnrollmentGroup(instance.id, item)) !== undefined;
          if (exists) present.push(item);
        });
      } catch (error) {
        entry.error = (error as Error).message;
      }
      const found = new Set(present);
      deleted.push({ ...entry, count: present.length, items: step.items.filter((item) => found.has(item)) });
    }
    const all = [...deleted, ...pseudonymized, ...pseudonymizedExtra];
    const nothingFound = all.every((entry) => entry.count === 0 && entry.error === undefined);
    return {
      dryRun: true,
      deleted: withPlaceNames(deleted),
      pseudonymized: withPlaceNames([...pseudonymized, ...pseudonymizedExtra]),
      ...(nothingFound ? { nothingFound: true, warning: NOTHING_FOUND } : {}),
    };
  }
}

function subjectFields(kind: SubjectKind, id: string): AuditEvent['subject'] {
  return kind === 'registrationId' ? { registrationId: id } : kind === 'deviceId' ? { deviceId: id } : { enrollmentGroupId: id };
}

/** What stays of an event about an erased subject: when, what kind, by whom, with what outcome — no IDs, no details. */
function pseudonymize(event: AuditEvent, key: string): AuditEvent {
  const hashOf = event.subject.registrationId ?? event.subject.deviceId ?? event.subject.enrollmentGroupId;
  const kind = event.subject.registrationId !== undefined ? 'registrationId' : event.subject.deviceId !== undefined ? 'deviceId' : 'enrollmentGroupId';
  return pseudonymizedEvent(event, hashOf === undefined ? event.subject.hash : subjectHash(key, kind, hashOf));
}

function redactDevice(device: JsonMap): JsonMap {
  const copy = structuredClone(device);
  const authentication = copy.authentication as { symmetricKey?: { primaryKey?: string; secondaryKey?: string } } | undefined;
  if (authentication?.symmetricKey !== undefined) authentication.symmetricKey = { primaryKey: REDACTED, secondaryKey: REDACTED };
  return copy;
}


async function inParallel<T>(items: readonly T[], width: number, task: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const item = items[next] as T;
      next += 1;
      await task(item);
    }
  };
  await Promise.all(Array.from({ length: Math.min(width, items.length) }, worker));
}

/** The stored shape a request document must have; checked on every read instead of trusted. */
const StoredRequestShape = Type.Object({
  requestId: Type.String({ minLength: 1 }),
  sortKey: Type.String(),
  type: Type.Union([Type.Literal('export'), Type.Literal('erase')]),
  status: Type.Union([Type.Literal('running'), Type.Literal('completed'), Type.Literal('partiallyCompleted'), Type.Literal('failed')]),
  dryRun: Type.Boolean(),
  includeSecrets: Type.Boolean(),
  subject: Type.Object({
    kind: Type.Union([Type.Literal('registrationId'), Type.Literal('deviceId'), Type.Literal('enrollmentGroupId')]),
    id: Type.Optional(Type.String()),
    hash: Type.String(),
  }),
  bodyFingerprint: Type.String(),
  requestedBy: Type.String(),
  createdDateTimeUtc: Type.String(),
  lastUpdatedDateTimeUtc: Type.String(),
  progress: Type.Object({ done: Type.Number(), total: Type.Number() }),
  plan: Type.Optional(
    Type.Array(
      Type.Object({
        place: Type.String(),
        action: Type.Union([Type.Literal('delete'), Type.Literal('pseudonymize')]),
        items: Type.Array(Type.String()),
        done: Type.Number(),
        count: Type.Number(),
        hub: Type.Optional(Type.String()),
        error: Type.Optional(Type.String()),
        completed: Type.Boolean(),
      }),
    ),
  ),
});

function readRequestDoc(doc: JsonMap): DataRequestDoc {
  if (!Value.Check(StoredRequestShape, doc)) {
    const first = [...Value.Errors(StoredRequestShape, doc)][0];
    throw new Error(`a stored data request is malformed (${first === undefined ? 'unknown' : `${first.path}: ${first.message}`})`);
  }
  return doc as DataRequestDoc;
}

/** Every ID a plan names, by kind (what the erase fences). */
function fencedIdsOf(plan: EraseStep[]): Array<[SubjectKind, string]> {
  const ids = new Map<string, [SubjectKind, string]>();
  for (const step of plan) {
    if (step.place !== 'auditEvents') continue;
    for (const item of step.items) {
      const kind: SubjectKind = item.startsWith('r:') ? 'registrationId' : item.startsWith('d:') ? 'deviceId' : 'enrollmentGroupId';
      ids.set(`${kind}/${item.slice(2).toLowerCase()}`, [kind, item.slice(2)]);
    }
  }
  return [...ids.values()];
}

/** Thrown inside a job when the server shuts down; the request stays `running` and resumes at the next start. */
class Stopped extends Error {}

/** A dry run's result without the lists of what it found (they name the subject). */
function withoutItems(result: JsonMap): JsonMap {
  const copy = structuredClone(result);
  for (const list of [copy.deleted, copy.pseudonymized]) {
    if (Array.isArray(list)) for (const entry of list as JsonMap[]) delete entry.items;
  }
  return copy;
}
