import { constants, X509Certificate } from 'node:crypto';
import type { Socket } from 'node:net';
import type { DetailedPeerCertificate, TLSSocket } from 'node:tls';

/**
 * The client certificate chain a TLS peer presented, leaf first, as node:crypto certificates — the X.509 device
 * credential for every transport (HTTPS, MQTT, AMQP). Listeners request client certificates without requiring them
 * or verifying them (`requestCert: true, rejectUnauthorized: false`): the registration flow decides, per enrollment.
 * Empty when the socket is not TLS or the peer sent no certificate.
 */
/**
 * The TLS options of every listener devices reach (HTTPS, MQTT, AMQP): client certificates requested, not required,
 * not verified by TLS. Session resumption is off, because a resumed session carries the peer's leaf certificate but
 * not the intermediates it sent in the full handshake: a device under a group enrolled by its root would be refused
 * on its second connection (the poll) for "omitting" the intermediate.
 */
export const DEVICE_TLS_OPTIONS = Object.freeze({ requestCert: true, rejectUnauthorized: false, secureOptions: constants.SSL_OP_NO_TICKET });

const cache = new WeakMap<object, readonly X509Certificate[]>();

export function peerCertificateChain(socket: Socket | TLSSocket): readonly X509Certificate[] {
  if (!isTlsSocket(socket)) return [];
  const cached = cache.get(socket);
  if (cached !== undefined) return cached;
  const chain: X509Certificate[] = [];
  const seen = new Set<string>();
  let current: DetailedPeerCertificate | undefined = socket.getPeerCertificate(true);
  // An empty object means no certificate; a self-issued root's issuerCertificate is itself, which `seen` stops at.
  while (current !== undefined && current.raw !== undefined && !seen.has(current.fingerprint256)) {
    seen.add(current.fingerprint256);
    chain.push(new X509Certificate(current.raw));
    current = current.issuerCertificate;
  }
  // A connection's peer does not change after the handshake: later requests on it reuse the chain.
  cache.set(socket, chain);
  return chain;
}

function isTlsSocket(socket: Socket | TLSSocket): socket is TLSSocket {
  return typeof (socket as Partial<TLSSocket>).getPeerCertificate === 'function';
}
