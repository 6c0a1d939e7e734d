#!/usr/bin/env bash
# Benchmarks that compare ghcr-pull with the tools a user would otherwise
# use, on this machine's real dockerd and token-auth registry. Output is
# Go benchmark format; docs/benchmarks.md quotes it.
set -euo pipefail
cd "$(dirname "$0")/.."
go test ./internal/e2e -run '^$' -bench "${1:-.}" -benchtime "${BENCHTIME:-5x}" -count "${COUNT:-3}" -timeout 60m 2>&1 | grep -v '^[0-9/]* [0-9:]* http: proxy error'
