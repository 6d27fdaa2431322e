import { Option, type Command } from 'commander';
import { CliError, formatServiceConnectionString, type ServiceConnection } from '../api-client.js';
import { formatFields, formatTable, text } from '../output.js';
import type { CliIo } from '../program.js';
import { adminAction, apiPath, asArray, asObject, collect, runAdmin, type ConnectionFlags, type Json } from './common.js';

/** `provisiond policy …`: shared access policies of the instance (needs ServiceConfig). */
const RIGHTS = ['ServiceConfig', 'EnrollmentRead', 'EnrollmentWrite', 'RegistrationStatusRead', 'RegistrationStatusWrite', 'DeviceConnect'];

export function registerPolicyCommands(program: Command, io: CliIo): void {
  const root = program.command('policy').description('manage shared access policies (the keys of the service API)');

  adminAction(
    root
      .command('create')
      .argument('<name>')
      .description('create a policy, or change the rights of an existing one (keys are kept)')
      .requiredOption('--rights <rights>', `rights, comma-separated or repeated: ${RIGHTS.join(', ')}`, collect)
      .option('--primary-key <base64>', 'primary key (generated when omitted)')
      .option('--secondary-key <base64>', 'secondary key (generated when omitted)'),
    async (name: string, flags: ConnectionFlags & { rights: string[]; primaryKey?: string; secondaryKey?: string }) =>
      runAdmin(io, flags, async (context) => {
        const body: Json = { rights: flags.rights.join(', ') };
        if (flags.primaryKey !== undefined) body.primaryKey = flags.primaryKey;
        if (flags.secondaryKey !== undefined) body.secondaryKey = flags.secondaryKey;
        const policy = asObject(await context.request('PUT', apiPath('accessPolicies', name), { body }));
        context.print(policy, () => describePolicy(context.client.connection, policy, `policy '${name}'`));
      }),
  );

  adminAction(root.command('list').description('list the policies and their rights (no keys)'), async (flags: ConnectionFlags) =>
    runAdmin(io, flags, async (context) => {
      const policies = asArray(await context.request('GET', apiPath('accessPolicies'))).map(asObject);
      context.print(policies, () =>
        formatTable(['NAME', 'RIGHTS'], policies.map((policy) => [text(policy.keyName) ?? '', text(policy.rights) ?? '']), 'no policies'),
      );
    }),
  );

  adminAction(root.command('keys').argument('<name>').description("print a policy's keys and connection strings"), async (name: string, flags: ConnectionFlags) =>
    runAdmin(io, flags, async (context) => {
      const policy = asObject(await context.request('POST', apiPath('accessPolicies', name, 'listKeys')));
      context.print(policy, () => describePolicy(context.client.connection, policy, `policy '${name}'`));
    }),
  );

  adminAction(
    root
      .command('regenerate')
      .argument('<name>')
      .description('replace the primary or secondary key of a policy')
      .addOption(new Option('--key <which>', 'which key').choices(['primary', 'secondary']).default('primary')),
    async (name: string, flags: ConnectionFlags & { key: string }) =>
      runAdmin(io, flags, async (context) => {
        const policy = asObject(await context.request('POST', apiPath('accessPolicies', name, 'regenerateKey'), { body: { keyType: flags.key } }));
        context.print(policy, () => describePolicy(context.client.connection, policy, `policy '${name}': new ${flags.key} key`));
      }),
  );

  adminAction(root.command('delete').argument('<name>').description('delete a policy (not the last one with ServiceConfig)'), async (name: string, flags: ConnectionFlags) =>
    runAdmin(io, flags, async (context) => {
      await context.request('DELETE', apiPath('accessPolicies', name));
      context.print(undefined, () => `deleted policy '${name}'`);
    }),
  );
}

function describePolicy(connection: ServiceConnection, policy: Json, title: string): string {
  const keyName = text(policy.keyName);
  if (keyName === undefined) throw new CliError('the server answered without a keyName');
  const connectionString = (key: unknown): string | undefined =>
    typeof key === 'string' ? formatServiceConnectionString({ ...connection, keyName, key }) : undefined;
  return formatFields(title, [
    ['rights', text(policy.rights)],
    ['primary key', text(policy.primaryKey)],
    ['secondary key', text(policy.secondaryKey)],
    ['primary connection string', connectionString(policy.primaryKey)],
    ['secondary connection string', connectionString(policy.secondaryKey)],
  ]);
}
