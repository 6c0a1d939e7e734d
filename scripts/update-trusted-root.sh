#!/usr/bin/env bash
# Refreshes internal/verify/trusted_root.json, Sigstore's public-good trusted
# root that ghcr-pull embeds for keyless and attestation verification.
#
# The file is the TUF target trusted_root.json as the github.com/sigstore/sigstore
# module ships it (pkg/tuf/repository/targets/). Taking it through the Go
# module proxy means the Go checksum database vouches for the bytes, and the
# refresh works where only the module proxy is reachable. Usage:
#
#   scripts/update-trusted-root.sh [module version, default: latest]
#
# then review the diff (new Fulcio CA, Rekor or CT log keys, changed
# validity periods), run go test ./internal/verify/, and commit.
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-latest}
# Outside this module, so the module's own go line and GOFLAGS play no part.
# The zip is read directly: go mod download fetches and checks it against
# the checksum database even when the module's go line is newer than the
# local toolchain (it then reports an Error but no Dir).
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
info=$(cd "$scratch"; GOFLAGS='' go mod download -json "github.com/sigstore/sigstore@${version}" || true)
field() { printf '%s\n' "$info" | grep "\"$1\"" | head -n 1 | cut -d'"' -f4; }
zip=$(field Zip) resolved=$(field Version)
if [ -z "$zip" ] || [ -z "$(field Sum)" ]; then
  printf '%s\n' "$info" >&2
  exit 1
fi
unzip -p "$zip" "github.com/sigstore/sigstore@${resolved}/pkg/tuf/repository/targets/trusted_root.json" >"$scratch/trusted_root.json"
[ -s "$scratch/trusted_root.json" ] || { echo "no trusted_root.json in github.com/sigstore/sigstore@${resolved}" >&2; exit 1; }
install -m 0644 "$scratch/trusted_root.json" internal/verify/trusted_root.json
echo "internal/verify/trusted_root.json <- github.com/sigstore/sigstore@${resolved}"
git --no-pager diff --stat -- internal/verify/trusted_root.json || true
