import type { Command } from 'commander';
import type { CliIo } from './program.js';

/** Admin commands (enrollment, group, registration, policy, hub): clients of the service API. */
export function registerAdminCommands(_program: Command, _io: CliIo): void {}
