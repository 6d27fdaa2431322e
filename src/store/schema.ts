/** Table shapes. Documents are JSON text; the columns queries need are pulled out, keys lower-cased. */
export interface Database {
  instances: { id: string; id_scope_key: string; name_key: string; doc: string };
  instance_host_names: { host_name_key: string; instance_id: string };
  access_policies: { instance_id: string; name_key: string; doc: string };
  linked_hubs: { instance_id: string; name_key: string; doc: string };
  enrollments: {
    instance_id: string;
    registration_id_key: string;
    device_id_key: string;
    provisioning_status: string;
    attestation_type: string;
    etag: string;
    doc: string;
  };
  enrollment_groups: {
    instance_id: string;
    group_id_key: string;
    provisioning_status: string;
    attestation_type: string;
    etag: string;
    doc: string;
  };
  enrollment_certificates: {
    instance_id: string;
    sha256_thumbprint: string;
    owner_kind: string;
    owner_key: string;
  };
  /** CA certificates of an instance (proof of possession); `sha256_thumbprint` upper-case. */
  ca_certificates: { instance_id: string; name_key: string; sha256_thumbprint: string; etag: string; doc: string };
  audit_events: {
    instance_id: string;
    event_id: string;
    time_utc: string;
    kind: string;
    actor: string;
    outcome: string;
    /** `access` or `change` (migration 0015). */
    event_class: string;
    registration_id_key: string;
    device_id_key: string;
    group_id_key: string;
    doc: string;
  };
  /** `subject_key`: the subject's ID lower-cased while the request still names it, '' once it knows only the hash. */
  data_requests: { instance_id: string; request_id_key: string; sort_key: string; status: string; type: string; subject_key: string; doc: string };
  /** The IDs an event's `data` names, lower-cased ('' when absent), so an erase finds the subject's events by index. */
  event_outbox: { instance_id: string; event_id: string; registration_id_key: string; device_id_key: string; group_id_key: string; doc: string };
  /** Each hub device provisiond created or assigned for a registration (customer data: the subject→device link). */
  hub_device_links: { instance_id: string; registration_id_key: string; hub_key: string; device_id_key: string; group_id_key: string; doc: string };
  registration_intents: { instance_id: string; operation_id: string; created_at: string; doc: string };
  /** One row per fenced ID of a running erase; `doc` holds the request ID and the ID's keyed hash, never the ID. */
  erase_fences: { instance_id: string; subject_kind: string; id_key: string; request_id_key: string; doc: string };
  operations: {
    instance_id: string;
    operation_id: string;
    registration_id_key: string;
    updated_at: string;
    doc: string;
  };
  registrations: {
    instance_id: string;
    registration_id_key: string;
    device_id_key: string;
    group_id_key: string;
    status: string;
    assigned_hub_key: string;
    etag: string;
    doc: string;
  };
  /** Built-in hubs (hubs/built-in-hubs.ts): the record, by lower-cased host name. */
  built_in_hubs: { name_key: string; doc: string };
  /** Built-in hub devices: identity + twin in one document; `revision` guards compare-and-swap writes. */
  hub_devices: { hub_key: string; device_id_key: string; status: string; revision: string; doc: string };
  /** Token buckets shared by every node (rate limits). */
  rate_limits: { bucket_key: string; tokens: number; at_ms: number | string };
  /** Named leases: who works on something (a data-request job, an instance's event delivery) and until when. */
  leases: { name: string; owner: string; until_ms: number | string };
  /** The issuing CA of an instance (certificate and key), created on first need or supplied by the operator. */
  issuing_cas: { instance_id: string; doc: string };
  /** Credential policies: (instance, lower-cased name) -> document. */
  credential_policies: { instance_id: string; name_key: string; doc: string };
  /** Certificates issued from CSRs; `revoked` is '' or the revocation time; `sha256_thumbprint` upper-case. */
  issued_certificates: { instance_id: string; serial: string; registration_id_key: string; sha256_thumbprint: string; revoked: string; doc: string };
  /** Counters bumped by writes that node caches depend on (an instance's enrollment groups). */
  change_counters: { name: string; version: number | string };
}
