import type { Command } from 'commander';
import { formatFields, formatTable, text } from '../output.js';
import type { CliIo } from '../program.js';
import { addListOptions, adminAction, apiPath, asObject, queryAll, runAdmin, selectQuery, type ConnectionFlags, type Json, type ListFlags } from './common.js';

/** `provisiond registration …`: registration records (dps-wire.md §2.2, §8.4). */
export function registerRegistrationCommands(program: Command, io: CliIo): void {
  const root = program.command('registration').description('show, list and delete registration records');

  adminAction(root.command('show').argument('<registration-id>').description('show the registration record of a device'), async (id: string, flags: ConnectionFlags) =>
    runAdmin(io, flags, async (context) => {
      const record = asObject(await context.request('GET', apiPath('registrations', id)));
      context.print(record, () => describeRegistration(record));
    }),
  );

  adminAction(
    addListOptions(
      root
        .command('list')
        .description('list the registration records of the devices registered through an enrollment group')
        .requiredOption('--group <group-id>', 'the enrollment group'),
      "\"status = 'failed' AND registrationId LIKE 'line1-%'\"",
    ),
    async (flags: ListFlags & { group: string }) =>
      runAdmin(io, flags, async (context) => {
        const path = apiPath('registrations', flags.group, 'query');
        const items = (await queryAll(context, path, flags.where === undefined ? undefined : selectQuery('registrations', flags.where), flags)).map(asObject);
        context.print(items, () =>
          formatTable(
            ['REGISTRATION ID', 'STATUS', 'DEVICE ID', 'ASSIGNED HUB', 'LAST UPDATED'],
            items.map((item) => [
              text(item.registrationId) ?? '',
              text(item.status) ?? '',
              text(item.deviceId) ?? '-',
              text(item.assignedHub) ?? '-',
              text(item.lastUpdatedDateTimeUtc) ?? '-',
            ]),
            `no registration records in group '${flags.group}'`,
          ),
        );
      }),
  );

  adminAction(
    root
      .command('delete')
      .argument('<registration-id>')
      .description('delete a registration record (the device stays in its hub)')
      .option('--etag <etag>', 'delete only if the etag still matches'),
    async (id: string, flags: ConnectionFlags & { etag?: string }) =>
      runAdmin(io, flags, async (context) => {
        await context.request('DELETE', apiPath('registrations', id), flags.etag === undefined ? {} : { headers: { 'if-match': flags.etag } });
        context.print(undefined, () => `deleted registration record '${id}'`);
      }),
  );
}

function describeRegistration(record: Json): string {
  return formatFields(`registration '${text(record.registrationId) ?? ''}'`, [
    ['status', text(record.status)],
    ['substatus', text(record.substatus)],
    ['assigned hub', text(record.assignedHub)],
    ['device ID', text(record.deviceId)],
    ['error', record.errorCode === undefined ? undefined : `${text(record.errorCode) ?? ''} ${text(record.errorMessage) ?? ''}`],
    ['payload', record.payload === undefined ? undefined : JSON.stringify(record.payload)],
    ['etag', text(record.etag)],
    ['created', text(record.createdDateTimeUtc)],
    ['last updated', text(record.lastUpdatedDateTimeUtc)],
  ]);
}
