#!/usr/bin/env bash
# Every test: type check, then the test files in one sequential run (they share port 443 in turn).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== typecheck"
npx tsc --noEmit
npx tsc -p web
echo "== portal build"
npx vite build --config web/vite.config.ts
# bin/provisiond.js runs dist/: tests that start it (npm start, the package) must see the sources as they are now.
echo "== build"
npm run build --silent
# The portal's browser tests drive Debian's Chromium; a fresh machine gets it here (as root, non-interactive).
if ! command -v chromium >/dev/null; then
  echo "== installing chromium"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update && apt-get install -y chromium
fi
# The TPM tests run the official TPM client against Debian's software TPM (test/tpm-simulator.ts).
if ! command -v swtpm >/dev/null; then
  echo "== installing swtpm"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update && apt-get install -y swtpm swtpm-tools
fi
# The certificate-issuance tests check issued chains and the CRL with `openssl verify`.
if ! command -v openssl >/dev/null; then
  echo "== installing openssl"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update && apt-get install -y openssl
fi
# The PostgreSQL store's tests need a PostgreSQL server: Debian's, installed here on a fresh machine. One private
# cluster (initdb + pg_ctl on a free port, trust auth on 127.0.0.1) serves the whole run and is removed at the end.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "== installing postgresql"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update && apt-get install -y postgresql
fi
echo "== postgresql test cluster"
read -r pg_url pg_dir < <(npx tsx scripts/test-postgres.ts start)
trap 'npx tsx scripts/test-postgres.ts stop "$pg_dir"' EXIT
export PROVISIOND_TEST_PG_URL="$pg_url"
echo "== test CA"
bundle=$(npx tsx scripts/make-test-ca.ts)
export NODE_EXTRA_CA_CERTS="$bundle"
files=(test/*.test.ts test/resilience/*.test.ts)
if [ "$#" -gt 0 ]; then files=("$@"); fi
echo "== tests (${#files[@]} files)"
# A hung test (a reply that never comes) fails instead of holding CI until its own limit. Node 20 applies the limit to
# each test, each suite and each test file as a whole, so it sits above the slowest file under load (test/cli.test.ts:
# ~4 min on 2 cores at a load of 19), not at what one test needs; helpers that wait for a reply time out sooner.
node --import tsx --test --test-concurrency=1 --test-timeout=600000 --test-reporter=spec "${files[@]}"
if [ "$#" -eq 0 ]; then
  # The service-API, device (every transport) and customer-data suites once more, each of their servers on a fresh
  # database of the run's PostgreSQL cluster (test/harness.ts). Not here: the tests whose server is a child process
  # reading its own SQLite file (customer-data-bytes, -crash; test/cluster.test.ts is their PostgreSQL side) and
  # etag-race (it runs on both stores already).
  pg_files=(test/service-api.test.ts test/device-http.test.ts test/device-mqtt-amqp.test.ts test/device-listeners.test.ts
    test/customer-data.test.ts test/customer-data-erase.test.ts test/customer-data-places.test.ts
    test/etag-concurrency.test.ts)
  echo "== the same suites on PostgreSQL (${#pg_files[@]} files)"
  PROVISIOND_TEST_STORE=postgres node --import tsx --test --test-concurrency=1 --test-timeout=600000 --test-reporter=spec "${pg_files[@]}"
fi
