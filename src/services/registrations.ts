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
import { idKey, isValidId, newOperationId } from '../domain/ids.js';
import { renderDeviceRegistration, settle, startAttempt, type TerminalState } from '../domain/registration.js';
import { decideReprovision } from '../domain/reprovision.js';
import { dpsTimestamp } from '../domain/time.js';
import { HubError, type HubClient, type HubClientFactory, type HubTwinContent, type PutDeviceHint } from '../hubs/hub-client.js';
import type { Substatus } from '../domain/wire.js';
import { committerFor, type Committer, type GroupCommitOptions } from '../store/group-commit.js';
import type { AuditEvent, DeviceReads, FenceProbe, InstanceRecord, PrefetchedHubDevice, LinkedHubRecord, RegistrationIntent, Store, StoredOperation, StoredRegistration } from '../store/store.js';
import { settleIntent, type IntentOutcome } from './registration-intents.js';
import { callAllocationWebhook, type WebhookExchange } from './custom-allocation.js';
import type { ServiceDeps } from './deps.js';
import type { HubLatencies } from './hub-latency.js';
import type { SymmetricKeyGroups } from './symmetric-key-groups.js';
import { createRateLimiter, devicePollKey, MemoryRateLimiter, type RateLimiter } from './throttle.js';
import { RefusedAttempts } from './refused-attempts.js';
import type { AuditInput, AuditLog } from './audit-log.js';
import type { LifecycleEvents } from './lifecycle-events.js';
import { authenticateDevice } from './attestation/authenticate.js';
import type { DeviceCredential, DeviceMatch } from './attestation/device-match.js';
import { DeviceProof } from './attestation/device-proof.js';
import { withIssuedCredential, type CertificateIssuance } from './attestation/certificate-issuance.js';
import type { CheckedCsr, IssuedCertificate } from './attestation/csr.js';

export type { DeviceCredential } from './attestation/device-match.js';
import { fenceRefusal, pseudonymizedEvent, undoInterruptedRegistration, type StandingFence } from './customer-data/erase-fence.js';
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
  /** How registrations share a commit on SQLite (store/group-commit.ts); its defaults otherwise. */
  groupCommit?: GroupCommitOptions;
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
  /** A registration's one write transaction, shared with its concurrent neighbours on SQLite (store/group-commit.ts). */
  readonly #committer: Committer;
  /**
   * Per bucket of registration IDs, how many assignments have ended on this node: a register whose authentication
   * read the record uses that read when no assignment in its bucket ended meanwhile (no second record read).
   */
  readonly #recordEpochs = new Uint32Array(RECORD_BUCKETS);
  /** When this service started: an `assigning` operation older than that on SQLite belongs to a dead process. */
  readonly #startedUtc: string;

  constructor(deps: RegistrationServiceDeps) {
    this.#deps = deps;
    this.#registrationLimiter = createRateLimiter('registrations', deps.config.registrationsPerSecond, deps.store);
    this.#pollLimiter = createRateLimiter('polls', deps.config.pollsPerSecondPerDevice, deps.store);
    // Refused attempts are counted on this node: a flood of bad tokens must not cost a database write each.
    this.#refused = new RefusedAttempts(new MemoryRateLimiter(deps.config.refusedAttemptsPerSecondPerSource));
    this.#committer = committerFor(deps.store, deps.groupCommit);
    this.#startedUtc = dpsTimestamp(deps.now());
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
    // Before authentication reads the device's record: whether a registration of it finished since (see `current`).
    const recordBucket = bucketOf(request.registrationId);
    const recordEpoch = this.#recordEpochs[recordBucket];
    try {
      // Authenticate first: the instance's registration budget is spent only by devices that proved who they are.
      match = await this.#refused.guard(request.source, async () => {
        // A sign-in proof needs only the instance; a request judged in full reads it with the device's reads.
        if (proven !== undefined) {
          instance = await this.#instance(request.idScope);
          if (proven.instance.id === instance.id) return provedMatch(Object.assign({}, proven, { instance }));
          return this.#authenticate(instance, request);
        }
        const device = await this.#device(request);
        instance = device.instance;
        return this.#authenticate(device.instance, request, device.reads);
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
      operationId: newOperationId(),
      registrationId: match.registrationId,
      status: 'assigning',
      createdDateTimeUtc: now,
      lastUpdatedDateTimeUtc: now,
    };
    this.#remember(operation.operationId, request, match);
    const acknowledged: Acknowledgement = { written: false };
    const deviceKey = `${matched.id}/${idKey(match.registrationId)}`;
    // The record this request's own authentication just read is still the device's when nothing can have written it
    // since: one writer (SQLite, this process), no registration of the device queued here, and none finished since
    // before that read (its bucket's epoch unchanged). A sign-in proof's match carries what the connection read at
    // sign-in: read again. Otherwise the record is read in the device's turn, as its lock is taken (on PostgreSQL in
    // the lock's own round trip).
    const unchanged =
      this.#deps.store.capabilities.singleWriter && !provedMatches.has(match) && !this.#deviceQueues.has(deviceKey) && this.#recordEpochs[recordBucket] === recordEpoch;
    const assign = (current: Current) => this.#assign(match, operation, request.payload, request.transport, csr, acknowledged, current);
    const store = this.#deps.store;
    const work = this.#serialized(deviceKey, (lock) =>
      unchanged
        ? store.withLock(lock, () => assign({ previous: match.previous }))
        : store.withRegistrationLock(lock, matched.id, match.registrationId, (reads) => assign({ previous: reads.record, hubDevice: reads.hubDevice }), rewrittenDevice(match)),
    );
    // (A rejected assignment is the race's below to report; this only counts the finished ones.)
    void work.then(
      (result) => {
        const record = result.kind === 'recorded' ? result.record : undefined;
        if (record !== undefined) observe(record.status === 'assigned' || record.status === 'disabled' ? record.status : 'failed', match.attestationType, record.errorCode);
      },
      () => undefined,
    );
    // A fast assignment is finished before the device hears of its operation: its one transaction wrote the finished
    // operation, so the first poll is the answer (Retry-After: 0) and no `assigning` operation is written at all.
    // The wait's timer is cleared as soon as the work ends: left to run out (registrationWaitMs), every registration's
    // timer and promise would outlive a few young collections and be copied into the old space (P6).
    let waiting: NodeJS.Timeout | undefined;
    const finished = await new Promise<boolean>((resolve) => {
      waiting = setTimeout(resolve, this.#deps.config.registrationWaitMs, false).unref();
      work.then(
        () => resolve(true),
        () => resolve(true),
      );
    });
    clearTimeout(waiting);
    if (finished) {
      const result = await work;
      if (result.kind === 'refused') {
        // (A fence refusal is in the system log already: written pseudonymized in the transaction that saw the fence.)
        this.#proven.delete(operation.operationId);
        // The sign-in proof no longer holds (nothing was written): judged in full, as any request (it takes its own
        // token of the registration budget again; a changed enrollment is rare).
        if (result.error === PROOF_NO_LONGER_HOLDS) return this.register({ ...request, proof: undefined });
        throw result.error;
      }
      return { httpStatus: 202, body: { operationId: operation.operationId, status: 'assigning' }, retryAfterSeconds: 0 };
    }
    // Still running: the device will poll, and any node must be able to answer, so the `assigning` operation is in the
    // store before the device hears its ID — unless the assignment finished meanwhile (insert-if-absent).
    const refused = await this.#committer.run(async (tx) => {
      const refusal = await this.#admitted(tx, match, operation.operationId, acknowledged, request.transport, true);
      if (refusal === undefined) await tx.insertOperationIfAbsent(matched.id, operation);
      return refusal;
    });
    if (refused !== undefined) {
      this.#proven.delete(operation.operationId);
      // The proof no longer holds: nothing was written (the assignment's own admission refuses too); judged in full.
      if (refused.error === PROOF_NO_LONGER_HOLDS) return this.register({ ...request, proof: undefined });
      throw refused.error;
    }
    acknowledged.written = true;
    return {
      httpStatus: 202,
      body: { operationId: operation.operationId, status: 'assigning' },
      retryAfterSeconds: this.#deps.config.retryAfterSeconds,
    };
  }

  /**
   * An `assigning` operation nobody will finish: its registration's process died after the device was told the
   * operation ID and before the one transaction that writes the outcome (a built-in hub registration leaves no intent
   * to settle: the crash rolled all of it back). On a single-writer store, any created before this process started; on
   * a shared one, any older than the intent timeout (no live registration of another node is that old).
   */
  #abandoned(operation: StoredOperation): boolean {
    if (this.#inFlight.has(operation.operationId)) return false;
    if (this.#deps.store.capabilities.singleWriter) return operation.createdDateTimeUtc < this.#startedUtc;
    const cutoff = dpsTimestamp(new Date(this.#deps.now().getTime() - this.#deps.config.registrationIntentTimeoutMs));
    return operation.createdDateTimeUtc < cutoff;
  }

  /** Ends an abandoned operation `failed` with RegistrationInterrupted (the device registers again), unless it ended. */
  async #endInterrupted(instanceId: string, operation: StoredOperation): Promise<StoredOperation> {
    return this.#deps.store.transaction(async (tx) => {
      const current = await tx.getOperation(instanceId, operation.operationId);
      if (current !== undefined && current.status !== 'assigning') return current;
      const interrupted = new ProvisioningError('RegistrationInterrupted');
      const now = dpsTimestamp(this.#deps.now());
      const failed: StoredOperation = {
        ...operation,
        status: 'failed',
        lastUpdatedDateTimeUtc: now,
        registrationState: { registrationId: operation.registrationId, status: 'failed', errorCode: interrupted.errorCode, errorMessage: interrupted.message, lastUpdatedDateTimeUtc: now },
      };
      await tx.putOperation(instanceId, failed);
      return failed;
    });
  }

  /**
   * The admission checks (admission() below) inside the transaction that writes. A registration the erase fence refuses
   * goes in the system log from that same transaction, pseudonymized with the fence's subject hash: logged later, it
   * could land in the clear after the erase became final (and its pseudonymizing pass was over).
   */
  async #admitted(
    tx: Store,
    match: DeviceMatch,
    operationId: string,
    acknowledged: Acknowledgement,
    transport: Transport,
    log: boolean,
    deviceId?: string,
  ): Promise<Refusal | undefined> {
    const refusal = await admission(tx, match, operationId, acknowledged, deviceId);
    if (refusal?.fence === undefined || !log || this.#deps.audit === undefined) return refusal;
    const event = this.#deps.audit.event({
      kind: 'registration',
      operation: 'register',
      actor: 'device',
      subject: { registrationId: match.registrationId, deviceId: match.deviceId },
      outcome: 'failure',
      errorCode: refusal.error.errorCode,
      transport,
      attestationType: match.attestationType,
    });
    await tx.appendAuditEvent(match.instance.id, pseudonymizedEvent(event, refusal.fence.subjectHash));
    return refusal;
  }

  async operationStatus(request: DeviceRequest & { operationId: string }): Promise<OperationReply> {
    let proven: Pick<ProvenOperation, 'instanceId' | 'registrationId' | 'probe' | 'finished'> | undefined = this.#provenPoll(request);
    if (proven === undefined) {
      const match = request.proof?.matchFor(request, this.#deps.now().getTime()) ?? (await this.#authenticated(request));
      proven = { instanceId: match.instance.id, registrationId: match.registrationId, probe: fenceProbe(match) };
    }
    const { instanceId, registrationId, probe, finished } = proven;
    const store = this.#deps.store;
    // The fence and the operation are read from the store (one statement): an erase (from any node) is seen at once.
    // Where the poll budget lives in the store (several nodes), its token is taken in that statement. One exception:
    // the operation this node's registration finished, polled with the register's own token, while the store's
    // operations epoch is the one that registration's transaction read (one process writes the store, and it has
    // written no fence and deleted no operation since): the store holds that operation and no fence, so it is the answer.
    const { fence, operation } = await this.#throttling(request.transport, 'poll', () =>
      this.#pollLimiter.takeWith(devicePollKey(instanceId, registrationId), async (token) => {
        if (token === undefined && finished !== undefined && finished.epoch === store.operationsEpoch()) return { taken: true, value: { operation: finished.operation } };
        if (token === undefined) return { taken: true, value: await store.getOperationUnlessFenced(instanceId, request.operationId, probe) };
        const { taken, ...value } = await store.takeRateTokenAndGetOperationUnlessFenced(token, instanceId, request.operationId, probe);
        return { taken, value };
      }),
    );
    if (fence !== undefined) throw fenceRefusal(fence);
    if (operation === undefined || idKey(operation.registrationId) !== idKey(registrationId)) {
      throw new ProvisioningError('OperationNotFound', `Operation '${request.operationId}' was not found for '${request.registrationId}'.`);
    }
    if (operation.status === 'assigning' && this.#abandoned(operation)) {
      const ended = await this.#endInterrupted(instanceId, operation);
      return { httpStatus: 200, body: { operationId: ended.operationId, status: ended.status, registrationState: ended.registrationState ?? {} }, retryAfterSeconds: undefined };
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
    await this.#throttling(request.transport, 'statusLookup', () => this.#pollLimiter.take(devicePollKey(match.instance.id, match.registrationId)));
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
        const device = await this.#device(request);
        instance = device.instance;
        return this.#authenticate(device.instance, request, device.reads);
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

  /**
   * Remembers who proved a register request, for its polls: bounded in number (the oldest go first) and in age
   * ({@link PROVEN_OPERATION_MAX_AGE_MS}; the entries are in the order they were made, so the expired ones are the
   * first few, dropped here and by #forgetExpired, which the periodic sweep also runs).
   */
  #remember(operationId: string, request: DeviceRequest, match: DeviceMatch): void {
    if (request.credential.kind !== 'sas') return;
    const proof = DeviceProof.of(request, match);
    if (proof === undefined) return;
    const nowMs = this.#deps.now().getTime();
    this.#forgetExpired(nowMs);
    if (this.#proven.size >= MAX_PROVEN_OPERATIONS) {
      const oldest = this.#proven.keys().next();
      if (oldest.done !== true) this.#proven.delete(oldest.value);
    }
    this.#proven.set(operationId, { proof, instanceId: match.instance.id, registrationId: match.registrationId, probe: fenceProbe(match), rememberedMs: nowMs });
  }

  /** The remembered register request this poll repeats exactly (same scope, device and token, unexpired), if any. */
  #provenPoll(request: DeviceRequest & { operationId: string }): ProvenOperation | undefined {
    const proven = this.#proven.get(request.operationId);
    if (proven === undefined || request.credential.kind !== 'sas') return undefined;
    const nowMs = this.#deps.now().getTime();
    if (nowMs - proven.rememberedMs >= PROVEN_OPERATION_MAX_AGE_MS) {
      this.#proven.delete(request.operationId);
      return undefined;
    }
    if (proven.proof.matchFor(request, nowMs) !== undefined) return proven;
    if (proven.proof.expired(nowMs)) this.#proven.delete(request.operationId);
    return undefined;
  }

  /** Drops the remembered registrations older than {@link PROVEN_OPERATION_MAX_AGE_MS} (the oldest come first). */
  #forgetExpired(nowMs: number): void {
    for (const [operationId, proven] of this.#proven) {
      if (nowMs - proven.rememberedMs < PROVEN_OPERATION_MAX_AGE_MS) return;
      this.#proven.delete(operationId);
    }
  }

  /**
   * Drops what this process keeps in memory about erased devices (DataRequestService, once an erase completed): their
   * poll budgets, the proofs of their registrations awaiting a poll, and the instance's cached symmetric-key groups
   * (an erased group's keys among them; the next registration reads the list again). The store's copies are the
   * erase's own work.
   */
  forgetDevices(instanceId: string, registrationIds: readonly string[]): void {
    this.#deps.groups.invalidate(instanceId);
    const erased = new Set(registrationIds.map(idKey));
    for (const id of erased) this.#pollLimiter.forget(devicePollKey(instanceId, id));
    for (const [operationId, proven] of this.#proven) {
      if (proven.instanceId === instanceId && erased.has(idKey(proven.registrationId))) this.#proven.delete(operationId);
    }
  }

  /** How many registrations this process remembers for their polls, in all and of one device (tests). */
  rememberedRegistrations(instanceId?: string, registrationId?: string): number {
    let count = 0;
    for (const proven of this.#proven.values()) {
      if (instanceId === undefined || (proven.instanceId === instanceId && (registrationId === undefined || idKey(proven.registrationId) === idKey(registrationId)))) count += 1;
    }
    return count;
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
    // The periodic sweep also drops the registrations remembered for polls that never came, and group lists too old
    // to be used (an idle node remembers nothing new, which would drop them otherwise).
    this.#forgetExpired(this.#deps.now().getTime());
    this.#deps.groups.forgetStale();
    const counts: Record<IntentOutcome, number> = { finished: 0, completed: 0, rolledBack: 0, unreachable: 0 };
    const cutoff = dpsTimestamp(new Date(this.#deps.now().getTime() - options.olderThanMs + (options.olderThanMs === 0 ? 1 : 0)));
    const seen = new Set<string>();
    for (;;) {
      const batch = (await this.#deps.store.listRegistrationIntents(cutoff, 500)).filter((intent) => !seen.has(intent.operationId) && !this.#inFlight.has(intent.operationId));
      if (batch.length === 0) break;
      for (const intent of batch) {
        seen.add(intent.operationId);
        const outcome = await this.#serialized(`${intent.instanceId}/${idKey(intent.registrationId)}`, (lock) =>
          this.#deps.store.withLock(lock, async () => (this.#inFlight.has(intent.operationId) ? 'finished' : settleIntent(this.#deps, intent.instanceId, intent))),
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
    return this.#refused.guard(request.source, async () => {
      const { instance, reads } = await this.#device(request);
      return this.#authenticate(instance, request, reads);
    });
  }

  /** A rate limit's refusal, counted for the metrics and passed on. */
  async #throttling<T>(transport: Transport, operation: 'register' | 'poll' | 'statusLookup', take: () => Promise<T>): Promise<T> {
    try {
      return await take();
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

  /**
   * The instance of the request's ID scope and, for a token (the symmetric-key and TPM token checks read them), the
   * device's reads with it: one statement on PostgreSQL (issue 11). An unknown ID scope is a bad credential.
   */
  async #device(request: DeviceRequest): Promise<{ instance: InstanceRecord; reads?: DeviceReads }> {
    // An invalid registration ID reads nothing of the device: the check refuses it after the instance's read, as ever.
    if (request.credential.kind !== 'sas' || !isValidId(request.registrationId)) return { instance: await this.#instance(request.idScope) };
    const found = await this.#deps.store.findDeviceByIdScope(request.idScope, request.registrationId);
    if (found === undefined) throw unauthorized();
    return found;
  }

  #authenticate(instance: InstanceRecord, request: DeviceRequest, reads?: DeviceReads): Promise<DeviceMatch> {
    return authenticateDevice(this.#deps, instance, request.registrationId, request.credential, reads);
  }

  /**
   * Registrations of one device run one after another: in this process by a queue per device, and across the nodes
   * of a shared database by the store's lock on the device (PostgreSQL advisory lock), so two nodes never create two
   * hub identities or two records for one device. The queue keeps this node to one lock (one connection) per device.
   */
  #serialized<T>(key: string, work: (lock: string) => Promise<T>): Promise<T> {
    const previous = this.#deviceQueues.get(key) ?? Promise.resolve();
    const locked = () => work(`device/${key}`);
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

  /**
   * Allocation, hub write and record. Every failure ends the operation `failed` with a reason, except a refusal of the
   * admission checks (an erase fence, an erase that came and went, an enrollment gone): then nothing is written.
   */
  async #assign(
    match: DeviceMatch,
    operation: StoredOperation,
    payload: JsonMap | undefined,
    transport: Transport,
    csr: CheckedCsr | undefined,
    acknowledged: Acknowledgement,
    current: Current,
  ): Promise<AssignmentResult> {
    this.#inFlight.add(operation.operationId);
    try {
      return await this.#assignTracked(match, operation, payload, transport, csr, acknowledged, current);
    } finally {
      this.#inFlight.delete(operation.operationId);
      // After its write (committed or not): a register that read the record before this cannot take its read as current.
      const bucket = bucketOf(match.registrationId);
      this.#recordEpochs[bucket] = (this.#recordEpochs[bucket] ?? 0) + 1;
    }
  }

  async #assignTracked(
    match: DeviceMatch,
    operation: StoredOperation,
    payload: JsonMap | undefined,
    transport: Transport,
    csr: CheckedCsr | undefined,
    acknowledged: Acknowledgement,
    /** The device's record as of now: register()'s own read when nothing can have changed it, else read as the lock was taken. */
    current: Current,
  ): Promise<AssignmentResult> {
    const { instance } = match;
    const store = this.#deps.store;
    /** Set once the intent is stored, before the first write to an external hub. */
    const intent: { written?: RegistrationIntent } = {};
    /** Log entries of the hub writes: written with the outcome, in its transaction (one commit per registration). */
    const hubWrites: AuditEvent[] = [];
    const { previous } = current;
    const enrollment = match.enrollment.doc;
    const now = dpsTimestamp(this.#deps.now());
    const base = startAttempt(previous, {
      registrationId: match.registrationId,
      attestationType: match.attestationType,
      enrollmentGroupId: match.enrollment.kind === 'group' ? match.enrollment.doc.enrollmentGroupId : undefined,
      now,
      etag: newEtag(),
    });

    /** The outcome decided before the transaction (disabled, failed, or assigned on external hubs). */
    let decided: StoredRegistration | undefined;
    /** The hub steps still to run, inside the record's transaction (every hub involved is built-in). */
    let joined: Assignment | undefined;
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
        decided = settle(base, { status: 'disabled', errorCode: refusal.errorCode, errorMessage: refusal.message });
      } else {
        // Step: issue the certificate of the CSR before the hub write, so the hub identity is the certificate's.
        issued = await this.#issueCertificate(match, csr);
        const flow: Assignment = {
          match: withIssuedCredential(match, issued),
          operationId: operation.operationId,
          devicePayload: payload,
          previous,
          attempt: base,
          intent,
          hubWrites,
          acknowledged,
          transport,
          client: (hub) => this.#deps.hubClients.forHub(hub),
          prefetched: current.hubDevice,
        };
        for (const [, step] of this.#planningSteps) await step(flow);
        if (this.#allBuiltIn(flow)) {
          joined = flow;
        } else {
          for (const [, step] of this.#hubSteps) await step(flow);
          createdOnHub = flow.created === true;
          decided = settle(base, assignedState(flow));
        }
      }
    } catch (error) {
      if (error instanceof AdmissionRefused) return { kind: 'refused', error: error.refusal.error };
      const failure = error instanceof ProvisioningError ? error : this.#asProvisioningError(error, match);
      decided = settle(base, { status: 'failed', errorCode: failure.errorCode, errorMessage: failure.message });
    }

    // One transaction writes everything (ARCHITECTURE.md, step 5): the admission checks, a built-in hub's identity,
    // twin and old identity's removal, the record, its hub-device link, the issued certificate, the finished operation,
    // the log entries and the end of an external hub's intent — shared with concurrent registrations on SQLite.
    type Written = { record: StoredRegistration; created: boolean; operation: StoredOperation; epoch: number | undefined };
    const write = async (hubSteps: Assignment | undefined, fallback: StoredRegistration | undefined): Promise<Written> => {
      const committed = await this.#committer.run(async (tx): Promise<Written | Refusal> => {
        // Refused before an external hub write: logged here (nothing else of the attempt is). After one, the undo below
        // logs the attempt's entries, while the fence still stands.
        const refusal = await this.#admitted(tx, match, operation.operationId, acknowledged, transport, intent.written === undefined, fallback?.deviceId);
        if (refusal !== undefined) return refusal;
        let record: StoredRegistration;
        if (hubSteps !== undefined) {
          // The built-in hub's writes join this transaction: a failing step throws out of it (HubStepsFailed), and
          // what the steps wrote rolls back with it; the failure is then recorded in a transaction of its own.
          try {
            hubSteps.joined = true;
            hubSteps.client = (hub) => joinedClient(this.#deps.hubClients.forHub(hub), tx);
            for (const [, step] of this.#hubSteps) await step(hubSteps);
          } catch (error) {
            throw new HubStepsFailed(error);
          }
          record = settle(base, assignedState(hubSteps));
        } else {
          record = fallback as StoredRegistration;
        }
        const finished = finishedOperation(operation, record, match, issued, this.#deps.now());
        // Read inside the transaction: a fence or a deletion committed after it moves the epoch (Store.operationsEpoch).
        const epoch = tx.operationsEpoch();
        const outcome = this.#outcomeEvent(match, base, record, transport, operation.operationId);
        await tx.putRegistration(instance.id, record);
        // The explicit subject→hub-device link a later erase follows (customer-data/hub-device-links.ts).
        const link = hubDeviceLinkOf(record, now);
        if (link !== undefined) await tx.putHubDeviceLink(instance.id, link);
        if (issued !== undefined && record.status === 'assigned') await tx.putIssuedCertificate(instance.id, issued.record);
        await tx.putOperation(instance.id, finished);
        // One statement for all of the attempt's entries (a re-registration's hub write and outcome: two rows).
        const entries = outcome === undefined ? hubWrites : [...hubWrites, outcome];
        if (entries.length > 0) await tx.appendAuditEvents(instance.id, entries);
        if (intent.written !== undefined && record.status === 'assigned') await tx.deleteRegistrationIntent(instance.id, operation.operationId);
        return { record, created: hubSteps?.created === true, operation: finished, epoch };
      });
      if ('error' in committed) throw new AdmissionRefused(committed);
      // Committed: the device's poll with the register's token can be answered from here (operationStatus).
      const proven = this.#proven.get(operation.operationId);
      if (proven !== undefined && committed.epoch !== undefined) proven.finished = { operation: committed.operation, epoch: committed.epoch };
      return committed;
    };

    let record: StoredRegistration;
    try {
      try {
        const written = await write(joined, decided);
        record = written.record;
        if (joined !== undefined) createdOnHub = written.created;
      } catch (error) {
        if (!(error instanceof HubStepsFailed)) throw error;
        // Nothing of the built-in hub writes stayed; their log entries say so, and the failure is the outcome.
        const failure = error.cause instanceof ProvisioningError ? error.cause : this.#asProvisioningError(error.cause, match);
        for (const [index, entry] of hubWrites.entries()) {
          if (entry.outcome === 'success') hubWrites[index] = { ...entry, reason: 'rolled back: a later step of the registration failed' };
        }
        record = (await write(undefined, settle(base, { status: 'failed', errorCode: failure.errorCode, errorMessage: failure.message }))).record;
      }
    } catch (error) {
      if (!(error instanceof AdmissionRefused)) throw error;
      if (intent.written === undefined) return { kind: 'refused', error: error.refusal.error };
      // An external hub was written before the erase (or the refusal) caught up with this registration. A hub identity
      // this attempt created after the erase's hub step goes too: the erase wants none of it. One it found there (and
      // replaced) is the erase's to delete, and to count in its receipt: the erase holds the fence, so its hub step (or
      // its re-check) has not yet passed that device.
      const attempted = decided;
      await undoInterruptedRegistration(store, this.#deps.hubClients, instance.id, {
        registrationId: match.registrationId,
        deviceId: attempted?.deviceId ?? match.deviceId,
        assignedHub: attempted?.status === 'assigned' && createdOnHub ? attempted.assignedHub : undefined,
        sinceUtc: now,
      });
      // The intent names the device: it goes with the rest, so nothing of the erased subject stays behind.
      await store.deleteRegistrationIntent(instance.id, operation.operationId);
      // Logged through the fence-aware path, so the entries name the subject only by its hash; once the erase is over,
      // not at all (it has pseudonymized the log, and a late entry in the clear would undo that).
      const refusal = error.refusal.error;
      if (this.#deps.audit !== undefined && attempted !== undefined && (await store.findEraseFence(instance.id, fenceProbe(match))) !== undefined) {
        for (const { eventId: _eventId, timeUtc: _timeUtc, ...entry } of hubWrites) await this.#deps.audit.record(instance.id, entry);
        const outcome = this.#outcomeEvent(match, base, attempted, transport, operation.operationId);
        if (outcome !== undefined) {
          const { eventId: _eventId, timeUtc: _timeUtc, ...entry } = outcome;
          await this.#deps.audit.record(instance.id, { ...entry, outcome: 'failure', errorCode: refusal.errorCode, reason: refusal.message });
        }
        return { kind: 'refused', error: refusal };
      }
      return { kind: 'refused', error: refusal };
    }
    // A failure after the first external hub write: what was written is rolled back to agree with the record.
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
    return { kind: 'recorded', record };
  }

  /** The log entry of a registration's outcome. */
  #outcomeEvent(match: DeviceMatch, base: StoredRegistration, record: StoredRegistration, transport: Transport, operationId: string): AuditEvent | undefined {
    const audit = this.#deps.audit;
    if (audit === undefined) return undefined;
    // Built by assignment rather than conditional spreads: one object each, no temporary ones (one per registration).
    const subject: AuditInput['subject'] = { registrationId: match.registrationId, deviceId: record.deviceId ?? match.deviceId };
    if (base.enrollmentGroupId !== undefined) subject.enrollmentGroupId = base.enrollmentGroupId;
    const details: Record<string, unknown> = { status: record.status };
    if (record.substatus !== undefined) details.substatus = record.substatus;
    details.operationId = operationId;
    const input: AuditInput = { kind: 'registration', operation: 'register', actor: 'device', subject, outcome: record.status === 'assigned' ? 'success' : 'failure' };
    if (record.errorCode !== undefined) input.errorCode = record.errorCode;
    if (record.errorMessage !== undefined) input.reason = record.errorMessage;
    input.transport = transport;
    input.attestationType = match.attestationType;
    if (record.status === 'assigned' && record.assignedHub !== undefined) input.hub = record.assignedHub;
    input.details = details;
    return audit.event(input);
  }

  /**
   * Whether every hub the registration writes (the target, and the one it leaves) is a built-in hub in this store's
   * database: then its hub writes join the record's transaction and need no intent (nothing outside the database to
   * undo — a crash rolls all of it back together).
   */
  #allBuiltIn(flow: Assignment): boolean {
    const plan = requireStep(flow.plan, 'decideReprovision');
    const joins = (hub: LinkedHubRecord): boolean => hub.builtIn === true && typeof this.#deps.hubClients.forHub(hub).joining === 'function';
    return joins(plan.target) && (plan.leave === undefined || joins(plan.leave.hub));
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
    // Each entry built once, with its outcome (event() copies it while stamping: no second copy of a shared base).
    const entry = (outcome: 'success' | 'failure', reason?: string): AuditInput => {
      const input: AuditInput = { kind: 'hubWrite', operation, actor: 'provisiond', subject: { registrationId: match.registrationId, deviceId }, hub, outcome };
      if (reason !== undefined) input.reason = reason;
      return input;
    };
    try {
      const result = await write();
      const event = this.#deps.audit?.event(entry('success'));
      if (event !== undefined) log.push(event);
      return result;
    } catch (error) {
      const event = this.#deps.audit?.event(entry('failure', error instanceof Error ? error.message : String(error)));
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
   * the device's queue; `findEnrollment` and `verifyCredential` ran in register() (authenticateDevice), and the outcome
   * is recorded after the last step in one transaction (#assignTracked). A step reads what earlier steps put on the
   * Assignment and adds its own part; a new step (e.g. issuing a certificate) slots in here. The planning steps only
   * read; the hub steps write — inside the record's transaction when every hub involved is built-in, otherwise to an
   * external hub after a durable intent (registration-intents.ts).
   */
  readonly #planningSteps: readonly (readonly [string, (flow: Assignment) => Promise<void>])[] = [
    ['chooseHub', (flow) => this.#chooseHub(flow)],
    ['decideReprovision', (flow) => this.#decideReprovision(flow)],
  ];

  readonly #hubSteps: readonly (readonly [string, (flow: Assignment) => Promise<void>])[] = [
    ['writeIdentity', (flow) => this.#writeIdentity(flow)],
    ['writeTwin', (flow) => this.#writeTwin(flow)],
    ['leaveOldHub', (flow) => this.#leaveOldHub(flow)],
  ];

  /** Allocation: the hub the enrollment's policy (or its custom webhook) picks among the linked hubs. */
  async #chooseHub(flow: Assignment): Promise<void> {
    const { match, previous } = flow;
    const { instance } = match;
    const enrollment = match.enrollment.doc;
    const linked = await this.#deps.store.linkedHubsOf(instance);
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

  /**
   * The device identity on the target hub. An external hub's write is preceded by a durable intent (issue 13.3),
   * written with the admission checks in one commit; a built-in hub's joins the record's transaction and needs none.
   */
  async #writeIdentity(flow: Assignment): Promise<void> {
    const { match } = flow;
    const plan = requireStep(flow.plan, 'decideReprovision');
    if (flow.joined !== true) await this.#writeIntent(flow, plan);
    const client = flow.client(plan.target);
    // The record says the identity is there already (a re-registration to the same hub and device ID): replace first.
    const { previous } = flow;
    const exists = previous?.status === 'assigned' && previous.assignedHub === plan.target.name && previous.deviceId !== undefined && idKey(previous.deviceId) === idKey(match.deviceId);
    const hint: PutDeviceHint = { exists };
    if (flow.prefetched !== undefined) hint.current = flow.prefetched;
    const written = await this.#hubWrite(flow.hubWrites, match, plan.target.name, 'putDevice', match.deviceId, () =>
      client.putDevice(
        {
          deviceId: match.deviceId,
          authentication: match.hubAuthentication,
          capabilities: { iotEdge: match.enrollment.doc.capabilities.iotEdge },
          status: 'enabled',
        },
        hint,
      ),
    );
    flow.created = written.created;
  }

  async #writeIntent(flow: Assignment, plan: NonNullable<Assignment['plan']>): Promise<void> {
    const { match } = flow;
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
    // The admission checks run here, before the first hub write, rather than once more in a read of their own.
    const refusal = await this.#committer.run(async (tx) => {
      const refused = await this.#admitted(tx, match, flow.operationId, flow.acknowledged, flow.transport, true);
      if (refused === undefined) await tx.putRegistrationIntent(match.instance.id, stored);
      return refused;
    });
    if (refusal !== undefined) throw new AdmissionRefused(refusal);
    flow.intent.written = stored;
  }

  /**
   * The twin the reprovision decision chose; a device just created has an empty twin already, so an empty one is not
   * written. A device the decision keeps where it is but that was gone from its hub (deleted there) is created afresh:
   * it starts from the enrollment's initial twin, as on its first registration.
   */
  async #writeTwin(flow: Assignment): Promise<void> {
    const plan = requireStep(flow.plan, 'decideReprovision');
    const twin = plan.twin ?? (flow.created === true ? twinOf(requireStep(flow.hubs, 'chooseHub').initialTwin) : undefined);
    if (twin === undefined) return;
    const twinIsEmpty = Object.keys(twin.tags).length === 0 && Object.keys(twin.desired).length === 0;
    if (flow.created === true && twinIsEmpty) return;
    const { match } = flow;
    const client = flow.client(plan.target);
    await this.#hubWrite(flow.hubWrites, match, plan.target.name, 'replaceTwin', match.deviceId, () => client.replaceTwin(match.deviceId, twin));
  }

  /**
   * The old identity leaves last (another hub on a move, or an old device ID on the same hub): a crash before this
   * step is rolled back, one after it finished (registration-intents.ts).
   */
  async #leaveOldHub(flow: Assignment): Promise<void> {
    const leave = requireStep(flow.plan, 'decideReprovision').leave;
    if (leave === undefined) return;
    await this.#hubWrite(flow.hubWrites, flow.match, leave.hub.name, 'deleteDevice', leave.deviceId, () => flow.client(leave.hub).deleteDevice(leave.deviceId));
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
  /** Set once the intent is stored, before the first write to an external hub. */
  intent: { written?: RegistrationIntent };
  /** Log entries of the hub writes, written with the outcome. */
  hubWrites: AuditEvent[];
  /** Whether the device has been told the operation ID (the `assigning` operation is stored). */
  acknowledged: Acknowledgement;
  transport: Transport;
  /** The client the hub steps write through: inside the record's transaction for built-in hubs. */
  client: (hub: LinkedHubRecord) => HubClient;
  /** The target hub's device row, read with the record as the device's lock was taken (PostgreSQL), for the identity write. */
  prefetched: PrefetchedHubDevice | undefined;
  /** The hub steps run inside the record's transaction (every hub involved is built-in): no intent. */
  joined?: boolean;
  /** chooseHub: the linked hubs, the one the device is on now, the one allocation chose, the initial twin. */
  hubs?: { byName: Map<string, LinkedHubRecord>; current: LinkedHubRecord | undefined; allocated: LinkedHubRecord; initialTwin: InitialTwinDoc | undefined };
  /** chooseHub: the custom allocation webhook's payload for the device. */
  resultPayload?: JsonMap;
  /** decideReprovision: where the device goes and what it takes along. */
  plan?: { target: LinkedHubRecord; substatus: Substatus; twin: HubTwinContent | undefined; leave: { hub: LinkedHubRecord; deviceId: string } | undefined; hubHistory: string[] };
  /** writeIdentity: the identity was created (not replaced). */
  created?: boolean;
}

/** What an assignment starts from: the device's record as of its turn, and maybe its hub device row (see Assignment). */
interface Current {
  previous: StoredRegistration | undefined;
  hubDevice?: PrefetchedHubDevice | undefined;
}

/**
 * The hub device a re-registration will most likely rewrite: the one its record (as authentication read it) says it
 * has, when it stays under the same device ID. Its row is read with the record as the lock is taken, so the identity
 * write needs no read of its own (issue 11); a guess that turns out wrong costs nothing but an unused read.
 */
function rewrittenDevice(match: DeviceMatch): { hubName: string; deviceId: string } | undefined {
  const previous = match.previous;
  if (previous?.status !== 'assigned' || previous.assignedHub === undefined || previous.deviceId === undefined) return undefined;
  if (idKey(previous.deviceId) !== idKey(match.deviceId)) return undefined;
  return { hubName: previous.assignedHub, deviceId: match.deviceId };
}

/** Whether register() has told the device its operation ID, having stored the `assigning` operation (slow path). */
interface Acknowledgement {
  written: boolean;
}

/** What an assignment came to: a record written, or a refusal of the admission checks with nothing written. */
type AssignmentResult = { kind: 'recorded'; record: StoredRegistration } | { kind: 'refused'; error: ProvisioningError };

/** Why the admission checks refused a registration; `fence` when an erase fence did. */
interface Refusal {
  error: ProvisioningError;
  fence?: StandingFence;
}

/** The admission checks refused the registration inside its transaction: nothing of it is written. */
class AdmissionRefused extends Error {
  readonly refusal: Refusal;
  constructor(refusal: Refusal) {
    super(refusal.error.message);
    this.refusal = refusal;
  }
}

/** A built-in hub step failed inside the record's transaction: its writes roll back, the failure is recorded apart. */
class HubStepsFailed extends Error {
  constructor(cause: unknown) {
    super('a hub step of the registration failed', { cause });
  }
}

/**
 * The admission checks, run first in the transaction that writes (issue 12: one check where there were four):
 * - no erase fence stands on the registration's IDs (an erase running for this device refuses it);
 * - once the device holds the operation ID, the operation is still there: an erase deletes the operations of what it
 *   erases, so a registration that queued behind the device's earlier attempts through an erase writes nothing, even
 *   once the erase is final and its fence lifted;
 * - before that, the enrollment is still there: an erase may have come and gone since the credential was checked.
 */
async function admission(tx: Store, match: DeviceMatch, operationId: string, acknowledged: Acknowledgement, deviceId?: string): Promise<Refusal | undefined> {
  const instanceId = match.instance.id;
  const probe = fenceProbe(match, deviceId);
  // The fence check and the read after it are one statement (the store's `…UnlessFenced`).
  if (acknowledged.written) {
    const { fence, operation } = await tx.getOperationUnlessFenced(instanceId, operationId, probe);
    if (fence !== undefined) return { error: fenceRefusal(fence), fence };
    if (operation !== undefined) return undefined;
    return { error: new ProvisioningError('SubjectBeingErased', 'A data request erased this device while its registration was under way; nothing was written.') };
  }
  const entry = match.enrollment;
  let fence: StandingFence | undefined;
  let current: { etag: string } | undefined;
  if (entry.kind === 'individual') ({ fence, enrollment: current } = await tx.getEnrollmentUnlessFenced(instanceId, entry.doc.registrationId, probe));
  else ({ fence, group: current } = await tx.getEnrollmentGroupUnlessFenced(instanceId, entry.doc.enrollmentGroupId, probe));
  if (fence !== undefined) return { error: fenceRefusal(fence), fence };
  // A connection's sign-in proof holds only for the entry exactly as it was proved (not deleted, disabled, re-keyed,
  // and for a group no individual enrollment since, which would decide alone); otherwise the device is judged afresh.
  if (provedMatches.has(match) && (current?.etag !== entry.doc.etag || (entry.kind === 'group' && (await tx.getEnrollment(instanceId, match.registrationId)) !== undefined))) {
    return { error: PROOF_NO_LONGER_HOLDS };
  }
  return current === undefined ? { error: unauthorized() } : undefined;
}

/** Matches taken from a connection's sign-in proof (attestation/device-proof.ts) rather than a check of their own. */
const provedMatches = new WeakSet<DeviceMatch>();
function provedMatch(match: DeviceMatch): DeviceMatch {
  provedMatches.add(match);
  return match;
}
/** The admission's answer when a sign-in proof no longer holds: the register request is judged again in full. */
const PROOF_NO_LONGER_HOLDS = new ProvisioningError('Unauthorized');

/** A built-in hub's client on the registration's transaction. */
function joinedClient(client: HubClient, tx: Store): HubClient {
  const joined = client.joining?.(tx);
  if (joined === undefined) throw new Error(`hub ${client.hubName}: its client cannot join the registration's transaction`);
  return joined;
}

/** The operation as the registration ended it. */
function finishedOperation(operation: StoredOperation, record: StoredRegistration, match: DeviceMatch, issued: IssuedCertificate | undefined, now: Date): StoredOperation {
  const registrationState = renderDeviceRegistration(record, match.resultSection);
  // Only the operation carries the chain (dps-wire.md §0: never returned by status lookup).
  if (issued !== undefined && record.status === 'assigned') registrationState.issuedCertificateChain = issued.chain;
  // Copied and set by assignment, not `{ ...operation, … }` (a hidden class per object on this V8: domain/registration.ts).
  const finished: StoredOperation = Object.assign({}, operation);
  finished.status = record.status === 'assigned' || record.status === 'disabled' || record.status === 'failed' ? record.status : 'failed';
  finished.lastUpdatedDateTimeUtc = dpsTimestamp(now);
  finished.registrationState = registrationState;
  return finished;
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

const RECORD_BUCKETS = 4096;
/** A registration ID's bucket (FNV-1a of its key): IDs that collide only cost a record read. */
function bucketOf(registrationId: string): number {
  const key = idKey(registrationId);
  let hash = 0x811c9dc5;
  for (let i = 0; i < key.length; i += 1) hash = Math.imul(hash ^ key.charCodeAt(i), 0x01000193);
  return (hash >>> 0) % RECORD_BUCKETS;
}

/** Enough operations for every device of a boot storm to poll its own without a store read of who it is. */
const MAX_PROVEN_OPERATIONS = 20_000;
/**
 * How long a registration is remembered for its polls. A device polls within seconds (Retry-After 0 when its
 * registration finished in the register's wait, a few seconds otherwise); a poll after this authenticates in full.
 */
export const PROVEN_OPERATION_MAX_AGE_MS = 120_000;

interface ProvenOperation {
  /** The SAS token that proved the register request, for the same scope and device, until it expires. */
  proof: DeviceProof;
  instanceId: string;
  registrationId: string;
  probe: FenceProbe;
  /** When it was remembered (the service's clock, ms). */
  rememberedMs: number;
  /**
   * The finished operation this node's registration committed, and the store's operations epoch its transaction read
   * (single-writer stores only): while the epoch is unchanged, it is what a read of the store would answer.
   */
  finished?: { operation: StoredOperation; epoch: number };
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
