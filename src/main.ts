// First: holds V8's young generation while a server's modules load (issue 12 P6).
import './runtime/hold-young-generation.js';
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline/promises';
import { CommanderError } from 'commander';
import type { App } from './app.js';
import { buildProgram, type CliIo } from './cli/program.js';
import {
  capYoungGeneration,
  collectStartupGarbage,
  holdYoungGeneration,
  limitOldGenerationGrowth,
  oldGrowthOwnedByOperator,
  ownedByOperator,
  scavengeOnMainThread,
  scavengerOwnedByOperator,
} from './runtime/young-generation.js';

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
      // V8's young generation is held at its first size while the server starts (its garbage would grow it to 32 MiB
      // and keep it so while idle), then bounded at 16 MiB under load, and the old space's growth between full
      // collections limited (src/runtime/young-generation.ts; issue 12 P6), unless the operator set either.
      const boundYoungGeneration = !ownedByOperator(process.execArgv, process.env.NODE_OPTIONS);
      if (boundYoungGeneration) holdYoungGeneration();
      const { createApp } = await loadApp();
      const app = await createApp({ config, version });
      try {
        await app.listen();
      } catch (error) {
        await app.close();
        throw error;
      } finally {
        if (boundYoungGeneration) capYoungGeneration();
        if (!oldGrowthOwnedByOperator(process.execArgv, process.env.NODE_OPTIONS)) limitOldGenerationGrowth();
      }
      // Idle memory (issue 12 P6): the start's garbage collected now, not carried while idle.
      collectStartupGarbage();
      // Then young collections on the main thread (less CPU per registration). Not while starting: the start's
      // collections done alone left the old space ~5 MiB larger while idle (bench/README.md "session 30").
      if (!scavengerOwnedByOperator(process.execArgv, process.env.NODE_OPTIONS)) scavengeOnMainThread();
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
