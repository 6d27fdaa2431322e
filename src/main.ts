import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline/promises';
import { setFlagsFromString } from 'node:v8';
import { CommanderError } from 'commander';
import type { App } from './app.js';
import { buildProgram, type CliIo } from './cli/program.js';

/** The only place that reads argv and env, and the only place that listens. */
const version = (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version;
const io: CliIo = {
  env: process.env,
  out: (text: string) => process.stdout.write(text),
  err: (text: string) => process.stderr.write(text),
  // Only a person at a terminal can confirm (data erase); the question goes to stderr, so stdout stays the output.
  ...(process.stdin.isTTY === true ? { prompt: askOnTerminal } : {}),
};

async function askOnTerminal(question: string): Promise<string> {
  const terminal = createInterface({ input: process.stdin, output: process.stderr });
  try {
    return await terminal.question(question);
  } finally {
    terminal.close();
  }
}

let running: App | undefined;

/** The server is loaded only by the commands that run it: admin commands start in half the time without it. */
const loadApp = () => import('./app.js');

const program = buildProgram(
  io,
  {
    async serve(config) {
      // Starting (loading modules, compiling schemas, migrating, making certificates) leaves much short-lived garbage,
      // for which V8 would grow the young generation to its 2 × 16 MiB maximum and keep it so while idle: ~20 MiB of
      // idle RSS (issue 12, P6). It stays at its first size until the server listens, then may grow under load again
      // (2 is V8's default growth factor).
      // An operator's own setting (node --semi-space-growth-factor=…, or in NODE_OPTIONS) is left alone.
      const ownGrowthFactor = [...process.execArgv, process.env.NODE_OPTIONS ?? ''].some((option) => option.includes('semi-space-growth-factor'));
      if (!ownGrowthFactor) setFlagsFromString('--semi-space-growth-factor=1');
      const { createApp } = await loadApp();
      const app = await createApp({ config, version });
      try {
        await app.listen();
      } catch (error) {
        await app.close();
        throw error;
      } finally {
        if (!ownGrowthFactor) setFlagsFromString('--semi-space-growth-factor=2');
      }
      running = app;
      let stopping = false;
      // SIGHUP: serve a renewed certificate without dropping a connection (app.reloadTls logs the outcome).
      process.on('SIGHUP', () => void app.reloadTls().catch(() => undefined));
      for (const signal of ['SIGINT', 'SIGTERM'] as const) {
        process.on(signal, () => {
          // A second signal means "now": the operator has seen the first one is taking too long.
          if (stopping) process.exit(1);
          stopping = true;
          io.err(`provisiond: ${signal}: stopping (requests still running get ${config.shutdownGraceMs} ms)\n`);
          // Bounded whatever happens: close() cuts HTTP connections after the grace period, and this ends the rest.
          setTimeout(() => {
            io.err('provisiond: did not stop in time; exiting\n');
            process.exit(1);
          }, config.shutdownGraceMs + 5000).unref();
          app.close().then(
            () => process.exit(0),
            (error: unknown) => {
              io.err(`provisiond: stopping failed: ${(error as Error).message}\n`);
              process.exit(1);
            },
          );
        });
      }
      return app.info();
    },
    async info(config) {
      // Read-only: never creates a data directory, a CA or an instance (a running server may hold the directory).
      const { readServerInfo } = await loadApp();
      return readServerInfo(config);
    },
  },
  version,
);

try {
  await program.parseAsync(process.argv);
} catch (error) {
  if (error instanceof CommanderError) {
    process.exitCode = error.exitCode;
  } else {
    io.err(`provisiond: ${(error as Error).message}\n`);
    process.exitCode = 1;
  }
  if (running !== undefined) await running.close();
}
