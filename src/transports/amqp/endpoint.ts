import type { Socket } from 'node:net';
import type { FastifyBaseLogger } from 'fastify';
import rhea, { type AmqpError, type Connection, type ConnectionOptions, type Container, type Delivery, type EventContext, type Message, type Receiver, type Sender } from 'rhea';
import type { WebSocket } from 'ws';
import type { JsonMap } from '../../domain/enrollment.js';
import { ProvisioningError } from '../../domain/errors.js';
import type { DeviceRequest, OperationReply, RegistrationService } from '../../services/registrations.js';
import type { DevicePeer } from '../device-peer.js';
import { deviceCredential, deviceFailure, parseRegistrationBody, refuseLookupCsr, registerCsr, type DeviceFailure } from '../device-requests.js';
import { formatRegistrationPath, parseLinkAddress, parseRegistrationPath, type RegistrationPath } from '../registration-path.js';
import { SignInTurns } from '../sign-in-turns.js';
import { AmqpFrameSizeGuard } from './frame-size.js';
import { TpmSaslServer } from './sasl-tpm.js';

/**
 * The DPS AMQP device endpoint (dps-wire.md §6) on rhea in server mode. A device authenticates with SASL PLAIN
 * (username `{idScope}/registrations/{registrationId}`, password = SAS token) or with its TLS client certificate and
 * no SASL at all (the Node SDK sends no SASL header for X.509; SASL ANONYMOUS is accepted for the same case). It
 * attaches a receiver and a sender link at `{idScope}/registrations/{registrationId}` (or at its `amqps://{host}/…`
 * URI form, as Microsoft's C device SDK does) and sends request messages;
 * each is one call to the registration service, answered on the device's receiver link with the request's
 * correlation_id, or by rejecting the request with an AMQP error that carries the DPS error.
 */
export interface AmqpEndpointDeps {
  registrations: RegistrationService;
  logger: FastifyBaseLogger;
  /** The advertised max-frame-size and max-message-size, and the most bytes a device may send toward one message. */
  maxMessageBytes: number;
  /** The host names a URI-form link address may name (dps-wire.md §6). */
  hostNames: readonly string[];
}

const OPERATION_TYPE = 'iotdps-operation-type';
const OPERATION_ID = 'iotdps-operation-id';
const REGISTER = 'iotdps-register';
const OPERATION_STATUS = 'iotdps-get-operationstatus';
const REGISTRATION_STATUS = 'iotdps-get-registration';
/** Frames a device sends besides its messages (attach, flow, disposition, heartbeats) fit well within this. */
const CONTROL_BYTES_ALLOWANCE = 64 * 1024;

interface ServerMechanisms {
  enable_plain(callback: (username: string | null, password: string | null) => Promise<boolean>): void;
  enable_anonymous(): void;
  /** rhea takes further mechanisms as factories by name. */
  [name: string]: unknown;
}
interface AcceptingConnection {
  accept(socket: Socket): Connection;
}

/** One device connection: its peer, what SASL proved, the device its first link named, where replies go. */
interface DeviceConnection {
  peer: DevicePeer;
  sasl: DeviceRequest | undefined;
  /** Set by SASL or by the first link attach; every link must name the same device. */
  device: DeviceRequest | undefined;
  replyLink: Sender | undefined;
  bytesSinceMessage: number;
  frames: AmqpFrameSizeGuard;
}

export class AmqpDeviceEndpoint {
  readonly #deps: AmqpEndpointDeps;
  /** Credential checks of SASL sign-ins, a few at a time and in turn by source address (a bad-key flood waits its turn). */
  readonly #signIns = new SignInTurns();

  constructor(deps: AmqpEndpointDeps) {
    this.#deps = deps;
  }

  /** Serves one AMQP-over-TLS connection until it closes. */
  accept(socket: Socket, peer: DevicePeer): void {
    const state = this.#newConnection(peer);
    const container = this.#containerFor(state);
    socket.on('data', (chunk: Buffer) => this.#watch(state, chunk, () => socket.destroy(new Error('AMQP frame too large'))));
    (container.create_connection(this.#connectionOptions()) as unknown as AcceptingConnection).accept(socket);
  }

  /** Serves one AMQP-over-WebSocket connection (subprotocol AMQPWSB10) until it closes. */
  acceptWebSocket(ws: WebSocket, peer: DevicePeer): void {
    const state = this.#newConnection(peer);
    const container = this.#containerFor(state);
    ws.on('message', (data: Buffer | ArrayBuffer | Buffer[]) => this.#watch(state, toBuffer(data), () => ws.terminate()));
    container.websocket_accept(ws as unknown as Socket, this.#connectionOptions() as never);
  }

  #newConnection(peer: DevicePeer): DeviceConnection {
    return { peer, sasl: undefined, device: undefined, replyLink: undefined, bytesSinceMessage: 0, frames: new AmqpFrameSizeGuard(this.#deps.maxMessageBytes) };
  }

  /** rhea's typings describe only connections it dials out; these are accepted ones. */
  #connectionOptions(): ConnectionOptions {
    const options = {
      container_id: 'provisiond',
      max_frame_size: this.#deps.maxMessageBytes,
      reconnect: false,
    };
    return options as unknown as ConnectionOptions;
  }

  /** Frame and message size limits on the incoming bytes; `abort` ends the connection. */
  #watch(state: DeviceConnection, chunk: Buffer, abort: () => void): void {
    state.bytesSinceMessage += chunk.length;
    if (!state.frames.accept(chunk) || state.bytesSinceMessage > this.#deps.maxMessageBytes + CONTROL_BYTES_ALLOWANCE) {
      this.#deps.logger.debug({ remoteAddress: state.peer.remoteAddress }, 'amqp connection closed: frame or message too large');
      abort();
    }
  }

  /**
   * One rhea container per connection: its SASL PLAIN callback must know which connection it authenticates, and its
   * events are this connection's events.
   */
  #containerFor(state: DeviceConnection): Container {
    const container = rhea.create_container({
      id: 'provisiond',
      // Link options rhea looks up through the connection to its container. Requests are settled once answered (a
      // failure is a rejection with the DPS error); a device has one or two requests in flight, so little credit.
      autoaccept: false,
      credit_window: 10,
    });
    const mechanisms = container.sasl_server_mechanisms as ServerMechanisms;
    mechanisms.enable_plain((username, password) => this.#saslPlain(state, username, password));
    // TPM devices prove themselves in a SASL challenge exchange (dps-wire.md §6).
    mechanisms.TPM = () =>
      new TpmSaslServer({
        transport: state.peer.transport,
        authenticate: (request) => this.#signIns.run(state.peer.remoteAddress, () => this.#deps.registrations.authenticate(request)),
        onAuthenticated: (request) => {
          state.sasl = request;
        },
        onRefused: (reason, registrationId) =>
          this.#deps.logger.info({ remoteAddress: state.peer.remoteAddress, registrationId, reason }, 'amqp TPM SASL refused'),
      });
    // Selects rhea's mode that also takes bare AMQP (no SASL header): X.509 devices authenticate by certificate.
    mechanisms.enable_anonymous();
    container.on('sender_open', (context: EventContext) => this.#onLinkOpen(state, context.sender as Sender, 'sender'));
    container.on('receiver_open', (context: EventContext) => this.#onLinkOpen(state, context.receiver as Receiver, 'receiver'));
    container.on('message', (context: EventContext) => {
      state.bytesSinceMessage = 0;
      void this.#onMessage(state, context.message as Message, context.delivery as Delivery);
    });
    container.on('sender_close', (context: EventContext) => {
      if (context.sender === state.replyLink) state.replyLink = undefined;
    });
    for (const event of ['error', 'connection_error', 'protocol_error', 'sender_error', 'receiver_error', 'session_error', 'disconnected']) {
      container.on(event, (context: EventContext | Error) =>
        this.#deps.logger.debug({ event, remoteAddress: state.peer.remoteAddress, err: context instanceof Error ? context : context.error }, 'amqp connection event'),
      );
    }
    return container;
  }

  async #saslPlain(state: DeviceConnection, username: string | null, password: string | null): Promise<boolean> {
    const path = username === null ? undefined : parseRegistrationPath(username);
    if (path === undefined) return false;
    const request: DeviceRequest = { ...path, credential: { kind: 'sas', authorization: password ?? undefined }, transport: state.peer.transport, source: state.peer.remoteAddress };
    try {
      const proof = await this.#signIns.run(state.peer.remoteAddress, () => this.#deps.registrations.authenticate(request));
      // The register and polls on this connection carry what SASL proved, instead of authenticating again.
      state.sasl = { ...request, proof };
      return true;
    } catch (error) {
      deviceFailure(error, this.#deps.logger, { registrationId: path.registrationId, transport: state.peer.transport });
      return false;
    }
  }

  /**
   * Links must sit at the device's own address: the one SASL authenticated, or for a certificate the one the first
   * link names. A link anywhere else is closed with an error at once.
   */
  #onLinkOpen(state: DeviceConnection, link: Sender | Receiver, role: 'sender' | 'receiver'): void {
    const address = (role === 'sender' ? link.source?.address : link.target?.address) ?? '';
    if (role === 'sender') link.set_source({ address });
    else link.set_target({ address });
    // The C SDK looks for max-message-size in the attach reply and complains in its log when it is absent.
    (link as unknown as { local: { attach: { max_message_size?: number } } }).local.attach.max_message_size = this.#deps.maxMessageBytes;
    const parsed = parseLinkAddress(address, this.#deps.hostNames);
    if (parsed.ok) state.device ??= this.#identify(state, parsed.path);
    let reason: string | undefined;
    if (!parsed.ok) reason = parsed.reason;
    else if (state.device === undefined) reason = 'the connection authenticated no device';
    else if (!samePath(state.device, parsed.path)) {
      reason = `the link names registration '${formatRegistrationPath(parsed.path)}', the connection authenticated '${formatRegistrationPath(state.device)}'`;
    }
    if (reason !== undefined) {
      // Refusals are logged with why: a device SDK only reports a detached link.
      this.#deps.logger.info({ remoteAddress: state.peer.remoteAddress, role, address: address.slice(0, 300), reason }, 'amqp link refused');
      link.close({ condition: 'amqp:unauthorized-access', description: `Links are attached at {idScope}/registrations/{registrationId} of the authenticated device, not '${address}'.` });
      return;
    }
    if (role === 'sender') state.replyLink = link as Sender;
  }

  /**
   * The device the connection speaks for. A certificate is not judged here: the registration service judges it on
   * every request, and a chain that proves nothing has each request rejected with the DPS 401.
   */
  #identify(state: DeviceConnection, path: RegistrationPath): DeviceRequest {
    if (state.sasl !== undefined) return state.sasl;
    return { ...path, credential: deviceCredential({ authorization: undefined, chain: state.peer.chain }), transport: state.peer.transport, source: state.peer.remoteAddress };
  }

  async #onMessage(state: DeviceConnection, message: Message, delivery: Delivery): Promise<void> {
    const registrations = this.#deps.registrations;
    const device = state.device;
    try {
      if (device === undefined) throw new ProvisioningError('Unauthorized');
      const body = bodyBytes(message.body);
      if (body.length > this.#deps.maxMessageBytes) throw new ProvisioningError('PayloadTooLarge');
      const properties = message.application_properties ?? {};
      const operation: unknown = properties[OPERATION_TYPE];
      let reply: OperationReply;
      if (operation === REGISTER) {
        const registration = parseRegistrationBody(body, device.registrationId);
        // TPM keys count only from the SASL TPM exchange that proved them; a body cannot switch mechanisms.
        if (registration.tpm !== undefined && device.credential.kind !== 'tpm') {
          throw new ProvisioningError('BadRequest', 'TPM attestation over AMQP uses the SASL mechanism TPM.');
        }
        // AMQP carries no api-version provisiond reads: a csr in the register body is always taken.
        // Object.assign, not `{ ...device, more }` (a hidden class per object on this V8: domain/registration.ts renderInto).
        reply = await registrations.register(Object.assign({}, device, { payload: registration.payload, csr: registerCsr(registration, undefined) }));
      } else if (operation === OPERATION_STATUS) {
        const operationId: unknown = properties[OPERATION_ID];
        if (typeof operationId !== 'string' || operationId === '') throw new ProvisioningError('BadRequest', `The application property '${OPERATION_ID}' is required.`);
        reply = await registrations.operationStatus(Object.assign({}, device, { operationId }));
      } else if (operation === REGISTRATION_STATUS) {
        refuseLookupCsr(parseRegistrationBody(body, device.registrationId));
        reply = { httpStatus: 200, body: await registrations.statusLookup(device), retryAfterSeconds: undefined };
      } else {
        throw new ProvisioningError('BadRequest', `Unknown ${OPERATION_TYPE} '${String(operation)}'.`);
      }
      const replyLink = state.replyLink;
      if (replyLink === undefined || !replyLink.is_open()) {
        throw new ProvisioningError('BadRequest', 'Attach a receiver link at {idScope}/registrations/{registrationId} before sending requests.');
      }
      replyLink.send(replyMessage(message, reply.body, reply.httpStatus === 202 ? reply.retryAfterSeconds : undefined));
      delivery.accept();
    } catch (error) {
      const failure = deviceFailure(error, this.#deps.logger, { registrationId: device?.registrationId, transport: state.peer.transport });
      delivery.reject(rejection(failure));
    }
  }
}

function samePath(a: RegistrationPath, b: RegistrationPath): boolean {
  return a.idScope.toLowerCase() === b.idScope.toLowerCase() && a.registrationId.toLowerCase() === b.registrationId.toLowerCase();
}

/** The request's body as bytes: the Node SDK sends a data section (register) or an empty string value (poll). */
function bodyBytes(body: unknown): Buffer {
  if (body === undefined || body === null) return Buffer.alloc(0);
  if (Buffer.isBuffer(body)) return body;
  if (typeof body === 'string') return Buffer.from(body, 'utf8');
  if (typeof body === 'object' && 'content' in body) {
    const content: unknown = body.content;
    if (Buffer.isBuffer(content)) return content;
    if (Array.isArray(content) && content.every((part) => Buffer.isBuffer(part))) return Buffer.concat(content as Buffer[]);
  }
  return Buffer.from(JSON.stringify(body), 'utf8');
}

/**
 * The answer: the request's correlation_id as it came (the Node SDK matches it as a string), the body as a data
 * section (the SDK parses `body.content`), and the retry delay as `retry-after` (Node) and `Retry-After` (C#).
 */
function replyMessage(request: Message, body: JsonMap, retryAfterSeconds: number | undefined): Message {
  const reply: Message = { body: rhea.message.data_section(Buffer.from(JSON.stringify(body), 'utf8')) };
  if (request.correlation_id !== undefined) reply.correlation_id = request.correlation_id;
  if (retryAfterSeconds !== undefined) {
    reply.application_properties = { 'retry-after': String(retryAfterSeconds), 'Retry-After': String(retryAfterSeconds) };
  }
  return reply;
}

/** The AMQP rejection for a DPS error: a condition the SDKs translate, the DPS error body in the description and info. */
function rejection(failure: DeviceFailure): AmqpError {
  const status = failure.error.httpStatus;
  const info: Record<string, string | number> = {
    errorCode: failure.body.errorCode,
    trackingId: failure.body.trackingId,
    message: failure.body.message,
    timestampUtc: failure.body.timestampUtc,
  };
  if (failure.retryAfterSeconds !== undefined) {
    info['retry-after'] = String(failure.retryAfterSeconds);
    info['Retry-After'] = String(failure.retryAfterSeconds);
  }
  return { condition: conditionFor(status), description: JSON.stringify(failure.body), info };
}

/** Conditions as azure-iot-amqp-base translates them (401 → UnauthorizedError, 429 → ThrottlingError, …). */
function conditionFor(status: number): string {
  if (status === 401 || status === 403) return 'amqp:unauthorized-access';
  if (status === 404) return 'amqp:not-found';
  if (status === 412) return 'com.microsoft:precondition-failed';
  if (status === 413) return 'amqp:link:message-size-exceeded';
  if (status === 429) return 'com.microsoft:device-container-throttled';
  if (status >= 500) return 'amqp:internal-error';
  return 'com.microsoft:argument-error';
}

function toBuffer(data: Buffer | ArrayBuffer | Buffer[]): Buffer {
  if (Buffer.isBuffer(data)) return data;
  if (Array.isArray(data)) return Buffer.concat(data);
  return Buffer.from(data);
}
