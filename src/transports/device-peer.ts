import type { X509Certificate } from 'node:crypto';
import type { Transport } from '../services/registrations.js';

/** What a device connection knows about its peer before the first protocol byte: how it came, which certificates. */
export interface DevicePeer {
  transport: Transport;
  /** The TLS client certificate chain, leaf first; empty when the device presented none. */
  chain: readonly X509Certificate[];
  remoteAddress: string | undefined;
}
