import { mkdirSync, readFileSync, renameSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { createRootCertificate } from '../src/tls/x509-issuer.js';

/**
 * Creates the CA the tests' servers use, and a trust bundle (system CAs + this CA) for NODE_EXTRA_CA_CERTS, which Node
 * reads only at process start: so this runs before the test process. Prints the bundle path.
 */
const dir = join(process.cwd(), 'test', '.tmp', 'ca');
mkdirSync(dir, { recursive: true });
if (!existsSync(join(dir, 'ca.pem')) || !existsSync(join(dir, 'ca.key'))) {
  const ca = await createRootCertificate({ commonName: 'provisiond test CA', days: 30 });
  writeFileSync(join(dir, 'ca.key'), ca.keyPem, { mode: 0o600 });
  writeFileSync(join(dir, 'ca.pem'), ca.certPem);
}
const system = ['/etc/ssl/certs/ca-certificates.crt'].filter(existsSync).map((file) => readFileSync(file, 'utf8'));
// Written aside and renamed, so a test process starting meanwhile never reads half a bundle.
const staging = join(dir, `bundle.${process.pid}.pem`);
writeFileSync(staging, [...system, readFileSync(join(dir, 'ca.pem'), 'utf8')].join('\n'));
renameSync(staging, join(dir, 'bundle.pem'));
process.stdout.write(`${join(dir, 'bundle.pem')}\n`);
