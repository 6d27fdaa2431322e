import type { AttestationType, EnrollmentGroup, IndividualEnrollment } from '../api/types';

/**
 * Individual enrollments and enrollment groups share their pages; what differs is here. Field names are the service
 * API's (docs/service-api.md).
 */
export interface EnrollmentKind {
  readonly api: 'enrollments' | 'enrollmentGroups';
  readonly route: '/enrollments' | '/groups';
  readonly idField: 'registrationId' | 'enrollmentGroupId';
  readonly idLabel: string;
  /** The ID's name inside a sentence ("Search by registration ID"). */
  readonly idNoun: string;
  readonly singular: string;
  readonly plural: string;
  readonly attestations: readonly AttestationType[];
}

export const INDIVIDUAL: EnrollmentKind = {
  api: 'enrollments',
  route: '/enrollments',
  idField: 'registrationId',
  idLabel: 'Registration ID',
  idNoun: 'registration ID',
  singular: 'enrollment',
  plural: 'Enrollments',
  attestations: ['symmetricKey', 'x509', 'tpm'],
};

export const GROUP: EnrollmentKind = {
  api: 'enrollmentGroups',
  route: '/groups',
  idField: 'enrollmentGroupId',
  idLabel: 'Group ID',
  idNoun: 'group ID',
  singular: 'enrollment group',
  plural: 'Enrollment groups',
  attestations: ['symmetricKey', 'x509'],
};

export type AnyEnrollment = IndividualEnrollment | EnrollmentGroup;

export function idOf(kind: EnrollmentKind, entry: AnyEnrollment): string {
  return kind.idField === 'registrationId' ? (entry as IndividualEnrollment).registrationId : (entry as EnrollmentGroup).enrollmentGroupId;
}

export const ATTESTATION_LABEL: Record<AttestationType, string> = {
  symmetricKey: 'Symmetric key',
  x509: 'X.509 certificate',
  tpm: 'TPM',
  none: 'None',
};

export const ALLOCATION_LABEL: Record<string, string> = {
  hashed: 'Evenly weighted distribution (hashed)',
  geoLatency: 'Lowest latency (geoLatency)',
  static: 'Static configuration (static)',
  custom: 'Custom (webhook)',
};

/** IDs: 1-128 letters, digits and - . _ :, starting and ending with a letter or digit (the server has the last word). */
export function idProblem(kind: EnrollmentKind, id: string): string | undefined {
  if (id === '') return `Enter a ${kind.idNoun}.`;
  if (id.length > 128) return `A ${kind.idNoun} has at most 128 characters.`;
  if (!/^[A-Za-z0-9](?:[A-Za-z0-9\-._:]*[A-Za-z0-9])?$/.test(id)) return "Use letters, digits and - . _ : only, starting and ending with a letter or digit.";
  return undefined;
}
