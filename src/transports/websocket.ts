import type { IncomingMessage, Server } from 'node:http';
import type { Duplex } from 'node:stream';
import type { FastifyBaseLogger } from 'fastify';
import { createWebSocketStream, WebSocketServer, type WebSocket } from 'ws';
import type { AmqpDeviceEndpoint } from './amqp/endpoint.js';
import type { DeviceConnections } from './device-connections.js';
import type { DevicePeer } from './device-peer.js';
import type { MqttDeviceBroker } from './mqtt/broker.js';
import { peerCertificateChain } from './tls-peer.js';

/**
 * MQTT and AMQP over WebSocket on the HTTPS listener (dps-wire.md §5, §6; sdk-clients.md §2): the official clients
 * open `wss://{host}:443/$iothub/websocket` with subprotocol `mqtt` (MqttWs) or `AMQPWSB10` (AmqpWs), and the
 * subprotocol alone picks the protocol. Any path is accepted, since MQTTnet-based clients connect to `wss://{host}/`.
 * The TLS client certificate of the HTTPS connection is the X.509 credential, as on the plain TLS listeners.
 */
export const MQTT_SUBPROTOCOL = 'mqtt';
export const AMQP_SUBPROTOCOL = 'AMQPWSB10';

export interface DeviceWebSocketDeps {
  mqtt: MqttDeviceBroker | undefined;
  amqp: AmqpDeviceEndpoint | undefined;
  connections: DeviceConnections;
  /** The largest WebSocket message; larger ones close the connection (1009). */
  maxPayloadBytes: number;
  logger: FastifyBaseLogger;
}

export interface DeviceWebSockets {
  close(): void;
}

export function attachDeviceWebSockets(server: Server, deps: DeviceWebSocketDeps): DeviceWebSockets {
  const wss = new WebSocketServer({
    noServer: true,
    maxPayload: deps.maxPayloadBytes,
    // The client asked for it; chooseSubprotocol already checked that this server speaks it.
    handleProtocols: (protocols) => chooseSubprotocol(protocols, deps) ?? false,
  });
  const onUpgrade = (request: IncomingMessage, socket: Duplex, head: Buffer): void => {
    const subprotocol = chooseSubprotocol(offeredSubprotocols(request), deps);
    if (subprotocol === undefined) {
      socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Type: text/plain\r\n\r\nUse the WebSocket subprotocol mqtt or AMQPWSB10.\r\n');
      return;
    }
    if (!deps.connections.admit(request.socket)) return;
    wss.handleUpgrade(request, socket, head, (ws) => {
      ws.on('error', (error) => deps.logger.debug({ err: error }, 'device websocket error'));
      const peer = (transport: DevicePeer['transport']): DevicePeer => ({
        transport,
        chain: peerCertificateChain(request.socket),
        remoteAddress: request.socket.remoteAddress,
      });
      if (subprotocol.toLowerCase() === MQTT_SUBPROTOCOL) deps.mqtt?.handle(webSocketStream(ws), peer('mqttWs'));
      else deps.amqp?.acceptWebSocket(ws, peer('amqpWs'));
    });
  };
  server.on('upgrade', onUpgrade);
  return {
    close() {
      server.off('upgrade', onUpgrade);
      for (const client of wss.clients) client.terminate();
      wss.close();
    },
  };
}

function offeredSubprotocols(request: IncomingMessage): Set<string> {
  const header = request.headers['sec-websocket-protocol'] ?? '';
  return new Set(header.split(',').map((name) => name.trim()).filter((name) => name !== ''));
}

/** The subprotocol to answer with, spelled as the client offered it; undefined when this server speaks none of them. */
function chooseSubprotocol(offered: Set<string>, deps: DeviceWebSocketDeps): string | undefined {
  for (const name of offered) {
    if (name.toLowerCase() === MQTT_SUBPROTOCOL && deps.mqtt !== undefined) return name;
    if (name.toLowerCase() === AMQP_SUBPROTOCOL.toLowerCase() && deps.amqp !== undefined) return name;
  }
  return undefined;
}

function webSocketStream(ws: WebSocket): Duplex {
  const stream = createWebSocketStream(ws);
  stream.on('error', () => undefined);
  return stream;
}
