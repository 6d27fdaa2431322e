/**
 * The two classes of system-log event (docs/customer-data.md "The system log"). An **access** read data and left it
 * as it was: a service-API read, list or query (the log itself included) and a data export. A **change** wrote, or
 * tried to write: a service-API write, a device's registration attempt, a hub write, a webhook exchange made for a
 * registration, an erase. Who acted (an operator's policy, a device, provisiond itself) is the event's `kind` and
 * `actor`, so the class needs no third value.
 */
export const AUDIT_CLASSES = ['access', 'change'] as const;
export type AuditClass = (typeof AUDIT_CLASSES)[number];

/**
 * How an event ended. `notFound` is a read that found nothing: neutral, not a failure (the reader asked about an ID
 * that does not exist, which is worth knowing but went wrong nowhere). A change that finds nothing is a failure.
 */
export const AUDIT_OUTCOMES = ['success', 'failure', 'notFound'] as const;
export type AuditOutcome = (typeof AUDIT_OUTCOMES)[number];

/**
 * The verbs of service-API operation IDs (`Noun_Verb`) that only read. Every other verb writes. Kept as suffixes so
 * migration 0015 can classify stored events with the same list (`like '%_Verb'`).
 */
export const ACCESS_VERBS = ['Get', 'Query', 'List', 'ListKeys', 'GetAttestationMechanism', 'GetBundle', 'GetReceipt', 'GetSigningKey'] as const;

/** The data-request events that read: an export shows the subject's data, an erase changes it. */
export const ACCESS_DATA_REQUEST_OPERATIONS = ['export'] as const;

export function auditClassOf(event: { kind: string; operation: string }): AuditClass {
  if (event.kind === 'serviceApi') {
    const verb = event.operation.slice(event.operation.indexOf('_') + 1);
    return (ACCESS_VERBS as readonly string[]).includes(verb) ? 'access' : 'change';
  }
  if (event.kind === 'dataRequest') return (ACCESS_DATA_REQUEST_OPERATIONS as readonly string[]).includes(event.operation) ? 'access' : 'change';
  return 'change';
}
