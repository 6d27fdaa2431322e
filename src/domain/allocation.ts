import { createHash } from 'node:crypto';
import { ProvisioningError } from './errors.js';
import type { LinkedHubRecord } from '../store/store.js';

/**
 * Allocation policies (dps-wire.md §8.2). Pure: the caller supplies hubs, measured latencies and webhook answers.
 */
export interface EnrollmentHubSettings {
  iotHubs?: string[];
  iotHubHostName?: string;
}

/**
 * The hubs a device may be assigned to: the enrollment's `iotHubs` when set (hubs named there stay selectable even
 * with applyAllocationPolicy false), else every linked hub that takes part in allocation.
 */
export function candidateHubs(enrollment: EnrollmentHubSettings, linked: readonly LinkedHubRecord[]): LinkedHubRecord[] {
  const named = enrollment.iotHubs ?? (enrollment.iotHubHostName === undefined ? [] : [enrollment.iotHubHostName]);
  if (named.length > 0) {
    const byName = new Map(linked.map((hub) => [hub.name, hub]));
    const missing = named.filter((name) => !byName.has(name));
    if (missing.length > 0) {
      throw new ProvisioningError('NoHubAvailable', `The enrollment names hubs that are no longer linked: ${missing.join(', ')}.`);
    }
    return named.map((name) => byName.get(name) as LinkedHubRecord);
  }
  const participating = linked.filter((hub) => hub.applyAllocationPolicy);
  if (participating.length === 0) throw new ProvisioningError('NoHubAvailable', 'No linked hub takes part in allocation.');
  return participating;
}

/**
 * Weighted rendezvous hashing: each hub scores -weight / ln(u) with u uniform in (0,1) from a hash of (registration
 * ID, hub). The highest score wins, so a device always lands on the same hub, hubs win in proportion to their
 * weights, and adding or removing a hub only moves the devices that must move.
 */
export function hashedChoice(registrationId: string, hubs: readonly LinkedHubRecord[]): LinkedHubRecord {
  let best: LinkedHubRecord | undefined;
  let bestScore = -Infinity;
  for (const hub of hubs) {
    const digest = createHash('sha256').update(`${registrationId.toLowerCase()}\n${hub.name}`).digest();
    // 52 bits of the hash as a uniform number in (0, 1).
    const u = (Number(digest.readBigUInt64BE(0) >> 12n) + 0.5) / 2 ** 52;
    const score = -hub.allocationWeight / Math.log(u);
    if (score > bestScore) {
      bestScore = score;
      best = hub;
    }
  }
  if (best === undefined) throw new ProvisioningError('NoHubAvailable', 'No linked hub can be assigned.');
  return best;
}

/**
 * Static: the one hub the enrollment names; an enrollment that names none (as DPS allows) gets the instance's only
 * linked hub taking part in allocation — with several, which one is meant is unknowable, so the registration fails.
 */
export function staticChoice(hubs: readonly LinkedHubRecord[]): LinkedHubRecord {
  if (hubs.length !== 1 || hubs[0] === undefined) {
    throw new ProvisioningError(
      'NoHubAvailable',
      `The static allocation policy needs one hub: the enrollment names none in iotHubs and ${hubs.length} linked hubs take part in allocation.`,
    );
  }
  return hubs[0];
}

/** Lowest measured latency wins; hubs within 10% (or 1 ms) of the fastest are ties, split by hashing. */
export function geoLatencyChoice(registrationId: string, hubs: readonly LinkedHubRecord[], latencyMs: ReadonlyMap<string, number>): LinkedHubRecord {
  const measured = hubs.filter((hub) => Number.isFinite(latencyMs.get(hub.name)));
  if (measured.length === 0) return hashedChoice(registrationId, hubs);
  const fastest = Math.min(...measured.map((hub) => latencyMs.get(hub.name) as number));
  const tolerance = Math.max(1, fastest * 0.1);
  return hashedChoice(registrationId, measured.filter((hub) => (latencyMs.get(hub.name) as number) <= fastest + tolerance));
}
