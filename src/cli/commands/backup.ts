import type { Command } from 'commander';
import type { CliIo } from '../program.js';

/**
 * `provisiond backup` and `provisiond restore`: server-side commands like `serve` and `info` (they work on a data
 * directory, not through the service API). The backup code is loaded only when one of them runs.
 */
interface BackupFlags {
  dataDir?: string;
  store?: string;
  out: string;
  json?: boolean;
}

interface RestoreFlags {
  dataDir: string;
  compareDataDir?: string;
  json?: boolean;
}

export function registerBackupCommands(program: Command, io: CliIo, version: string): void {
  program
    .command('backup')
    .description('write a consistent backup of a data directory (database + TLS material + keys) while the server runs')
    .requiredOption('--out <file>', 'the archive to write (gzip tar, mode 0600: it holds private keys)')
    .option('--data-dir <dir>', 'data directory; default ./data (or $PROVISIOND_DATA_DIR)')
    .option('--store <store>', "'sqlite' (default) or the SQLite file path the server uses")
    .option('--json', 'print the manifest as JSON')
    .action(async (flags: BackupFlags) => {
      // The config schema library loads only when a backup runs, so every other command starts fast.
      const { loadConfig, sqliteFile } = await import('../../config/config.js');
      const config = loadConfig({ env: io.env, flags: { dataDir: flags.dataDir, store: flags.store } });
      if (/^postgres(ql)?:\/\//.test(config.store)) {
        throw new Error('the store is PostgreSQL: dump the database with pg_dump and copy the data directory (its keys) as docs/operations.md says');
      }
      const { createBackup } = await import('../../backup/backup.js');
      const manifest = await createBackup({ dataDir: config.dataDir, databaseFile: sqliteFile(config), out: flags.out, version });
      if (flags.json === true) {
        io.out(`${JSON.stringify(manifest, null, 2)}\n`);
        return;
      }
      io.out(
        [
          `backup written to ${flags.out}`,
          `  taken:      ${manifest.createdUtc}`,
          `  instances:  ${manifest.instances.map((instance) => `${instance.name} (${instance.idScope})`).join(', ')}`,
          `  database:   ${manifest.database.bytes} bytes`,
          `  files:      ${manifest.files.map((file) => file.path).join(', ')}`,
        ].join('\n') + '\n',
      );
    });

  program
    .command('restore')
    .description('restore a backup into an empty data directory')
    .argument('<file>', 'an archive written by `provisiond backup`')
    .requiredOption('--data-dir <dir>', 'the empty (or new) directory to restore into')
    .option('--compare-data-dir <dir>', 'the data directory this restore replaces: erases completed there after the backup are listed')
    .option('--json', 'print the manifest and the undone erases as JSON')
    .action(async (file: string, flags: RestoreFlags) => {
      const { formatUndoneErases, restoreBackup } = await import('../../backup/restore.js');
      const result = await restoreBackup({ archive: file, dataDir: flags.dataDir, ...(flags.compareDataDir === undefined ? {} : { compareDataDir: flags.compareDataDir }) });
      if (flags.json === true) io.out(`${JSON.stringify(result, null, 2)}\n`);
      else {
        io.out(
          [
            `restored ${file} into ${flags.dataDir}`,
            `  taken:      ${result.manifest.createdUtc}`,
            `  instances:  ${result.manifest.instances.map((instance) => `${instance.name} (${instance.idScope})`).join(', ')}`,
            `start it with: provisiond serve --data-dir ${flags.dataDir}`,
          ].join('\n') + '\n',
        );
      }
      const warning = formatUndoneErases(result);
      if (warning !== '') io.err(warning);
      else if (flags.compareDataDir === undefined) {
        io.err(
          `note: a restore undoes every erase completed after ${result.manifest.createdUtc}; pass --compare-data-dir <the replaced data directory> to list them (docs/customer-data.md)\n`,
        );
      }
    });
}
