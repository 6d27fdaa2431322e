import { createApp } from '../src/app.js';
import { loadConfig } from '../src/config/config.js';

/**
 * The server under test, in its own process so its RSS and CPU are its own. Prints one JSON line when listening.
 * Optional: a store (a postgres:// URL for nodes sharing a database) and the address to listen on.
 */
const [dataDir = '', port = '8443', mode = 'provisiond', store = 'sqlite', listenHost = '127.0.0.1'] = process.argv.slice(2);

if (mode === 'baseline') {
  // The machine's ceiling: a minimal Fastify TLS server answering a small JSON body.
  const { readFileSync } = await import('node:fs');
  const { default: Fastify } = await import('fastify');
  const app = Fastify({ https: { key: readFileSync(`${dataDir}/tls/server.key`), cert: readFileSync(`${dataDir}/tls/server.pem`) } });
  app.get('/ping', async () => ({ status: 'ok' }));
  await app.listen({ port: Number(port), host: listenHost });
  process.once('SIGTERM', () => void app.close().then(() => process.exit(0)));
} else {
  const config = loadConfig({
    flags: {
      dataDir,
      httpsPort: Number(port),
      listenHost,
      store,
      hostNames: ['localhost', '127.0.0.1', '127.0.0.2', '127.0.0.3'],
      logLevel: (process.env.BENCH_LOG_LEVEL ?? 'warn') as 'warn',
      registrationsPerSecond: 0,
      pollsPerSecondPerDevice: 0,
      mqttEnabled: false,
      amqpEnabled: false,
    },
  });
  const app = await createApp({ config });
  await app.listen();
  const info = await app.info();
  // A clean exit on SIGTERM, so --cpu-prof can write its profile.
  process.once('SIGTERM', () => void app.close().then(() => process.exit(0)));
  process.stdout.write(`${JSON.stringify(info)}\n`);
}
process.stdout.write('listening\n');
