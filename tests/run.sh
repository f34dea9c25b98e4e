#!/usr/bin/env bash
# tests/run.sh — THE test command for DataGuardian (CI runs it through .ci/run).
#
#   tests/run.sh              format check, clippy, then the whole test-suite
#   tests/run.sh e2e          same, but only tests whose name matches "e2e"
#   tests/run.sh --no-capture     any arguments go to the test runner verbatim (nextest syntax,
#                                 or cargo test syntax when falling back)
#
# Steps:
#   1. tests/ensure-services.sh   PostgreSQL, MariaDB, Redis, zstd, grpcurl, moto… installed and up
#   2. cargo fmt --all -- --check
#   3. cargo clippy --workspace --all-targets -- -D warnings
#   4. cargo nextest run --workspace --no-fail-fast [ARGS…]
#      (falls back to `cargo test --workspace --no-fail-fast [ARGS…]` when cargo-nextest is not
#      installed: installing it from source takes too long to do here)
#
# Environment (defaults are the local services ensure-services.sh provides; pre-set values win):
#   DG_TEST_PG_URL       postgres://postgres@127.0.0.1:5432/postgres
#   DG_TEST_MARIADB_URL  mysql://root@127.0.0.1:3306
#   DG_TEST_REDIS_URL    redis://127.0.0.1:6379
#   DG_SKIP_LINT=1       skip steps 2 and 3 (quick local iteration; CI never sets it)
#
# Prints the wall time of each step and the total at the end, also when a step fails.
set -euo pipefail

# Always work from the repository root, wherever the script is called from.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

START=$SECONDS
STEP_TIMES=()
CURRENT_STEP=""

# On exit (success or failure) print per-step timings and the total wall time.
finish() {
	local rc=$?
	if [[ -n "$CURRENT_STEP" ]]; then
		STEP_TIMES+=("$(printf '%-10s %4ss  FAILED (exit %s)' "$CURRENT_STEP" "$((SECONDS - STEP_START))" "$rc")")
	fi
	echo
	echo "== tests/run.sh summary =="
	local line
	for line in "${STEP_TIMES[@]+"${STEP_TIMES[@]}"}"; do
		echo "  $line"
	done
	local total=$((SECONDS - START))
	printf 'total wall time: %dm%02ds (%ss) — %s\n' "$((total / 60))" "$((total % 60))" "$total" \
		"$([[ $rc -eq 0 ]] && echo PASSED || echo "FAILED (exit $rc)")"
	exit "$rc"
}
trap finish EXIT

# step NAME CMD… — run one step, timing it; a failing step ends the script (set -e).
step() {
	CURRENT_STEP=$1
	shift
	echo
	echo "== [$CURRENT_STEP] $*"
	STEP_START=$SECONDS
	"$@"
	STEP_TIMES+=("$(printf '%-10s %4ss  ok' "$CURRENT_STEP" "$((SECONDS - STEP_START))")")
	CURRENT_STEP=""
}

# Tools that pip installed with --user (non-root machines) live here.
if [[ -d "${HOME:-/nonexistent}/.local/bin" ]]; then
	export PATH="$HOME/.local/bin:$PATH"
fi

export DG_TEST_PG_URL="${DG_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export DG_TEST_MARIADB_URL="${DG_TEST_MARIADB_URL:-mysql://root@127.0.0.1:3306}"
export DG_TEST_REDIS_URL="${DG_TEST_REDIS_URL:-redis://127.0.0.1:6379}"

step services bash tests/ensure-services.sh

if [[ "${DG_SKIP_LINT:-0}" != 1 ]]; then
	step fmt cargo fmt --all -- --check
	step clippy cargo clippy --workspace --all-targets -- -D warnings
else
	echo "DG_SKIP_LINT=1: skipping cargo fmt and cargo clippy"
fi

if cargo nextest --version >/dev/null 2>&1; then
	step tests cargo nextest run --workspace --no-fail-fast "$@"
else
	echo "cargo-nextest is not installed; falling back to cargo test"
	step tests cargo test --workspace --no-fail-fast "$@"
fi
