#!/usr/bin/env bash
# Hand mutants of the security code: each testdata/mutants/*.patch is a
# small, plausible bug that a promise of the README or docs/security.md
# rules out. Each is applied to a temporary copy of the repository, and the
# unit tests of the packages it names must then fail, in at least one of
# the tests it names (so docs/reliability.md's "killed by" stays true).
#
#   ./scripts/mutants.sh                      # every mutant
#   ./scripts/mutants.sh loopback-by-prefix   # some of them, by name
#
# A patch carries three header lines before its diff:
#   Mutant: what the bug is
#   Packages: the packages whose unit tests run (./internal/...)
#   Killed by: the test functions expected to fail, space-separated
#
# Nothing is skipped: a patch that no longer applies, a mutant that does
# not build, a missing header, unmutated tests that already fail, or a
# failure in none of the named tests all fail the run as surely as a mutant
# that lives. Prints killed/total; exits 1 unless every mutant was killed.
# About 3 to 4 minutes on 2 shared cores (docs/reliability.md); scripts/test.sh runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

patches=()
if [ $# -gt 0 ]; then
  for n in "$@"; do
    [ -f "testdata/mutants/$n.patch" ] || { echo "no mutant testdata/mutants/$n.patch" >&2; exit 2; }
    patches+=("testdata/mutants/$n.patch")
  done
else
  for p in testdata/mutants/*.patch; do
    [ -f "$p" ] && patches+=("$p")
  done
fi
[ ${#patches[@]} -gt 0 ] || { echo "no mutants under testdata/mutants" >&2; exit 1; }

start=$(date +%s)
work=$(mktemp -d "${TMPDIR:-/tmp}/ghcr-pull-mutants.XXXXXX")
trap 'rm -rf "$work"' EXIT
# The copy is the working tree as it is (committed or not), without .git:
# git apply then works as plain patch and cannot touch the repository.
tar -C "$root" --exclude=./.git -cf - . | tar -C "$work" -xf -
cd "$work"
# A vet finding is not a test failure: only the tests may kill a mutant.
export GOFLAGS="${GOFLAGS:-} -count=1 -vet=off"

header() { sed -n "s/^$1: *//p" "$2" | head -n 1; }

# Every package some mutant names must pass its tests unmutated first;
# otherwise a failure would prove nothing.
all_pkgs=()
for p in "${patches[@]}"; do
  read -r -a pk <<<"$(header Packages "$root/$p")"
  all_pkgs+=("${pk[@]}")
done
mapfile -t all_pkgs < <(printf '%s\n' "${all_pkgs[@]}" | sort -u)
echo "unmutated: go test ${all_pkgs[*]}"
t0=$(date +%s)
if ! go test "${all_pkgs[@]}" >"$work/.baseline.log" 2>&1; then
  cat "$work/.baseline.log" >&2
  echo "the unmutated tests fail: no mutant can be judged" >&2
  exit 1
fi
echo "unmutated tests pass ($(( $(date +%s) - t0 ))s)"

killed=0 total=0 problems=0
declare -a lines
for p in "${patches[@]}"; do
  name=$(basename "$p" .patch)
  total=$((total + 1))
  what=$(header Mutant "$root/$p")
  read -r -a pkgs <<<"$(header Packages "$root/$p")"
  read -r -a tests <<<"$(header 'Killed by' "$root/$p")"
  t0=$(date +%s)
  verdict=
  if [ -z "$what" ] || [ ${#pkgs[@]} -eq 0 ] || [ ${#tests[@]} -eq 0 ]; then
    verdict="BAD PATCH (needs Mutant:, Packages: and Killed by: lines)"
  elif ! git apply --check "$root/$p" 2>"$work/.apply.log"; then
    verdict="STALE (no longer applies: $(head -n 1 "$work/.apply.log"))"
  else
    git apply "$root/$p"
    # One go test builds and runs: a mutant that does not build fails
    # with "[build failed]", which is no kill.
    if go test "${pkgs[@]}" >"$work/.test.log" 2>&1; then
      verdict="LIVED"
    elif grep -qE '^FAIL.*\[(build|setup) failed\]$' "$work/.test.log"; then
      verdict="NOT VIABLE (does not build: $(grep -m 1 -E '\.go:[0-9]+' "$work/.test.log"))"
    else
      hit=()
      for t in "${tests[@]}"; do
        if grep -qE "^--- FAIL: $t( |$)" "$work/.test.log"; then hit+=("$t"); fi
      done
      if [ ${#hit[@]} -gt 0 ]; then
        verdict="killed by ${hit[*]}"
        killed=$((killed + 1))
      else
        verdict="FAILED, but in none of ${tests[*]}: $(grep -m 3 -E '^(--- FAIL|FAIL|panic)' "$work/.test.log" | tr '\n' ' ')"
      fi
    fi
    git apply -R "$root/$p"
  fi
  case $verdict in killed*) ;; LIVED) ;; *) problems=$((problems + 1)) ;; esac
  line=$(printf '%-36s %4ss  %s' "$name" $(( $(date +%s) - t0 )) "$verdict")
  echo "$line"
  lines+=("$line")
done

echo
echo "hand mutants: $killed/$total killed ($(( $(date +%s) - start ))s)"
if [ "$killed" -ne "$total" ]; then
  [ "$problems" -eq 0 ] || echo "$problems could not be judged (stale, not viable or failing elsewhere): fix the patch" >&2
  printf '%s\n' "${lines[@]}" | grep -v ' killed by ' >&2
  exit 1
fi
