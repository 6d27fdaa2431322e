import { execFileSync } from 'node:child_process';

/**
 * Every connection costs a file descriptor, and the usual soft limit (1024) is far below what the listeners' caps
 * allow, so at start the process raises its own soft limit to the hard one (issue 13.4). Node has no setrlimit; the
 * util-linux `prlimit` tool does it for a running process (raising the soft limit up to the hard one needs no
 * privilege). Where it is missing or refused the limit stays, and the answer says so for the startup log.
 */
export interface FileLimit {
  soft: number | 'unlimited';
  hard: number | 'unlimited';
  /** The soft limit before, when it was raised. */
  raisedFrom?: number | 'unlimited';
  /** Why it could not be read or raised. */
  problem?: string;
}

function read(pid: number): { soft: number | 'unlimited'; hard: number | 'unlimited' } {
  const text = execFileSync('prlimit', ['--pid', String(pid), '--nofile', '--output', 'SOFT,HARD', '--noheadings', '--raw'], { encoding: 'utf8', timeout: 5000 });
  const [soft, hard] = text.trim().split(/\s+/);
  const value = (field: string | undefined): number | 'unlimited' => (field === undefined || field === 'unlimited' ? 'unlimited' : Number(field));
  return { soft: value(soft), hard: value(hard) };
}

export function raiseFileLimit(pid: number = process.pid): FileLimit {
  let before: { soft: number | 'unlimited'; hard: number | 'unlimited' };
  try {
    before = read(pid);
  } catch (error) {
    return { soft: 'unlimited', hard: 'unlimited', problem: `cannot read the open-file limit (prlimit: ${(error as Error).message.split('\n')[0] ?? ''})` };
  }
  if (before.soft === before.hard) return before;
  try {
    execFileSync('prlimit', ['--pid', String(pid), `--nofile=${before.hard}:${before.hard}`], { timeout: 5000, stdio: 'ignore' });
    return { ...read(pid), raisedFrom: before.soft };
  } catch (error) {
    return { ...before, problem: `cannot raise the open-file limit (prlimit: ${(error as Error).message.split('\n')[0] ?? ''})` };
  }
}
