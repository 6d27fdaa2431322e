import type { Server as HttpServer } from 'node:http';
import type { FastifyBaseLogger } from 'fastify';
import type { Config } from '../config/config.js';
import type { RegistrationService } from '../services/registrations.js';
import { closeServer, createDeviceTlsServer, DeviceConnections, listenOn } from './device-connections.js';
import { DEVICE_TLS_OPTIONS, peerCertificateChain } from './tls-peer.js';
import type { DeviceWebSockets } from './websocket.js';
import type { Server as TlsServer } from 'node:tls';

/**
 * The long-lived device endpoints beside the HTTPS device API: MQTT over TLS, AMQP over TLS, and both over WebSocket
 * on the HTTPS listener. Each can be switched off; all share the connection limits and call the one registration
 * service.
 */
export interface DeviceEndpointDeps {
  config: Config;
  /** The MQTT endpoint's logger (and the shared connection limits'). */
  logger: FastifyBaseLogger;
  /** The AMQP endpoint's logger; defaults to `logger`. */
  amqpLogger?: FastifyBaseLogger;
  registrations: RegistrationService;
  tls: { key: string; cert: string };
  /** The HTTPS listener's server, for the `/$iothub/websocket` upgrades. */
  httpServer: HttpServer;
}

/** A listener still to bind, named the way ListenError reports it. */
export interface DeviceListener {
  what: string;
  port: number;
  flag: string;
  listen(): Promise<void>;
  /** Readiness and metrics: whether it is bound, and its open connections (handshaking ones included). */
  isListening(): boolean;
  openConnections(): Promise<number>;
}

export interface DeviceEndpoints {
  readonly listeners: readonly DeviceListener[];
  readonly connections: DeviceConnections;
  /** Serves a new certificate to new connections; open ones keep theirs (SIGHUP reload). */
  setSecureContext(tls: { key: string; cert: string }): void;
  close(): Promise<void>;
}

export async function createDeviceEndpoints(deps: DeviceEndpointDeps): Promise<DeviceEndpoints> {
  const { config, logger, registrations } = deps;
  const connections = new DeviceConnections({ maxConnections: config.maxDeviceConnections, idleTimeoutMs: config.deviceIdleTimeoutMs }, logger);
  const needsMqtt = config.mqttEnabled || config.webSocketsEnabled;
  const needsAmqp = config.amqpEnabled || config.webSocketsEnabled;
  // aedes, rhea and ws are loaded only for the endpoints that are on: a process without them does not carry their
  // code (issue 12, P6).
  const mqtt = needsMqtt
    ? await (await import('./mqtt/broker.js')).MqttDeviceBroker.create({ registrations, logger, maxPacketBytes: config.mqttMaxPacketBytes, connectTimeoutMs: Math.min(30000, config.deviceIdleTimeoutMs) })
    : undefined;
  const amqp = needsAmqp
    ? new (await import('./amqp/endpoint.js')).AmqpDeviceEndpoint({ registrations, logger: deps.amqpLogger ?? logger, maxMessageBytes: config.amqpMaxMessageBytes, hostNames: config.hostNames })
    : undefined;

  const handshakes = { maxHandshakes: config.tlsMaxHandshakes, maxWaiting: config.tlsMaxWaitingHandshakes };
  const servers: TlsServer[] = [];
  const listeners: DeviceListener[] = [];
  if (config.mqttEnabled && mqtt !== undefined) {
    const server = createDeviceTlsServer({
      tls: deps.tls,
      connections,
      handshakes,
      what: 'MQTT',
      logger,
      onConnection: (socket) => mqtt.handle(socket, { transport: 'mqtt', chain: peerCertificateChain(socket), remoteAddress: socket.remoteAddress }),
    });
    servers.push(server);
    listeners.push({ what: 'MQTT', port: config.mqttPort, flag: '--mqtt-port', listen: () => listenOn(server, config.mqttPort, config.listenHost), ...observe(server) });
  }
  if (config.amqpEnabled && amqp !== undefined) {
    const server = createDeviceTlsServer({
      tls: deps.tls,
      connections,
      handshakes,
      what: 'AMQP',
      logger: deps.amqpLogger ?? logger,
      onConnection: (socket) => amqp.accept(socket, { transport: 'amqp', chain: peerCertificateChain(socket), remoteAddress: socket.remoteAddress }),
    });
    servers.push(server);
    listeners.push({ what: 'AMQP', port: config.amqpPort, flag: '--amqp-port', listen: () => listenOn(server, config.amqpPort, config.listenHost), ...observe(server) });
  }
  let webSockets: DeviceWebSockets | undefined;
  if (config.webSocketsEnabled) {
    webSockets = (await import('./websocket.js')).attachDeviceWebSockets(deps.httpServer, {
      mqtt,
      amqp,
      connections,
      maxPayloadBytes: Math.max(config.mqttMaxPacketBytes, config.amqpMaxMessageBytes),
      logger,
    });
  }

  return {
    listeners,
    connections,
    setSecureContext(tls) {
      for (const server of servers) server.setSecureContext({ key: tls.key, cert: tls.cert, ...DEVICE_TLS_OPTIONS });
    },
    async close() {
      webSockets?.close();
      const closing = servers.map((server) => closeServer(server));
      connections.destroyAll();
      await Promise.all(closing);
      await mqtt?.close();
    },
  };
}

function observe(server: TlsServer): Pick<DeviceListener, 'isListening' | 'openConnections'> {
  return {
    isListening: () => server.listening,
    openConnections: () => new Promise((resolve) => server.getConnections((error, count) => resolve(error === null ? count : 0))),
  };
}
