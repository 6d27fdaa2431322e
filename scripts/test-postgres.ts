import { startPostgresCluster, stopPostgresCluster } from '../test/postgres.js';

/**
 * scripts/test.sh: `start` prints "<url> <dir>" of a new private PostgreSQL cluster; `stop <dir>` stops and removes it.
 */
const [command, dir] = process.argv.slice(2);
if (command === 'start') {
  const cluster = await startPostgresCluster();
  process.stdout.write(`${cluster.url} ${cluster.dir}\n`);
} else if (command === 'stop' && dir !== undefined) {
  stopPostgresCluster(dir);
} else {
  process.stderr.write('usage: test-postgres.ts start | stop <dir>\n');
  process.exitCode = 2;
}
