#!/usr/bin/env bash
# Every test: type check, then the test files in one sequential run (they share port 443 in turn).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== typecheck"
npx tsc --noEmit
npx tsc -p web
echo "== portal build"
npx vite build --config web/vite.config.ts
# The portal's browser tests drive Debian's Chromium; a fresh machine gets it here (as root, non-interactive).
if ! command -v chromium >/dev/null; then
  echo "== installing chromium"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update && apt-get install -y chromium
fi
echo "== test CA"
bundle=$(npx tsx scripts/make-test-ca.ts)
export NODE_EXTRA_CA_CERTS="$bundle"
files=(test/*.test.ts test/resilience/*.test.ts)
if [ "$#" -gt 0 ]; then files=("$@"); fi
echo "== tests (${#files[@]} files)"
node --import tsx --test --test-concurrency=1 --test-reporter=spec "${files[@]}"
