import { randomBytes, randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import type { FastifyBaseLogger } from 'fastify';
import { candidateHubs, geoLatencyChoice, hashedChoice, staticChoice } from '../domain/allocation.js';
import {
  renderEnrollment,
  renderEnrollmentGroup,
  type InitialTwinDoc,
  type JsonMap,
} from '../domain/enrollment.js';
import { ProvisioningError } from '../domain/errors.js';
import { newEtag } from '../domain/etag.js';
import { idKey } from '../domain/ids.js';
import { renderDeviceRegistration, settle, startAttempt, type TerminalState } from '../domain/registration.js';
import { decideReprovision } from '../domain/reprovision.js';
import { parseSasToken } from '../domain/sas.js';
import { dpsTimestamp } from '../domain/time.js';
import { HubError, type HubClientFactory, type HubTwinContent } from '../hubs/hub-client.js';
import type { Substatus } from '../domain/wire.js';
import type { AuditEvent, FenceProbe, InstanceRecord, LinkedHubRecord, RegistrationIntent, StoredOperation, StoredRegistration } from '../store/store.js';
import { settleIntent, type IntentOutcome } from './registration-intents.js';
import { callAllocationWebhook, type WebhookExchange } from './custom-allocation.js';
import type { ServiceDeps } from './deps.js';
import type { HubLatencies } from './hub-latency.js';
import type { SymmetricKeyGroups } from './symmetric-key-groups.js';
import { createRateLimiter, MemoryRateLimiter, type RateLimiter } from './throttle.js';
import { RefusedAttempts } from './refused-attempts.js';
import type { AuditLog } from './audit-log.js';
import type { LifecycleEvents } from './lifecycle-events.js';
import { authenticateDevice } from './attestation/authenticate.js';
import type { DeviceCredential, DeviceMatch } from './attestation/device-match.js';
import { DeviceProof } from './attestation/device-proof.js';
import { withIssuedCredential, type CertificateIssuance } from './attestation/certificate-issuance.js';
import type { CheckedCsr, IssuedCertificate } from './attestation/csr.js';

export type { DeviceCredential } from './attestation/device-match.js';
import { assertNotFenced, isFenceRefusal, registrationRefusal, undoInterruptedRegistration } from './customer-data/erase-fence.js';
import { hubDeviceLinkOf } from './customer-data/hub-device-links.js';
import { refusalReason } from './device-refusals.js';

/**
 * The registration flow — one implementation for every transport (ARCHITECTURE.md "The registration flow"):
 * authenticate the device against its enrollment, allocate a hub, write the device identity and twin to it, write
 * the registration record, and keep an operation the device polls. HTTP, MQTT and AMQP only translate to and from it.
 */
export type Transport = 'http' | 'mqtt' | 'mqttWs' | 'amqp' | 'amqpWs';

export interface DeviceRequest {
  idScope: string;
  registrationId: string;
  credential: DeviceCredential;
  transport: Transport;
  /** The peer's address: refused attempts are counted by it (undefined only for in-process callers). */
  source?: string | undefined;
  /** What the connection proved at sign-in (`authenticate`): used instead of authenticating again while it holds. */
  proof?: DeviceProof | undefined;
}

export interface OperationReply {
  httpStatus: 200 | 202;
  body: JsonMap;
  /** Seconds the device should wait before polling again (202 only). */
  retryAfterSeconds: number | undefined;
}

export interface RegistrationServiceDeps extends ServiceDeps {
  hubClients: HubClientFactory;
  latencies: HubLatencies;
  groups: SymmetricKeyGroups;
  logger: FastifyBaseLogger;
  onWebhookExchange?: (instance: InstanceRecord, registrationId: string, exchange: WebhookExchange) => void;
  /** The system log: every attempt (refused ones too), every hub write, every outcome. */
  audit?: AuditLog;
  events?: LifecycleEvents;
  /** Metrics: every register attempt's outcome and duration, every throttled request. */
  observer?: RegistrationObserver;
  /** Certificates from CSRs (docs/certificate-issuance.md); without it a register request's csr is refused. */
  issuance?: CertificateIssuance;
}

export interface RegistrationObservation {
  transport: Transport;
  attestationType: 'symmetricKey' | 'x509' | 'tpm';
  /** `refused`: the request was answered with an error before an operation existed (credential, throttling). */
  outcome: 'assigned' | 'failed' | 'disabled' | 'refused';
  errorCode?: number;
  seconds: number;
}

export interface RegistrationObserver {
  attempted(observation: RegistrationObservation): void;
  throttled(transport: Transport, operation: 'register' | 'poll' | 'statusLookup'): void;
}

const unauthorized = (): ProvisioningError => new ProvisioningError('Unauthorized');

export class RegistrationService {
  readonly #deps: RegistrationServiceDeps;
  readonly #registrationLimiter: RateLimiter;
  readonly #pollLimiter: RateLimiter;
  readonly #refused: RefusedAttempts;
  /** Registrations of one device run one after another on this node. */
  readonly #deviceQueues = new Map<string, Promise<unknown>>();
  /** Operations this node is assigning right now: the intent sweep leaves them alone. */
  readonly #inFlight = new Set<string>();
  /**
   * Operations this node created for a device that proved itself with a SAS token, by operation ID: a poll with the
   * same token (unexpired) is that device, so it is answered without re-reading the instance, the enrollment and the
   * record (issue 12). Anything else — another token, another node's operation, a restart — authenticates in full.
   */
  readonly #proven = new Map<string, ProvenOperation>();

  constructor(deps: RegistrationServiceDeps) {
    this.#deps = deps;
    this.#registrationLimiter = createRateLimiter(deps.config.registrationsPerSecond, deps.store);
    this.#pollLimiter = createRateLimiter(deps.config.pollsPerSecondPerDevice, deps.store);
    // Refused attempts are counted on this node: a flood of bad tokens must not cost a database write each.
    this.#refused = new RefusedAttempts(new MemoryRateLimiter(deps.config.refusedAttemptsPerSecondPerSource));
  }

  /** Register: authenticate now (401 at once), assign in the background, answer 202 `assigning` with an operation. */
  async register(request: DeviceRequest & { payload?: JsonMap | undefined; csr?: string | undefined }): Promise<OperationReply> {
    const started = performance.now();
    const observe = (outcome: RegistrationObservation['outcome'], attestationType: RegistrationObservation['attestationType'], errorCode: number | undefined) =>
      this.#deps.observer?.attempted({ transport: request.transport, attestationType, outcome, seconds: (performance.now() - started) / 1000, ...(errorCode === undefined ? {} : { errorCode }) });
    let instance: InstanceRecord | undefined;
    let match: DeviceMatch;
    let csr: CheckedCsr | undefined;
    // A connection's sign-in proof stands for the key check; the enrollment is checked against it below.
    const proven = request.proof?.matchFor(request, this.#deps.now().getTime());
    try {
      // Authenticate first: the instance's registration budget is spent only by devices that proved who they are.
      match = await this.#refused.guard(request.source, async () => {
        instance = await this.#instance(request.idScope);
        return proven !== undefined && proven.instance.id === instance.id ? { ...proven, instance } : this.#authenticate(instance, request);
      });
      const instanceId = match.instance.id;
      await this.#throttling(request.transport, 'register', () => this.#registrationLimiter.take(instanceId));
      csr = await this.#checkCsr(match, request.csr);
    } catch (error) {
      observe('refused', request.credential.kind === 'x509' ? 'x509' : 'symmetricKey', error instanceof ProvisioningError ? error.errorCode : undefined);
      // A refused attempt is logged with why, so a tenant can tell a wrong key from a throttled device.
      if (error instanceof ProvisioningError && instance !== undefined) {
        await this.#logRefusal(instance, request, error, 'register');
      }
      throw error;
    }
    const { instance: matched } = match;
    const now = dpsTimestamp(this.#deps.now());
    const operation: StoredOperation = {
      operationId: `5.${randomBytes(8).toString('hex')}.${randomUUID()}`,
      registrationId: match.registrationId,
      status: 'assigning',
      createdDateTimeUtc: now,
      lastUpdatedDateTimeUtc: now,
    };
    // Erase fence, first check: an erase running for this device refuses the attempt before anything is written.
    const written = await this.#deps.store
      .transaction(async (tx) => {
        await assertNotFenced(tx, matched.id, fenceProbe(match));
        // An erase may have come and gone since the credential was checked: the enrollment must still be there.
        const entry = match.enrollment;
        const current = entry.kind === 'individual' ? await tx.getEnrollment(matched.id, entry.doc.registrationId) : await tx.getEnrollmentGroup(matched.id, entry.doc.enrollmentGroupId);
        // A sign-in proof holds only for the entry exactly as it was proved (not deleted, disabled, re-keyed, and for a
        // group no individual enrollment since, which would decide alone); otherwise the device is judged afresh.
        if (proven !== undefined && (current?.etag !== entry.doc.etag || (entry.kind === 'group' && (await tx.getEnrollment(matched.id, match.registrationId)) !== undefined))) return false;
        if (current === undefined) throw unauthorized();
        await tx.putOperation(matched.id, operation);
        return true;
      })
      .catch(async (error: unknown) => {
        if (isFenceRefusal(error)) {
          await this.#deps.audit?.record(matched.id, {
            kind: 'registration',
            operation: 'register',
            actor: 'device',
            subject: { registrationId: match.registrationId, deviceId: match.deviceId },
            outcome: 'failure',
            errorCode: error.errorCode,
            transport: request.transport,
            attestationType: match.attestationType,
          });
        }
        throw error;
      });
    // The proof no longer holds (nothing was written): judged in full, as any request (it takes its own token of the
    // registration budget again; a changed enrollment is rare).
    if (!written) return this.register({ ...request, proof: undefined });
    this.#remember(operation.operationId, request, match);
    const work = this.#serialized(`${matched.id}/${idKey(match.registrationId)}`, () => this.#assign(match, operation, request.payload, request.transport, csr));
    // (A rejected assignment is the race's below to report; this only counts the finished ones.)
    void work.then(
      (record) => {
        if (record !== undefined) observe(record.status === 'assigned' || record.status === 'disabled' ? record.status : 'failed', match.attestationType, record.errorCode);
      },
      () => undefined,
    );
    // A fast assignment is finished before the device is told to poll, so its first poll is the answer (Retry-After: 0).
    const finished = await Promise.race([
      work.then(() => true),
      new Promise<boolean>((resolve) => setTimeout(resolve, this.#deps.config.registrationWaitMs, false).unref()),
    ]);
    return {
      httpStatus: 202,
      body: { operationId: operation.operationId, status: 'assigning' },
      retryAfterSeconds: finished ? 0 : this.#deps.config.retryAfterSeconds,
    };
  }

  async operationStatus(request: DeviceRequest & { operationId: string }): Promise<OperationReply> {
    let proven: Pick<ProvenOperation, 'instanceId' | 'registrationId' | 'probe'> | undefined = this.#provenPoll(request);
    if (proven === undefined) {
      const match = request.proof?.matchFor(request, this.#deps.now().getTime()) ?? (await this.#authenticated(request));
      proven = { instanceId: match.instance.id, registrationId: match.registrationId, probe: fenceProbe(match) };
    }
    const { instanceId, registrationId, probe } = proven;
    await this.#throttling(request.transport, 'poll', () => this.#pollLimiter.take(`${instanceId}/${idKey(registrationId)}`));
    // The fence and the operation are read from the store on every poll: an erase (from any node) is seen at once.
    await assertNotFenced(this.#deps.store, instanceId, probe);
    const operation = await this.#deps.store.getOperation(instanceId, request.operationId);
    if (operation === undefined || idKey(operation.registrationId) !== idKey(registrationId)) {
      throw new ProvisioningError('OperationNotFound', `Operation '${request.operationId}' was not found for '${request.registrationId}'.`);
    }
    if (operation.status !== 'assigning') this.#proven.delete(operation.operationId);
    if (operation.status === 'assigning') {
      return {
        httpStatus: 202,
        body: { operationId: operation.operationId, status: 'assigning', registrationState: { registrationId: operation.registrationId, status: 'assigning' } },
        retryAfterSeconds: this.#deps.config.retryAfterSeconds,
      };
    }
    return {
      httpStatus: 200,
      body: { operationId: operation.operationId, status: operation.status, registrationState: operation.registrationState ?? {} },
      retryAfterSeconds: undefined,
    };
  }

  /** DeviceRegistrationStatusLookup: the device's current record, no operation wrapper. */
  async statusLookup(request: DeviceRequest): Promise<JsonMap> {
    const match = await this.#authenticated(request);
    await this.#throttling(request.transport, 'statusLookup', () => this.#pollLimiter.take(`${match.instance.id}/${idKey(match.registrationId)}`));
    if (match.previous === undefined) {
      throw new ProvisioningError('RegistrationNotFound', `Registration '${request.registrationId}' was not found.`);
    }
    return renderDeviceRegistration(match.previous, match.resultSection);
  }

  /**
   * Checks a credential without registering anything: MQTT CONNECT and AMQP SASL refuse a device that proves nothing
   * before it sends a request. The answer is the proof the connection carries to its register and polls (undefined
   * for a credential judged on every request: an X.509 chain).
   */
  async authenticate(request: DeviceRequest): Promise<DeviceProof | undefined> {
    let instance: InstanceRecord | undefined;
    try {
      const match = await this.#refused.guard(request.source, async () => {
        instance = await this.#instance(request.idScope);
        return this.#authenticate(instance, request);
      });
      return DeviceProof.of(request, match);
    } catch (error) {
      // A refused MQTT CONNECT or AMQP SASL sign-in is an attempt too: logged with why, like a refused HTTPS one (the
      // instance found for the check, not read again). A source already over its refusal budget (429) is not: logging
      // it would hand a flood the write it was denied.
      if (error instanceof ProvisioningError && error.httpStatus !== 429 && instance !== undefined) {
        await this.#logRefusal(instance, request, error, 'signIn');
      }
      throw error;
    }
  }

  /** Remembers who proved a register request, for its polls (bounded: the oldest entries go first). */
  #remember(operationId: string, request: DeviceRequest, match: DeviceMatch): void {
    if (request.credential.kind !== 'sas' || request.credential.authorization === undefined) return;
    const token = parseSasToken(request.credential.authorization);
    if (token === undefined) return;
    if (this.#proven.size >= MAX_PROVEN_OPERATIONS) {
      const oldest = this.#proven.keys().next();
      if (oldest.done !== true) this.#proven.delete(oldest.value);
    }
    this.#proven.set(operationId, {
      idScope: request.idScope,
      registrationKey: idKey(request.registrationId),
      authorization: request.credential.authorization,
      expiresAtMs: token.expirySeconds * 1000,
      instanceId: match.instance.id,
      registrationId: match.registrationId,
      probe: fenceProbe(match),
    });
  }

  /** The remembered register request this poll repeats exactly (same scope, device and token, unexpired), if any. */
  #provenPoll(request: DeviceRequest & { operationId: string }): ProvenOperation | undefined {
    const proven = this.#proven.get(request.operationId);
    if (proven === undefined || request.credential.kind !== 'sas') return undefined;
    if (proven.authorization !== request.credential.authorization || proven.idScope !== request.idScope || proven.registrationKey !== idKey(request.registrationId)) return undefined;
    if (proven.expiresAtMs < this.#deps.now().getTime()) {
      this.#proven.delete(request.operationId);
      return undefined;
    }
    return proven;
  }

  /** A refused attempt goes in the system log with why (a wrong key, no enrollment, …); the wire says only 401002. */
  async #logRefusal(instance: InstanceRecord, request: DeviceRequest, error: ProvisioningError, operation: 'register' | 'signIn'): Promise<void> {
    await this.#deps.audit?.record(instance.id, {
      kind: 'registration',
      operation,
      actor: 'device',
      subject: { registrationId: request.registrationId },
      outcome: 'failure',
      errorCode: error.errorCode,
      reason: error.errorName === 'Unauthorized' ? await refusalReason(this.#deps.store, instance, request, this.#deps.now()) : error.message,
      transport: request.transport,
      attestationType: request.credential.kind === 'sas' ? 'symmetricKey' : request.credential.kind,
    });
  }

  /**
   * Settles every registration intent created more than `olderThanMs` ago that this node is not working on (issue
   * 13.3): at start with 0 (one server per data directory: nothing else is writing), then periodically with a
   * timeout long enough that another node's live registration is never touched. Each device's intents run in its
   * queue, so a registration of the same device on this node never races its settling.
   */
  async reconcile(options: { olderThanMs: number }): Promise<Record<IntentOutcome, number>> {
    const counts: Record<IntentOutcome, number> = { finished: 0, completed: 0, rolledBack: 0, unreachable: 0 };
    const cutoff = dpsTimestamp(new Date(this.#deps.now().getTime() - options.olderThanMs + (options.olderThanMs === 0 ? 1 : 0)));
    const seen = new Set<string>();
    for (;;) {
      const batch = (await this.#deps.store.listRegistrationIntents(cutoff, 500)).filter((intent) => !seen.has(intent.operationId) && !this.#inFlight.has(intent.operationId));
      if (batch.length === 0) break;
      for (const intent of batch) {
        seen.add(intent.operationId);
        const outcome = await this.#serialized(`${intent.instanceId}/${idKey(intent.registrationId)}`, async () =>
          this.#inFlight.has(intent.operationId) ? 'finished' : settleIntent(this.#deps, intent.instanceId, intent),
        ).catch((error: unknown): IntentOutcome => {
          this.#deps.logger.error({ err: error, operationId: intent.operationId }, 'settling a registration intent failed; retried by the next sweep');
          return 'unreachable';
        });
        counts[outcome] += 1;
      }
    }
    return counts;
  }

  /**
   * Authentication before any limit of the device's own (issue 13.2): a stranger's junk token must not spend the poll
   * budget of the device it names. Refused attempts are counted by source address instead.
   */
  #authenticated(request: DeviceRequest): Promise<DeviceMatch> {
    return this.#refused.guard(request.source, async () => this.#authenticate(await this.#instance(request.idScope), request));
  }

  /** A rate limit's refusal, counted for the metrics and passed on. */
  async #throttling(transport: Transport, operation: 'register' | 'poll' | 'statusLookup', take: () => Promise<void>): Promise<void> {
    try {
      await take();
    } catch (error) {
      if (error instanceof ProvisioningError && error.httpStatus === 429) this.#deps.observer?.throttled(transport, operation);
      throw error;
    }
  }

  async #instance(idScope: string): Promise<InstanceRecord> {
    const instance = await this.#deps.store.findInstanceByIdScope(idScope);
    // An unknown ID scope is answered like a bad credential: it tells a prober nothing.
    if (instance === undefined) throw unauthorized();
    return instance;
  }

  #authenticate(instance: InstanceRecord, request: DeviceRequest): Promise<DeviceMatch> {
    return authenticateDevice(this.#deps, instance, request.registrationId, request.credential);
  }

  /**
   * Registrations of one device run one after another: in this process by a queue per device, and across the nodes
   * of a shared database by the store's lock on the device (PostgreSQL advisory lock), so two nodes never create two
   * hub identities or two records for one device. The queue keeps this node to one lock (one connection) per device.
   */
  #serialized<T>(key: string, work: () => Promise<T>): Promise<T> {
    const previous = this.#deviceQueues.get(key) ?? Promise.resolve();
    const locked = () => this.#deps.store.withLock(`device/${key}`, work);
    const next = previous.then(locked, locked);
    const settled = next.then(
      () => undefined,
      () => undefined,
    );
    this.#deviceQueues.set(key, settled);
    void settled.then(() => {
      if (this.#deviceQueues.get(key) === settled) this.#deviceQueues.delete(key);
    });
    return next;
  }

  /** Allocation, hub write and record; never throws — every failure ends the operation `failed` with a reason. */
  async #assign(match: DeviceMatch, operation: StoredOperation, payload: JsonMap | undefined, transport: Transport, csr?: CheckedCsr): Promise<StoredRegistration | undefined> {
    this.#inFlight.add(operation.operationId);
    try {
      return await this.#assignTracked(match, operation, payload, transport, csr);
    } finally {
      this.#inFlight.delete(operation.operationId);
    }
  }

  async #assignTracked(
    match: DeviceMatch,
    operation: StoredOperation,
    payload: JsonMap | undefined,
    transport: Transport,
    csr: CheckedCsr | undefined,
  ): Promise<StoredRegistration | undefined> {
    const { instance } = match;
    const store = this.#deps.store;
    /** Set once the intent is stored, before the first hub write. */
    const intent: { written?: RegistrationIntent } = {};
    /** Log entries of the hub writes: written with the outcome, in its transaction (one commit per registration). */
    const hubWrites: AuditEvent[] = [];
    // Attempts of one device queue behind each other: one that waited through an erase of the device must not run.
    const erased = await registrationRefusal(store, instance.id, fenceProbe(match), operation.operationId);
    if (erased !== undefined) return undefined;
    const previous = await store.getRegistration(instance.id, match.registrationId);
    const enrollment = match.enrollment.doc;
    const now = dpsTimestamp(this.#deps.now());
    const base = startAttempt(previous, {
      registrationId: match.registrationId,
      attestationType: match.attestationType,
      enrollmentGroupId: match.enrollment.kind === 'group' ? match.enrollment.doc.enrollmentGroupId : undefined,
      now,
      etag: newEtag(),
    });

    let record: StoredRegistration;
    let issued: IssuedCertificate | undefined;
    /** Whether this attempt created the hub identity (rather than found it there and replaced it). */
    let createdOnHub = false;
    try {
      if (enrollment.provisioningStatus === 'disabled') {
        // DPS ends the registration `disabled` (dps-wire.md §8.3); the record also says which entry refused it.
        const refusal = new ProvisioningError(
          'EnrollmentDisabled',
          match.enrollment.kind === 'individual'
            ? `The individual enrollment '${match.enrollment.doc.registrationId}' is disabled.`
            : `The enrollment group '${match.enrollment.doc.enrollmentGroupId}' is disabled.`,
        );
        record = settle(base, { status: 'disabled', errorCode: refusal.errorCode, errorMessage: refusal.message });
      } else {
        // Step: issue the certificate of the CSR before the hub write, so the hub identity is the certificate's.
        issued = await this.#issueCertificate(match, csr);
        const flow: Assignment = { match: withIssuedCredential(match, issued), operationId: operation.operationId, devicePayload: payload, previous, attempt: base, intent, hubWrites };
        for (const [, step] of this.#assignmentSteps) await step(flow);
        createdOnHub = flow.created === true;
        record = settle(base, assignedState(flow));
      }
    } catch (error) {
      const failure = error instanceof ProvisioningError ? error : this.#asProvisioningError(error, match);
      record = settle(base, { status: 'failed', errorCode: failure.errorCode, errorMessage: failure.message });
    }
    const finished: StoredOperation = {
      ...operation,
      status: record.status === 'assigned' || record.status === 'disabled' || record.status === 'failed' ? record.status : 'failed',
      lastUpdatedDateTimeUtc: dpsTimestamp(this.#deps.now()),
      registrationState: {
        ...renderDeviceRegistration(record, match.resultSection),
        // Only the operation carries the chain (dps-wire.md §0: never returned by status lookup).
        ...(issued !== undefined && record.status === 'assigned' ? { issuedCertificateChain: issued.chain } : {}),
      },
    };
    const outcome = this.#deps.audit?.event({
      kind: 'registration',
      operation: 'register',
      actor: 'device',
      subject: {
        registrationId: match.registrationId,
        deviceId: record.deviceId ?? match.deviceId,
        ...(base.enrollmentGroupId === undefined ? {} : { enrollmentGroupId: base.enrollmentGroupId }),
      },
      outcome: record.status === 'assigned' ? 'success' : 'failure',
      ...(record.errorCode === undefined ? {} : { errorCode: record.errorCode }),
      ...(record.errorMessage === undefined ? {} : { reason: record.errorMessage }),
      transport,
      attestationType: match.attestationType,
      ...(record.status === 'assigned' && record.assignedHub !== undefined ? { hub: record.assignedHub } : {}),
      details: { status: record.status, ...(record.substatus === undefined ? {} : { substatus: record.substatus }), operationId: operation.operationId },
    });
    // The record, the operation and the log entry of the outcome are written together (ARCHITECTURE.md, step 5).
    // The record, the operation, the log entry of the outcome and the end of the intent are written together: a crash
    // before this leaves the intent for the sweep to settle.
    try {
      await store.transaction(async (tx) => {
        // Erase fence, second check: an erase that started while this registration ran wins, and nothing is written.
        const refusal = await registrationRefusal(tx, instance.id, fenceProbe(match, record.deviceId), operation.operationId);
        if (refusal !== undefined) throw refusal;
        await tx.putRegistration(instance.id, record);
        // The explicit subject→hub-device link a later erase follows (customer-data/hub-device-links.ts).
        const link = hubDeviceLinkOf(record, now);
        if (link !== undefined) await tx.putHubDeviceLink(instance.id, link);
        if (issued !== undefined && record.status === 'assigned') await tx.putIssuedCertificate(instance.id, issued.record);
        await tx.putOperation(instance.id, finished);
        for (const entry of hubWrites) await tx.appendAuditEvent(instance.id, entry);
        if (outcome !== undefined) await tx.appendAuditEvent(instance.id, outcome);
        if (intent.written !== undefined && record.status === 'assigned') await tx.deleteRegistrationIntent(instance.id, operation.operationId);
      });
    } catch (error) {
      if (!isFenceRefusal(error)) throw error;
      // A hub identity this attempt created after the erase's hub step goes too: the erase wants none of it. One it
      // found there (and replaced) is the erase's to delete, and to count in its receipt: the erase holds the fence,
      // so its hub step (or its re-check) has not yet passed that device.
      await undoInterruptedRegistration(store, this.#deps.hubClients, instance.id, {
        registrationId: match.registrationId,
        deviceId: record.deviceId ?? match.deviceId,
        assignedHub: record.status === 'assigned' && createdOnHub ? record.assignedHub : undefined,
        sinceUtc: now,
      });
      // The intent names the device: it goes with the rest, so nothing of the erased subject stays behind.
      if (intent.written !== undefined) await store.deleteRegistrationIntent(instance.id, operation.operationId);
      // Logged through the fence-aware path, so the entries name the subject only by its hash; once the erase is over,
      // not at all (it has pseudonymized the log, and a late entry in the clear would undo that).
      if (this.#deps.audit !== undefined && (await store.findEraseFence(instance.id, fenceProbe(match))) !== undefined) {
        for (const { eventId: _eventId, timeUtc: _timeUtc, ...entry } of hubWrites) await this.#deps.audit.record(instance.id, entry);
        if (outcome !== undefined) await this.#deps.audit.record(instance.id, { ...outcome, outcome: 'failure', errorCode: error.errorCode, reason: error.message });
      }
      return undefined;
    }
    // A failure after the first hub write: what was written is rolled back to agree with the record.
    if (intent.written !== undefined && record.status !== 'assigned') {
      const written = intent.written;
      await settleIntent(this.#deps, instance.id, written).catch((error: unknown) =>
        this.#deps.logger.error({ err: error, operationId: written.operationId }, 'rolling back a failed registration failed; the intent sweep retries'),
      );
    }
    const reprovisioned = previous?.status === 'assigned';
    void this.#deps.events?.emit(instance, record.status === 'assigned' ? (reprovisioned ? 'device.reprovisioned' : 'device.registered') : 'device.failed', {
      registrationId: record.registrationId,
      status: record.status,
      ...(record.deviceId === undefined ? {} : { deviceId: record.deviceId }),
      ...(record.assignedHub === undefined || record.status !== 'assigned' ? {} : { assignedHub: record.assignedHub }),
      ...(record.substatus === undefined ? {} : { substatus: record.substatus }),
      ...(record.errorCode === undefined ? {} : { errorCode: record.errorCode, errorMessage: record.errorMessage }),
    });
    return record;
  }

  /** A register request's csr, checked before any operation exists (a bad one is a 400 at once). */
  async #checkCsr(match: DeviceMatch, csr: string | undefined): Promise<CheckedCsr | undefined> {
    if (csr === undefined) return undefined;
    if (this.#deps.issuance === undefined) throw new ProvisioningError('CsrNotAccepted', 'This server issues no certificates.');
    return this.#deps.issuance.check(match, csr);
  }

  /** The certificate-issuance step (docs/certificate-issuance.md); nothing to do without a CSR. */
  async #issueCertificate(match: DeviceMatch, csr: CheckedCsr | undefined): Promise<IssuedCertificate | undefined> {
    if (csr === undefined || this.#deps.issuance === undefined) return undefined;
    return this.#deps.issuance.issue(match, csr);
  }

  /** One write to a hub; its log entry (with the outcome) goes to `log`, written with the registration's outcome. */
  async #hubWrite<T>(log: AuditEvent[], match: DeviceMatch, hub: string, operation: string, deviceId: string, write: () => Promise<T>): Promise<T> {
    const entry = {
      kind: 'hubWrite' as const,
      operation,
      actor: 'provisiond',
      subject: { registrationId: match.registrationId, deviceId },
      hub,
    };
    try {
      const result = await write();
      const event = this.#deps.audit?.event({ ...entry, outcome: 'success' });
      if (event !== undefined) log.push(event);
      return result;
    } catch (error) {
      const event = this.#deps.audit?.event({ ...entry, outcome: 'failure', reason: error instanceof Error ? error.message : String(error) });
      if (event !== undefined) log.push(event);
      throw error;
    }
  }

  #asProvisioningError(error: unknown, match: DeviceMatch): ProvisioningError {
    if (error instanceof HubError) {
      return new ProvisioningError('HubWriteFailed', `Writing device '${match.deviceId}' to hub '${error.hubName}' failed: ${error.message}`);
    }
    this.#deps.logger.error({ err: error, registrationId: match.registrationId }, 'registration failed unexpectedly');
    return new ProvisioningError('InternalError');
  }

  /**
   * The hub side of the registration flow (ARCHITECTURE.md "The registration flow"), as named steps run in order in
   * the device's queue; `findEnrollment` and `verifyCredential` ran in register() (authenticateDevice) before the
   * operation existed, and the outcome is recorded after the last step in one transaction (#assignTracked). A step
   * reads what earlier steps put on the Assignment and adds its own part; a new step (e.g. issuing a certificate)
   * slots in here.
   */
  readonly #assignmentSteps: readonly (readonly [string, (flow: Assignment) => Promise<void>])[] = [
    ['chooseHub', (flow) => this.#chooseHub(flow)],
    ['decideReprovision', (flow) => this.#decideReprovision(flow)],
    ['writeIdentity', (flow) => this.#writeIdentity(flow)],
    ['writeTwin', (flow) => this.#writeTwin(flow)],
    ['leaveOldHub', (flow) => this.#leaveOldHub(flow)],
  ];

  /** Allocation: the hub the enrollment's policy (or its custom webhook) picks among the linked hubs. */
  async #chooseHub(flow: Assignment): Promise<void> {
    const { match, previous } = flow;
    const { instance } = match;
    const enrollment = match.enrollment.doc;
    const linked = await this.#deps.store.listLinkedHubs(instance.id);
    const byName = new Map(linked.map((hub) => [hub.name, hub]));
    const current = previous?.status === 'assigned' && previous.assignedHub !== undefined ? byName.get(previous.assignedHub) : undefined;
    const stays = current !== undefined && !enrollment.reprovisionPolicy.updateHubAssignment;
    const policy = enrollment.allocationPolicy ?? instance.allocationPolicy;
    let initialTwin = enrollment.initialTwin;
    let allocated: LinkedHubRecord;

    if (policy === 'custom') {
      const definition = enrollment.customAllocationDefinition;
      if (definition === undefined) throw new ProvisioningError('CustomAllocationFailed', 'The enrollment has no customAllocationDefinition.');
      const linkedHubs = stays ? [current.name] : candidateHubs(enrollment, linked).map((hub) => hub.name);
      const context: JsonMap = { registrationId: match.registrationId, ...match.runtimeContext };
      if (current !== undefined && previous?.deviceId !== undefined) {
        context.currentIotHubHostName = current.name;
        context.currentDeviceId = previous.deviceId;
      }
      if (flow.devicePayload !== undefined) context.payload = flow.devicePayload;
      const answer = await callAllocationWebhook(
        definition.webhookUrl,
        {
          ...(match.enrollment.kind === 'individual'
            ? { individualEnrollment: renderEnrollment(match.enrollment.doc, 'public') }
            : { enrollmentGroup: renderEnrollmentGroup(match.enrollment.doc, 'public') }),
          deviceRuntimeContext: context,
          linkedHubs,
        },
        this.#deps.config.customAllocationTimeoutMs,
        (exchange) => this.#deps.onWebhookExchange?.(instance, match.registrationId, exchange),
      );
      allocated = byName.get(answer.iotHubHostName) as LinkedHubRecord;
      if (answer.initialTwin !== undefined) initialTwin = answer.initialTwin as InitialTwinDoc;
      if (answer.payload !== undefined) flow.resultPayload = answer.payload;
    } else if (stays) {
      allocated = current;
    } else {
      const candidates = candidateHubs(enrollment, linked);
      allocated =
        policy === 'static'
          ? staticChoice(candidates)
          : policy === 'geoLatency'
            ? geoLatencyChoice(match.registrationId, candidates, await this.#deps.latencies.latencies(candidates))
            : hashedChoice(match.registrationId, candidates);
    }
    flow.hubs = { byName, current, allocated, initialTwin };
  }

  /** The reprovision policy: where the device goes, what its twin becomes, which old identity leaves. */
  async #decideReprovision(flow: Assignment): Promise<void> {
    const { match, previous } = flow;
    const hubs = requireStep(flow.hubs, 'chooseHub');
    const enrollment = match.enrollment.doc;
    const decision = decideReprovision({
      currentHub: hubs.current?.name,
      hubHistory: previous?.hubHistory ?? [],
      currentSubstatus: previous?.substatus,
      policy: enrollment.reprovisionPolicy,
      allocatedHub: hubs.allocated.name,
    });
    const target = hubs.byName.get(decision.targetHub) as LinkedHubRecord;
    const previousDeviceId = previous?.deviceId;
    const current = hubs.current;

    let twin: HubTwinContent | undefined;
    if (decision.twin === 'initial') twin = twinOf(hubs.initialTwin);
    if (decision.twin === 'migrate' && current !== undefined) {
      const old = await this.#deps.hubClients.forHub(current).getTwin(previousDeviceId ?? match.deviceId);
      twin = old === undefined ? twinOf(hubs.initialTwin) : { tags: old.tags, desired: withoutMetadata(old.desired) };
    }
    const leave =
      decision.leaveHub !== undefined && current !== undefined
        ? { hub: current, deviceId: previousDeviceId ?? match.deviceId }
        : previousDeviceId !== undefined && current !== undefined && idKey(previousDeviceId) !== idKey(match.deviceId)
          ? { hub: current, deviceId: previousDeviceId }
          : undefined;
    const history = [...(previous?.hubHistory ?? [])];
    if (!history.includes(target.name)) history.push(target.name);
    flow.plan = { target, substatus: decision.substatus, twin, leave, hubHistory: history };
  }

  /** Durable intent before the first hub write (issue 13.3), then the device identity on the target hub. */
  async #writeIdentity(flow: Assignment): Promise<void> {
    const { match } = flow;
    const plan = requireStep(flow.plan, 'decideReprovision');
    const stored: RegistrationIntent = {
      operationId: flow.operationId,
      registrationId: match.registrationId,
      createdDateTimeUtc: dpsTimestamp(this.#deps.now()),
      targetHub: plan.target.name,
      deviceId: match.deviceId,
      ...(plan.leave === undefined ? {} : { leave: { hub: plan.leave.hub.name, deviceId: plan.leave.deviceId } }),
      assigned: settle(flow.attempt, assignedState(flow)),
      resultSection: match.resultSection,
    };
    await this.#deps.store.putRegistrationIntent(match.instance.id, stored);
    flow.intent.written = stored;
    const client = this.#deps.hubClients.forHub(plan.target);
    const written = await this.#hubWrite(flow.hubWrites, match, plan.target.name, 'putDevice', match.deviceId, () =>
      client.putDevice({
        deviceId: match.deviceId,
        authentication: match.hubAuthentication,
        capabilities: { iotEdge: match.enrollment.doc.capabilities.iotEdge },
        status: 'enabled',
      }),
    );
    flow.created = written.created;
  }

  /** The twin the reprovision decision chose; a device just created has an empty twin already, so none is written. */
  async #writeTwin(flow: Assignment): Promise<void> {
    const plan = requireStep(flow.plan, 'decideReprovision');
    const twin = plan.twin;
    if (twin === undefined) return;
    const twinIsEmpty = Object.keys(twin.tags).length === 0 && Object.keys(twin.desired).length === 0;
    if (flow.created === true && twinIsEmpty) return;
    const { match } = flow;
    const client = this.#deps.hubClients.forHub(plan.target);
    await this.#hubWrite(flow.hubWrites, match, plan.target.name, 'replaceTwin', match.deviceId, () => client.replaceTwin(match.deviceId, twin));
  }

  /**
   * The old identity leaves last (another hub on a move, or an old device ID on the same hub): a crash before this
   * step is rolled back, one after it finished (registration-intents.ts).
   */
  async #leaveOldHub(flow: Assignment): Promise<void> {
    const leave = requireStep(flow.plan, 'decideReprovision').leave;
    if (leave === undefined) return;
    await this.#hubWrite(flow.hubWrites, flow.match, leave.hub.name, 'deleteDevice', leave.deviceId, () => this.#deps.hubClients.forHub(leave.hub).deleteDevice(leave.deviceId));
  }
}

/** What the assignment steps share: each step adds its part for the ones after it. */
interface Assignment {
  match: DeviceMatch;
  operationId: string;
  devicePayload: JsonMap | undefined;
  /** The device's record before this attempt. */
  previous: StoredRegistration | undefined;
  /** This attempt's record, `assigning` (domain/registration.ts startAttempt). */
  attempt: StoredRegistration;
  /** Set once the intent is stored, before the first hub write. */
  intent: { written?: RegistrationIntent };
  /** Log entries of the hub writes, written with the outcome. */
  hubWrites: AuditEvent[];
  /** chooseHub: the linked hubs, the one the device is on now, the one allocation chose, the initial twin. */
  hubs?: { byName: Map<string, LinkedHubRecord>; current: LinkedHubRecord | undefined; allocated: LinkedHubRecord; initialTwin: InitialTwinDoc | undefined };
  /** chooseHub: the custom allocation webhook's payload for the device. */
  resultPayload?: JsonMap;
  /** decideReprovision: where the device goes and what it takes along. */
  plan?: { target: LinkedHubRecord; substatus: Substatus; twin: HubTwinContent | undefined; leave: { hub: LinkedHubRecord; deviceId: string } | undefined; hubHistory: string[] };
  /** writeIdentity: the identity was created (not replaced). */
  created?: boolean;
}

/** What a step needs from an earlier one; its absence is a bug in the step list's order. */
function requireStep<T>(value: T | undefined, step: string): T {
  if (value === undefined) throw new Error(`the ${step} step has not run`);
  return value;
}

/** The `assigned` state the steps lead to. */
function assignedState(flow: Assignment): Extract<TerminalState, { status: 'assigned' }> {
  const plan = requireStep(flow.plan, 'decideReprovision');
  return {
    status: 'assigned',
    assignedHub: plan.target.name,
    deviceId: flow.match.deviceId,
    substatus: plan.substatus,
    hubHistory: plan.hubHistory,
    ...(flow.resultPayload === undefined ? {} : { payload: flow.resultPayload }),
  };
}

/** Enough operations for every device of a boot storm to poll its own without a store read of who it is. */
const MAX_PROVEN_OPERATIONS = 20_000;

interface ProvenOperation {
  idScope: string;
  registrationKey: string;
  /** The SAS token that proved the register request, exactly as sent. */
  authorization: string;
  expiresAtMs: number;
  instanceId: string;
  registrationId: string;
  probe: FenceProbe;
}

/** The IDs a registration writes about: a fence on any of them refuses it. */
function fenceProbe(match: DeviceMatch, deviceId: string = match.deviceId): FenceProbe {
  return {
    registrationIds: [match.registrationId],
    deviceIds: [deviceId, match.deviceId],
    ...(match.enrollment.kind === 'group' ? { groupIds: [match.enrollment.doc.enrollmentGroupId] } : {}),
  };
}

function twinOf(initialTwin: InitialTwinDoc | undefined): HubTwinContent {
  return { tags: initialTwin?.tags ?? {}, desired: withoutMetadata(initialTwin?.properties?.desired ?? {}) };
}

/** `$metadata` and `$version` belong to the hub that wrote them, not to the content being copied. */
function withoutMetadata(properties: JsonMap): JsonMap {
  const copy: JsonMap = {};
  for (const [name, value] of Object.entries(properties)) if (name !== '$metadata' && name !== '$version') copy[name] = value;
  return copy;
}
