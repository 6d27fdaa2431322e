import type { Command } from 'commander';
import { CliError, ServiceApiError } from '../api-client.js';
import { formatFields, formatTable, text, yesNo } from '../output.js';
import type { CliIo } from '../program.js';
import { adminAction, apiPath, asArray, asObject, positiveInteger, runAdmin, type ConnectionFlags, type Json } from './common.js';

/** `provisiond hub …`: the IoT hubs linked to the instance (dps-wire.md §8.1; needs ServiceConfig). */
interface LinkFlags extends ConnectionFlags {
  builtIn?: boolean;
  hubConnectionString?: string;
  weight?: number;
  applyAllocationPolicy?: boolean;
  location?: string;
}

export function registerHubCommands(program: Command, io: CliIo): void {
  const root = program.command('hub').description('link, list and unlink IoT hubs');

  adminAction(
    root
      .command('link')
      .argument('<hub-host-name>')
      .description('link a hub (built in, or external by its connection string), or change the settings of a linked one')
      .option('--built-in', 'host the hub inside provisiond')
      .option('--hub-connection-string <cs>', "external hub: HostName=<hub-host-name>;SharedAccessKeyName=…;SharedAccessKey=… (the hub's, not the service's)")
      .option('--weight <n>', 'allocation weight 1-1000 (default 1)', positiveInteger)
      .option('--apply-allocation-policy', 'allocation policies may choose this hub (applyAllocationPolicy true, the default)')
      .option('--no-apply-allocation-policy', 'allocation policies do not choose this hub (applyAllocationPolicy false)')
      .option('--location <region>', 'location label for geoLatency allocation'),
    async (name: string, flags: LinkFlags) =>
      runAdmin(io, flags, async (context) => {
        if (flags.builtIn === true && flags.hubConnectionString !== undefined) {
          throw new CliError('give either --built-in or --hub-connection-string, not both');
        }
        // PUT replaces the whole entry, so settings not given are carried over from the linked hub.
        const existing = await getHub(context.request, name);
        if (existing === undefined && flags.builtIn !== true && flags.hubConnectionString === undefined) {
          throw new CliError(`hub '${name}' is not linked yet: give --built-in or --hub-connection-string`);
        }
        const builtIn = flags.builtIn === true || (flags.hubConnectionString === undefined && existing?.builtIn === true);
        const body: Json = { builtIn, applyAllocationPolicy: flags.applyAllocationPolicy ?? existing?.applyAllocationPolicy ?? true };
        if (flags.hubConnectionString !== undefined) body.connectionString = flags.hubConnectionString;
        const weight = flags.weight ?? existing?.allocationWeight;
        if (weight !== undefined) body.allocationWeight = weight;
        const location = flags.location ?? existing?.location;
        if (location !== undefined) body.location = location;
        const hub = asObject(await context.request('PUT', apiPath('linkedHubs', name), { body }));
        context.print(hub, () => describeHub(hub, `linked hub '${text(hub.name) ?? name}'`));
      }),
  );

  adminAction(root.command('list').description('list the linked hubs'), async (flags: ConnectionFlags) =>
    runAdmin(io, flags, async (context) => {
      const hubs = asArray(await context.request('GET', apiPath('linkedHubs'))).map(asObject);
      context.print(hubs, () =>
        formatTable(
          ['NAME', 'BUILT-IN', 'WEIGHT', 'APPLY ALLOCATION POLICY', 'LOCATION'],
          hubs.map((hub) => [text(hub.name) ?? '', yesNo(hub.builtIn), text(hub.allocationWeight) ?? '', yesNo(hub.applyAllocationPolicy), text(hub.location) ?? '-']),
          'no linked hubs',
        ),
      );
    }),
  );

  adminAction(root.command('show').argument('<hub-host-name>').description('show one linked hub (its key hidden)'), async (name: string, flags: ConnectionFlags) =>
    runAdmin(io, flags, async (context) => {
      const hub = asObject(await context.request('GET', apiPath('linkedHubs', name)));
      context.print(hub, () => describeHub(hub, `linked hub '${text(hub.name) ?? name}'`));
    }),
  );

  adminAction(root.command('unlink').argument('<hub-host-name>').description('unlink a hub'), async (name: string, flags: ConnectionFlags) =>
    runAdmin(io, flags, async (context) => {
      await context.request('DELETE', apiPath('linkedHubs', name));
      context.print(undefined, () => `unlinked hub '${name}'`);
    }),
  );
}

async function getHub(request: (method: string, path: string) => Promise<unknown>, name: string): Promise<Json | undefined> {
  try {
    return asObject(await request('GET', apiPath('linkedHubs', name)));
  } catch (error) {
    if (error instanceof ServiceApiError && error.status === 404) return undefined;
    throw error;
  }
}

function describeHub(hub: Json, title: string): string {
  return formatFields(title, [
    ['built-in', yesNo(hub.builtIn)],
    ['connection string', text(hub.connectionString)],
    ['allocation weight', text(hub.allocationWeight)],
    ['apply allocation policy', yesNo(hub.applyAllocationPolicy)],
    ['location', text(hub.location)],
  ]);
}
