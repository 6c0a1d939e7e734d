#!/usr/bin/env bash
# Mutation testing of the unit tests with gremlins (pinned below, installed
# from the Go module proxy when missing). Each package under internal/ that
# has unit tests is mutated on its own and judged by its own tests only;
# internal/e2e and any package whose code asks for root or starts real
# servers (dockerd, containerd, sshd, docker-registry, network namespaces)
# are left out.
#
#   ./scripts/mutation.sh                  # every unit-tested package
#   ./scripts/mutation.sh action ghcr      # only these (names under internal/)
#   ./scripts/mutation.sh --report [pkg…]  # the table again from the last run
#   ./scripts/mutation.sh --try internal/action/report.go:123:37 CONDITIONALS_NEGATION
#       # one mutant against every unit-tested package that uses its package:
#       # does a new test kill it? (exit 0 killed or not viable, 1 lived)
#
# Environment:
#   MUTATION_WORKERS  parallel mutants (default 2; the machine has 2 cores)
#   MUTATION_TIMEOUT_COEFFICIENT
#                     a mutant's test run may take this many times the
#                     package's unmutated test run (default 10)
#   MUTATION_OUT      where results go (default ${TMPDIR:-/tmp}/ghcr-pull-mutation)
#   MUTATION_RERUN_TIMEOUT
#                     go test -timeout for the case re-runs (default 180s)
#   GREMLINS_DIR      where gremlins is installed (default
#                     ${XDG_CACHE_HOME:-$HOME/.cache}/ghcr-pull/gremlins-VERSION)
#
# Results in MUTATION_OUT: summary.md (the table printed at the end),
# <pkg>.txt (the LIVED and TIMED OUT mutants: file:line:col, mutator and the
# source line), <pkg>.json and <pkg>.log (gremlins' own report and output),
# <pkg>.coverprofile (the package's unit-test coverage).
#
# Mutators: gremlins' defaults (arithmetic-base, conditionals-boundary,
# conditionals-negation, increment-decrement, invert-negatives) plus
# invert-logical (&& <-> ||) and invert-loopctrl (break <-> continue), which
# matter most in the security checks. No mutator deletes a statement, so a
# dropped call (a Mask, a warning) is never tried: those need tests anyway.
#
# Two corrections to what gremlins v0.6.0 reports, both done here:
# - A mutant that does not compile counts as KILLED there (go test exits 1
#   on a build failure; gremlins expects 2). Each KILLED ARITHMETIC_BASE or
#   INVERT_LOOPCTRL mutant (the only kinds that can fail to build: a string
#   "+" made "-", a "continue" outside a loop) is made again (as gremlins
#   makes it) and built through a go build overlay, and counted NOT VIABLE
#   when it does not build.
# - A mutant in a switch's case expression counts as NOT COVERED even when
#   the case runs: no coverage block holds case expressions. When the case's
#   body ran, this script applies the mutant itself (go test -overlay) and
#   counts it KILLED, LIVED or TIMED OUT; those lines say "(case re-run)".
#
# Efficacy = killed / (killed + lived). Mutant coverage = mutants some test
# reaches (all but NOT COVERED) / all mutants; not viable ones are left out
# of both. Statement coverage is the package's own `go test -cover`.
#
# A full run takes far longer than five minutes on 2 cores, so .ci/run does
# not run it (docs/reliability.md has the time measured).
set -euo pipefail
cd "$(dirname "$0")/.."

GREMLINS_MODULE=github.com/go-gremlins/gremlins
GREMLINS_VERSION=v0.6.0
WORKERS=${MUTATION_WORKERS:-2}
COEFFICIENT=${MUTATION_TIMEOUT_COEFFICIENT:-10}
OUT=${MUTATION_OUT:-${TMPDIR:-/tmp}/ghcr-pull-mutation}
GREMLINS_DIR=${GREMLINS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ghcr-pull/gremlins-$GREMLINS_VERSION}

# gremlins reports "dev" as its version, so the module version recorded in
# the binary is what is checked.
gremlins_ok() {
  [ -x "$1" ] && go version -m "$1" 2>/dev/null |
    awk -v mod="$GREMLINS_MODULE" -v ver="$GREMLINS_VERSION" \
      '$1 == "mod" && $2 == mod && $3 == ver { found = 1 } END { exit !found }'
}

find_gremlins() {
  GREMLINS=$GREMLINS_DIR/gremlins
  gremlins_ok "$GREMLINS" && return
  if command -v gremlins >/dev/null 2>&1 && gremlins_ok "$(command -v gremlins)"; then
    GREMLINS=$(command -v gremlins)
    return
  fi
  echo "installing gremlins $GREMLINS_VERSION into $GREMLINS_DIR"
  mkdir -p "$GREMLINS_DIR"
  # Outside this module, so neither its go.mod nor a vendor setting applies.
  (cd "$GREMLINS_DIR" && GOWORK=off GOFLAGS='' GOBIN="$GREMLINS_DIR" \
    go install "$GREMLINS_MODULE/cmd/gremlins@$GREMLINS_VERSION")
  if ! gremlins_ok "$GREMLINS"; then
    echo "gremlins at $GREMLINS is not $GREMLINS_MODULE $GREMLINS_VERSION:" >&2
    go version -m "$GREMLINS" >&2 || true
    exit 1
  fi
}

# Packages under internal/ with unit tests, less the end-to-end ones and any
# whose code asks for root or runs a real server.
needs_servers() {
  grep -qE 'os\.Geteuid\(\)|exec\.Command(Context)?\((ctx, )?"(dockerd|containerd|sshd|docker-registry|nsenter|ip|unshare)"' "$1"/*.go
}
all_pkgs=()
while IFS= read -r dir; do
  [ -n "$dir" ] || continue
  name=${dir#"$PWD"/internal/}
  if [ "$name" = e2e ]; then
    continue
  fi
  if needs_servers "$dir"; then
    echo "skipping internal/$name: its tests need root or real servers"
    continue
  fi
  all_pkgs+=("$name")
done < <(go list -f '{{if or .TestGoFiles .XTestGoFiles}}{{.Dir}}{{end}}' ./internal/...)

mkdir -p "$OUT/tmp"
# gremlins copies the module once per worker into TMPDIR and removes it.
export TMPDIR="$OUT/tmp" NO_COLOR=1
# -count=1: the unmutated run that sets the timeout must really run the tests,
# not come from the test cache. -vet=off: a mutant is killed by a failing
# test, not by go vet (and vet costs time on every mutant).
export GOFLAGS="${GOFLAGS:-} -count=1 -vet=off"

# mutate SRC LINE COL MUTATOR > mutated: the mutant gremlins makes at that
# position, made the way it does (the token of the AST node there swapped
# by its tables in internal/engine/mappings.go, the file printed again by
# go/printer, which keeps the tree: "a && b && c" with its first && swapped
# becomes "(a || b) && c"). A small program with only the standard library,
# built once into $OUT/tmp. Fails when no such token is there.
MUTANT_BIN=$OUT/tmp/mutant-tool/mutant
mutate() {
  if [ ! -x "$MUTANT_BIN" ]; then
    mkdir -p "$OUT/tmp/mutant-tool"
    printf 'module mutant\n\ngo 1.22\n' >"$OUT/tmp/mutant-tool/go.mod"
    cat >"$OUT/tmp/mutant-tool/main.go" <<'GO'
package main

import (
	"go/ast"
	"go/parser"
	"go/printer"
	"go/token"
	"os"
	"strconv"
)

var swaps = map[string]map[token.Token]token.Token{
	"ARITHMETIC_BASE":       {token.ADD: token.SUB, token.MUL: token.QUO, token.QUO: token.MUL, token.REM: token.MUL, token.SUB: token.ADD},
	"CONDITIONALS_BOUNDARY": {token.GEQ: token.GTR, token.GTR: token.GEQ, token.LEQ: token.LSS, token.LSS: token.LEQ},
	"CONDITIONALS_NEGATION": {token.EQL: token.NEQ, token.GEQ: token.LSS, token.GTR: token.LEQ, token.LEQ: token.GTR, token.LSS: token.GEQ, token.NEQ: token.EQL},
	"INCREMENT_DECREMENT":   {token.DEC: token.INC, token.INC: token.DEC},
	"INVERT_LOGICAL":        {token.LAND: token.LOR, token.LOR: token.LAND},
	"INVERT_LOOPCTRL":       {token.BREAK: token.CONTINUE, token.CONTINUE: token.BREAK},
	"INVERT_NEGATIVES":      {token.SUB: token.ADD},
}

func main() {
	line, _ := strconv.Atoi(os.Args[2])
	col, _ := strconv.Atoi(os.Args[3])
	swap := swaps[os.Args[4]]
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, os.Args[1], nil, parser.ParseComments)
	if err != nil {
		os.Exit(2)
	}
	done := false
	ast.Inspect(f, func(n ast.Node) bool {
		var tok *token.Token
		var pos token.Pos
		switch n := n.(type) {
		case *ast.BinaryExpr:
			tok, pos = &n.Op, n.OpPos
		case *ast.UnaryExpr:
			tok, pos = &n.Op, n.OpPos
		case *ast.IncDecStmt:
			tok, pos = &n.Tok, n.TokPos
		case *ast.BranchStmt:
			tok, pos = &n.Tok, n.TokPos
		default:
			return true
		}
		if p := fset.Position(pos); !done && p.Line == line && p.Column == col {
			if to, ok := swap[*tok]; ok {
				*tok, done = to, true
			}
		}
		return true
	})
	if !done || printer.Fprint(os.Stdout, fset, f) != nil {
		os.Exit(2)
	}
}
GO
    (cd "$OUT/tmp/mutant-tool" && GOWORK=off GOFLAGS='' go build -o mutant . >&2)
  fi
  "$MUTANT_BIN" "$@"
}

# overlay SRC: writes the mutant of SRC (in $OUT/tmp/mutant.go) as an overlay
# and prints the -overlay flag.
overlay() {
  printf '{"Replace":{"%s":"%s"}}\n' "$PWD/$1" "$OUT/tmp/mutant.go" >"$OUT/tmp/overlay.json"
  echo "-overlay=$OUT/tmp/overlay.json"
}

if [ "${1:-}" = --try ]; then
  [ $# -eq 3 ] || { echo "usage: $0 --try internal/PKG/FILE.go:LINE:COL MUTATOR" >&2; exit 2; }
  pos=$2 mutator=$3
  src=${pos%%:*} rest=${pos#*:}
  line=${rest%%:*} col=${rest#*:}
  if ! mutate "$src" "$line" "$col" "$mutator" >"$OUT/tmp/mutant.go"; then
    echo "no $mutator token at $pos: $(sed -n "${line}p" "$src")" >&2
    exit 2
  fi
  diff -b "$src" "$OUT/tmp/mutant.go" || true
  flag=$(overlay "$src")
  if ! go build "$flag" "./$(dirname "$src")" >/dev/null 2>&1; then
    echo "NOT VIABLE: the mutant does not build"
    exit 0
  fi
  # Every unit-tested package that builds on the mutated one, or tests with it.
  mutated_pkg=$(go list "./$(dirname "$src")")
  targets=()
  for p in "${all_pkgs[@]}"; do
    if go list -f '{{.ImportPath}} {{join .Deps " "}} {{join .TestImports " "}} {{join .XTestImports " "}}' "./internal/$p" |
        tr ' ' '\n' | grep -xF "$mutated_pkg" >/dev/null; then
      targets+=("./internal/$p")
    fi
  done
  echo "testing: ${targets[*]}"
  if go test "$flag" -failfast -timeout 300s "${targets[@]}" >"$OUT/tmp/try.log" 2>&1; then
    echo "LIVED: every unit-tested package passes with $mutator at $pos"
    exit 1
  fi
  grep -E '^(--- FAIL|FAIL|panic:)' "$OUT/tmp/try.log" | head -n 20
  echo "KILLED: $mutator at $pos"
  exit 0
fi

REPORT_ONLY=
if [ "${1:-}" = --report ]; then
  REPORT_ONLY=1
  shift
fi
pkgs=("${all_pkgs[@]}")
if [ $# -gt 0 ]; then
  pkgs=()
  for want in "$@"; do
    want=${want#./}; want=${want#internal/}; want=${want%/}
    found=
    for p in "${all_pkgs[@]}"; do
      if [ "$p" = "$want" ]; then found=1; fi
    done
    if [ -z "$found" ]; then
      echo "internal/$want is not a unit-tested package here (have: ${all_pkgs[*]})" >&2
      exit 2
    fi
    pkgs+=("$want")
  done
fi
[ -n "$REPORT_ONLY" ] || find_gremlins
[ -n "$REPORT_ONLY" ] || echo "gremlins: $GREMLINS ($GREMLINS_MODULE $GREMLINS_VERSION)"

summary=$OUT/summary.md
{
  echo "| package | mutants | killed | lived | not covered | timed out | not viable | efficacy | mutant coverage | statement coverage | time |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
} >"$summary"

pct() { awk -v n="$1" -v d="$2" 'BEGIN { if (d > 0) printf "%.1f%%", 100 * n / d; else printf "-" }'; }

# case_end FILE LINE: when LINE is part of a case expression, prints the
# line on which that expression ends (with its colon).
case_end() {
  LC_ALL=C awk -v L="$2" '
    { text[NR] = $0 }
    END {
      # From LINE up to its "case", every earlier line must go on (end in
      # ||, && or a comma).
      for (s = L; text[s] !~ /^[[:space:]]*case /; s--) {
        if (s < L && text[s] !~ /(\|\||&&|,)[[:space:]]*$/) exit 1
        if (s == 1) exit 1
      }
      if (s < L && text[s] !~ /(\|\||&&|,)[[:space:]]*$/) exit 1
      for (e = L; e <= L + 5 && e <= NR; e++) if (text[e] ~ /:[[:space:]]*$/) { print e; exit 0 }
      exit 1
    }' "$1"
}

# rerun DIR FILE LINE COL MUTATOR TIMEOUT: one mutant against its package's
# tests; prints KILLED, LIVED or TIMED_OUT.
rerun() {
  mutate "$1/$2" "$3" "$4" "$5" >"$OUT/tmp/mutant.go" || { echo NOT_COVERED; return; }
  local flag
  flag=$(overlay "$1/$2")
  if go test "$flag" -failfast -timeout "$6" "./$1" >"$OUT/tmp/rerun.log" 2>&1; then
    echo LIVED
  elif grep -q '^panic: test timed out' "$OUT/tmp/rerun.log"; then
    echo TIMED_OUT
  else
    echo KILLED
  fi
}

start_all=$(date +%s)
tk=0 tl=0 tn=0 tt=0 tv=0 tsecs=0
for name in "${pkgs[@]}"; do
  dir=internal/$name
  log=$OUT/$name.log
  profile=$OUT/$name.coverprofile
  if [ -z "$REPORT_ONLY" ]; then
    echo "== $dir (workers $WORKERS, timeout coefficient $COEFFICIENT)"
    start=$(date +%s)
    if ! "$GREMLINS" unleash --workers "$WORKERS" --timeout-coefficient "$COEFFICIENT" \
        --invert-logical --invert-loopctrl -o "$OUT/$name.json" "./$dir" >"$log" 2>&1; then
      cat "$log" >&2
      echo "gremlins failed on $dir" >&2
      exit 1
    fi
    echo $(( $(date +%s) - start )) >"$OUT/$name.time"
  elif [ ! -s "$log" ]; then
    echo "no earlier run of $dir in $OUT" >&2
    exit 1
  fi
  start=$(date +%s)
  if [ -z "$REPORT_ONLY" ] || [ ! -s "$profile" ]; then
    go test -coverprofile="$profile" "./$dir" 2>&1 |
      sed -n 's/.*coverage: \([0-9.]*%\) of statements.*/\1/p' | tail -n 1 >"$OUT/$name.cover"
  fi
  cover=$(cat "$OUT/$name.cover" 2>/dev/null || true)

  # Lines look like "       LIVED CONDITIONALS_NEGATION at report.go:42:7",
  # the file relative to the package. One line per mutant in $status_file:
  # STATUS MUTATOR file line col [note].
  status_file=$OUT/tmp/$name.status
  LC_ALL=C awk '/ at [^ ]+:[0-9]+:[0-9]+$/ {
      status = $1; if ($1 == "NOT" || $1 == "TIMED") status = $1 "_" $2
      split($NF, pos, ":")
      print status, $(NF - 2), pos[1], pos[2], pos[3]
    }' "$log" >"$status_file"
  : >"$status_file.new"
  while read -r status mutator file line col; do
    note=
    if [ "$status" = KILLED ] && { [ "$mutator" = ARITHMETIC_BASE ] || [ "$mutator" = INVERT_LOOPCTRL ]; }; then
      if ! mutate "$dir/$file" "$line" "$col" "$mutator" >"$OUT/tmp/mutant.go" ||
          ! go build "$(overlay "$dir/$file")" "./$dir" >/dev/null 2>&1; then
        status=NOT_VIABLE
      fi
    elif [ "$status" = NOT_COVERED ] && end=$(case_end "$dir/$file" "$line") &&
        awk -v want="/$dir/$file:$end." 'index($1, want) && $NF > 0 { found = 1 } END { exit !found }' "$profile"; then
      status=$(rerun "$dir" "$file" "$line" "$col" "$mutator" "${MUTATION_RERUN_TIMEOUT:-180s}")
      note="(case re-run)"
    fi
    echo "$status $mutator $file $line $col $note" >>"$status_file.new"
  done <"$status_file"
  mv "$status_file.new" "$status_file"
  # gremlins' time plus this script's checks.
  echo $(( $(date +%s) - start )) >"$OUT/$name.checktime"
  secs=$(( $(cat "$OUT/$name.time" 2>/dev/null || echo 0) + $(cat "$OUT/$name.checktime") ))

  read -r k l n t v < <(awk '
    $1 == "KILLED" { k++ } $1 == "LIVED" { l++ } $1 == "NOT_COVERED" { n++ }
    $1 == "TIMED_OUT" { t++ } $1 == "NOT_VIABLE" { v++ }
    END { print k + 0, l + 0, n + 0, t + 0, v + 0 }' "$status_file")
  # Not viable mutants are no mutants at all: left out of every ratio.
  total=$((k + l + n + t))
  tk=$((tk + k)) tl=$((tl + l)) tn=$((tn + n)) tt=$((tt + t)) tv=$((tv + v)) tsecs=$((tsecs + secs))

  # The mutants to look at, sorted by file and line:
  # internal/action/report.go:42:7 LIVED CONDITIONALS_NEGATION | <the line>
  list=$OUT/$name.txt
  awk '$1 == "LIVED" || $1 == "TIMED_OUT"' "$status_file" |
  while read -r status mutator file line col note; do
    code=$(sed -n "${line}p" "$dir/$file" | sed 's/^[[:space:]]*//')
    printf '%s:%s:%s %s %s | %s%s\n' "$dir/$file" "$line" "$col" "$status" "$mutator" "$code" "${note:+ $note}"
  done | sort -t: -k1,1 -k2,2n -k3,3n >"$list"
  rm -f "$status_file"

  printf '| %s | %d | %d | %d | %d | %d | %d | %s | %s | %s | %ds |\n' "$dir" "$total" "$k" "$l" "$n" "$t" "$v" \
    "$(pct "$k" $((k + l)))" "$(pct $((total - n)) "$total")" "${cover:--}" "$secs" >>"$summary"
  echo "   $dir: killed $k, lived $l, not covered $n, timed out $t, not viable $v (${secs}s); lived: $list"
done
ta=$((tk + tl + tn + tt))
printf '| all | %d | %d | %d | %d | %d | %d | %s | %s | | %ds |\n' "$ta" "$tk" "$tl" "$tn" "$tt" "$tv" \
  "$(pct "$tk" $((tk + tl)))" "$(pct $((ta - tn)) "$ta")" "$tsecs" >>"$summary"
rm -rf "$OUT/tmp/mutant.go" "$OUT/tmp/overlay.json" "$OUT/tmp/rerun.log" "$OUT/tmp/try.log" "$OUT/tmp/mutant-tool"
rmdir "$OUT/tmp" 2>/dev/null || true

echo
cat "$summary"
echo
echo "lived mutants per package: $OUT/<package>.txt; this table: $summary; this invocation took $(( $(date +%s) - start_all ))s"
