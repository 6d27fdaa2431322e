import { randomBytes, randomUUID, type X509Certificate } from 'node:crypto';
import type { FastifyBaseLogger } from 'fastify';
import { candidateHubs, geoLatencyChoice, hashedChoice, staticChoice } from '../domain/allocation.js';
import {
  renderEnrollment,
  renderEnrollmentGroup,
  type InitialTwinDoc,
  type JsonMap,
  type StoredEnrollment,
  type StoredEnrollmentGroup,
} from '../domain/enrollment.js';
import { ProvisioningError } from '../domain/errors.js';
import { newEtag } from '../domain/etag.js';
import { assertRegistrationId, idKey } from '../domain/ids.js';
import { renderDeviceRegistration } from '../domain/registration.js';
import { decideReprovision } from '../domain/reprovision.js';
import { deriveDeviceKey, isExpired, parseSasToken, signedByOneOf } from '../domain/sas.js';
import { dpsTimestamp } from '../domain/time.js';
import { certificateInfo, commonName } from '../domain/x509.js';
import { HubError, type HubAuthentication, type HubClientFactory, type HubTwinContent } from '../hubs/hub-client.js';
import type { InstanceRecord, LinkedHubRecord, StoredOperation, StoredRegistration } from '../store/store.js';
import { callAllocationWebhook, type WebhookExchange } from './custom-allocation.js';
import type { ServiceDeps } from './deps.js';
import type { HubLatencies } from './hub-latency.js';
import type { SymmetricKeyGroups } from './symmetric-key-groups.js';
import { createRateLimiter, type RateLimiter } from './throttle.js';
import type { AuditLog } from './audit-log.js';
import type { LifecycleEvents } from './lifecycle-events.js';
import { walkX509Enrollments } from './x509-attestation.js';

/**
 * The registration flow — one implementation for every transport (ARCHITECTURE.md "The registration flow"):
 * authenticate the device against its enrollment, allocate a hub, write the device identity and twin to it, write
 * the registration record, and keep an operation the device polls. HTTP, MQTT and AMQP only translate to and from it.
 */
export type Transport = 'http' | 'mqtt' | 'mqttWs' | 'amqp' | 'amqpWs';

/**
 * What a device proves itself with, as the transport received it: a SAS token (HTTP Authorization header, MQTT
 * password, AMQP SASL PLAIN password), or the certificate chain of its TLS client certificate, leaf first.
 */
export type DeviceCredential =
  | { kind: 'sas'; authorization: string | undefined }
  | { kind: 'x509'; chain: readonly X509Certificate[] };

export interface DeviceRequest {
  idScope: string;
  registrationId: string;
  credential: DeviceCredential;
  transport: Transport;
}

export interface OperationReply {
  httpStatus: 200 | 202;
  body: JsonMap;
  /** Seconds the device should wait before polling again (202 only). */
  retryAfterSeconds: number | undefined;
}

type EnrollmentMatch =
  | { kind: 'individual'; doc: StoredEnrollment }
  | { kind: 'group'; doc: StoredEnrollmentGroup };

interface DeviceMatch {
  instance: InstanceRecord;
  registrationId: string;
  enrollment: EnrollmentMatch;
  attestationType: 'symmetricKey' | 'x509';
  deviceId: string;
  hubAuthentication: HubAuthentication;
  /** The attestation part of the device's registrationState. */
  resultSection: JsonMap;
  /** The attestation part of a custom allocation webhook's deviceRuntimeContext (dps-wire.md §7). */
  runtimeContext: JsonMap;
  previous: StoredRegistration | undefined;
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
}

const unauthorized = (): ProvisioningError => new ProvisioningError('Unauthorized');
/** Every X.509 refusal looks the same on the wire (dps-wire.md §4.4); the precise reason goes to the server log. */
const invalidCertificate = (): ProvisioningError => new ProvisioningError('Unauthorized', 'Invalid certificate.');

export class RegistrationService {
  readonly #deps: RegistrationServiceDeps;
  readonly #registrationLimiter: RateLimiter;
  readonly #pollLimiter: RateLimiter;
  /** Registrations of one device run one after another on this node. */
  readonly #deviceQueues = new Map<string, Promise<unknown>>();

  constructor(deps: RegistrationServiceDeps) {
    this.#deps = deps;
    this.#registrationLimiter = createRateLimiter(deps.config.registrationsPerSecond, deps.store);
    this.#pollLimiter = createRateLimiter(deps.config.pollsPerSecondPerDevice, deps.store);
  }

  /** Register: authenticate now (401 at once), assign in the background, answer 202 `assigning` with an operation. */
  async register(request: DeviceRequest & { payload?: JsonMap | undefined }): Promise<OperationReply> {
    const instance = await this.#instance(request.idScope);
    let match: DeviceMatch;
    try {
      await this.#registrationLimiter.take(instance.id);
      match = await this.#authenticate(instance, request);
    } catch (error) {
      // A refused attempt is logged with why, so a tenant can tell a wrong key from a throttled device.
      if (error instanceof ProvisioningError) {
        await this.#deps.audit?.record(instance.id, {
          kind: 'registration',
          operation: 'register',
          actor: 'device',
          subject: { registrationId: request.registrationId },
          outcome: 'failure',
          errorCode: error.errorCode,
          reason: error.message,
          transport: request.transport,
          attestationType: request.credential.kind === 'x509' ? 'x509' : 'symmetricKey',
        });
      }
      throw error;
    }
    const now = dpsTimestamp(this.#deps.now());
    const operation: StoredOperation = {
      operationId: `5.${randomBytes(8).toString('hex')}.${randomUUID()}`,
      registrationId: match.registrationId,
      status: 'assigning',
      createdDateTimeUtc: now,
      lastUpdatedDateTimeUtc: now,
    };
    await this.#deps.store.putOperation(instance.id, operation);
    const work = this.#serialized(`${instance.id}/${idKey(match.registrationId)}`, () => this.#assign(match, operation, request.payload, request.transport));
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
    const instance = await this.#instance(request.idScope);
    await this.#pollLimiter.take(`${instance.id}/${idKey(request.registrationId)}`);
    const match = await this.#authenticate(instance, request);
    const operation = await this.#deps.store.getOperation(instance.id, request.operationId);
    if (operation === undefined || idKey(operation.registrationId) !== idKey(match.registrationId)) {
      throw new ProvisioningError('OperationNotFound', `Operation '${request.operationId}' was not found for '${request.registrationId}'.`);
    }
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
    const instance = await this.#instance(request.idScope);
    await this.#pollLimiter.take(`${instance.id}/${idKey(request.registrationId)}`);
    const match = await this.#authenticate(instance, request);
    if (match.previous === undefined) {
      throw new ProvisioningError('RegistrationNotFound', `Registration '${request.registrationId}' was not found.`);
    }
    return renderDeviceRegistration(match.previous, match.resultSection);
  }

  /**
   * Checks a credential without registering anything: MQTT CONNECT and AMQP SASL PLAIN refuse a device that proves
   * nothing before it sends a request. Register and poll still authenticate on their own.
   */
  async authenticate(request: DeviceRequest): Promise<void> {
    await this.#authenticate(await this.#instance(request.idScope), request);
  }

  async #instance(idScope: string): Promise<InstanceRecord> {
    const instance = await this.#deps.store.findInstanceByIdScope(idScope);
    // An unknown ID scope is answered like a bad credential: it tells a prober nothing.
    if (instance === undefined) throw unauthorized();
    return instance;
  }

  /**
   * Finds the enrollment the credential proves (dps-wire.md §4.3, §8.3): an individual enrollment for the
   * registration ID decides on its own — a wrong key or a disabled enrollment is not rescued by a group — otherwise
   * the symmetric-key group whose derived key signed the token.
   */
  async #authenticate(instance: InstanceRecord, request: DeviceRequest): Promise<DeviceMatch> {
    assertRegistrationId(request.registrationId);
    if (request.credential.kind === 'x509') return this.#authenticateX509(instance, request.registrationId, request.credential.chain);
    const token = parseSasToken(request.credential.authorization);
    if (token === undefined || isExpired(token, this.#deps.now().getTime())) throw unauthorized();
    // Devices sign `{idScope}/registrations/{registrationId}`; skn is `registration` or absent (dps-wire.md §14).
    if (token.resource.toLowerCase() !== `${instance.idScope}/registrations/${request.registrationId}`.toLowerCase()) throw unauthorized();
    if (token.keyName !== undefined && token.keyName !== 'registration') throw unauthorized();
    const store = this.#deps.store;
    const [individual, previous] = await Promise.all([
      store.getEnrollment(instance.id, request.registrationId),
      store.getRegistration(instance.id, request.registrationId),
    ]);
    const base = { instance, registrationId: request.registrationId, attestationType: 'symmetricKey' as const, previous };
    if (individual !== undefined) {
      if (individual.attestation.type !== 'symmetricKey') throw unauthorized();
      const { primaryKey, secondaryKey } = individual.attestation.symmetricKey;
      if (!signedByOneOf(token, [primaryKey, secondaryKey])) throw unauthorized();
      return {
        ...base,
        enrollment: { kind: 'individual', doc: individual },
        deviceId: individual.deviceId ?? request.registrationId,
        hubAuthentication: { type: 'sas', symmetricKey: { primaryKey, secondaryKey } },
        resultSection: { symmetricKey: {} },
        runtimeContext: { symmetricKey: {} },
      };
    }
    const group = await this.#deps.groups.match(instance.id, request.registrationId, token, previous?.enrollmentGroupId);
    if (group === undefined || group.attestation.type !== 'symmetricKey') throw unauthorized();
    const { primaryKey, secondaryKey } = group.attestation.symmetricKey;
    return {
      ...base,
      enrollment: { kind: 'group', doc: group },
      deviceId: request.registrationId,
      hubAuthentication: {
        type: 'sas',
        symmetricKey: { primaryKey: deriveDeviceKey(primaryKey, request.registrationId), secondaryKey: deriveDeviceKey(secondaryKey, request.registrationId) },
      },
      resultSection: { symmetricKey: { enrollmentGroupId: group.enrollmentGroupId } },
      runtimeContext: { symmetricKey: {} },
    };
  }

  /**
   * X.509 (dps-wire.md §4.4, §8.3): the TLS client certificate chain decides, walked from the leaf toward the root.
   * Individual devices get a self-signed-thumbprint identity on the hub (the enrollment's SHA-1 thumbprints, as DPS
   * writes them); group devices a certificateAuthority identity. The device ID of a group device is its CN.
   */
  async #authenticateX509(instance: InstanceRecord, registrationId: string, chain: readonly X509Certificate[]): Promise<DeviceMatch> {
    const store = this.#deps.store;
    const [verdict, previous] = await Promise.all([
      walkX509Enrollments(store, instance, registrationId, chain, this.#deps.now()),
      store.getRegistration(instance.id, registrationId),
    ]);
    if (!verdict.ok) {
      this.#deps.logger.info({ idScope: instance.idScope, registrationId, reason: verdict.reason }, 'X.509 device refused');
      throw invalidCertificate();
    }
    const base = { instance, registrationId, attestationType: 'x509' as const, previous };
    const certificate = certificateInfo(verdict.leaf);
    const cn = commonName(verdict.leaf) ?? registrationId;
    const entry = verdict.entry;
    if (entry.kind === 'individual') {
      const attestation = entry.doc.attestation;
      const pair = attestation.type === 'x509' ? attestation.x509.clientCertificates : undefined;
      const primary = pair?.primary?.info.sha1Thumbprint ?? certificate.sha1Thumbprint;
      const secondary = pair?.secondary?.info.sha1Thumbprint;
      return {
        ...base,
        enrollment: entry,
        deviceId: entry.doc.deviceId ?? cn,
        hubAuthentication: { type: 'selfSigned', x509Thumbprint: { primaryThumbprint: primary, ...(secondary === undefined ? {} : { secondaryThumbprint: secondary }) } },
        resultSection: { x509: { certificateInfo: certificate } },
        runtimeContext: { x509: { certificateInfo: certificate } },
      };
    }
    const section: JsonMap = { certificateInfo: certificate, enrollmentGroupId: entry.doc.enrollmentGroupId };
    if (verdict.signer !== undefined) section.signingCertificateInfo = certificateInfo(verdict.signer);
    return {
      ...base,
      enrollment: entry,
      deviceId: cn,
      hubAuthentication: { type: 'certificateAuthority' },
      resultSection: { x509: section },
      runtimeContext: { x509: section },
    };
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
  async #assign(match: DeviceMatch, operation: StoredOperation, payload: JsonMap | undefined, transport: Transport): Promise<void> {
    const { instance } = match;
    const store = this.#deps.store;
    const previous = await store.getRegistration(instance.id, match.registrationId);
    const enrollment = match.enrollment.doc;
    const now = dpsTimestamp(this.#deps.now());
    const base: StoredRegistration = {
      registrationId: match.registrationId,
      createdDateTimeUtc: previous?.createdDateTimeUtc ?? now,
      status: 'assigning',
      lastUpdatedDateTimeUtc: now,
      etag: newEtag(),
      attestationType: match.attestationType,
    };
    if (match.enrollment.kind === 'group') base.enrollmentGroupId = match.enrollment.doc.enrollmentGroupId;
    if (previous?.hubHistory !== undefined) base.hubHistory = previous.hubHistory;
    if (previous?.assignedHub !== undefined) base.assignedHub = previous.assignedHub;
    if (previous?.deviceId !== undefined) base.deviceId = previous.deviceId;

    let record: StoredRegistration;
    try {
      if (enrollment.provisioningStatus === 'disabled') {
        // DPS ends the registration `disabled` (dps-wire.md §8.3); the record also says which entry refused it.
        const refusal = new ProvisioningError(
          'EnrollmentDisabled',
          match.enrollment.kind === 'individual'
            ? `The individual enrollment '${match.enrollment.doc.registrationId}' is disabled.`
            : `The enrollment group '${match.enrollment.doc.enrollmentGroupId}' is disabled.`,
        );
        record = { ...base, status: 'disabled', errorCode: refusal.errorCode, errorMessage: refusal.message };
      } else {
        record = await this.#allocateAndWrite(match, previous, base, payload);
      }
    } catch (error) {
      const failure = error instanceof ProvisioningError ? error : this.#asProvisioningError(error, match);
      record = { ...base, status: 'failed', errorCode: failure.errorCode, errorMessage: failure.message };
    }
    const finished: StoredOperation = {
      ...operation,
      status: record.status === 'assigned' || record.status === 'disabled' || record.status === 'failed' ? record.status : 'failed',
      lastUpdatedDateTimeUtc: dpsTimestamp(this.#deps.now()),
      registrationState: renderDeviceRegistration(record, match.resultSection),
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
    await store.transaction(async (tx) => {
      await tx.putRegistration(instance.id, record);
      await tx.putOperation(instance.id, finished);
      if (outcome !== undefined) await tx.appendAuditEvent(instance.id, outcome);
    });
    const reprovisioned = previous?.status === 'assigned';
    void this.#deps.events?.emit(instance, record.status === 'assigned' ? (reprovisioned ? 'device.reprovisioned' : 'device.registered') : 'device.failed', {
      registrationId: record.registrationId,
      status: record.status,
      ...(record.deviceId === undefined ? {} : { deviceId: record.deviceId }),
      ...(record.assignedHub === undefined || record.status !== 'assigned' ? {} : { assignedHub: record.assignedHub }),
      ...(record.substatus === undefined ? {} : { substatus: record.substatus }),
      ...(record.errorCode === undefined ? {} : { errorCode: record.errorCode, errorMessage: record.errorMessage }),
    });
  }

  /** One write to a hub, logged with its outcome. */
  async #hubWrite<T>(match: DeviceMatch, hub: string, operation: string, deviceId: string, write: () => Promise<T>): Promise<T> {
    const entry = {
      kind: 'hubWrite' as const,
      operation,
      actor: 'provisiond',
      subject: { registrationId: match.registrationId, deviceId },
      hub,
    };
    try {
      const result = await write();
      await this.#deps.audit?.record(match.instance.id, { ...entry, outcome: 'success' });
      return result;
    } catch (error) {
      await this.#deps.audit?.record(match.instance.id, { ...entry, outcome: 'failure', reason: error instanceof Error ? error.message : String(error) });
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

  async #allocateAndWrite(
    match: DeviceMatch,
    previous: StoredRegistration | undefined,
    base: StoredRegistration,
    devicePayload: JsonMap | undefined,
  ): Promise<StoredRegistration> {
    const { instance } = match;
    const enrollment = match.enrollment.doc;
    const linked = await this.#deps.store.listLinkedHubs(instance.id);
    const byName = new Map(linked.map((hub) => [hub.name, hub]));
    const current = previous?.status === 'assigned' && previous.assignedHub !== undefined ? byName.get(previous.assignedHub) : undefined;
    const stays = current !== undefined && !enrollment.reprovisionPolicy.updateHubAssignment;
    const policy = enrollment.allocationPolicy ?? instance.allocationPolicy;

    let initialTwin: InitialTwinDoc | undefined = enrollment.initialTwin;
    let resultPayload: JsonMap | undefined;
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
      if (devicePayload !== undefined) context.payload = devicePayload;
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
      resultPayload = answer.payload;
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

    const decision = decideReprovision({
      currentHub: current?.name,
      hubHistory: previous?.hubHistory ?? [],
      currentSubstatus: previous?.substatus,
      policy: enrollment.reprovisionPolicy,
      allocatedHub: allocated.name,
    });
    const target = byName.get(decision.targetHub) as LinkedHubRecord;
    const clients = this.#deps.hubClients;
    const previousDeviceId = previous?.deviceId;

    let twin: HubTwinContent | undefined;
    if (decision.twin === 'initial') twin = twinOf(initialTwin);
    if (decision.twin === 'migrate' && current !== undefined) {
      const old = await clients.forHub(current).getTwin(previousDeviceId ?? match.deviceId);
      twin = old === undefined ? twinOf(initialTwin) : { tags: old.tags, desired: withoutMetadata(old.desired) };
    }
    const client = clients.forHub(target);
    const written = await this.#hubWrite(match, target.name, 'putDevice', match.deviceId, () =>
      client.putDevice({
        deviceId: match.deviceId,
        authentication: match.hubAuthentication,
        capabilities: { iotEdge: enrollment.capabilities.iotEdge },
        status: 'enabled',
      }),
    );
    // A device just created has an empty twin already: writing an empty one again would only cost a round trip.
    const twinIsEmpty = twin !== undefined && Object.keys(twin.tags).length === 0 && Object.keys(twin.desired).length === 0;
    if (twin !== undefined && !(written.created && twinIsEmpty)) {
      const content = twin;
      await this.#hubWrite(match, target.name, 'replaceTwin', match.deviceId, () => client.replaceTwin(match.deviceId, content));
    }
    if (decision.leaveHub !== undefined && current !== undefined) {
      const leaving = previousDeviceId ?? match.deviceId;
      await this.#hubWrite(match, current.name, 'deleteDevice', leaving, () => clients.forHub(current).deleteDevice(leaving));
    } else if (previousDeviceId !== undefined && current !== undefined && idKey(previousDeviceId) !== idKey(match.deviceId)) {
      // The enrollment's deviceId changed: the old identity leaves the hub.
      await this.#hubWrite(match, current.name, 'deleteDevice', previousDeviceId, () => clients.forHub(current).deleteDevice(previousDeviceId));
    }

    const history = [...(previous?.hubHistory ?? [])];
    if (!history.includes(target.name)) history.push(target.name);
    const record: StoredRegistration = {
      ...base,
      assignedHub: target.name,
      deviceId: match.deviceId,
      status: 'assigned',
      substatus: decision.substatus,
      hubHistory: history,
    };
    if (resultPayload !== undefined) record.payload = resultPayload;
    return record;
  }
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
