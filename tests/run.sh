#!/usr/bin/env bash
# tests/run.sh — THE test command for DataGuardian (CI runs it through .ci/run).
#
#   tests/run.sh              format check, clippy, then the whole test-suite
#   tests/run.sh e2e          same, but only tests whose name matches "e2e"
#   tests/run.sh --no-capture     any arguments go to the test runner verbatim (nextest syntax,
#                                 or cargo test syntax when falling back)
#
# Steps:
#   1. tests/ensure-services.sh --for tests   PostgreSQL, MariaDB, Redis, zstd, grpcurl, moto, Azurite…
#      installed and up, with the tests' own role and user (generated passwords in $DG_CACHE_DIR)
#   2. cargo fmt --all -- --check
#   3. cargo clippy --workspace --all-targets -- -D warnings
#   4. cargo build -p dg-controller -p dg-agent -p dgctl   (fault trials and the dgctl test run these as processes)
#   5. cargo nextest run --workspace --no-fail-fast [ARGS…]
#      (falls back to `cargo test --workspace --no-fail-fast [ARGS…]` when cargo-nextest is not
#      installed, as on a fresh machine: building it from source takes minutes. The suite passes
#      under both; tests that install process-global state have a test target of their own)
#
# Environment (defaults come from $DG_CACHE_DIR/test.env, written by ensure-services.sh; pre-set
# values win):
#   DG_TEST_PG_URL       postgres://dg_test:<generated>@127.0.0.1:5432/postgres
#   DG_TEST_MARIADB_URL  mysql://dg_test:<generated>@127.0.0.1:3306
#   DG_TEST_REDIS_URL    redis://127.0.0.1:6379
#   DG_CACHE_DIR         ${XDG_CACHE_HOME:-$HOME/.cache}/dataguardian (passwords, Python venv, Azurite)
#   DG_TEST_RUNNER=cargo use cargo test even when cargo-nextest is installed
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

export DG_CACHE_DIR="${DG_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/dataguardian}"

step services bash tests/ensure-services.sh --for tests

# The tests' credentials and tool directories (KEY=VALUE lines; values already set win).
while IFS='=' read -r key value; do
	[[ "$key" =~ ^[A-Z_]+$ ]] || continue
	[[ -n "${!key:-}" ]] || export "$key=$value"
done <"$DG_CACHE_DIR/test.env"
export PATH="$DG_TOOLS_PATH:$PATH"

if [[ "${DG_SKIP_LINT:-0}" != 1 ]]; then
	step fmt cargo fmt --all -- --check
	step clippy cargo clippy --workspace --all-targets -- -D warnings
else
	echo "DG_SKIP_LINT=1: skipping cargo fmt and cargo clippy"
fi

# The fault trials run the real controller and agent binaries in processes of their own.
step build cargo build -p dg-controller -p dg-agent -p dgctl

if [[ "${DG_TEST_RUNNER:-nextest}" == nextest ]] && cargo nextest --version >/dev/null 2>&1; then
	step tests cargo nextest run --workspace --no-fail-fast "$@"
else
	echo "cargo-nextest is not installed; falling back to cargo test"
	step tests cargo test --workspace --no-fail-fast "$@"
fi
