import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, connect, type AddressInfo, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * A software TPM for the official TPM client: Debian's swtpm, started on free ports and stopped at the end, behind a
 * small bridge that speaks the Microsoft simulator protocol tss.js uses (TpmTcpDevice: handshake and SendCommand on
 * `port`, PowerOn/NvOn on `port + 1`) — swtpm 0.7 speaks only raw TPM commands (reference tpm.md §2).
 */
export interface SoftwareTpm {
  host: string;
  /** The simulator command port; the platform port is the next one. */
  port: number;
  stop(): Promise<void>;
}

const HANDSHAKE = 15;
const SEND_COMMAND = 8;
const CLIENT_VERSION = 1;

export async function startSoftwareTpm(): Promise<SoftwareTpm> {
  const stateDir = mkdtempSync(join(tmpdir(), 'provisiond-swtpm-'));
  const [serverPort, ctrlPort] = [await freePort(), await freePort()];
  const swtpm = spawn(
    'swtpm',
    [
      'socket',
      '--tpm2',
      '--tpmstate',
      `dir=${stateDir}`,
      '--server',
      `type=tcp,port=${serverPort},bindaddr=127.0.0.1`,
      '--ctrl',
      `type=tcp,port=${ctrlPort},bindaddr=127.0.0.1`,
      '--flags',
      'not-need-init,startup-clear',
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  swtpm.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  await waitForPort(serverPort, swtpm, () => stderr);

  // The command port: one swtpm connection per client connection (swtpm serves one at a time), closed with it.
  const sockets = new Set<Socket>();
  const track = (socket: Socket): void => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  };
  const command = createServer((client) => {
    track(client);
    bridge(client, serverPort);
  });
  // The platform port: power and NV signals have nothing to do on swtpm; each is acknowledged.
  const platform = createServer((client) => {
    track(client);
    client.on('error', () => undefined);
    client.on('data', (chunk: Buffer) => {
      for (let offset = 0; offset + 4 <= chunk.length; offset += 4) client.write(Buffer.alloc(4));
    });
  });
  const port = await listenPair(command, platform);
  return {
    host: '127.0.0.1',
    port,
    async stop() {
      // A TPM client keeps its connections open; they end with the simulator.
      for (const socket of sockets) socket.destroy();
      await Promise.all([closeServer(command), closeServer(platform)]);
      if (swtpm.exitCode === null) {
        const exited = new Promise((resolve) => swtpm.once('exit', resolve));
        swtpm.kill('SIGTERM');
        await exited;
      }
      rmSync(stateDir, { recursive: true, force: true });
    },
  };
}

function bridge(client: Socket, swtpmPort: number): void {
  const tpm = connect(swtpmPort, '127.0.0.1');
  let pending = Buffer.alloc(0);
  let response = Buffer.alloc(0);
  client.on('error', () => tpm.destroy());
  tpm.on('error', () => client.destroy());
  client.on('close', () => tpm.destroy());
  tpm.on('close', () => client.destroy());
  tpm.on('data', (chunk: Buffer) => {
    response = Buffer.concat([response, chunk]);
    // A TPM response header: tag (2), size (4), code (4).
    if (response.length < 6) return;
    const size = response.readUInt32BE(2);
    if (response.length < size) return;
    const reply = Buffer.alloc(4 + size + 4);
    reply.writeUInt32BE(size, 0);
    response.copy(reply, 4, 0, size);
    client.write(reply);
    response = response.subarray(size);
  });
  client.on('data', (chunk: Buffer) => {
    pending = Buffer.concat([pending, chunk]);
    for (;;) {
      if (pending.length < 4) return;
      const kind = pending.readUInt32BE(0);
      if (kind === HANDSHAKE) {
        if (pending.length < 8) return;
        pending = pending.subarray(8);
        const answer = Buffer.alloc(12);
        answer.writeUInt32BE(CLIENT_VERSION, 0);
        client.write(answer);
      } else if (kind === SEND_COMMAND) {
        if (pending.length < 9) return;
        const length = pending.readUInt32BE(5);
        if (pending.length < 9 + length) return;
        tpm.write(pending.subarray(9, 9 + length));
        pending = pending.subarray(9 + length);
      } else {
        client.destroy();
        return;
      }
    }
  });
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await closeServer(server);
  return port;
}

/** Two servers on consecutive ports (tss.js takes the platform port as the command port + 1). */
async function listenPair(command: Server, platform: Server): Promise<number> {
  for (let attempt = 0; attempt < 20; attempt += 1) {
    const port = await freePort();
    try {
      await listen(command, port);
    } catch {
      continue;
    }
    try {
      await listen(platform, port + 1);
      return port;
    } catch {
      await closeServer(command);
    }
  }
  throw new Error('no two consecutive free ports for the TPM simulator bridge');
}

function listen(server: Server, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
}

function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => (server.listening ? server.close(() => resolve()) : resolve()));
}

async function waitForPort(port: number, child: ChildProcess, log: () => string): Promise<void> {
  for (let attempt = 0; attempt < 100; attempt += 1) {
    if (child.exitCode !== null) throw new Error(`swtpm exited: ${log()}`);
    const open = await new Promise<boolean>((resolve) => {
      const probe = connect(port, '127.0.0.1', () => {
        probe.destroy();
        resolve(true);
      });
      probe.on('error', () => resolve(false));
    });
    if (open) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`swtpm did not listen on ${port}: ${log()}`);
}
