import { Option, type Command } from 'commander';
import { isValidId } from '../../domain/ids.js';
import { deriveDeviceKey } from '../../domain/sas.js';
import { CliError, ServiceApiError } from '../api-client.js';
import { formatFields, formatTable, text, yesNo, type Row } from '../output.js';
import type { CliIo } from '../program.js';
import {
  certificateText,
  addListOptions,
  adminAction,
  apiPath,
  asArray,
  asObject,
  collect,
  queryAll,
  readJsonArgument,
  runAdmin,
  selectQuery,
  type AdminContext,
  type ConnectionFlags,
  type Json,
  type ListFlags,
} from './common.js';

/**
 * `provisiond enrollment …` and `provisiond group …`: individual enrollments and enrollment groups through the
 * service API (dps-wire.md §2.2-2.4). Both kinds share one implementation; a KindSpec says what differs.
 */
interface KindSpec {
  command: 'enrollment' | 'group';
  noun: string;
  collection: 'enrollments' | 'enrollmentGroups';
  idField: 'registrationId' | 'enrollmentGroupId';
  idArgument: string;
  individual: boolean;
}

const INDIVIDUAL: KindSpec = {
  command: 'enrollment',
  noun: 'enrollment',
  collection: 'enrollments',
  idField: 'registrationId',
  idArgument: '<registration-id>',
  individual: true,
};
const GROUP: KindSpec = {
  command: 'group',
  noun: 'enrollment group',
  collection: 'enrollmentGroups',
  idField: 'enrollmentGroupId',
  idArgument: '<group-id>',
  individual: false,
};

type AttestationType = 'symmetricKey' | 'x509' | 'tpm';
const ATTESTATION_NAMES: Record<string, AttestationType> = {
  'symmetric-key': 'symmetricKey',
  symmetrickey: 'symmetricKey',
  x509: 'x509',
  tpm: 'tpm',
};

/** --reprovision values and the ReprovisionPolicy each stands for (dps-wire.md §3, §8.5). */
const REPROVISION: Record<string, { updateHubAssignment: boolean; migrateDeviceData: boolean }> = {
  migrate: { updateHubAssignment: true, migrateDeviceData: true },
  reset: { updateHubAssignment: true, migrateDeviceData: false },
  never: { updateHubAssignment: false, migrateDeviceData: false },
};
const DEFAULT_WEBHOOK_API_VERSION = '2021-10-01';

interface EnrollmentFlags extends ConnectionFlags {
  attestation?: string;
  primaryKey?: string;
  secondaryKey?: string;
  certificate?: string;
  secondaryCertificate?: string;
  caReference?: string;
  secondaryCaReference?: string;
  endorsementKey?: string;
  storageRootKey?: string;
  deviceId?: string;
  disabled?: boolean;
  enabled?: boolean;
  iotHub?: string[];
  allocationPolicy?: string;
  credentialPolicy?: string;
  webhookUrl?: string;
  webhookApiVersion?: string;
  initialTwin?: string;
  edge?: boolean;
  reprovision?: string;
}

export function registerEnrollmentCommands(program: Command, io: CliIo): void {
  for (const spec of [INDIVIDUAL, GROUP]) registerKind(program, io, spec);
}

function registerKind(program: Command, io: CliIo, spec: KindSpec): void {
  const root = program
    .command(spec.command)
    .description(spec.individual ? 'manage individual enrollments' : 'manage enrollment groups');
  const path = (id: string): string => apiPath(spec.collection, id);

  adminAction(
    addEnrollmentOptions(root.command('create').argument(spec.idArgument).description(`create an ${spec.noun} (fails if it exists)`), spec, 'create'),
    async (id: string, flags: EnrollmentFlags) =>
      runAdmin(io, flags, async (context) => {
        const body: Json = { [spec.idField]: id, attestation: buildAttestation(spec, flags, undefined) ?? { type: 'symmetricKey' } };
        applyFlags(spec, body, flags);
        const created = asObject(await createOnly(context, spec, id, body));
        context.print(created, () => describeEnrollment(spec, created, `created ${spec.noun} '${id}'`, true));
      }),
  );

  adminAction(root.command('show').argument(spec.idArgument).description(`show an ${spec.noun} (no secrets; see 'keys')`), async (id: string, flags: ConnectionFlags) =>
    runAdmin(io, flags, async (context) => {
      const doc = asObject(await context.request('GET', path(id)));
      context.print(doc, () => describeEnrollment(spec, doc, `${spec.noun} '${id}'`, false));
    }),
  );

  adminAction(
    root.command('keys').argument(spec.idArgument).description(`print the attestation mechanism of an ${spec.noun}, with its keys or certificates`),
    async (id: string, flags: ConnectionFlags) =>
      runAdmin(io, flags, async (context) => {
        const mechanism = asObject(await context.request('POST', apiPath(spec.collection, id, 'attestationmechanism')));
        context.print(mechanism, () => describeMechanism(mechanism, `attestation of ${spec.noun} '${id}'`));
      }),
  );

  if (!spec.individual) {
    adminAction(
      root
        .command('device-key')
        .argument(spec.idArgument)
        .argument('<registration-id>')
        .description("compute a device's symmetric keys from a symmetric-key group's keys (what the device registers with)"),
      async (id: string, registrationId: string, flags: ConnectionFlags) =>
        runAdmin(io, flags, async (context) => {
          // Fails early for an ID no device could register with, instead of handing out a key for it.
          if (!isValidId(registrationId)) {
            throw new CliError(`'${registrationId}' is not a valid registration ID: up to 128 letters, digits, '-', '.', '_' or ':', starting and ending with a letter or digit`);
          }
          const mechanism = asObject(await context.request('POST', apiPath(spec.collection, id, 'attestationmechanism')));
          const keys = asObject(mechanism.symmetricKey);
          const primary = text(keys.primaryKey);
          const secondary = text(keys.secondaryKey);
          if (text(mechanism.type) !== 'symmetricKey' || primary === undefined) {
            throw new CliError(`enrollment group '${id}' uses ${text(mechanism.type) ?? 'no'} attestation; device keys exist only for symmetric-key groups`);
          }
          const derived = {
            enrollmentGroupId: id,
            registrationId,
            primaryKey: deriveDeviceKey(primary, registrationId),
            ...(secondary === undefined ? {} : { secondaryKey: deriveDeviceKey(secondary, registrationId) }),
          };
          context.print(derived, () =>
            formatFields(`device keys of '${registrationId}' in enrollment group '${id}'`, [
              ['primary key', derived.primaryKey],
              ['secondary key', derived.secondaryKey],
              ['formula', 'base64(HMAC-SHA256(key = base64decode(group key), message = registration ID))'],
            ]),
          );
        }),
    );
  }

  adminAction(addListOptions(root.command('list').description(`list ${spec.noun}s (follows continuation)`)), async (flags: ListFlags) =>
    runAdmin(io, flags, async (context) => {
      const items = (await queryAll(context, apiPath(spec.collection, 'query'), selectQuery(spec.collection, flags.where), flags)).map(asObject);
      context.print(items, () => listTable(spec, items));
    }),
  );

  adminAction(
    addEnrollmentOptions(
      root.command('update').argument(spec.idArgument).description(`change the given fields of an ${spec.noun} (GET, modify, PUT with If-Match)`),
      spec,
      'update',
    ),
    async (id: string, flags: EnrollmentFlags) =>
      runAdmin(io, flags, async (context) => {
        const doc = asObject(await context.request('GET', path(id)));
        const attestation = buildAttestation(spec, flags, asObject(doc.attestation));
        if (attestation !== undefined) doc.attestation = attestation;
        const changes = applyFlags(spec, doc, flags) + (attestation === undefined ? 0 : 1);
        if (changes === 0) throw new CliError(`nothing to update: give at least one option (see 'provisiond ${spec.command} update --help')`);
        const etag = text(doc.etag);
        const updated = asObject(await context.request('PUT', path(id), { body: doc, ...(etag === undefined ? {} : { headers: { 'if-match': etag } }) }));
        // Keys are shown when the attestation changed (new or generated keys), not on every update.
        context.print(updated, () => describeEnrollment(spec, updated, `updated ${spec.noun} '${id}'`, attestation !== undefined));
      }),
  );

  adminAction(
    root
      .command('delete')
      .argument(spec.idArgument)
      .description(`delete an ${spec.noun} and its registration records`)
      .option('--etag <etag>', 'delete only if the etag still matches'),
    async (id: string, flags: ConnectionFlags & { etag?: string }) =>
      runAdmin(io, flags, async (context) => {
        await context.request('DELETE', path(id), flags.etag === undefined ? {} : { headers: { 'if-match': flags.etag } });
        context.print(undefined, () => `deleted ${spec.noun} '${id}'`);
      }),
  );
}

function addEnrollmentOptions(command: Command, spec: KindSpec, mode: 'create' | 'update'): Command {
  const types = spec.individual ? ['symmetric-key', 'x509', 'tpm'] : ['symmetric-key', 'x509'];
  command
    .addOption(new Option('--attestation <type>', mode === 'create' ? 'attestation type (default: from the other options, else symmetric-key)' : 'change the attestation type').choices(types))
    .option('--primary-key <base64>', 'symmetric key (generated when omitted on create, kept on update)')
    .option('--secondary-key <base64>', 'second symmetric key')
    .option('--certificate <file>', spec.individual ? 'X.509 device certificate (PEM or DER)' : 'X.509 signing (intermediate or root) certificate (PEM or DER)')
    .option('--secondary-certificate <file>', 'second X.509 certificate');
  if (!spec.individual) {
    command
      .option('--ca-reference <name>', 'name of a verified CA certificate of the instance (X.509 group)')
      .option('--secondary-ca-reference <name>', 'second CA certificate name');
  } else {
    command
      .option('--endorsement-key <base64>', 'TPM endorsement key')
      .option('--storage-root-key <base64>', 'TPM storage root key')
      .option('--device-id <id>', 'IoT Hub device ID (default: the registration ID)');
  }
  command.option('--disabled', 'provisioningStatus disabled: devices are refused');
  if (mode === 'update') command.option('--enabled', 'provisioningStatus enabled');
  command
    .option('--iot-hub <host>', 'a linked hub devices may be assigned to (repeatable; default: every linked hub)', collect)
    .addOption(new Option('--allocation-policy <policy>', 'hashed, geoLatency, static or custom (default: the instance default)').choices(['hashed', 'geoLatency', 'static', 'custom']))
    .option('--webhook-url <url>', 'custom allocation webhook (implies --allocation-policy custom)')
    .option('--webhook-api-version <version>', `api-version of the webhook payload (default ${DEFAULT_WEBHOOK_API_VERSION})`)
    .option('--initial-twin <json>', 'initial twin {"tags":{…},"properties":{"desired":{…}}}, inline or @file')
    .option('--edge', 'the devices are IoT Edge devices')
    .option('--credential-policy <name>', "the credential policy a device's CSR is issued under (docs/certificate-issuance.md)");
  if (mode === 'update') command.option('--no-edge', 'the devices are not IoT Edge devices');
  command.addOption(
    new Option('--reprovision <policy>', 'on re-registration to another hub: migrate the device data, reset it to the initial twin, or never move (default migrate)').choices(
      Object.keys(REPROVISION),
    ),
  );
  return command;
}

/**
 * PUT with If-None-Match: * — the server refuses to overwrite (412003), so create needs no read first: a read would
 * start a new device's log timeline with a lookup, need EnrollmentRead, and leave a gap another writer could use.
 */
async function createOnly(context: AdminContext, spec: KindSpec, id: string, body: Json): Promise<unknown> {
  try {
    return await context.request('PUT', apiPath(spec.collection, id), { body, headers: { 'if-none-match': '*' } });
  } catch (error) {
    if (error instanceof ServiceApiError && error.errorCode === 412003) {
      throw new CliError(`${spec.noun} '${id}' already exists; change it with 'provisiond ${spec.command} update ${id} …'`);
    }
    throw error;
  }
}

/**
 * The attestation the options describe, merged with the existing one on update. Undefined when no option touches
 * the attestation (the existing one is sent back unchanged; the server keeps keys and certificates it does not see).
 */
function buildAttestation(spec: KindSpec, flags: EnrollmentFlags, existing: Json | undefined): Json | undefined {
  const families: [AttestationType, boolean][] = [
    ['symmetricKey', flags.primaryKey !== undefined || flags.secondaryKey !== undefined],
    ['x509', flags.certificate !== undefined || flags.secondaryCertificate !== undefined || flags.caReference !== undefined || flags.secondaryCaReference !== undefined],
    ['tpm', flags.endorsementKey !== undefined || flags.storageRootKey !== undefined],
  ];
  const given = families.filter(([, present]) => present).map(([type]) => type);
  const explicit = flags.attestation === undefined ? undefined : ATTESTATION_NAMES[flags.attestation.toLowerCase()];
  if (flags.attestation !== undefined && explicit === undefined) throw new CliError(`--attestation must be symmetric-key, x509 or tpm`);
  if (given.length > 1) throw new CliError('the options mix attestation types; give options of one type only');
  const type = explicit ?? given[0];
  if (type === undefined) return undefined;
  if (given[0] !== undefined && given[0] !== type) throw new CliError(`--attestation ${flags.attestation ?? ''} does not go with options of ${given[0]} attestation`);
  const previous = existing?.type === type ? existing : undefined;

  switch (type) {
    case 'symmetricKey': {
      const keys: Json = {};
      if (flags.primaryKey !== undefined) keys.primaryKey = flags.primaryKey;
      if (flags.secondaryKey !== undefined) keys.secondaryKey = flags.secondaryKey;
      return { type, symmetricKey: keys };
    }
    case 'tpm': {
      const old = asObject(previous?.tpm);
      const endorsementKey = flags.endorsementKey ?? text(old.endorsementKey);
      if (endorsementKey === undefined) throw new CliError('TPM attestation needs --endorsement-key');
      const tpm: Json = { endorsementKey };
      const storageRootKey = flags.storageRootKey ?? text(old.storageRootKey);
      if (storageRootKey !== undefined) tpm.storageRootKey = storageRootKey;
      return { type, tpm };
    }
    case 'x509': {
      const old = asObject(previous?.x509);
      const certificateGiven = flags.certificate !== undefined || flags.secondaryCertificate !== undefined;
      const referenceGiven = flags.caReference !== undefined || flags.secondaryCaReference !== undefined;
      if (certificateGiven && referenceGiven) throw new CliError('an X.509 group takes certificates or CA references, not both');
      if (!spec.individual && (referenceGiven || (old.caReferences != null && !certificateGiven))) {
        const refs = asObject(old.caReferences);
        const caReferences: Json = {};
        const primary = flags.caReference ?? text(refs.primary);
        const secondary = flags.secondaryCaReference ?? text(refs.secondary);
        if (primary === undefined) throw new CliError('an X.509 group needs --certificate or --ca-reference');
        caReferences.primary = primary;
        if (secondary !== undefined) caReferences.secondary = secondary;
        return { type, x509: { caReferences } };
      }
      const slot = spec.individual ? 'clientCertificates' : 'signingCertificates';
      const oldPair = asObject(old[slot]);
      const certificate = (option: string, file: string | undefined, kept: unknown): unknown =>
        file === undefined ? (kept ?? undefined) : { certificate: certificateText(option, file) };
      const primary = certificate('--certificate', flags.certificate, oldPair.primary);
      const secondary = certificate('--secondary-certificate', flags.secondaryCertificate, oldPair.secondary);
      if (primary === undefined) {
        throw new CliError(spec.individual ? 'X.509 attestation needs --certificate' : 'an X.509 group needs --certificate or --ca-reference');
      }
      const pair: Json = { primary };
      if (secondary !== undefined) pair.secondary = secondary;
      return { type, x509: { [slot]: pair } };
    }
  }
}

/** Applies the non-attestation options to a document; returns how many fields changed. */
function applyFlags(spec: KindSpec, doc: Json, flags: EnrollmentFlags): number {
  let changes = 0;
  const set = (field: string, value: unknown): void => {
    doc[field] = value;
    changes += 1;
  };
  if (flags.disabled === true && flags.enabled === true) throw new CliError('--disabled and --enabled contradict each other');
  if (spec.individual && flags.deviceId !== undefined) set('deviceId', flags.deviceId);
  if (flags.disabled === true) set('provisioningStatus', 'disabled');
  if (flags.enabled === true) set('provisioningStatus', 'enabled');
  if (flags.iotHub !== undefined) set('iotHubs', flags.iotHub);
  if (flags.allocationPolicy !== undefined) set('allocationPolicy', flags.allocationPolicy);
  if (flags.credentialPolicy !== undefined) set('credentialPolicyName', flags.credentialPolicy === '' ? null : flags.credentialPolicy);
  if (flags.webhookUrl !== undefined || flags.webhookApiVersion !== undefined) {
    const old = asObject(doc.customAllocationDefinition);
    const webhookUrl = flags.webhookUrl ?? text(old.webhookUrl);
    if (webhookUrl === undefined) throw new CliError('--webhook-api-version needs --webhook-url');
    set('customAllocationDefinition', { webhookUrl, apiVersion: flags.webhookApiVersion ?? text(old.apiVersion) ?? DEFAULT_WEBHOOK_API_VERSION });
    if (flags.allocationPolicy === undefined && flags.webhookUrl !== undefined) doc.allocationPolicy = 'custom';
  }
  if (flags.initialTwin !== undefined) {
    set('initialTwin', initialTwinArgument(flags.initialTwin));
  }
  if (flags.edge !== undefined) set('capabilities', { iotEdge: flags.edge });
  if (flags.reprovision !== undefined) {
    const policy = REPROVISION[flags.reprovision];
    if (policy === undefined) throw new CliError(`--reprovision must be one of ${Object.keys(REPROVISION).join(', ')}`);
    set('reprovisionPolicy', policy);
  }
  return changes;
}

function reprovisionName(policy: unknown): string | undefined {
  const value = asObject(policy);
  if (value.updateHubAssignment === undefined) return undefined;
  if (value.updateHubAssignment !== true) return 'never (stay on the first hub)';
  return value.migrateDeviceData === true ? 'migrate device data' : 'reset to the initial twin';
}

function certificateSummary(value: unknown): string | undefined {
  const info = asObject(asObject(value).info);
  if (info.subjectName === undefined) return undefined;
  return `${text(info.subjectName) ?? ''} (SHA-256 ${text(info.sha256Thumbprint) ?? '?'}, expires ${text(info.notAfterUtc) ?? '?'})`;
}

function attestationRows(attestation: Json, withKeys: boolean): Row[] {
  const rows: Row[] = [['attestation', text(attestation.type)]];
  const symmetricKey = asObject(attestation.symmetricKey);
  if (withKeys) rows.push(['primary key', text(symmetricKey.primaryKey)], ['secondary key', text(symmetricKey.secondaryKey)]);
  const tpm = asObject(attestation.tpm);
  rows.push(['endorsement key', text(tpm.endorsementKey)], ['storage root key', text(tpm.storageRootKey)]);
  const x509 = asObject(attestation.x509);
  for (const [slot, label] of [['clientCertificates', 'certificate'], ['signingCertificates', 'signing certificate']] as const) {
    const pair = asObject(x509[slot]);
    rows.push([`primary ${label}`, certificateSummary(pair.primary)], [`secondary ${label}`, certificateSummary(pair.secondary)]);
  }
  const refs = asObject(x509.caReferences);
  rows.push(['primary CA reference', text(refs.primary)], ['secondary CA reference', text(refs.secondary)]);
  return rows;
}

function describeEnrollment(spec: KindSpec, doc: Json, title: string, withKeys: boolean): string {
  const custom = asObject(doc.customAllocationDefinition);
  const state = asObject(doc.registrationState);
  const hubs = asArray(doc.iotHubs).map((hub) => String(hub));
  const rows: Row[] = [
    ...attestationRows(asObject(doc.attestation), withKeys),
    ...(spec.individual ? ([['device ID', text(doc.deviceId) ?? `${text(doc.registrationId) ?? ''} (the registration ID)`]] as Row[]) : []),
    ['provisioning status', text(doc.provisioningStatus)],
    ['IoT hubs', hubs.length > 0 ? hubs.join(', ') : text(doc.iotHubHostName) ?? '(every linked hub)'],
    ['allocation policy', text(doc.allocationPolicy) ?? '(the instance default)'],
    ['allocation webhook', custom.webhookUrl === undefined ? undefined : `${text(custom.webhookUrl) ?? ''} (api-version ${text(custom.apiVersion) ?? '?'})`],
    ['reprovisioning', reprovisionName(doc.reprovisionPolicy)],
    ['credential policy', text(doc.credentialPolicyName)],
    ['IoT Edge', yesNo(asObject(doc.capabilities).iotEdge)],
    ['initial twin', doc.initialTwin === undefined ? undefined : JSON.stringify(doc.initialTwin)],
    ['registration', state.status === undefined ? undefined : registrationSummary(state)],
    ['etag', text(doc.etag)],
    ['created', text(doc.createdDateTimeUtc)],
    ['last updated', text(doc.lastUpdatedDateTimeUtc)],
  ];
  const hint = withKeys && asObject(doc.attestation).type === 'symmetricKey' ? `\n(print the keys again with 'provisiond ${spec.command} keys ${text(doc[spec.idField]) ?? ''}')` : '';
  return `${formatFields(title, rows)}${hint}`;
}

function registrationSummary(state: Json): string {
  const parts = [text(state.status) ?? ''];
  if (state.assignedHub !== undefined) parts.push(`to ${text(state.assignedHub) ?? ''} as device ${text(state.deviceId) ?? '?'}`);
  if (state.errorMessage !== undefined) parts.push(`(${text(state.errorCode) ?? ''} ${text(state.errorMessage) ?? ''})`);
  return parts.join(' ');
}

function describeMechanism(mechanism: Json, title: string): string {
  const rows: Row[] = attestationRows(mechanism, true);
  const x509 = asObject(mechanism.x509);
  const pems: string[] = [];
  for (const slot of ['clientCertificates', 'signingCertificates']) {
    const pair = asObject(x509[slot]);
    for (const which of ['primary', 'secondary']) {
      const pem = text(asObject(pair[which]).certificate);
      if (pem !== undefined) pems.push(`${which} certificate:\n${pem.trim()}`);
    }
  }
  return [formatFields(title, rows), ...pems].join('\n');
}

function listTable(spec: KindSpec, items: Json[]): string {
  const headers = spec.individual
    ? ['REGISTRATION ID', 'ATTESTATION', 'STATUS', 'DEVICE ID', 'REGISTRATION', 'IOT HUBS']
    : ['GROUP ID', 'ATTESTATION', 'STATUS', 'ALLOCATION', 'IOT HUBS'];
  const rows = items.map((item) => {
    const hubs = asArray(item.iotHubs).map(String).join(',') || '*';
    const attestation = text(asObject(item.attestation).type) ?? '';
    const status = text(item.provisioningStatus) ?? '';
    return spec.individual
      ? [text(item.registrationId) ?? '', attestation, status, text(item.deviceId) ?? '-', text(asObject(item.registrationState).status) ?? '-', hubs]
      : [text(item.enrollmentGroupId) ?? '', attestation, status, text(item.allocationPolicy) ?? 'default', hubs];
  });
  return formatTable(headers, rows, `no ${spec.noun}s`);
}

const isObject = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value);

/**
 * An initial twin has only `tags` and `properties.desired` (dps-wire.md §3 InitialTwin); the service keeps nothing
 * else, so `{"foo":1}` would be stored as an empty twin. Refuse it and show where such a value belongs.
 */
export function initialTwinArgument(value: string): Record<string, unknown> {
  const twin = readJsonArgument('--initial-twin', value);
  const shape = '{"tags":{…},"properties":{"desired":{…}}}';
  if (!isObject(twin)) throw new CliError(`--initial-twin must be a JSON object ${shape}`);
  const unknown = Object.keys(twin).filter((key) => key !== 'tags' && key !== 'properties');
  if (unknown.length > 0) {
    const example = JSON.stringify({ properties: { desired: Object.fromEntries(unknown.map((key) => [key, twin[key]])) } });
    throw new CliError(
      `--initial-twin takes only "tags" and "properties" (${shape}), not ${unknown.map((key) => JSON.stringify(key)).join(', ')}; a desired property is written ${example}`,
    );
  }
  if (twin.tags !== undefined && !isObject(twin.tags)) throw new CliError('--initial-twin: "tags" must be an object');
  if (twin.properties !== undefined) {
    if (!isObject(twin.properties)) throw new CliError('--initial-twin: "properties" must be an object {"desired":{…}}');
    const other = Object.keys(twin.properties).filter((key) => key !== 'desired');
    if (other.length > 0) {
      throw new CliError(
        `--initial-twin: "properties" takes only "desired" (reported properties come from the device), not ${other.map((key) => JSON.stringify(key)).join(', ')}`,
      );
    }
    if (twin.properties.desired !== undefined && !isObject(twin.properties.desired)) throw new CliError('--initial-twin: "properties.desired" must be an object');
  }
  return twin;
}
