import { createHash } from 'node:crypto';
import type { FastifyBaseLogger } from 'fastify';
import type { JsonMap } from '../../domain/enrollment.js';
import { ProvisioningError } from '../../domain/errors.js';
import { isValidId } from '../../domain/ids.js';
import { canonicalJson, subjectHash } from '../../domain/receipt.js';
import { dpsTimestamp } from '../../domain/time.js';
import type { HubClientFactory } from '../../hubs/hub-client.js';
import { DATA_REQUEST_FIELDS, type AuditEvent, type EraseFence, type InstanceRecord, type Store, type SubjectKind } from '../../store/store.js';
import type { AuditLog } from '../audit-log.js';
import type { ServiceDeps } from '../deps.js';
import type { LifecycleEvents } from '../lifecycle-events.js';
import { encodeContinuation, readPageRequest, type PageRequest } from '../paging.js';
import { bucketKey, devicePollKey } from '../throttle.js';
import { runErase, Stopped } from './erase.js';
import { exportEverything, readOnce } from './export.js';
import { placesOf, type PlaceContext } from './places.js';
import { instanceSecrets, signEraseReceipt, signingKeyView, type InstanceSecrets } from './receipts.js';
import { readRequestDoc, requestView, type DataRequestDoc } from './request-doc.js';
import { traceSubject, type Subject } from './subject.js';

/**
 * Customer-data requests (docs/customer-data.md; this folder's README.md): export everything about one subject, or
 * erase it everywhere. A request is a job: it is stored before it runs, an erase stores its plan before anything is
 * deleted and its progress as it goes, and a request left running by a crash is finished when the server starts
 * again (on several nodes, by whichever holds its lease). Each finished erase yields a receipt signed with the
 * instance's Ed25519 key; afterwards the request remembers the subject only by its keyed hash.
 */
export type { SubjectKind };

export interface DataRequestBody {
  type: 'export' | 'erase';
  subject: Partial<Record<SubjectKind, string>>;
  dryRun?: boolean;
  includeSecrets?: boolean;
}

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
  /**
   * Told the registration IDs a completed erase traced, so the services drop what this process keeps in memory about
   * them (a device's poll budget, the proofs of its registrations in flight): nothing of it outlives the erase here.
   */
  forgetDevices?: (instanceId: string, registrationIds: readonly string[]) => void;
}

/** The tables an erase deletes or rewrites rows of. */
const ERASED_TABLES = [
  'enrollments',
  'enrollment_groups',
  'enrollment_certificates',
  'registrations',
  'operations',
  'registration_intents',
  'hub_device_links',
  'audit_events',
  'data_requests',
  'event_outbox',
  'hub_devices',
  'issued_certificates',
] as const;

export class DataRequestService {
  readonly #deps: DataRequestDeps;
  /** Jobs running on this node, so one request never runs twice at once. */
  readonly #jobs = new Map<string, Promise<DataRequestDoc | undefined>>();
  #stopping = false;
  /** The VACUUM after erases that is running, and whether an erase finished since it started (#reclaimSoon). */
  #reclaim: Promise<void> | undefined;
  #reclaimAgain = false;

  constructor(deps: DataRequestDeps) {
    this.#deps = deps;
  }

  // ---- the instance's secrets

  /** The subject-hash key and receipt signing key, created on first use. */
  async secrets(instance: InstanceRecord): Promise<InstanceSecrets> {
    return instanceSecrets(this.#deps.store, instance);
  }

  async signingKey(instance: InstanceRecord): Promise<JsonMap> {
    return signingKeyView(await this.secrets(instance));
  }

  // ---- requests

  async create(instance: InstanceRecord, requestId: string, body: DataRequestBody, requestedBy: string): Promise<JsonMap> {
    if (!isValidId(requestId)) {
      throw new ProvisioningError('BadRequest', `The request ID '${requestId}' is invalid: use 1-128 letters, digits, '-', '.', '_' or ':'.`);
    }
    const subject = subjectOf(body);
    const fingerprint = createHash('sha256').update(canonicalJson({ ...body, dryRun: body.dryRun === true, includeSecrets: body.includeSecrets === true })).digest('hex');
    const existing = await this.#deps.store.getDataRequest(instance.id, requestId);
    if (existing !== undefined) {
      const stored = readRequestDoc(existing.doc);
      // Idempotent by ID: the same request again is the same request; a different one under that ID is a conflict.
      if (stored.bodyFingerprint !== fingerprint) {
        throw new ProvisioningError('Conflict', `Data request '${requestId}' already exists with a different body.`);
      }
      return requestView(stored);
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
    // On a single-writer store this server is the only one that can run the request it just stored: its job works on
    // this document, not a copy read back. A job that finished in time answers with the document it finished (as
    // stored by its last save); one still running (or run by another node) is read.
    const finished = await this.#waitFor(this.#start(instance, doc, this.#deps.store.capabilities.singleWriter));
    if (finished !== undefined && finished.status !== 'running') return requestView(finished);
    return this.get(instance, requestId, body.type);
  }

  /** Reads a request; `type` restricts which kind the caller may see (rights differ per kind). */
  async get(instance: InstanceRecord, requestId: string, type?: 'export' | 'erase'): Promise<JsonMap> {
    return requestView(await this.#require(instance, requestId, type));
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
      if (doc.plan !== undefined && !Array.isArray(doc.plan)) for (const entry of doc.plan.places) delete entry.error;
      await this.#save(instance, doc);
      const finished = await this.#waitFor(this.#start(instance, doc));
      if (finished !== undefined && finished.status !== 'running') return requestView(finished);
    }
    return this.get(instance, requestId, 'erase');
  }

  async query(instance: InstanceRecord, request: PageRequest): Promise<{ items: JsonMap[]; continuation: string | undefined; maxItemCount: number }> {
    const page = readPageRequest(request, DATA_REQUEST_FIELDS, this.#deps.config);
    const result = await this.#deps.store.queryDataRequests(instance.id, page);
    return {
      items: result.items.map((item) => requestView(readRequestDoc(item.doc))),
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

  /** Waits for every job running on this node, and the VACUUM after them (tests, shutdown). */
  async idle(): Promise<void> {
    while (this.#jobs.size > 0 || this.#reclaim !== undefined) await Promise.allSettled([...this.#jobs.values(), this.#reclaim]);
  }

  /**
   * PostgreSQL keeps the old versions of deleted and rewritten rows until VACUUM: after an erase they are reclaimed,
   * so the erased values leave the tables' pages (docs/customer-data.md says what WAL and backups still hold, and for
   * how long). In the background, one VACUUM at a time: at a million rows one takes seconds (it reads every index of
   * a table that has dead rows), which an erase's answer no longer waits for, and erases that finish while one runs
   * share the next (it starts after them, so it covers what they left). A no-op where the dialect keeps no dead rows.
   */
  #reclaimSoon(): void {
    if (this.#reclaim !== undefined) {
      this.#reclaimAgain = true;
      return;
    }
    this.#reclaim = (async () => {
      do {
        this.#reclaimAgain = false;
        await this.#deps.store
          .reclaimDeleted(ERASED_TABLES)
          .catch((error: unknown) => this.#deps.logger.warn({ err: error }, 'VACUUM after erase failed'));
      } while (this.#reclaimAgain);
    })().finally(() => {
      this.#reclaim = undefined;
    });
  }

  async #require(instance: InstanceRecord, requestId: string, type?: 'export' | 'erase'): Promise<DataRequestDoc> {
    const record = await this.#deps.store.getDataRequest(instance.id, requestId);
    // A request of the other kind is "not found" for a caller who may only see this kind.
    if (record === undefined || (type !== undefined && record.type !== type)) {
      throw new ProvisioningError('DataRequestNotFound', `Data request '${requestId}' was not found.`);
    }
    return readRequestDoc(record.doc);
  }

  /** Stores the request; through `store` when that is a transaction the save belongs to. */
  async #save(instance: InstanceRecord, doc: DataRequestDoc, store: Store = this.#deps.store): Promise<void> {
    doc.lastUpdatedDateTimeUtc = dpsTimestamp(this.#deps.now());
    await store.putDataRequest(instance.id, { requestId: doc.requestId, subjectId: doc.subject.id, sortKey: doc.sortKey, status: doc.status, type: doc.type, doc });
  }

  /** Waits for the job at most waitMs: the document it finished, or undefined (still running, or not run here). */
  async #waitFor(job: Promise<DataRequestDoc | undefined>): Promise<DataRequestDoc | undefined> {
    let timer: NodeJS.Timeout | undefined;
    const finished = await Promise.race([
      job,
      new Promise<undefined>((resolve) => {
        timer = setTimeout(() => resolve(undefined), this.#deps.waitMs);
        timer.unref();
      }),
    ]);
    clearTimeout(timer);
    return finished;
  }

  /**
   * Runs the request's job (once at a time per request on this node); resolves to the document it finished with, or
   * undefined when it did not run it (another node holds it, it is no longer running, the server is stopping). `own`:
   * `given` is the document this server just stored, and nobody else can have changed it (single writer).
   */
  #start(instance: InstanceRecord, given: DataRequestDoc, own = false): Promise<DataRequestDoc | undefined> {
    const key = `${instance.id}/${given.requestId.toLowerCase()}`;
    const running = this.#jobs.get(key);
    if (running !== undefined) return running;
    let doc = given;
    const job = this.#leased(key, async () => {
      if (!own) {
        // Read again under the lease: another node may have finished (or advanced) it since it was listed.
        const current = await this.#deps.store.getDataRequest(instance.id, given.requestId);
        if (current === undefined || current.status !== 'running') return undefined;
        doc = readRequestDoc(current.doc);
      }
      await (doc.type === 'export' ? this.#runExport(instance, doc) : this.#runErase(instance, doc));
      return doc;
    })
      .catch(async (error: unknown) => {
        if (error instanceof Stopped) return undefined;
        this.#deps.logger.error({ err: error, requestId: doc.requestId }, 'data request failed');
        doc.status = 'failed';
        doc.error = error instanceof Error ? error.message : String(error);
        // Answered from the document only when it was stored as such; else the answer is read.
        return this.#save(instance, doc).then(
          () => doc,
          () => undefined,
        );
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
  async #leased<T>(key: string, work: () => Promise<T>): Promise<T | undefined> {
    const store = this.#deps.store;
    const { nodeId, leaseMs = 30_000 } = this.#deps;
    if (store.capabilities.singleWriter || nodeId === undefined) return work();
    const lease = `dataRequest/${key}`;
    if (!(await store.claimLease(lease, nodeId, leaseMs, Date.now()))) return undefined;
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
      return await work();
    } finally {
      clearInterval(renew);
      await store.releaseLease(lease, nodeId).catch(() => undefined);
    }
  }

  /** What every place is given to work with, for one request; every store write through `store`. */
  #placeContext(instance: InstanceRecord, doc: DataRequestDoc, store: Store = this.#deps.store): Omit<PlaceContext, 'tick' | 'resumeAt'> {
    return {
      store,
      hubClients: this.#deps.hubClients,
      instanceId: instance.id,
      requestId: doc.requestId,
      includeSecrets: doc.includeSecrets,
      saveRequest: (other) => this.#save(instance, other, store),
      subjectHashKey: async () => (await this.secrets(instance)).subjectHashKey,
    };
  }

  // ---- export

  async #runExport(instance: InstanceRecord, doc: DataRequestDoc): Promise<void> {
    const subject = storedSubject(doc);
    const store = readOnce(this.#deps.store);
    const trace = await traceSubject(store, instance.id, subject);
    const places = placesOf(await store.listLinkedHubs(instance.id));
    const { bundle, result, searched } = await exportEverything({ ...this.#placeContext(instance, doc), store, tick: () => Promise.resolve(), resumeAt: 0 }, places, subject, trace, {
      requestId: doc.requestId,
      generatedDateTimeUtc: dpsTimestamp(this.#deps.now()),
      secretsIncluded: doc.includeSecrets,
    });
    doc.bundle = bundle;
    doc.result = result;
    doc.status = searched.some((entry) => entry.error !== undefined) ? 'partiallyCompleted' : 'completed';
    if (doc.status === 'partiallyCompleted') doc.error = 'Some hubs could not be searched; see result.searched.';
    doc.progress = { done: searched.length, total: searched.length };
    // Logged before the request reads completed: whoever sees it completed finds its log entry too.
    await this.#deps.audit.record(instance.id, {
      kind: 'dataRequest',
      operation: 'export',
      actor: doc.requestedBy,
      subject: subjectFields(subject),
      outcome: 'success',
      details: { requestId: doc.requestId, includeSecrets: doc.includeSecrets },
    });
    await this.#save(instance, doc);
    await this.#deps.events.emit(instance, 'dataRequest.completed', { requestId: doc.requestId, type: 'export', status: doc.status });
  }

  // ---- erase

  async #runErase(instance: InstanceRecord, doc: DataRequestDoc): Promise<void> {
    const subject = storedSubject(doc);
    const store = this.#deps.store;
    // Made by create() at the latest. Taken once here, so that nothing run inside one of the erase's transactions asks
    // the store for them outside it (on SQLite's one connection that would wait for the transaction: forever).
    const { subjectHashKey } = await this.secrets(instance);
    const contextIn = (into: Store): Omit<PlaceContext, 'tick' | 'resumeAt'> => ({
      ...this.#placeContext(instance, doc, into),
      subjectHashKey: () => Promise.resolve(subjectHashKey),
    });
    const { result, completed, counts } = await runErase({
      context: contextIn(store),
      contextIn,
      doc,
      subject,
      places: async () => placesOf(await store.listLinkedHubs(instance.id)),
      trace: () => traceSubject(store, instance.id, subject),
      fence: async (ids, into = store) => {
        const fences: EraseFence[] = ids.map(({ kind, id }) => ({ kind, id, requestId: doc.requestId, subjectHash: subjectHash(subjectHashKey, kind, id) }));
        await into.putEraseFences(instance.id, fences);
      },
      save: (into) => this.#save(instance, doc, into),
      stopping: () => this.#stopping,
    });
    doc.result = result;
    if (doc.dryRun) {
      doc.status = 'completed';
      await this.#save(instance, doc);
      return;
    }
    if (!completed) {
      doc.status = 'partiallyCompleted';
      await this.#save(instance, doc);
      return;
    }
    // From here on the request knows the subject only by its keyed hash; the fences (which hold the IDs) go in the
    // same transaction, and the freed bytes are wiped from the store's files before the receipt is signed.
    const erasedRegistrationIds = doc.plan !== undefined && !Array.isArray(doc.plan) ? (doc.plan.trace?.registrationIds ?? []) : [];
    delete doc.subject.id;
    if (doc.plan !== undefined && !Array.isArray(doc.plan)) delete doc.plan.trace;
    const finalUtc = dpsTimestamp(this.#deps.now());
    await store.transaction(async (tx) => {
      doc.lastUpdatedDateTimeUtc = finalUtc;
      await tx.putDataRequest(instance.id, { requestId: doc.requestId, sortKey: doc.sortKey, status: doc.status, type: doc.type, doc });
      // The devices' poll budgets (rate-limit counters named by their registration IDs, in the store where several
      // nodes share it; a single node keeps them in memory, forgotten below) go with the fences: a poll refused while
      // the erase ran still took its token and wrote one. Not counted in the receipt: a counter is no record of the
      // device.
      if (!store.capabilities.singleWriter) await tx.deleteRateBuckets(erasedRegistrationIds.map((id) => bucketKey('polls', devicePollKey(instance.id, id))));
      await tx.deleteEraseFences(instance.id, doc.requestId);
    });
    await store.reclaimErasedSpace();
    this.#deps.forgetDevices?.(instance.id, erasedRegistrationIds);
    const secrets = await this.secrets(instance);
    const summary = (entries: Array<{ place: string; count: number }>) => entries.map(({ place, count }) => ({ place, count }));
    doc.receipt = signEraseReceipt(
      {
        requestId: doc.requestId,
        instance: instance.idScope,
        subjectKind: doc.subject.kind,
        subjectHash: doc.subject.hash,
        // The erase is final when its fences go: the receipt says so, and an event logged in clear after that moment
        // (a device trying again) bears a later time (services/audit-log.ts).
        completedDateTimeUtc: finalUtc,
        deleted: summary(counts.deleted),
        pseudonymized: summary(counts.pseudonymized),
        nothingFound: result.nothingFound === true,
      },
      secrets,
    );
    doc.status = 'completed';
    await this.#save(instance, doc);
    this.#reclaimSoon();
    await this.#deps.audit.record(instance.id, {
      kind: 'dataRequest',
      operation: 'erase',
      actor: doc.requestedBy,
      subject: { hash: doc.subject.hash },
      outcome: 'success',
      details: { requestId: doc.requestId, deleted: summary(counts.deleted), pseudonymized: summary(counts.pseudonymized) },
    });
    await this.#deps.events.emit(instance, 'dataRequest.completed', { requestId: doc.requestId, type: 'erase', status: 'completed', subjectHash: doc.subject.hash });
  }
}

function subjectOf(body: DataRequestBody): Subject {
  const given = (['registrationId', 'deviceId', 'enrollmentGroupId'] as const).filter((kind) => body.subject[kind] !== undefined);
  const kind = given[0];
  if (given.length !== 1 || kind === undefined) {
    throw new ProvisioningError('BadRequest', 'subject names exactly one of registrationId, deviceId or enrollmentGroupId.');
  }
  const id = body.subject[kind] ?? '';
  if (id === '' || id.length > 128) throw new ProvisioningError('BadRequest', `subject.${kind} must be 1-128 characters.`);
  if (kind === 'enrollmentGroupId' && body.type !== 'erase') {
    throw new ProvisioningError('BadRequest', 'An enrollment group can be the subject of an erase, not of an export.');
  }
  return { kind, id };
}

/** The subject a running request works on (a request forgets it only once it is final). */
function storedSubject(doc: DataRequestDoc): Subject {
  if (doc.subject.id === undefined) throw new Error(`the subject of ${doc.type} request '${doc.requestId}' is gone`);
  return { kind: doc.subject.kind, id: doc.subject.id };
}

function subjectFields(subject: Subject): AuditEvent['subject'] {
  return subject.kind === 'registrationId'
    ? { registrationId: subject.id }
    : subject.kind === 'deviceId'
      ? { deviceId: subject.id }
      : { enrollmentGroupId: subject.id };
}
