import type { Command } from 'commander';
import { registerAuditCommands } from './commands/audit.js';
import { registerCaCommands } from './commands/ca.js';
import { registerCertCommands } from './commands/cert.js';
import { registerCredentialPolicyCommands } from './commands/credential-policies.js';
import { registerDataCommands } from './commands/data.js';
import { registerEnrollmentCommands } from './commands/enrollments.js';
import { registerHubCommands } from './commands/hubs.js';
import { registerInstanceCommands } from './commands/instances.js';
import { registerPolicyCommands } from './commands/policies.js';
import { registerRegistrationCommands } from './commands/registrations.js';
import type { CliIo } from './program.js';

/**
 * Admin commands (enrollment, group, registration, policy, hub, instance): clients of the service API over HTTPS,
 * authenticated by a service connection string; they never open the database.
 */
export function registerAdminCommands(program: Command, io: CliIo): void {
  registerEnrollmentCommands(program, io);
  registerRegistrationCommands(program, io);
  registerPolicyCommands(program, io);
  registerHubCommands(program, io);
  registerInstanceCommands(program, io);
  registerCaCommands(program, io);
  registerCertCommands(program, io);
  registerCredentialPolicyCommands(program, io);
  registerDataCommands(program, io);
  registerAuditCommands(program, io);
}
