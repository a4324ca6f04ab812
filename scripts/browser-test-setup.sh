#!/usr/bin/env bash
# Installs what tests/it/browser/chromium.rs needs: Debian's Chromium, the NSS tools that
# put a development certificate in a browser profile (certutil, pk12util),
# node with puppeteer-core (drives Chromium over the DevTools protocol; it never
# downloads a browser) and axe-core (npm, pinned in tests/browser/package-lock.json),
# and the Chromium policy that presents the test's certificate without a dialog:
# AutoSelectCertificateForUrls for https://localhost:* and certificates issued by
# "cpis-relay browser test CA" only (the test's own CA, made at run time).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium fonts-dejavu-core)
command -v certutil >/dev/null 2>&1 || missing+=(libnss3-tools)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "scripts/browser-test-setup.sh: missing ${missing[*]} (apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi

if [ ! -d tests/browser/node_modules/puppeteer-core ] || [ tests/browser/package-lock.json -nt tests/browser/node_modules ]; then
  npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
fi

policy_dir=/etc/chromium/policies/managed
policy='{"AutoSelectCertificateForUrls":["{\"pattern\":\"https://localhost:*\",\"filter\":{\"ISSUER\":{\"CN\":\"cpis-relay browser test CA\"}}}"]}'
if [ "$(cat "$policy_dir/cpis-relay-browser-test.json" 2>/dev/null)" != "$policy" ]; then
  if [ "$(id -u)" = 0 ]; then
    mkdir -p "$policy_dir"
    printf '%s' "$policy" > "$policy_dir/cpis-relay-browser-test.json"
  else
    echo "scripts/browser-test-setup.sh: run as root once to write $policy_dir/cpis-relay-browser-test.json" >&2
    exit 1
  fi
fi
echo "browser test: $(chromium --version 2>/dev/null | head -1), node $(node --version)"
