#!/usr/bin/env bash
# tests/fresh-root.sh — prove that the README's two commands, deploy/demo.sh and tests/run.sh, work
# on a freshly bootstrapped Debian 12 (bookworm) root that has only a Rust toolchain, no systemd and
# nothing else running, as root — and that both pass a second time in that same root.
#
#   tests/fresh-root.sh               demo.sh, run.sh, demo.sh, run.sh in one pristine root, report
#   tests/fresh-root.sh --once        each command once
#   tests/fresh-root.sh --only tests  only tests/run.sh (twice)
#   tests/fresh-root.sh --cmd 'CMD'   run CMD (bash -lc, in /root/dataguardian) instead of the two
#   tests/fresh-root.sh --shell       an interactive shell inside the prepared root instead
#
# Options:
#   --dir DIR          work directory (default ${DG_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/dataguardian}/fresh-root)
#   --src DIR          the git checkout to test (default: the one holding this script): its HEAD
#                      plus its uncommitted changes and untracked, non-ignored files
#   --committed        HEAD only, without the uncommitted changes
#   --rebootstrap      run debootstrap again instead of unpacking the cached pristine tarball
#   --reuse            keep the root that the previous run left (NOT pristine: whatever it installed
#                      stays; only the sources are refreshed) — for iterating on a failure
#   --once             run each command once instead of twice
#   --only demo|tests  run only deploy/demo.sh or only tests/run.sh
#   --reboot           between the two rounds stop every process in the root, as restarting a
#                      container without systemd would, so round 2 finds the services installed but
#                      not running (default: they stay up between rounds, as on a developer's machine)
#   --keep-going       after a failed command go on with the remaining ones (default: stop there)
#   --env NAME=VALUE   also set NAME for the commands inside (repeatable), e.g. DG_SKIP_LINT=1
#   -v, --verbose      stream the commands' output to the terminal too (it always goes to a log)
#   --clean            delete the root at the end (the cached tarball stays)
#   -h, --help         this text
#
# How (each step is timed; the report goes to the terminal and to WORKDIR/last-report.txt):
#   1. Host: installs debootstrap, iptables and iproute2 from Debian if missing.
#   2. Root: `debootstrap --variant=minbase bookworm` once, cached as WORKDIR/pristine.tar.gz; every
#      invocation unpacks a pristine copy into WORKDIR/root (--reuse: keeps the previous one). The
#      root gets Debian's standard apt sources (bookworm, -updates, -security), the host's
#      resolv.conf, /etc/hosts, the hostname dgfresh, and what any machine on this network needs:
#      the host's local CAs (/usr/local/share/ca-certificates, e.g. a TLS-intercepting egress
#      proxy's) and the host's variables that point tools at the system CA bundle (SSL_CERT_FILE,
#      NODE_EXTRA_CA_CERTS, PIP_CERT …).
#   3. "Only a Rust toolchain": the host's ~/.rustup bind-mounted read-only at /root/.rustup (no
#      toolchain can be downloaded here), a copy of ~/.cargo/bin holding only rustup and its proxies
#      (no cargo-nextest, nothing `cargo install`ed), an empty CARGO_HOME (crates come from
#      crates.io inside), `. "$HOME/.cargo/env"` in ~/.profile as rustup-init writes it,
#      RUSTUP_AUTO_INSTALL=0; then `apt-get install --no-install-recommends gcc libc6-dev git curl
#      ca-certificates` inside. Nothing else: the README commands must install the rest themselves.
#   4. Project: a `git clone` of the checkout at /root/dataguardian, with its uncommitted changes.
#   5. Isolation: a network namespace of its own (loopback + a veth to the host, NAT, IPv4 only), so
#      the host's services on 127.0.0.1 (and on its other addresses) are out of reach and only the
#      outside (the package registries) is; PID, mount, IPC and UTS namespaces, so no host process
#      is visible and everything started inside dies at the end, and all mounts are made inside the
#      private mount namespace (they vanish with it; the host never sees them). / is a mount point,
#      /dev a small tmpfs (null zero full random urandom tty, own devpts, /dev/shm tmpfs for
#      PostgreSQL), /proc the namespace's own, /sys and /proc/sys read-only, /tmp and /run the
#      root's own directories (as in a container image). All commands of one invocation run in the
#      same "machine", one after the other, as a developer would type them.
#   6. In /root/dataguardian, HOME=/root, login shell: deploy/demo.sh, tests/run.sh, deploy/demo.sh,
#      tests/run.sh. Each one's full output goes to WORKDIR/logs/RUN/NAME-N.log; a failing one has
#      its last 60 lines printed. tests/run.sh's passed/failed counts are read off cargo test's
#      `test result:` lines or nextest's `Summary` line.
#   On every exit path (also Ctrl-C or SIGTERM) it stops everything inside, removes the namespace,
#   the veth and every iptables rule it added, puts net.ipv4.ip_forward back and checks that nothing
#   stays mounted; a run killed with SIGKILL is cleaned up by the next one.
#
# Needs: root, ~3 GB free in WORKDIR (more for the builds), network to the package registries
# (deb.debian.org, crates.io, PyPI, npm), the host's rustup toolchain that rust-toolchain.toml pins.
# One run at a time per WORKDIR (a lock). Not for CI: a developer runs it on demand (a full run
# builds and tests the workspace twice: count tens of minutes on 2 cores).
# Exit status: 0 only if every command passed.

# shellcheck disable=SC2317 # the cleanup functions are only called from traps; shellcheck 0.9 calls them unreachable
set -euo pipefail

readonly SUITE=bookworm MIRROR=http://deb.debian.org/debian
readonly PREREQS=(gcc libc6-dev git curl ca-certificates)
readonly REGISTRY_URLS=(https://index.crates.io/config.json https://pypi.org/simple/pip/ https://registry.npmjs.org/)
readonly INNER_HOSTNAME=dgfresh
readonly INNER_PROJECT=/root/dataguardian
readonly MIN_FREE_KB=$((3 * 1024 * 1024))
readonly STATE_DIR=/run/dgfresh # host tmpfs: which run changed net.ipv4.ip_forward, from what
readonly NS="dgfresh-$$" VETH_HOST="dgfh-$$" VETH_NS="dgfn-$$"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SCRIPT="$SCRIPT_DIR/$(basename "${BASH_SOURCE[0]}")"

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
info() { printf '    %s\n' "$*"; }
warn() { printf '    \033[33mWARNING: %s\033[0m\n' "$*" >&2; }
die() {
	printf '\n\033[31mfresh-root FAILED: %s\033[0m\n' "$*" >&2
	exit 1
}
have() { command -v "$1" >/dev/null 2>&1; }
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$SCRIPT"; }
# fmt_dur SECONDS -> "42s", "3m07s", "1h02m03s"
fmt_dur() {
	local s=$1
	if ((s >= 3600)); then
		printf '%dh%02dm%02ds' $((s / 3600)) $((s % 3600 / 60)) $((s % 60))
	elif ((s >= 60)); then
		printf '%dm%02ds' $((s / 60)) $((s % 60))
	else
		printf '%ds' "$s"
	fi
}

# --- arguments ----------------------------------------------------------------------------------
WORKDIR="${DG_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/dataguardian}/fresh-root"
SRC=""
COMMITTED=0
REBOOTSTRAP=0
REUSE=0
ROUNDS=2
ONLY=""
REBOOT=0
KEEP_GOING=0
VERBOSE=0
CLEAN=0
SHELL_MODE=0
CMD=""
EXTRA_ENV=()
while (($#)); do
	case "$1" in
	--dir | --src | --only | --env | --cmd)
		(($# >= 2)) || die "$1 needs a value (see --help)"
		case "$1" in
		--dir) WORKDIR=$2 ;;
		--src) SRC=$2 ;;
		--only)
			[[ "$2" == demo || "$2" == tests ]] || die "--only takes demo or tests, not '$2'"
			ONLY=$2
			;;
		--env)
			[[ "$2" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env takes NAME=VALUE, not '$2'"
			EXTRA_ENV+=("$2")
			;;
		--cmd) CMD=$2 ;;
		esac
		shift 2
		continue
		;;
	--committed) COMMITTED=1 ;;
	--rebootstrap) REBOOTSTRAP=1 ;;
	--reuse) REUSE=1 ;;
	--once) ROUNDS=1 ;;
	--reboot) REBOOT=1 ;;
	--keep-going) KEEP_GOING=1 ;;
	-v | --verbose) VERBOSE=1 ;;
	--clean) CLEAN=1 ;;
	--shell) SHELL_MODE=1 ;;
	-h | --help)
		usage
		exit 0
		;;
	*)
		usage >&2
		die "unknown argument: $1"
		;;
	esac
	shift
done
[[ "$SHELL_MODE" -eq 1 && -n "$CMD" ]] && die "--shell and --cmd exclude each other"

# --- host prerequisites -------------------------------------------------------------------------
[[ "$(id -u)" -eq 0 ]] || die "run me as root (I create namespaces, mounts, a veth and iptables rules): sudo $0 $*"

say "host prerequisites"
MISSING=()
have debootstrap || MISSING+=(debootstrap)
have iptables || MISSING+=(iptables)
have ip || MISSING+=(iproute2)
if ((${#MISSING[@]})); then
	info "installing from Debian's packages: ${MISSING[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get update -qq || die "apt-get update failed"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${MISSING[@]}" >/dev/null ||
		die "could not install ${MISSING[*]} (apt-get install failed)"
fi
for tool in debootstrap iptables ip unshare nsenter chroot git tar flock setsid; do
	have "$tool" || die "'$tool' is missing on the host"
done
# iptables: Debian's default (nft) backend, or the legacy one where nf_tables is not available.
IPT=iptables
if ! iptables -t nat -S >/dev/null 2>&1; then
	if have iptables-legacy && iptables-legacy -t nat -S >/dev/null 2>&1; then
		IPT=iptables-legacy
	else
		die "iptables cannot list the nat table (no NAT support in this kernel?): $(iptables -t nat -S 2>&1 | head -n 1)"
	fi
fi
HOST_RUSTUP="${RUSTUP_HOME:-/root/.rustup}"
HOST_CARGO_BIN="${CARGO_HOME:-/root/.cargo}/bin"
[[ -d "$HOST_RUSTUP/toolchains" ]] || die "no rustup toolchains under $HOST_RUSTUP (set RUSTUP_HOME)"
[[ -x "$HOST_CARGO_BIN/rustup" ]] || die "no rustup in $HOST_CARGO_BIN (set CARGO_HOME)"
info "debootstrap $(dpkg-query -W -f='${Version}' debootstrap 2>/dev/null || echo '?'), $($IPT --version), rustup home $HOST_RUSTUP"

# --- the project --------------------------------------------------------------------------------
hgit() { git -c safe.directory='*' "$@"; } # the checkout may belong to another user
if [[ -z "$SRC" ]]; then
	SRC="$(hgit -C "$SCRIPT_DIR" rev-parse --show-toplevel 2>/dev/null)" || die "$SCRIPT_DIR is not in a git checkout: use --src"
fi
SRC="$(cd "$SRC" 2>/dev/null && pwd -P)" || die "--src: no such directory: $SRC"
hgit -C "$SRC" rev-parse --verify -q HEAD >/dev/null || die "$SRC is not a git checkout with a commit"
[[ -f "$SRC/deploy/demo.sh" && -f "$SRC/tests/run.sh" ]] || die "$SRC has no deploy/demo.sh and tests/run.sh"
COMMIT="$(hgit -C "$SRC" log -1 --format='%h %s')"
COMMIT_FULL="$(hgit -C "$SRC" rev-parse HEAD)"

# --- work directory, lock -----------------------------------------------------------------------
mkdir -p "$WORKDIR"
WORKDIR="$(cd "$WORKDIR" && pwd -P)"
[[ "$WORKDIR" != / && "$WORKDIR" != "${HOME:-/root}" ]] || die "refusing to work directly in $WORKDIR"
ROOT="$WORKDIR/root"
TARBALL="$WORKDIR/pristine.tar.gz"
TARBALL_INFO="$WORKDIR/pristine.info"
RUN_ID="$(date +%Y%m%d-%H%M%S)"
LOGDIR="$WORKDIR/logs/$RUN_ID"
REPORT="$WORKDIR/last-report.txt"
exec 9>"$WORKDIR/.lock"
flock -n 9 || die "another fresh-root.sh is using $WORKDIR (lock $WORKDIR/.lock)"
mkdir -p "$LOGDIR"
avail_kb="$(df -Pk "$WORKDIR" | awk 'NR == 2 { print $4 }')"
((avail_kb >= MIN_FREE_KB)) || die "only $((avail_kb / 1024)) MiB free in $WORKDIR; need at least 3 GiB"
info "work directory $WORKDIR ($((avail_kb / 1024 / 1024)) GiB free), logs in $LOGDIR"

# --- mounts: never delete through a live one ----------------------------------------------------
# mounts_under DIR — mount points (this mount namespace) at or below DIR.
mounts_under() {
	awk -v d="$1" '{ mp = $5; gsub(/\\040/, " ", mp); if (mp == d || index(mp, d "/") == 1) print mp }' /proc/self/mountinfo
}
# umount_under DIR — lazily unmount everything at or below DIR, deepest first.
umount_under() {
	local mp
	while IFS= read -r mp; do
		umount -l "$mp" 2>/dev/null || umount -l -f "$mp" 2>/dev/null || warn "could not unmount $mp"
	done < <(mounts_under "$1" | sort -r)
}
# safe_rm DIR — delete DIR (below WORKDIR only) after making sure nothing is mounted in it.
safe_rm() {
	local dir=$1 left
	[[ -e "$dir" ]] || return 0
	[[ "$dir" == "$WORKDIR"/?* ]] || die "refusing to delete $dir: not below $WORKDIR"
	umount_under "$dir"
	left="$(mounts_under "$dir")"
	[[ -z "$left" ]] || die "refusing to delete $dir, still mounted: $left"
	rm -rf --one-file-system -- "$dir"
}

# --- processes ----------------------------------------------------------------------------------
descendants() { # descendants PID — all its descendants' pids, one a line
	local c children=()
	read -r -a children < <(cat /proc/"$1"/task/*/children 2>/dev/null; echo) || true
	for c in "${children[@]+"${children[@]}"}"; do
		echo "$c"
		descendants "$c"
	done
}
kill_tree() { # kill_tree SIGNAL PID — PID and all its descendants (all started by this script)
	local sig=$1 pid=$2 p pids
	[[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 0
	mapfile -t pids < <(descendants "$pid")
	for p in "$pid" "${pids[@]+"${pids[@]}"}"; do
		kill "-$sig" "$p" 2>/dev/null || true
	done
}
is_fresh_root_run() { # is_fresh_root_run PID — PID is alive and is (another) fresh-root.sh
	[[ -r "/proc/$1/cmdline" ]] && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q 'fresh-root\.sh'
}

# --- leftovers of runs that could not clean up (SIGKILL, power cut) ------------------------------
cleanup_stale() {
	local ns pid line words table
	while read -r ns _; do
		[[ "$ns" =~ ^dgfresh-([0-9]+)$ ]] || continue
		pid=${BASH_REMATCH[1]}
		is_fresh_root_run "$pid" && continue
		info "removing the leftovers of fresh-root run $pid (network namespace $ns, its processes, veth, iptables rules)"
		# Only processes that run started live in its namespace.
		for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
		ip netns del "$ns" 2>/dev/null || true
	done < <(ip netns list 2>/dev/null)
	while read -r line; do
		[[ "$line" =~ dgfh-([0-9]+) ]] || continue
		pid=${BASH_REMATCH[1]}
		is_fresh_root_run "$pid" || ip link del "dgfh-$pid" 2>/dev/null || true
	done < <(ip -o link show 2>/dev/null | grep -o 'dgfh-[0-9]*' | sort -u)
	for table in nat filter; do
		while IFS= read -r line; do
			[[ "$line" =~ --comment\ \"?dgfresh-([0-9]+) ]] || continue
			pid=${BASH_REMATCH[1]}
			is_fresh_root_run "$pid" && continue
			read -r -a words <<<"$line"
			words[0]=-D
			$IPT -t "$table" "${words[@]//\"/}" 2>/dev/null || true
		done < <($IPT -t "$table" -S 2>/dev/null | grep -- '-A .*dgfresh-' || true)
	done
	# net.ipv4.ip_forward: put back what a dead run changed, unless a live run still needs it.
	local f live=0 stale_orig=""
	for f in "$STATE_DIR"/*; do
		[[ -e "$f" ]] || continue
		if is_fresh_root_run "${f##*/}"; then
			live=1
		else
			stale_orig="$(sed -n 's/^ip_forward=//p' "$f")"
			rm -f "$f"
		fi
	done
	if [[ "$live" -eq 0 && -n "$stale_orig" && "$(sysctl -n net.ipv4.ip_forward)" != "$stale_orig" ]]; then
		info "restoring net.ipv4.ip_forward=$stale_orig (changed by a run that died)"
		sysctl -q -w "net.ipv4.ip_forward=$stale_orig"
	fi
}

# --- cleanup on every exit path -----------------------------------------------------------------
IPT_RULES=()        # "TABLE CHAIN SPEC…" of every rule added, for -D
NETNS_ADDED=0
VETH_ADDED=0
IP_FORWARD_ORIG=""  # value to put back when the last run using forwarding exits
LAUNCH_PID=""       # the process that holds the machine's namespaces (unshare)
PID1=""             # the machine's init, as the host sees it
BG_PID=""           # a step running in the background (so that signals are handled at once)
TAIL_PID=""
INTERRUPTED=""
PHASE="setup"

# ns_busy — how many processes run in the machine besides its init and the init's own sleep.
ns_busy() {
	local want p n=0 ppid comm
	want="$(readlink "/proc/$PID1/ns/pid" 2>/dev/null)" || {
		echo 0
		return 0
	}
	for p in /proc/[0-9]*; do
		[[ "$(readlink "$p/ns/pid" 2>/dev/null)" == "$want" && "${p#/proc/}" != "$PID1" ]] || continue
		ppid="$(awk '/^PPid:/ { print $2 }' "$p/status" 2>/dev/null)"
		comm="$(cat "$p/comm" 2>/dev/null)"
		[[ "$ppid" == "$PID1" && "$comm" == sleep ]] && continue
		n=$((n + 1))
	done
	echo "$n"
}

# stop_machine — SIGTERM everything inside (services shut down cleanly), SIGKILL after 10 s; the
# machine's mounts vanish with its mount namespace.
stop_machine() {
	[[ -n "$PID1" ]] || return 0
	if kill -0 "$PID1" 2>/dev/null; then
		in_root /bin/bash -c 'kill -TERM -1' </dev/null >/dev/null 2>&1 || true
		local i
		for ((i = 0; i < 100; i++)); do
			(($(ns_busy) == 0)) && break
			sleep 0.1
		done
		# When the init exits, the kernel kills whatever is left inside.
		kill -TERM "$PID1" 2>/dev/null || true
		for ((i = 0; i < 20; i++)); do
			kill -0 "$PID1" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$PID1" 2>/dev/null || true
	fi
	if [[ -n "$LAUNCH_PID" ]]; then
		wait "$LAUNCH_PID" 2>/dev/null || true
	fi
	PID1=""
	LAUNCH_PID=""
}

net_down() {
	local rule words
	for rule in "${IPT_RULES[@]+"${IPT_RULES[@]}"}"; do
		read -r -a words <<<"$rule"
		$IPT -t "${words[0]}" -D "${words[@]:1}" 2>/dev/null || warn "could not remove iptables rule: $rule"
	done
	IPT_RULES=()
	if [[ "$VETH_ADDED" -eq 1 ]]; then # (its peer inside goes with it)
		ip link del "$VETH_HOST" 2>/dev/null
		VETH_ADDED=0
	fi
	if [[ "$NETNS_ADDED" -eq 1 ]]; then
		for p in $(ip netns pids "$NS" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
		ip netns del "$NS" 2>/dev/null || warn "could not delete network namespace $NS"
		NETNS_ADDED=0
	fi
	if ip link show "$VETH_HOST" >/dev/null 2>&1; then
		sleep 1
		ip link show "$VETH_HOST" >/dev/null 2>&1 && warn "$VETH_HOST is still there"
	fi
	if [[ -n "$IP_FORWARD_ORIG" ]]; then
		local other f others=0
		for f in "$STATE_DIR"/*; do
			[[ -e "$f" ]] || continue
			other=${f##*/}
			[[ "$other" == "$$" ]] && continue
			is_fresh_root_run "$other" && others=1
		done
		if [[ "$others" -eq 0 && "$(sysctl -n net.ipv4.ip_forward)" != "$IP_FORWARD_ORIG" ]]; then
			sysctl -q -w "net.ipv4.ip_forward=$IP_FORWARD_ORIG" || warn "could not restore net.ipv4.ip_forward=$IP_FORWARD_ORIG"
		fi
		rm -f "$STATE_DIR/$$"
		IP_FORWARD_ORIG=""
	fi
}

cleanup() {
	local rc=$?
	# Finish the cleanup whatever happens now (a second Ctrl-C, a reader of our output gone).
	trap '' INT TERM HUP PIPE
	set +e
	[[ -n "$TAIL_PID" ]] && kill "$TAIL_PID" 2>/dev/null
	if [[ -n "$INTERRUPTED" && "$PHASE" == commands ]]; then
		record_interrupted
		report
	fi
	stop_machine
	kill_tree TERM "$BG_PID"
	sleep 0.2
	kill_tree KILL "$BG_PID"
	net_down
	umount_under "$ROOT"
	umount_under "$WORKDIR/bootstrap.tmp"
	if [[ -n "$(mounts_under "$WORKDIR")" ]]; then
		warn "still mounted below $WORKDIR: $(mounts_under "$WORKDIR" | tr '\n' ' ')"
	fi
	if [[ "$CLEAN" -eq 1 ]]; then
		info "--clean: deleting $ROOT"
		safe_rm "$ROOT"
	fi
	[[ -n "$INTERRUPTED" ]] && printf '\nfresh-root: interrupted (SIG%s); cleaned up\n' "$INTERRUPTED" >&2
	exit "$rc"
}
on_signal() {
	INTERRUPTED=$1
	exit "$2"
}
trap cleanup EXIT
trap 'on_signal INT 130' INT
trap 'on_signal TERM 143' TERM
trap 'on_signal HUP 129' HUP
trap 'on_signal PIPE 141' PIPE # `… | tee log` and a Ctrl-C: tee is gone before we are

# bg_run LOG CMD… — run CMD in the background with its output in LOG and wait for it, so that a
# signal to this script is acted on at once; returns CMD's exit status.
bg_run() {
	local log=$1 rc=0
	shift
	"$@" </dev/null >"$log" 2>&1 9>&- &
	BG_PID=$!
	wait "$BG_PID" || rc=$?
	BG_PID=""
	return "$rc"
}
show_tail() { # show_tail LOG — its last 60 lines, indented
	echo "    --- last 60 lines of $1:"
	tail -n 60 "$1" | sed 's/^/    | /'
}

# ================================================================================================
say "cleaning up after earlier runs"
cleanup_stale
safe_rm "$WORKDIR/bootstrap.tmp"
info "done"

# --- 1. the pristine Debian root ----------------------------------------------------------------
BOOTSTRAP_NOTE=""
BOOTSTRAP_SECS=0
say "Debian $SUITE root"
if [[ "$REUSE" -eq 1 && -x "$ROOT/bin/bash" ]]; then
	info "--reuse: keeping $ROOT as the previous run left it (NOT pristine)"
	BOOTSTRAP_NOTE="reused the previous root (not pristine)"
else
	[[ "$REUSE" -eq 1 ]] && info "--reuse: there is no previous root in $ROOT; starting pristine"
	REUSE=0
	if [[ "$REBOOTSTRAP" -eq 1 || ! -s "$TARBALL" ]]; then
		info "debootstrap --variant=minbase $SUITE … $MIRROR (log: $LOGDIR/debootstrap.log)"
		t0=$SECONDS
		bg_run "$LOGDIR/debootstrap.log" debootstrap --variant=minbase "$SUITE" "$WORKDIR/bootstrap.tmp" "$MIRROR" || {
			rc=$?
			show_tail "$LOGDIR/debootstrap.log"
			die "debootstrap failed (exit $rc)"
		}
		umount_under "$WORKDIR/bootstrap.tmp"
		[[ -z "$(mounts_under "$WORKDIR/bootstrap.tmp")" ]] || die "debootstrap left mounts in $WORKDIR/bootstrap.tmp"
		debootstrap_secs=$((SECONDS - t0))
		info "debootstrap took $(fmt_dur "$debootstrap_secs"); caching it as $TARBALL"
		tar -C "$WORKDIR/bootstrap.tmp" --numeric-owner --xattrs --xattrs-include='*' -czf "$TARBALL.tmp" .
		mv -f "$TARBALL.tmp" "$TARBALL"
		printf 'date=%s\nseconds=%s\ndebootstrap=%s\n' "$(date '+%Y-%m-%d %H:%M %Z')" "$debootstrap_secs" \
			"$(dpkg-query -W -f='${Version}' debootstrap 2>/dev/null || echo '?')" >"$TARBALL_INFO"
		safe_rm "$WORKDIR/bootstrap.tmp"
		BOOTSTRAP_SECS=$((SECONDS - t0))
		BOOTSTRAP_NOTE="debootstrap $(fmt_dur "$debootstrap_secs") + caching"
	fi
	t0=$SECONDS
	if [[ -e "$ROOT" ]]; then
		info "deleting the previous root"
		safe_rm "$ROOT"
		info "deleted in $(fmt_dur $((SECONDS - t0)))"
	fi
	t0=$SECONDS
	mkdir "$ROOT"
	tar -C "$ROOT" --numeric-owner --xattrs --xattrs-include='*' -xpf "$TARBALL"
	untar_secs=$((SECONDS - t0))
	BOOTSTRAP_SECS=$((BOOTSTRAP_SECS + untar_secs))
	if [[ -z "$BOOTSTRAP_NOTE" ]]; then
		cached_date="$(sed -n 's/^date=//p' "$TARBALL_INFO" 2>/dev/null)"
		cached_secs="$(sed -n 's/^seconds=//p' "$TARBALL_INFO" 2>/dev/null)"
		BOOTSTRAP_NOTE="cached tarball unpacked in $(fmt_dur "$untar_secs"); its debootstrap took $(fmt_dur "${cached_secs:-0}") on ${cached_date:-?}"
	else
		BOOTSTRAP_NOTE="$BOOTSTRAP_NOTE, unpacked in $(fmt_dur "$untar_secs")"
	fi
	info "pristine root in $ROOT ($BOOTSTRAP_NOTE)"
fi
[[ "$(cat "$ROOT/etc/debian_version" 2>/dev/null)" == 12* ]] || die "$ROOT is not a Debian 12 root"

# What every installed Debian 12 system has besides the bootstrap: its standard apt sources, a
# hostname, /etc/hosts; and the host's resolver, reachable through the NAT.
rm -f "$ROOT/etc/apt/sources.list"
cat >"$ROOT/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
echo "$INNER_HOSTNAME" >"$ROOT/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n' \
	"$INNER_HOSTNAME" >"$ROOT/etc/hosts"
RESOLV=/etc/resolv.conf
if ! grep -qE '^nameserver[[:space:]]+([0-9.]+|[0-9a-fA-F:]+)' "$RESOLV" 2>/dev/null ||
	grep -qE '^nameserver[[:space:]]+(127\.|::1)' "$RESOLV"; then
	# A local stub resolver (systemd-resolved, dnsmasq) is out of reach from the namespace.
	if [[ -r /run/systemd/resolve/resolv.conf ]]; then
		RESOLV=/run/systemd/resolve/resolv.conf
	else
		die "the host's /etc/resolv.conf points at a resolver on loopback, which the root cannot reach"
	fi
fi
rm -f "$ROOT/etc/resolv.conf"
grep -vE '^nameserver[[:space:]]+(127\.|::1)' "$RESOLV" >"$ROOT/etc/resolv.conf"
# The network's own certificate authorities (a TLS-intercepting egress proxy, say): every machine
# on this network trusts them, through Debian's standard place for local CAs, which the root's
# ca-certificates picks up when it is installed. Likewise the host environment's variables that
# point tools at the system bundle (NODE_EXTRA_CA_CERTS, PIP_CERT, SSL_CERT_FILE …) are passed in.
SITE_CAS=()
for f in /usr/local/share/ca-certificates/*.crt /usr/local/share/ca-certificates/*/*.crt; do
	[[ -f "$f" ]] || continue
	mkdir -p "$ROOT/usr/local/share/ca-certificates"
	cp "$f" "$ROOT/usr/local/share/ca-certificates/"
	SITE_CAS+=("${f##*/}")
done
CA_ENV=()
while IFS= read -r var; do
	case "${!var}" in
	/etc/ssl/certs/ca-certificates.crt | /etc/ssl/certs) CA_ENV+=("$var=${!var}") ;;
	esac
done < <(compgen -e)
((${#SITE_CAS[@]})) && info "the host's local CAs, for the root's trust store: ${SITE_CAS[*]}"
((${#CA_ENV[@]})) && info "CA environment passed in: ${CA_ENV[*]%%=*}"

# --- 2. "only a Rust toolchain" -----------------------------------------------------------------
say "Rust toolchain (the host's, read-only) and an empty CARGO_HOME"
mkdir -p "$ROOT/root/.rustup" "$ROOT/root/.cargo"
rm -rf --one-file-system "$ROOT/root/.cargo/bin"
mkdir "$ROOT/root/.cargo/bin"
skipped=()
rustup_ino="$(stat -L -c %i "$HOST_CARGO_BIN/rustup")"
for f in "$HOST_CARGO_BIN"/*; do
	name=${f##*/}
	# rustup and its proxies (symlinks or hard links to it) only: a fresh machine has no cargo-nextest
	# nor anything else `cargo install`ed.
	if [[ "$name" != cargo-nextest ]] && { [[ "$name" == rustup ]] ||
		[[ -L "$f" && "$(readlink "$f")" =~ (^|/)rustup$ ]] ||
		[[ -f "$f" && "$(stat -L -c %i "$f")" == "$rustup_ino" ]]; }; then
		cp -a "$f" "$ROOT/root/.cargo/bin/"
	else
		skipped+=("$name")
	fi
done
if [[ -r "${HOST_CARGO_BIN%/bin}/env" ]]; then
	cp "${HOST_CARGO_BIN%/bin}/env" "$ROOT/root/.cargo/env"
else
	# shellcheck disable=SC2016 # rustup's env script, expanded by the root's shell
	printf '#!/bin/sh\ncase ":${PATH}:" in *:"$HOME/.cargo/bin":*) ;; *) export PATH="$HOME/.cargo/bin:$PATH" ;; esac\n' >"$ROOT/root/.cargo/env"
fi
for dotfile in .profile .bashrc; do # what rustup-init appends
	# shellcheck disable=SC2016 # $HOME is for the root's shell
	grep -qs 'cargo/env' "$ROOT/root/$dotfile" || printf '. "$HOME/.cargo/env"\n' >>"$ROOT/root/$dotfile"
done
info "/root/.rustup: read-only bind of $HOST_RUSTUP ($(find "$HOST_RUSTUP/toolchains" -mindepth 1 -maxdepth 1 -printf '%f ' | sed 's/ $//'))"
info "/root/.cargo/bin: $(find "$ROOT/root/.cargo/bin" -mindepth 1 -printf '%f ' | sed 's/ $//')"
((${#skipped[@]})) && info "left out (not part of a fresh toolchain): ${skipped[*]}"

# --- 3. the project -----------------------------------------------------------------------------
say "project at $INNER_PROJECT"
DEST="$ROOT$INNER_PROJECT"
if [[ -d "$DEST/.git" ]]; then # --reuse: refresh the sources, keep target/ and other ignored files
	hgit -C "$DEST" fetch -q "$SRC" HEAD
	hgit -C "$DEST" reset -q --hard FETCH_HEAD
	hgit -C "$DEST" clean -q -fd
	info "updated the previous clone (kept its ignored files: target/, .dg-demo/ …)"
else
	hgit clone -q --no-hardlinks "$SRC" "$DEST"
	if [[ "$(git -C "$DEST" rev-parse HEAD)" != "$COMMIT_FULL" ]]; then # a detached HEAD in SRC
		git -C "$DEST" fetch -q origin HEAD
		git -C "$DEST" checkout -q --detach FETCH_HEAD
	fi
fi
UNCOMMITTED="none"
if [[ "$COMMITTED" -eq 0 ]]; then
	hgit -C "$SRC" diff HEAD --binary >"$LOGDIR/uncommitted.patch"
	mapfile -t changed < <(hgit -C "$SRC" diff HEAD --name-only)
	mapfile -t untracked < <(hgit -C "$SRC" ls-files --others --exclude-standard)
	if [[ -s "$LOGDIR/uncommitted.patch" ]]; then
		git -C "$DEST" apply --whitespace=nowarn "$LOGDIR/uncommitted.patch" || die "could not apply the uncommitted changes of $SRC"
	fi
	if ((${#untracked[@]})); then
		hgit -C "$SRC" ls-files -z --others --exclude-standard | tar -C "$SRC" --null -T - -cf - | tar -C "$DEST" -xf -
	fi
	if ((${#changed[@]} + ${#untracked[@]})); then
		UNCOMMITTED="included: ${#changed[@]} changed and ${#untracked[@]} untracked files"
	fi
else
	UNCOMMITTED="left out (--committed)"
fi
info "commit $COMMIT"
info "uncommitted changes: $UNCOMMITTED"

# --- 4. network namespace -----------------------------------------------------------------------
say "network namespace $NS"
SUBNET=""
for n in $(seq 0 255); do
	if ! ip -o -4 addr show | grep -qE "inet 10\.231\.$n\.[0-3]/"; then
		SUBNET="10.231.$n.0/30" HOST_IP="10.231.$n.1" NS_IP="10.231.$n.2"
		break
	fi
done
[[ -n "$SUBNET" ]] || die "no free 10.231.N.0/30 subnet for the veth"
uplink="$(ip -o -4 route show default | awk '{ for (i = 1; i < NF; i++) if ($i == "dev") { print $(i + 1); exit } }')"
[[ -n "$uplink" ]] || die "the host has no IPv4 default route"
mtu="$(cat "/sys/class/net/$uplink/mtu")"

ip netns add "$NS"
NETNS_ADDED=1
ip link add "$VETH_HOST" mtu "$mtu" type veth peer name "$VETH_NS" mtu "$mtu"
VETH_ADDED=1
ip link set "$VETH_NS" netns "$NS"
ip addr add "$HOST_IP/30" dev "$VETH_HOST"
ip link set "$VETH_HOST" up
ip -n "$NS" link set lo up
ip -n "$NS" link set "$VETH_NS" name eth0
ip -n "$NS" addr add "$NS_IP/30" dev eth0
ip -n "$NS" link set eth0 up
ip -n "$NS" route add default via "$HOST_IP"
# IPv4 only: no IPv6 link-local path to the host's services either (::1 inside stays).
sysctl -q -w "net.ipv6.conf.$VETH_HOST.disable_ipv6=1" 2>/dev/null || true
ip netns exec "$NS" sysctl -q -w net.ipv6.conf.eth0.disable_ipv6=1 2>/dev/null || true

# Forwarding: remember the value from before any fresh-root run changed it (a run that died
# without cleaning up left its record in STATE_DIR), and put it back when the last run exits.
mkdir -p "$STATE_DIR"
orig="$(sysctl -n net.ipv4.ip_forward)"
for f in "$STATE_DIR"/*; do
	[[ -e "$f" ]] || continue
	v="$(sed -n 's/^ip_forward=//p' "$f")"
	[[ -n "$v" ]] && orig=$v
	is_fresh_root_run "${f##*/}" || rm -f "$f"
done
echo "ip_forward=$orig" >"$STATE_DIR/$$"
IP_FORWARD_ORIG=$orig
[[ "$(sysctl -n net.ipv4.ip_forward)" == 1 ]] || sysctl -q -w net.ipv4.ip_forward=1

# ipt TABLE CHAIN SPEC… — insert a rule (tagged with this run's name) and remember it for removal.
ipt() {
	local table=$1 chain=$2
	shift 2
	$IPT -t "$table" -I "$chain" 1 "$@" -m comment --comment "$NS"
	IPT_RULES+=("$table $chain $* -m comment --comment $NS")
}
ipt nat POSTROUTING -s "$SUBNET" ! -o "$VETH_HOST" -j MASQUERADE
ipt filter FORWARD -i "$VETH_HOST" -s "$SUBNET" -j ACCEPT
ipt filter FORWARD -o "$VETH_HOST" -d "$SUBNET" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
# Nothing on the host itself (its own addresses included) is reachable from inside, except a
# resolver of the host's that listens on one of its own addresses.
ipt filter INPUT -i "$VETH_HOST" -j DROP
while read -r nameserver; do
	if ip -o -4 addr show | grep -qF " inet $nameserver/"; then
		ipt filter INPUT -i "$VETH_HOST" -d "$nameserver" -p udp --dport 53 -j ACCEPT
		ipt filter INPUT -i "$VETH_HOST" -d "$nameserver" -p tcp --dport 53 -j ACCEPT
	fi
done < <(awk '/^nameserver[ \t]+[0-9.]+$/ { print $2 }' "$ROOT/etc/resolv.conf")
info "inside: lo + eth0 $NS_IP/30 (mtu $mtu), default via $HOST_IP, NAT out of $uplink; host services unreachable"
info "resolver: $(awk '/^nameserver/ { printf "%s ", $2 }' "$ROOT/etc/resolv.conf")(from $RESOLV)"

# --- 5. the machine: PID/mount/IPC/UTS namespaces in that network namespace ----------------------
# machine_setup ROOT RUSTUP INIT — runs as PID 1 of the new namespaces, mounts what a booted
# system has, then becomes the root's init (a bash that reaps orphans).
machine_setup() {
	set -euo pipefail
	local root=$1 rustup=$2 init=$3 d
	# The root a mount point of its own, as / is on any machine (df /, findmnt / work inside).
	mount --bind "$root" "$root"
	mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
	mount -t tmpfs -o mode=0755,nosuid,size=16m dev "$root/dev"
	for d in null zero full random urandom tty; do
		: >"$root/dev/$d"
		mount --bind "/dev/$d" "$root/dev/$d"
	done
	mkdir -m 0755 "$root/dev/pts"
	mkdir -m 1777 "$root/dev/shm"
	mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5,nosuid,noexec devpts "$root/dev/pts"
	ln -s pts/ptmx "$root/dev/ptmx"
	mount -t tmpfs -o mode=1777,nosuid,nodev shm "$root/dev/shm"
	ln -s /proc/self/fd "$root/dev/fd"
	ln -s /proc/self/fd/0 "$root/dev/stdin"
	ln -s /proc/self/fd/1 "$root/dev/stdout"
	ln -s /proc/self/fd/2 "$root/dev/stderr"
	mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$root/sys"
	mount --bind "$root/proc/sys" "$root/proc/sys"
	mount -o remount,bind,ro "$root/proc/sys"
	mount --bind "$rustup" "$root/root/.rustup"
	mount -o remount,bind,ro,nosuid,nodev "$root/root/.rustup"
	hostname "$(cat "$root/etc/hostname")"
	exec env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin chroot "$root" /bin/bash -c "$init"
}
# in_root [NAME=VALUE…] CMD… — run CMD inside the machine, as root, in the root's /, with a clean
# environment (nothing of the host's).
in_root() {
	nsenter --target "$PID1" --mount --uts --ipc --net --pid --root --wd -- \
		/usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root "$@"
}
INNER_PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# The environment of a root login with rustup's settings (and --env's).
inner_env() { # inner_env TERM
	printf '%s\0' HOME=/root USER=root LOGNAME=root SHELL=/bin/bash "TERM=$1" "PATH=$INNER_PATH" \
		RUSTUP_HOME=/root/.rustup CARGO_HOME=/root/.cargo RUSTUP_AUTO_INSTALL=0 \
		"${CA_ENV[@]+"${CA_ENV[@]}"}" "${EXTRA_ENV[@]+"${EXTRA_ENV[@]}"}"
}
in_root_login() { # in_root_login TERM SCRIPT — SCRIPT in a login bash, in the project
	local envs
	mapfile -d '' -t envs < <(inner_env "$1")
	in_root "${envs[@]}" /bin/bash -lc "cd $INNER_PROJECT && $2"
}

start_machine() {
	# shellcheck disable=SC2016 # the init's own script
	local init='trap "exit 0" TERM; while :; do sleep 86400 & wait "$!"; done' i p
	(
		exec 9>&-
		exec setsid ip netns exec "$NS" unshare --pid --fork --kill-child --mount --propagation private \
			--uts --ipc \
			/bin/bash -c "$(declare -f machine_setup); machine_setup \"\$@\"" machine_setup "$ROOT" "$HOST_RUSTUP" "$init"
	) </dev/null >>"$LOGDIR/machine.log" 2>&1 &
	LAUNCH_PID=$!
	for ((i = 0; i < 100; i++)); do
		if [[ -z "$PID1" ]]; then
			for p in $(descendants "$LAUNCH_PID"); do
				if awk '/^NSpid:/ { ok = (NF >= 3 && $NF == 1) } END { exit !ok }' "/proc/$p/status" 2>/dev/null; then
					PID1=$p
					break
				fi
			done
		fi
		[[ -n "$PID1" && "$(readlink "/proc/$PID1/root" 2>/dev/null)" == "$ROOT" ]] && return 0
		kill -0 "$LAUNCH_PID" 2>/dev/null || break
		sleep 0.1
	done
	cat "$LOGDIR/machine.log" >&2
	die "the machine did not start (see above and $LOGDIR/machine.log)"
}

say "starting the machine (PID, mount, IPC, UTS namespaces; chroot $ROOT)"
start_machine
info "init is pid $PID1 on the host; $(in_root /bin/cat /proc/1/comm)"

# --- 6. prerequisites a Rust user has -----------------------------------------------------------
PREREQ_SECS=0
say "apt-get install --no-install-recommends ${PREREQS[*]} (log: $LOGDIR/prereqs.log)"
t0=$SECONDS
bg_run "$LOGDIR/prereqs.log" in_root DEBIAN_FRONTEND=noninteractive /bin/bash -c \
	"apt-get update && apt-get install -y --no-install-recommends ${PREREQS[*]} && update-ca-certificates" || {
	rc=$?
	show_tail "$LOGDIR/prereqs.log"
	die "installing the prerequisites inside failed (exit $rc)"
}
PREREQ_SECS=$((SECONDS - t0))
info "$(grep -c '^Setting up' "$LOGDIR/prereqs.log" || true) packages set up in $(fmt_dur "$PREREQ_SECS")"

say "registries and toolchain, from inside"
for url in "${REGISTRY_URLS[@]}"; do
	code="$(in_root /usr/bin/curl -sS -o /dev/null --max-time 30 -w '%{http_code}' "$url" 2>"$LOGDIR/curl.err")" || code="curl: $(cat "$LOGDIR/curl.err")"
	[[ "$code" == 2* || "$code" == 3* ]] || die "$url is not reachable from inside the root ($code): check the host's network, NAT and DNS"
	info "$url: HTTP $code"
done
TOOLCHAIN="$(in_root_login dumb 'cargo --version && rustc --version' 2>&1)" || {
	while IFS= read -r line; do info "| $line"; done <<<"$TOOLCHAIN"
	die "the Rust toolchain does not work inside the root (rust-toolchain.toml's channel missing from $HOST_RUSTUP?)"
}
TOOLCHAIN="$(echo "$TOOLCHAIN" | tr '\n' ';' | sed 's/;$//; s/;/; /g')"
info "$TOOLCHAIN"

# --- 7. the commands ----------------------------------------------------------------------------
R_NAME=() R_RUN=() R_RESULT=() R_WALL=() R_TESTS=()
CUR=""     # index of the running command in R_* (for an interruption)
CUR_T0=0
OVERALL=0
record_interrupted() {
	[[ -n "$CUR" ]] || return 0
	R_RESULT[CUR]="INTERRUPTED"
	R_WALL[CUR]="$(fmt_dur $((SECONDS - CUR_T0)))"
	OVERALL=1
}

# count_tests LOG — "PASSED/FAILED" from cargo test's `test result:` lines or nextest's Summary
# line (summed when there are several), or "-".
count_tests() {
	sed 's/\x1b\[[0-9;]*[A-Za-z]//g' "$1" | awk '
		/^[[:space:]]*test result: (ok|FAILED)\. [0-9]+ passed; [0-9]+ failed/ {
			found = 1
			for (i = 1; i <= NF; i++) {
				if ($(i + 1) ~ /^passed;?$/) p += $i
				if ($(i + 1) ~ /^failed;?$/) f += $i
			}
		}
		/^[[:space:]]*Summary \[.*[0-9]+ tests? run:/ {
			found = 1
			line = $0
			sub(/.*tests? run:/, "", line)
			n = split(line, w, /[ ,]+/)
			for (i = 1; i < n; i++) {
				if (w[i + 1] == "passed") p += w[i]
				if (w[i + 1] == "failed") f += w[i]
				if (w[i + 1] == "timed" && w[i + 2] == "out") f += w[i]
			}
		}
		END { if (found) printf "%d/%d\n", p, f; else print "-" }'
}

# run_cmd NAME RUN SCRIPT STREAM — one command inside, logged and timed, its row in the report.
run_cmd() {
	local name=$1 run=$2 script=$3 stream=$4 slug log rc=0 next_tick
	case "$name" in
	deploy/demo.sh) slug=demo ;;
	tests/run.sh) slug=tests ;;
	*) slug=cmd ;;
	esac
	log="$LOGDIR/$slug-$run.log"
	CUR=${#R_NAME[@]}
	R_NAME+=("$name") R_RUN+=("$run") R_RESULT+=("running") R_WALL+=("") R_TESTS+=("")
	say "$name (run $run) — log: $log"
	CUR_T0=$SECONDS
	in_root_login dumb "$script" </dev/null >"$log" 2>&1 9>&- &
	BG_PID=$!
	if [[ "$stream" -eq 1 ]]; then
		tail -n +1 -f --pid="$BG_PID" "$log" &
		TAIL_PID=$!
	fi
	next_tick=$((SECONDS + 60))
	while kill -0 "$BG_PID" 2>/dev/null; do
		sleep 1 &
		wait $! || true
		if [[ "$stream" -eq 0 && $SECONDS -ge $next_tick ]]; then
			next_tick=$((SECONDS + 60))
			info "… $(fmt_dur $((SECONDS - CUR_T0))), $(wc -l <"$log") log lines; last: $(tail -n 1 "$log" | tr -d '\r' | sed 's/\x1b\[[0-9;]*[A-Za-z]//g' | cut -c1-90)"
		fi
	done
	wait "$BG_PID" || rc=$?
	BG_PID=""
	if [[ -n "$TAIL_PID" ]]; then
		wait "$TAIL_PID" 2>/dev/null || true
		TAIL_PID=""
	fi
	R_WALL[CUR]="$(fmt_dur $((SECONDS - CUR_T0)))"
	[[ "$name" == tests/run.sh ]] && R_TESTS[CUR]="$(count_tests "$log")"
	if [[ "$rc" -eq 0 ]]; then
		R_RESULT[CUR]="PASSED"
		info "PASSED in ${R_WALL[CUR]}${R_TESTS[CUR]:+, tests passed/failed ${R_TESTS[CUR]}}"
	else
		R_RESULT[CUR]="FAILED (exit $rc)"
		OVERALL=1
		printf '    \033[31mFAILED (exit %s) after %s\033[0m\n' "$rc" "${R_WALL[CUR]}"
		[[ "$stream" -eq 1 ]] || show_tail "$log"
	fi
	CUR=""
	return "$rc"
}

report() {
	local i out
	out="$(
		echo "== fresh-root report — $(date '+%Y-%m-%d %H:%M:%S %Z') =="
		printf '%-14s %s\n' commit "$COMMIT" "" "uncommitted changes: $UNCOMMITTED" \
			root "$ROOT ($([[ "$REUSE" -eq 1 ]] && echo "reused, NOT pristine" || echo "pristine Debian $(cat "$ROOT/etc/debian_version") minbase"))" \
			toolchain "$TOOLCHAIN"
		[[ -z "$CMD" && "$ROUNDS" -eq 2 ]] && printf '%-14s %s\n' between-rounds \
			"$([[ "$REBOOT" -eq 1 ]] && echo "every process stopped (--reboot)" || echo "services kept running")"
		[[ -n "$CMD" ]] && printf '%-14s %s\n' cmd "$CMD"
		[[ "${#EXTRA_ENV[@]}" -gt 0 ]] && printf '%-14s %s\n' env "${EXTRA_ENV[*]}"
		echo
		printf '%-20s %-4s %-20s %-9s %s\n' STEP RUN RESULT WALL "TESTS PASSED/FAILED"
		printf '%-20s %-4s %-20s %-9s %s\n' bootstrap - "$([[ "$REUSE" -eq 1 ]] && echo reused || echo ok)" "$(fmt_dur "$BOOTSTRAP_SECS")" "($BOOTSTRAP_NOTE)"
		printf '%-20s %-4s %-20s %-9s %s\n' prerequisites - ok "$(fmt_dur "$PREREQ_SECS")" "(apt-get install ${PREREQS[*]})"
		for i in "${!R_NAME[@]}"; do
			printf '%-20s %-4s %-20s %-9s %s\n' "${R_NAME[i]}" "${R_RUN[i]}" "${R_RESULT[i]}" "${R_WALL[i]:--}" "${R_TESTS[i]}"
		done
		echo
		printf '%-14s %s\n' logs "$LOGDIR" result "$([[ "$OVERALL" -eq 0 ]] && echo "PASSED" || echo "FAILED")"
	)"
	echo
	echo "$out"
	echo "$out" >"$REPORT"
	cp "$REPORT" "$LOGDIR/report.txt"
}

if [[ "$SHELL_MODE" -eq 1 ]]; then
	say "interactive shell inside the root (exit to tear everything down)"
	rc=0
	envs=()
	mapfile -d '' -t envs < <(inner_env "${TERM:-xterm}")
	in_root "${envs[@]}" /bin/bash -lc "cd $INNER_PROJECT && exec bash -l" 9>&- || rc=$?
	info "the shell exited with $rc"
	exit 0
fi

PLAN=() # "NAME RUN SCRIPT"
if [[ -n "$CMD" ]]; then
	PLAN+=("cmd|1|$CMD")
else
	for ((round = 1; round <= ROUNDS; round++)); do
		[[ "$ONLY" == tests ]] || PLAN+=("deploy/demo.sh|$round|deploy/demo.sh")
		[[ "$ONLY" == demo ]] || PLAN+=("tests/run.sh|$round|tests/run.sh")
	done
fi

PHASE=commands
stopped=0
prev_round=1
for entry in "${PLAN[@]}"; do
	IFS='|' read -r name run script <<<"$entry"
	if [[ "$stopped" -eq 1 ]]; then
		R_NAME+=("$name") R_RUN+=("$run") R_RESULT+=("not run") R_WALL+=("") R_TESTS+=("")
		continue
	fi
	if [[ "$run" != "$prev_round" && "$REBOOT" -eq 1 ]]; then
		say "--reboot: stopping every process in the root, then starting it again"
		stop_machine
		start_machine
		info "init is pid $PID1 on the host"
	fi
	prev_round=$run
	stream=$VERBOSE
	[[ "$name" == cmd ]] && stream=1
	if ! run_cmd "$name" "$run" "$script" "$stream"; then
		[[ "$KEEP_GOING" -eq 1 ]] || stopped=1
	fi
done
PHASE=finished
report
exit "$OVERALL"
