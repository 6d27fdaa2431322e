import { Type, type Static } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import type { JsonMap } from '../../domain/enrollment.js';
import { SubjectTraceShape } from './subject.js';

/** The kinds of ID a subject can name, as stored. */
const SubjectKindShape = Type.Union([Type.Literal('registrationId'), Type.Literal('deviceId'), Type.Literal('enrollmentGroupId')]);

/** How far an erase has got in one place (keyed by the place's stable `key`). */
const PlaceProgressShape = Type.Object({
  place: Type.String(),
  /** Items actually deleted or pseudonymized here so far (a resumed place adds to it). */
  count: Type.Number(),
  /** Units of work done here while not completed (a resumed place starts after them). */
  done: Type.Optional(Type.Number()),
  completed: Type.Boolean(),
  error: Type.Optional(Type.String()),
});
export type PlaceProgress = Static<typeof PlaceProgressShape>;

/**
 * An erase's plan: what the subject led to when the erase began (forgotten once it completes) and each place's progress.
 * Requests stored by earlier versions hold a list of string steps instead; such a plan is read as "not planned yet",
 * and the erase (idempotent) plans afresh.
 */
const ErasePlanShape = Type.Object({
  trace: Type.Optional(SubjectTraceShape),
  places: Type.Array(PlaceProgressShape),
});
export type ErasePlan = Static<typeof ErasePlanShape>;

/** The stored shape of a data request; every read checks it instead of trusting the row. */
export const DataRequestDocShape = Type.Object({
  requestId: Type.String({ minLength: 1 }),
  sortKey: Type.String(),
  type: Type.Union([Type.Literal('export'), Type.Literal('erase')]),
  status: Type.Union([Type.Literal('running'), Type.Literal('completed'), Type.Literal('partiallyCompleted'), Type.Literal('failed')]),
  dryRun: Type.Boolean(),
  includeSecrets: Type.Boolean(),
  subject: Type.Object({ kind: SubjectKindShape, id: Type.Optional(Type.String()), hash: Type.String() }),
  bodyFingerprint: Type.String(),
  requestedBy: Type.String(),
  createdDateTimeUtc: Type.String(),
  lastUpdatedDateTimeUtc: Type.String(),
  progress: Type.Object({ done: Type.Number(), total: Type.Number() }),
  plan: Type.Optional(Type.Union([ErasePlanShape, Type.Array(Type.Unknown())])),
  result: Type.Optional(Type.Record(Type.String(), Type.Unknown())),
  error: Type.Optional(Type.String()),
  bundle: Type.Optional(Type.Record(Type.String(), Type.Unknown())),
  receipt: Type.Optional(Type.Record(Type.String(), Type.Unknown())),
});
export type DataRequestDoc = Static<typeof DataRequestDocShape>;

export function readRequestDoc(doc: unknown): DataRequestDoc {
  if (!Value.Check(DataRequestDocShape, doc)) {
    const first = [...Value.Errors(DataRequestDocShape, doc)][0];
    throw new Error(`a stored data request is malformed (${first === undefined ? 'unknown' : `${first.path}: ${first.message}`})`);
  }
  return doc;
}

/** The erase plan of a request, if it has one of this version's shape. */
export function erasePlanOf(doc: DataRequestDoc): ErasePlan | undefined {
  return doc.plan === undefined || Array.isArray(doc.plan) ? undefined : doc.plan;
}

/** What the API shows of a request: not its internals, not its bundle or receipt (they have their own routes). */
export function requestView(doc: DataRequestDoc): JsonMap {
  const { bodyFingerprint: _fingerprint, sortKey: _sortKey, plan: _plan, bundle: _bundle, receipt, ...view } = doc;
  return { ...view, hasReceipt: receipt !== undefined };
}

/** A dry run's result without the lists of what it found (they name the subject). */
export function withoutItems(result: JsonMap): JsonMap {
  const copy = structuredClone(result);
  for (const list of [copy.deleted, copy.pseudonymized]) {
    if (Array.isArray(list)) for (const entry of list as JsonMap[]) delete entry.items;
  }
  return copy;
}

/** Said (API `result.warning`, CLI warning and exit code) when a subject is unknown: not the same as a fulfilled request. */
export const NOTHING_FOUND = 'Nothing was found for the subject in any place; nothing was exported, deleted or pseudonymized.';
