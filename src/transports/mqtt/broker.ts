import { randomUUID } from 'node:crypto';
import { createRequire } from 'node:module';
import type { Duplex } from 'node:stream';
import { Aedes, type AedesPublishPacket, type AuthenticateError, type AuthErrorCode, type Client, type PublishPacket, type Subscription } from 'aedes';
import type { FastifyBaseLogger } from 'fastify';
import type { JsonMap } from '../../domain/enrollment.js';
import { ProvisioningError } from '../../domain/errors.js';
import type { DeviceRequest, OperationReply, RegistrationService } from '../../services/registrations.js';
import type { DevicePeer } from '../device-peer.js';
import { deviceCredential, deviceFailure, parseRegistrationBody, registerCsr } from '../device-requests.js';
import { SignInAbandoned, SignInTurns } from '../sign-in-turns.js';
import { MqttPacketSizeGuard } from './packet-size.js';
import { isResponseFilter, parseRequestTopic, parseUsername, responseTopic, type DeviceRequestTopic } from './topics.js';

/**
 * The DPS MQTT device endpoint (dps-wire.md §5) on aedes. A device connects as itself (client ID = registration ID,
 * username = `{idScope}/registrations/{registrationId}/api-version=…`, password = SAS token or a TLS client
 * certificate), subscribes to `$dps/registrations/res/#` and publishes register and poll requests; each request is
 * one call to the registration service, whose answer goes back to that connection only.
 *
 * Nothing a device publishes is ever routed to another client: aedes' shared topic tree only carries what the broker
 * itself marks as a reply (authorizeForward), and replies are written to the requesting client directly.
 */
export interface MqttBrokerDeps {
  registrations: RegistrationService;
  logger: FastifyBaseLogger;
  maxPacketBytes: number;
  /** How long a connection may take to send CONNECT. */
  connectTimeoutMs: number;
}

interface DeviceSession {
  /** From the CONNECT username: a csr needs 2025-07-01-preview. */
  apiVersion: string;
  request: DeviceRequest;
  /** The QoS granted on `$dps/registrations/res/#`; replies use it (0 before the device subscribed). */
  responseQos: 0 | 1;
}

/** MQTT 3.1.1 CONNACK return codes (§3.2.2.3). */
const IDENTIFIER_REJECTED = 2 as AuthErrorCode;
const SERVER_UNAVAILABLE = 3 as AuthErrorCode;
const BAD_USERNAME_OR_PASSWORD = 4 as AuthErrorCode;
const NOT_AUTHORIZED = 5 as AuthErrorCode;

export class MqttDeviceBroker {
  readonly #deps: MqttBrokerDeps;
  readonly #aedes: Aedes;
  readonly #peers = new WeakMap<object, DevicePeer>();
  readonly #sessions = new WeakMap<Client, DeviceSession>();
  /** Credential checks of CONNECTs, a few at a time and in turn by source address (a bad-key flood waits its turn). */
  readonly #signIns = new SignInTurns();
  /** Carried as `brokerId` by every reply, so authorizeForward can tell replies from anything a client published. */
  readonly #replyMark = `provisiond-reply-${randomUUID()}`;

  private constructor(deps: MqttBrokerDeps, aedes: Aedes) {
    this.#deps = deps;
    this.#aedes = aedes;
  }

  static async create(deps: MqttBrokerDeps): Promise<MqttDeviceBroker> {
    withoutNumberCache();
    // aedes 1.x must be created with createBroker: a broker built with `new` never finishes its setup and every
    // client times out.
    let self: MqttDeviceBroker | undefined;
    const broker = () => self as MqttDeviceBroker;
    const aedes = await Aedes.createBroker({
      connectTimeout: deps.connectTimeoutMs,
      // Registration IDs may have 128 characters; MQTT 3.1 (which Paho falls back to) would cap client IDs at 23.
      maxClientsIdLength: 256,
      // The only topics are four levels deep; a deep topic is refused before it reaches the router.
      maxTopicLevels: 16,
      preConnect: (_client, packet, done) => {
        // DPS keeps no sessions (dps-wire.md §5), and nothing here would deliver a will.
        packet.clean = true;
        delete packet.will;
        done(null, true);
      },
      authenticate: (client, username, password, done) => broker().#authenticate(client, username, password, done),
      authorizeSubscribe: (client, subscription, done) => broker().#authorizeSubscribe(client, subscription, done),
      authorizePublish: (client, packet, done) => broker().#authorizePublish(client, packet, done),
      authorizeForward: (_client, packet) => broker().#authorizeForward(packet),
    });
    self = new MqttDeviceBroker(deps, aedes);
    aedes.on('clientError', (client, error) => deps.logger.debug({ clientId: client.id, err: error }, 'mqtt client error'));
    aedes.on('connectionError', (_client, error) => deps.logger.debug({ err: error }, 'mqtt connection error'));
    return self;
  }

  /** Serves one device connection (TLS socket or WebSocket stream) until it closes. */
  handle(stream: Duplex, peer: DevicePeer): void {
    this.#peers.set(stream, peer);
    stream.on('error', () => undefined);
    this.#aedes.handle(stream);
    // Attached after aedes' 'readable' listener, so this only watches the chunks aedes reads (it does not make the
    // stream flow). A packet over the limit ends the connection before its body is buffered.
    const guard = new MqttPacketSizeGuard(this.#deps.maxPacketBytes);
    stream.on('data', (chunk: Buffer) => {
      if (!guard.accept(chunk)) {
        this.#deps.logger.debug({ remoteAddress: peer.remoteAddress }, 'mqtt connection closed: packet too large or malformed');
        stream.destroy(new Error('MQTT packet too large'));
      }
    });
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.#aedes.close(() => resolve()));
  }

  #authenticate(
    client: Client,
    username: string | undefined,
    password: Buffer | undefined,
    done: (error: AuthenticateError | null, success: boolean | null) => void,
  ): void {
    const peer = this.#peers.get(client.conn);
    const parsed = username === undefined ? undefined : parseUsername(username);
    if (peer === undefined || parsed === undefined) return done(refusal(BAD_USERNAME_OR_PASSWORD), false);
    // The username names the same device as the client ID (dps-wire.md §5).
    if (parsed.registrationId.toLowerCase() !== client.id.toLowerCase()) return done(refusal(IDENTIFIER_REJECTED), false);
    const credential = deviceCredential({ authorization: password?.toString('utf8'), chain: peer.chain });
    const request: DeviceRequest = { idScope: parsed.idScope, registrationId: parsed.registrationId, credential, transport: peer.transport, source: peer.remoteAddress };
    if (credential.kind === 'x509') {
      // DPS accepts the CONNECT of a certificate device and answers each request on `$dps/registrations/res/401` with
      // "Invalid certificate." when the chain proves nothing (dps-wire.md §4.4, §5), so device SDKs report the DPS
      // error code. The registration service judges the chain on every request.
      this.#sessions.set(client, { request, responseQos: 0, apiVersion: parsed.apiVersion });
      return done(null, true);
    }
    const gone = (): boolean => client.closed || (client.conn as Duplex).destroyed;
    this.#signIns.run(peer.remoteAddress, () => this.#deps.registrations.authenticate(request), gone).then(
      (proof) => {
        // The register and polls on this connection carry what CONNECT proved, instead of authenticating again.
        this.#sessions.set(client, { request: { ...request, proof }, responseQos: 0, apiVersion: parsed.apiVersion });
        done(null, true);
      },
      (error: unknown) => {
        // Nobody is left to answer; aedes only tidies up.
        if (error instanceof SignInAbandoned) return done(refusal(SERVER_UNAVAILABLE), false);
        const failure = deviceFailure(error, this.#deps.logger, { registrationId: parsed.registrationId, transport: peer.transport });
        const status = failure.error.httpStatus;
        done(refusal(status === 401 ? NOT_AUTHORIZED : status === 400 || status === 404 ? IDENTIFIER_REJECTED : SERVER_UNAVAILABLE), false);
      },
    );
  }

  #authorizeSubscribe(client: Client, subscription: Subscription, done: (error: Error | null, subscription?: Subscription | null) => void): void {
    const session = this.#sessions.get(client);
    if (session === undefined || !isResponseFilter(subscription.topic)) {
      // A refused filter is answered with SUBACK 0x80; the connection stays up.
      return done(null, null);
    }
    // DPS grants at most QoS 1 (dps-wire.md §5).
    session.responseQos = subscription.qos === 0 ? 0 : 1;
    done(null, { ...subscription, qos: session.responseQos });
  }

  #authorizePublish(client: Client | null, packet: PublishPacket, done: (error?: Error | null) => void): void {
    if (client === null) return done(new Error('wills are not delivered'));
    const session = this.#sessions.get(client);
    if (session === undefined) return done(new Error('not authenticated'));
    // Nothing a device publishes is kept or routed; a request is answered to it alone.
    packet.retain = false;
    const request = parseRequestTopic(packet.topic);
    if (request === undefined) {
      // MQTT 3.1.1 cannot refuse a PUBLISH; it is acknowledged and dropped (§3.3.5).
      this.#deps.logger.debug({ clientId: client.id, topic: packet.topic.slice(0, 200) }, 'mqtt publish outside the DPS topics dropped');
    } else {
      void this.#dispatch(client, session, request, typeof packet.payload === 'string' ? Buffer.from(packet.payload) : packet.payload);
    }
    done(null);
  }

  #authorizeForward(packet: AedesPublishPacket): AedesPublishPacket | null {
    return packet.brokerId === this.#replyMark ? packet : null;
  }

  async #dispatch(client: Client, session: DeviceSession, request: DeviceRequestTopic, payload: Buffer): Promise<void> {
    const registrations = this.#deps.registrations;
    try {
      // Object.assign, not `{ ...request, more }`: a field added to a spread's copy costs a hidden class per object on
      // this V8 (domain/registration.ts renderInto).
      const reply: OperationReply =
        request.kind === 'register'
          ? await registrations.register(Object.assign({}, session.request, mqttRegisterBody(payload, session.request.registrationId, session.apiVersion)))
          : await registrations.operationStatus(Object.assign({}, session.request, { operationId: request.operationId }));
      this.#reply(client, session, responseTopic(reply.httpStatus, request.rid, reply.httpStatus === 202 ? reply.retryAfterSeconds : undefined), reply.body);
    } catch (error) {
      const failure = deviceFailure(error, this.#deps.logger, { registrationId: session.request.registrationId, transport: session.request.transport });
      this.#reply(client, session, responseTopic(failure.error.httpStatus, request.rid, failure.retryAfterSeconds), failure.body);
    }
  }

  #reply(client: Client, session: DeviceSession, topic: string, body: object): void {
    if (client.closed) return;
    const reply: PublishPacket & { brokerId: string } = {
      cmd: 'publish',
      topic,
      payload: Buffer.from(JSON.stringify(body)),
      qos: session.responseQos,
      retain: false,
      dup: false,
      brokerId: this.#replyMark,
    };
    client.publish(reply, (error) => {
      if (error !== undefined && error !== null) this.#deps.logger.debug({ clientId: client.id, err: error }, 'mqtt reply not delivered');
    });
  }
}

/**
 * aedes writes packets with mqtt-packet, which by default makes, on the first packet it writes, a cache of a 2-byte
 * Buffer for each of the 65,536 numbers a packet may carry (message IDs, lengths): 6.6 MiB of heap, kept for the life of
 * the process, to save one 2-byte allocation per number written (issue 12, P6). Off: a device connection writes a few
 * packets, each allocating its numbers. The mqtt-packet aedes itself resolves is the one set (it is aedes' dependency,
 * not ours).
 */
function withoutNumberCache(): void {
  const mqttPacket = createRequire(import.meta.resolve('aedes'))('mqtt-packet') as { writeToStream: { cacheNumbers: boolean } };
  mqttPacket.writeToStream.cacheNumbers = false;
}

function refusal(returnCode: AuthErrorCode): AuthenticateError {
  return Object.assign(new ProvisioningError('Unauthorized'), { returnCode });
}

/**
 * DPS has no TPM attestation over MQTT (dps-wire.md §4.5): a register body with TPM keys is refused. A csr needs
 * api-version 2025-07-01-preview in the username (§5).
 */
function mqttRegisterBody(payload: Buffer, registrationId: string, apiVersion: string): { payload: JsonMap | undefined; csr: string | undefined } {
  const body = parseRegistrationBody(payload, registrationId);
  if (body.tpm !== undefined) throw new ProvisioningError('BadRequest', 'TPM attestation is not available over MQTT; use HTTPS or AMQP.');
  return { payload: body.payload, csr: registerCsr(body, apiVersion) };
}
