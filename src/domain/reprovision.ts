import type { ReprovisionPolicyDoc } from './enrollment.js';
import type { Substatus } from './wire.js';

/**
 * What a (re)registration does on the hub side (dps-wire.md §8.5). Pure: given where the device is now, the policy
 * and the hub allocation chose, says where it goes, what its twin becomes and the substatus to report.
 */
export interface ReprovisionInput {
  /** The hub the device is assigned to now (undefined: never assigned, or its hub is no longer linked). */
  currentHub: string | undefined;
  /** Every hub the device was assigned to before, oldest first. */
  hubHistory: readonly string[];
  /** The substatus of the current assignment. */
  currentSubstatus: Substatus | undefined;
  policy: ReprovisionPolicyDoc;
  /** The hub allocation chose (ignored when the policy never reprovisions an assigned device). */
  allocatedHub: string;
}

export type TwinAction = 'initial' | 'migrate' | 'keep';

export interface ReprovisionDecision {
  targetHub: string;
  /** Remove the device from this hub after writing it to the target. */
  leaveHub: string | undefined;
  twin: TwinAction;
  substatus: Substatus;
}

export function decideReprovision(input: ReprovisionInput): ReprovisionDecision {
  const { currentHub, policy } = input;
  if (currentHub === undefined) {
    return { targetHub: input.allocatedHub, leaveHub: undefined, twin: 'initial', substatus: 'initialAssignment' };
  }
  if (!policy.updateHubAssignment) {
    // "Never reprovision": the device stays where it is, with the data it has.
    return { targetHub: currentHub, leaveHub: undefined, twin: 'keep', substatus: input.currentSubstatus ?? 'initialAssignment' };
  }
  const target = input.allocatedHub;
  if (target === currentHub) {
    // Same hub: migrate keeps the device's data; reset returns it to the enrollment's initial state.
    return policy.migrateDeviceData
      ? { targetHub: target, leaveHub: undefined, twin: 'keep', substatus: input.currentSubstatus ?? 'initialAssignment' }
      : { targetHub: target, leaveHub: undefined, twin: 'initial', substatus: 'deviceDataReset' };
  }
  const returning = input.hubHistory.includes(target);
  return {
    targetHub: target,
    leaveHub: currentHub,
    twin: policy.migrateDeviceData ? 'migrate' : 'initial',
    substatus: returning ? 'reprovisionedToInitialAssignment' : policy.migrateDeviceData ? 'deviceDataMigrated' : 'deviceDataReset',
  };
}
