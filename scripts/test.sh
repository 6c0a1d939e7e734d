#!/usr/bin/env bash
# The whole test suite, set-up included: installs what is missing (Debian
# packages; act and actionlint from the Go module proxy), then
# runs vet, the unit tests, brief fuzzing and the end-to-end tests, which
# start their own dockerd, docker-registry, sshd and network-namespace hosts.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pair in dockerd:docker.io docker-registry:docker-registry sshd:openssh-server ip:iproute2 \
            containerd:containerd busybox:busybox-static ctr:containerd shellcheck:shellcheck git:git \
            runc:runc iptables:iptables nsenter:util-linux podman:podman newuidmap:uidmap \
            rootlesskit:rootlesskit slirp4netns:slirp4netns; do
  cmd=${pair%%:*} pkg=${pair#*:}
  if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ] && [ ! -x "/bin/$cmd" ]; then
    need+=("$pkg")
  fi
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The tools the suite pins live in a directory of their own, first on PATH,
# and are checked by version: an older act or actionlint elsewhere on PATH
# is never used. Nothing here assumes a warm module cache.
ACT_VERSION=0.2.89
ACTIONLINT_VERSION=1.7.12
export GHCR_PULL_TOOLS="${GHCR_PULL_CACHE:-$HOME/.cache/ghcr-pull}/tools"
mkdir -p "$GHCR_PULL_TOOLS"
export PATH="$GHCR_PULL_TOOLS:$PATH"
export GHCR_PULL_ACT_VERSION=$ACT_VERSION GHCR_PULL_ACTIONLINT_VERSION=$ACTIONLINT_VERSION
pinned() { # name version module
  if [ -x "$GHCR_PULL_TOOLS/$1" ] && "$GHCR_PULL_TOOLS/$1" --version 2>&1 | grep -q "$2"; then
    return
  fi
  echo "installing $1 $2"
  GOBIN="$GHCR_PULL_TOOLS" go install "$3@v$2"
  "$GHCR_PULL_TOOLS/$1" --version 2>&1 | grep -q "$2" || { echo "$1 --version does not say $2" >&2; exit 1; }
}
pinned act "$ACT_VERSION" github.com/nektos/act
pinned actionlint "$ACTIONLINT_VERSION" github.com/rhysd/actionlint/cmd/actionlint

# Every module of every platform, from the proxy: the offline image builds
# vendor them (go mod vendor needs Windows-only modules too).
go mod download

go vet ./...
# The release image is multi-arch: the binary must build for arm64 too.
CGO_ENABLED=0 GOOS=linux GOARCH=arm64 go build -trimpath -o /dev/null .
# The slim build without sigstore-go (docs/verification.md) must keep
# building and refusing verify: inputs.
go vet -tags noverify ./internal/verify/
go test -count=1 -tags noverify ./internal/verify/
CGO_ENABLED=0 go build -tags noverify -trimpath -o /dev/null .
# The end-to-end verification tests build the real cosign CLI from the Go
# module proxy themselves (internal/e2e/cosign_test.go), cached by version
# under ${GHCR_PULL_CACHE:-$HOME/.cache/ghcr-pull}/cosign-<version>/.

# Brief fuzzing of every parser of user input and of error classification;
# the seed corpus lives in each package's testdata/fuzz.
FUZZTIME=${FUZZTIME:-15s}
for pkg in $(go list ./internal/...); do
  dir=$(go list -f '{{.Dir}}' "$pkg")
  for target in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //'); do
    echo "fuzz $pkg $target ($FUZZTIME)"
    corpus="$dir/testdata/fuzz/$target"
    before=$( (ls "$corpus" 2>/dev/null || true) | wc -l)
    log=$(mktemp)
    if go test "$pkg" -run '^$' -fuzz "^${target}\$" -fuzztime "$FUZZTIME" >"$log" 2>&1; then
      tail -n 2 "$log"
    else
      cat "$log"
      if [ "$( (ls "$corpus" 2>/dev/null || true) | wc -l)" -gt "$before" ]; then
        echo "fuzzing $target found a failing input, saved under $corpus"
        exit 1
      fi
      # The fuzz engine sometimes loses a worker on a loaded 2-core machine
      # without any failing input; the seed corpus must still pass.
      echo "fuzzing $target stopped without a failing input; re-running its corpus"
      go test "$pkg" -run "^${target}\$" -count=1
    fi
    rm -f "$log"
  done
done

# The hand mutants of the security code: each must make its package's unit
# tests fail (about 3 minutes; docs/reliability.md).
./scripts/mutants.sh

# Unit and end-to-end tests last, so their summary closes the run.
go test -count=1 -timeout 45m ./... "$@" 2>&1 | tee "${TMPDIR:-/tmp}/ghcr-pull-test.log"
