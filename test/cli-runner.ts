import { spawn } from 'node:child_process';
import { CommanderError } from 'commander';
import { buildProgram, type CliIo } from '../src/cli/program.js';

/**
 * Two ways to run `provisiond` admin commands in tests, both with a service connection string in the environment:
 * as a real child process (`node --import tsx src/main.ts …`, stdin not a terminal), and as the same program in this
 * process (fast), with failures reported the way main.ts reports them and an optional `prompt` playing a terminal.
 */
export interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}
export type Env = Record<string, string>;

const noServer = { serve: () => Promise.reject(new Error('not in this test')), info: () => Promise.reject(new Error('not in this test')) };

export function cliRunners(connectionString: () => string) {
  /** `env` is added to the test's environment (the connection string unless replaced). */
  function runChild(args: string[], env: Env = {}): Promise<Run> {
    return new Promise((resolve, reject) => {
      const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts', ...args], {
        cwd: process.cwd(),
        env: { ...process.env, PROVISIOND_CONNECTION_STRING: connectionString(), ...env },
        stdio: ['ignore', 'pipe', 'pipe'],
        timeout: 120_000,
      });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString('utf8')));
      child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString('utf8')));
      child.on('error', reject);
      child.on('close', (code) => resolve({ code, stdout, stderr }));
    });
  }

  async function runInProcess(args: string[], env: Env = {}, prompt?: (question: string) => Promise<string>): Promise<Run> {
    let stdout = '';
    let stderr = '';
    const io: CliIo = {
      env: { PROVISIOND_CONNECTION_STRING: connectionString(), ...env },
      out: (text: string) => void (stdout += text),
      err: (text: string) => void (stderr += text),
      ...(prompt === undefined ? {} : { prompt }),
    };
    try {
      await buildProgram(io, noServer, '0.0.0').parseAsync(args, { from: 'user' });
      return { code: 0, stdout, stderr };
    } catch (error) {
      if (error instanceof CommanderError) return { code: error.exitCode, stdout, stderr };
      return { code: 1, stdout, stderr: `${stderr}provisiond: ${(error as Error).message}\n` };
    }
  }

  return { runChild, runInProcess };
}
