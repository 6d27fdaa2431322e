import { randomBytes } from 'node:crypto';
import { Option, type Command } from 'commander';
import { CliError, formatServiceConnectionString } from '../api-client.js';
import { formatFields, formatTable, text } from '../output.js';
import type { CliIo } from '../program.js';
import { adminAction, apiPath, asArray, asObject, collect, positiveInteger, runAdmin, type ConnectionFlags, type Json } from './common.js';

/**
 * `provisiond instance …`: the instance the connection string names (show, update) and, with the operator instance's
 * connection string, the other instances of the deployment (create, list, delete). Needs ServiceConfig.
 */
const DEFAULT_POLICIES = ['hashed', 'geoLatency', 'static'];

export function registerInstanceCommands(program: Command, io: CliIo): void {
  const root = program.command('instance').description('show and change this instance; create, list and delete instances (operator instance)');

  adminAction(root.command('show').description('show this instance: name, ID scope, host names, default allocation policy'), async (flags: ConnectionFlags) =>
    runAdmin(io, flags, async (context) => {
      const instance = asObject(await context.request('GET', apiPath('instance')));
      context.print(instance, () => describeInstance(instance));
    }),
  );

  adminAction(
    root
      .command('update')
      .description("change this instance's default allocation policy, service host names, system-log retention or lifecycle-event webhook")
      .addOption(new Option('--allocation-policy <policy>', 'default allocation policy').choices(DEFAULT_POLICIES))
      .option('--host-names <names>', 'service host names, comma-separated or repeated (replaces the list)', collect)
      .option('--audit-retention-days <days>', 'keep system-log events this many days (1 to 3650; default 90)', positiveInteger)
      .option('--event-webhook <url>', 'send signed lifecycle events to this http(s) URL')
      .option('--event-webhook-secret <secret>', 'the secret that signs each delivery, 16 to 256 characters (default: a new random one, printed once)')
      .option('--no-event-webhook', 'stop sending lifecycle events'),
    async (flags: ConnectionFlags & { allocationPolicy?: string; hostNames?: string[]; auditRetentionDays?: number; eventWebhook?: string | false; eventWebhookSecret?: string }) =>
      runAdmin(io, flags, async (context) => {
        const body: Json = {};
        if (flags.allocationPolicy !== undefined) body.allocationPolicy = flags.allocationPolicy;
        if (flags.hostNames !== undefined) body.serviceHostNames = flags.hostNames;
        if (flags.auditRetentionDays !== undefined) body.auditRetentionDays = flags.auditRetentionDays;
        if (flags.eventWebhookSecret !== undefined && typeof flags.eventWebhook !== 'string') {
          throw new CliError('--event-webhook-secret goes with --event-webhook <url>');
        }
        // The server never shows the secret again, so a generated one is printed here, once.
        let generatedSecret: string | undefined;
        if (flags.eventWebhook === false) body.eventWebhook = null;
        else if (flags.eventWebhook !== undefined) {
          const secret = flags.eventWebhookSecret ?? (generatedSecret = randomBytes(32).toString('base64url'));
          body.eventWebhook = { url: flags.eventWebhook, secret };
        }
        if (Object.keys(body).length === 0) {
          throw new CliError('nothing to update: give --allocation-policy, --host-names, --audit-retention-days, --event-webhook <url> or --no-event-webhook');
        }
        const instance = asObject(await context.request('PATCH', apiPath('instance'), { body }));
        context.print(generatedSecret === undefined ? instance : { ...instance, eventWebhookSecret: generatedSecret }, () =>
          generatedSecret === undefined
            ? describeInstance(instance)
            : `${describeInstance(instance)}\nevent webhook secret (shown once; the receiver checks x-provisiond-signature with it): ${generatedSecret}`,
        );
      }),
  );

  adminAction(
    root
      .command('create')
      .argument('<name>')
      .description('create an instance with its own ID scope, host names and owner policy (operator instance only)')
      .requiredOption('--host-names <names>', 'service host names of the new instance, comma-separated or repeated; the server certificate must cover them', collect)
      .addOption(new Option('--allocation-policy <policy>', 'default allocation policy (default hashed)').choices(DEFAULT_POLICIES)),
    async (name: string, flags: ConnectionFlags & { hostNames: string[]; allocationPolicy?: string }) =>
      runAdmin(io, flags, async (context) => {
        const body: Json = { serviceHostNames: flags.hostNames };
        if (flags.allocationPolicy !== undefined) body.allocationPolicy = flags.allocationPolicy;
        const created = asObject(await context.request('PUT', apiPath('instances', name), { body }));
        context.print(created, () => {
          const instance = asObject(created.instance);
          const owner = asObject(created.ownerPolicy);
          const hostName = text(asArray(instance.serviceHostNames)[0]);
          const keyName = text(owner.keyName);
          const key = text(owner.primaryKey);
          const connectionString =
            hostName === undefined || keyName === undefined || key === undefined
              ? undefined
              : formatServiceConnectionString({ ...context.client.connection, hostName, keyName, key });
          return `${describeInstance(instance)}\n${formatFields('owner policy', [
            ['name', keyName],
            ['rights', text(owner.rights)],
            ['connection string', connectionString],
          ])}`;
        });
      }),
  );

  adminAction(root.command('list').description('list every instance of the deployment (operator instance only)'), async (flags: ConnectionFlags) =>
    runAdmin(io, flags, async (context) => {
      const instances = asArray(await context.request('GET', apiPath('instances'))).map(asObject);
      context.print(instances, () =>
        formatTable(
          ['NAME', 'ID SCOPE', 'ALLOCATION', 'HOST NAMES', 'CREATED'],
          instances.map((instance) => [
            text(instance.name) ?? '',
            text(instance.idScope) ?? '',
            text(instance.allocationPolicy) ?? '',
            asArray(instance.serviceHostNames).map(String).join(','),
            text(instance.createdDateTimeUtc) ?? '',
          ]),
          'no instances',
        ),
      );
    }),
  );

  adminAction(root.command('delete').argument('<name>').description('delete an instance and everything in it (operator instance only)'), async (name: string, flags: ConnectionFlags) =>
    runAdmin(io, flags, async (context) => {
      await context.request('DELETE', apiPath('instances', name));
      context.print(undefined, () => `deleted instance '${name}'`);
    }),
  );
}

function describeInstance(instance: Json): string {
  return formatFields(`instance '${text(instance.name) ?? ''}'`, [
    ['ID scope', text(instance.idScope)],
    ['service host names', asArray(instance.serviceHostNames).map(String).join(', ')],
    ['default allocation policy', text(instance.allocationPolicy)],
    ['system log retention', instance.auditRetentionDays === undefined ? undefined : `${text(instance.auditRetentionDays) ?? ''} days`],
    ['lifecycle event webhook', text(instance.eventWebhookUrl) ?? 'none'],
    ['created', text(instance.createdDateTimeUtc)],
  ]);
}
