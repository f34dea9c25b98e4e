#!/usr/bin/env bash
# deploy/demo.sh — run DataGuardian's main job end to end on local defaults.
#
#   deploy/demo.sh            build, back up a sample PostgreSQL database, restore it, compare, stop
#   deploy/demo.sh --keep     same, but leave the controller and the agent running at the end
#   deploy/demo.sh --no-build reuse target/debug binaries as they are
#
# What it does, exactly as an operator would (grpcurl over TLS with server reflection, no .proto):
#   1. tests/ensure-services.sh --for demo: PostgreSQL, Redis, the PostgreSQL client tools, jq and
#      grpcurl, installed and started when missing, and a role dg_demo (CREATEDB, generated password)
#   2. cargo build --bin dg-controller --bin dg-agent (debug)
#   3. fresh work dir .dg-demo/ (git-ignored): master key, controller.toml, logs, agent state, backups
#   4. PostgreSQL databases owned by dg_demo: dg_demo_controller (controller state), dg_demo_source
#      (sample data with awkward types), dg_demo_restored dropped
#   5. start dg-controller, fetch its CA, AuthService/Setup, create a join token, enroll and start
#      dg-agent, wait until it is ONLINE
#   6. create a local storage, a PostgreSQL datasource and a backup job; RunNow and wait
#   7. ListBackups; RestoreBackup into dg_demo_restored and wait
#   8. compare every table (row count + md5 of all rows in key order), sequences and the schema;
#      print a summary; exit non-zero on any mismatch
#
# Environment: DG_DEMO_API_PORT / DG_DEMO_AGENT_PORT (defaults 7443 / 7444; a free port is chosen
# when the default is taken), DG_DEMO_ROWS (customers rows, default 50000), RUST_LOG (default info).
set -euo pipefail

# --- arguments ----------------------------------------------------------------------------------
KEEP=0
BUILD=1
usage() { sed -n '2,7p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
for arg in "$@"; do
	case "$arg" in
	--keep) KEEP=1 ;;
	--no-build) BUILD=0 ;;
	-h | --help)
		usage
		exit 0
		;;
	*)
		usage >&2
		echo "unknown argument: $arg" >&2
		exit 2
		;;
	esac
done

# --- paths and small helpers --------------------------------------------------------------------
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DEMO="$ROOT/.dg-demo"
CTL_BIN="$ROOT/target/debug/dg-controller"
AGENT_BIN="$ROOT/target/debug/dg-agent"
CONF="$DEMO/controller.toml"
CA="$DEMO/ca.pem"
ROWS="${DG_DEMO_ROWS:-50000}"
export RUST_LOG="${RUST_LOG:-info}"

export DG_CACHE_DIR="${DG_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/dataguardian}"

T0=$SECONDS
say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die() {
	printf '\n\033[31mdemo FAILED: %s\033[0m\n' "$*" >&2
	exit 1
}

# psql against the local server as the demo's own role (set once ensure-services.sh has run).
PSQL=()

# --- background processes -----------------------------------------------------------------------
CTL_PID=""
AGENT_PID=""
LEAVE_RUNNING=0

# stop_pid PID NAME — SIGTERM, wait up to 10 s for a clean shutdown, then SIGKILL.
stop_pid() {
	local pid=$1 name=$2 i
	[[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 0
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < 100; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$pid" 2>/dev/null; then
		echo "    $name (pid $pid) ignored SIGTERM for 10s; killing it" >&2
		kill -KILL "$pid" 2>/dev/null || true
	fi
	wait "$pid" 2>/dev/null || true
}

# Runs on every exit: stops the agent and the controller unless --keep asked to leave them up
# (and the demo succeeded).
cleanup() {
	local rc=$?
	if [[ "$LEAVE_RUNNING" -eq 1 ]]; then
		exit "$rc"
	fi
	if [[ -n "$AGENT_PID$CTL_PID" ]]; then
		echo "    stopping agent and controller" >&2
	fi
	stop_pid "$AGENT_PID" dg-agent
	stop_pid "$CTL_PID" dg-controller
	rm -f "$DEMO/agent.pid" "$DEMO/controller.pid" 2>/dev/null || true
	if [[ "$rc" -ne 0 ]]; then
		printf '    logs: %s/controller.log, %s/agent.log\n' "$DEMO" "$DEMO" >&2
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A previous `--keep` run may still have its processes up (and their ports): stop exactly those,
# identified by the pid files it left and by their command line.
stop_leftovers() {
	local f pid
	for f in "$DEMO/agent.pid" "$DEMO/controller.pid"; do
		[[ -f "$f" ]] || continue
		pid=$(cat "$f")
		if [[ "$pid" =~ ^[0-9]+$ ]] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$DEMO"; then
			info "stopping process $pid left running by a previous --keep run"
			kill -TERM "$pid" 2>/dev/null || true
			for _ in $(seq 50); do
				kill -0 "$pid" 2>/dev/null || break
				sleep 0.2
			done
			kill -KILL "$pid" 2>/dev/null || true
		fi
	done
}

# show_log FILE — last lines of a log, for failure diagnostics.
show_log() {
	echo "---- last 40 lines of $1 ----" >&2
	tail -n 40 "$1" >&2 2>/dev/null || true
	echo "----" >&2
}

# --- ports --------------------------------------------------------------------------------------
# free_port WANTED [AVOID] — WANTED if it can be bound on 127.0.0.1 (and is not AVOID), else any
# free port the kernel hands out.
free_port() {
	python3 - "$1" "${2:-0}" <<-'PY'
		import socket, sys
		want, avoid = int(sys.argv[1]), int(sys.argv[2])
		def bind(port):
		    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
		    try:
		        s.bind(("127.0.0.1", port))
		        return s.getsockname()[1]
		    except OSError:
		        return None
		    finally:
		        s.close()
		port = bind(want) if want and want != avoid else None
		while port is None or port == avoid:
		    port = bind(0)
		print(port)
	PY
}

# tcp_open PORT — true when something accepts TCP connections on 127.0.0.1:PORT.
tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# --- gRPC helpers -------------------------------------------------------------------------------
TOKEN=""
API_ADDR=""
# g ARGS… — grpcurl as an authenticated operator (TLS verified against the controller's CA).
g() { grpcurl -connect-timeout 5 -max-time 60 -cacert "$CA" -H "authorization: Bearer $TOKEN" "$@"; }

# grpcurl accepts lowerCamelCase (and proto) field names in requests, but grpcurl 1.8.x prints
# responses with the proto names (snake_case: ca_fingerprint, raw_bytes). camel_keys rewrites every
# object key to lowerCamelCase so the rest of the script reads one spelling, the proto3 JSON one.
camel_keys() {
	jq 'def camel: gsub("_(?<c>[a-z0-9])"; .c | ascii_upcase);
	    walk(if type == "object" then with_entries(.key |= camel) else . end)'
}

# rpc Service/Method [JSON] — call dataguardian.v1.Service/Method, print the JSON response (keys in
# lowerCamelCase); on an RPC error print grpcurl's message (code + status message) and fail.
rpc() {
	local method=$1 body=${2:-'{}'} out
	if ! out=$(g -d "$body" "$API_ADDR" "dataguardian.v1.$method" 2>"$DEMO/rpc.err"); then
		echo "RPC dataguardian.v1.$method failed:" >&2
		sed 's/^/    /' "$DEMO/rpc.err" >&2
		return 1
	fi
	camel_keys <<<"$out"
}

# field JSON JQ-FILTER — pull one value out of a response ("" when absent; grpcurl omits defaults).
field() { jq -r "($2) // empty" <<<"$1"; }

# wait_execution ID LABEL — poll ExecutionService/GetExecution until COMPLETED (prints the final
# JSON on stdout) or FAILED/CANCELLED/timeout (prints the error and the execution's logs, fails).
wait_execution() {
	local id=$1 label=$2 deadline=$((SECONDS + 120)) ex status last=""
	while :; do
		ex=$(rpc ExecutionService/GetExecution "$(jq -nc --arg id "$id" '{id:$id}')") || return 1
		status=$(field "$ex" .status)
		if [[ "$status" != "$last" ]]; then
			info "$label $id: ${status:-<no status>} (t+$((SECONDS - T0))s)" >&2
			last=$status
		fi
		case "$status" in
		EXECUTION_STATUS_COMPLETED)
			printf '%s\n' "$ex"
			return 0
			;;
		EXECUTION_STATUS_FAILED | EXECUTION_STATUS_CANCELLED)
			echo "$label $id ended $status: $(field "$ex" .error)" >&2
			print_execution_logs "$id"
			return 1
			;;
		esac
		if ((SECONDS >= deadline)); then
			echo "$label $id still ${status:-unknown} after 120s" >&2
			print_execution_logs "$id"
			return 1
		fi
		kill -0 "$AGENT_PID" 2>/dev/null || {
			echo "dg-agent exited while $label $id was $status" >&2
			show_log "$DEMO/agent.log"
			return 1
		}
		sleep 1
	done
}

print_execution_logs() {
	echo "---- ExecutionService/ListExecutionLogs $1 ----" >&2
	rpc ExecutionService/ListExecutionLogs "$(jq -nc --arg id "$1" '{executionId:$id}')" |
		jq -r '.lines[]? | "\(.at // "") \(.level // "") \(.message // "")"' >&2 || true
	show_log "$DEMO/agent.log"
	show_log "$DEMO/controller.log"
}

# =================================================================================================
say "1/8 services"
bash tests/ensure-services.sh --for demo
# The demo's role and tool directories (KEY=VALUE lines written by ensure-services.sh).
while IFS='=' read -r key value; do
	[[ "$key" =~ ^[A-Z_]+$ ]] && printf -v "$key" '%s' "$value"
done <"$DG_CACHE_DIR/demo.env"
PATH="$DG_TOOLS_PATH:$PATH"
for t in grpcurl jq python3 psql pg_dump; do
	command -v "$t" >/dev/null || die "$t is not on PATH after tests/ensure-services.sh"
done
PG_HOST=$DG_DEMO_PG_HOST PG_PORT=$DG_DEMO_PG_PORT PG_USER=$DG_DEMO_PG_USER
PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER")

# =================================================================================================
say "2/8 build"
if [[ "$BUILD" -eq 1 ]]; then
	cargo build --bin dg-controller --bin dg-agent
fi
[[ -x "$CTL_BIN" && -x "$AGENT_BIN" ]] || die "missing $CTL_BIN or $AGENT_BIN (build failed or --no-build without a build)"

# =================================================================================================
say "3/8 work dir $DEMO"
stop_leftovers
rm -rf "$DEMO"
mkdir -p "$DEMO/backups" "$DEMO/agent"
chmod 0700 "$DEMO" "$DEMO/agent"
# The role's password for psql and pg_dump, in a 0600 passfile rather than the environment.
(
	umask 077
	printf '%s:%s:*:%s:%s\n' "$PG_HOST" "$PG_PORT" "$PG_USER" "$DG_DEMO_PG_PASSWORD" >"$DEMO/pgpass"
)
export PGPASSFILE="$DEMO/pgpass"

# 32 random bytes as 64 hex characters, readable by the owner only.
gen_hex32() {
	if command -v openssl >/dev/null; then
		openssl rand -hex 32
	elif command -v xxd >/dev/null; then
		head -c32 /dev/urandom | xxd -p -c64
	else
		od -An -tx1 -v -N32 /dev/urandom | tr -d ' \n'
		echo
	fi
}
(
	umask 077
	gen_hex32 >"$DEMO/master.key"
)
chmod 0600 "$DEMO/master.key"
[[ "$(tr -d '\n' <"$DEMO/master.key" | wc -c)" -eq 64 ]] || die "master key generation failed"
info "master key: $DEMO/master.key (0600)"

# =================================================================================================
say "4/8 databases"
"${PSQL[@]}" -d postgres <<-'SQL'
	SET client_min_messages = warning;
	DROP DATABASE IF EXISTS dg_demo_controller WITH (FORCE);
	DROP DATABASE IF EXISTS dg_demo_source WITH (FORCE);
	DROP DATABASE IF EXISTS dg_demo_restored WITH (FORCE);
	CREATE DATABASE dg_demo_controller;
	CREATE DATABASE dg_demo_source ENCODING 'UTF8' TEMPLATE template0;
SQL

# Sample data meant to trip up a naive dump/restore: unicode and control characters, quotes and
# backslashes, NULLs everywhere, jsonb, bytea with NUL bytes, arrays with NULL elements and empty
# arrays, NaN/Infinity, an enum, an identity column, a foreign key, a CHECK constraint, a table name
# that needs quoting, an index, a view and a comment. Deterministic (no random()), so every run
# backs up the same data.
"${PSQL[@]}" -d dg_demo_source -v rows="$ROWS" <<-'SQL'
	SET client_min_messages = warning;
	CREATE TYPE order_status AS ENUM ('new', 'paid', 'shipped', 'cancelled', 'rückerstattet');

	CREATE TABLE customers (
	    id            bigint PRIMARY KEY,
	    name          text NOT NULL,
	    email         text,
	    profile       jsonb,
	    avatar        bytea,
	    lucky_numbers int[],
	    balance       numeric(14, 2),
	    score         double precision,
	    created_at    timestamptz NOT NULL,
	    note          text
	);
	COMMENT ON TABLE customers IS 'Démo customers — données de test';

	INSERT INTO customers
	SELECT g,
	       (ARRAY['Zoë', 'Łukasz', 'José', 'Björk', '山田太郎', 'Ольга', 'O''Brien', 'عمر', '🦀 Ferris',
	              E'tab\there'])[1 + g % 10] || ' #' || g,
	       CASE WHEN g % 7 = 0 THEN NULL ELSE 'user' || g || '@example.com' END,
	       CASE WHEN g % 11 = 0 THEN NULL
	            ELSE jsonb_build_object('tier', g % 3, 'tags', jsonb_build_array('a', g % 5, NULL),
	                                    'quote', E'say "hi"\n\\o/', 'nested',
	                                    jsonb_build_object('ok', g % 2 = 0, 'ratio', g / 7.0)) END,
	       CASE WHEN g % 13 = 0 THEN NULL ELSE decode(md5(g::text), 'hex') || '\x00ff00'::bytea END,
	       CASE WHEN g % 17 = 0 THEN NULL
	            WHEN g % 19 = 0 THEN '{}'::int[]
	            ELSE ARRAY[g % 10, g % 100, NULL, -g] END,
	       round(g * 1.37, 2),
	       CASE g % 1000 WHEN 0 THEN 'NaN'::float8 WHEN 1 THEN 'Infinity'::float8
	                     WHEN 2 THEN '-Infinity'::float8 ELSE g / 3.0 END,
	       timestamptz '2024-01-01 00:00:00+00' + g * interval '1 minute',
	       CASE WHEN g % 5 = 0 THEN E'multi\nline \\ backslash, comma; ''quote'' \r\n end' END
	FROM generate_series(1, :rows) AS g;

	CREATE TABLE orders (
	    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	    customer_id bigint NOT NULL REFERENCES customers (id),
	    amount      numeric(10, 2) NOT NULL CHECK (amount >= 0),
	    status      order_status NOT NULL,
	    placed_at   timestamptz NOT NULL,
	    items       jsonb NOT NULL,
	    ship_to     inet,
	    eta         interval
	);
	CREATE INDEX orders_customer_idx ON orders (customer_id);

	INSERT INTO orders (customer_id, amount, status, placed_at, items, ship_to, eta)
	SELECT 1 + (g * 7919) % :rows,
	       (g % 500) + 0.99,
	       (enum_range(NULL::order_status))[1 + g % 5],
	       timestamptz '2024-06-01 12:00:00+02' + g * interval '37 seconds',
	       jsonb_build_array(jsonb_build_object('sku', 'SKU-' || g % 97, 'qty', 1 + g % 4)),
	       CASE WHEN g % 3 = 0 THEN NULL ELSE ('10.' || g % 256 || '.' || g % 7 || '.1')::inet END,
	       CASE WHEN g % 4 = 0 THEN NULL ELSE g % 72 * interval '1 hour' END
	FROM generate_series(1, 2 * :rows) AS g;

	CREATE TABLE "Order Notes" (
	    order_id bigint NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
	    line     int NOT NULL,
	    "Body"   text NOT NULL,
	    PRIMARY KEY (order_id, line)
	);
	INSERT INTO "Order Notes"
	SELECT o, l, format('note %s/%s — «%s»', o, l, repeat('ß', l))
	FROM generate_series(1, 2000) AS o, generate_series(1, 3) AS l;

	CREATE VIEW customer_totals AS
	SELECT c.id, c.name, count(o.id) AS orders, coalesce(sum(o.amount), 0) AS total
	FROM customers c LEFT JOIN orders o ON o.customer_id = c.id
	GROUP BY c.id, c.name;

	ANALYZE;
SQL
"${PSQL[@]}" -d dg_demo_source -At -F ' ' -c \
	"SELECT 'dg_demo_source:', pg_size_pretty(pg_database_size(current_database())) || ',',
	        (SELECT count(*) FROM customers) || ' customers,',
	        (SELECT count(*) FROM orders) || ' orders,',
	        (SELECT count(*) FROM \"Order Notes\") || ' order notes'" | sed 's/^/    /'

# =================================================================================================
say "5/8 controller and agent"
API_PORT=$(free_port "${DG_DEMO_API_PORT:-7443}")
AGENT_PORT=$(free_port "${DG_DEMO_AGENT_PORT:-7444}" "$API_PORT")
API_ADDR="127.0.0.1:$API_PORT"
info "API 127.0.0.1:$API_PORT, agent sessions 127.0.0.1:$AGENT_PORT"

(umask 077 && : >"$CONF")
cat >"$CONF" <<EOF
# Written by deploy/demo.sh — local demo configuration (see deploy/controller.example.toml).
database_url = "postgres://$PG_USER:$DG_DEMO_PG_PASSWORD@$PG_HOST:$PG_PORT/dg_demo_controller"
redis_url = "$DG_DEMO_REDIS_URL"
master_key_file = "$DEMO/master.key"
api_listen = "127.0.0.1:$API_PORT"
agent_listen = "127.0.0.1:$AGENT_PORT"
agent_endpoint = "https://127.0.0.1:$AGENT_PORT"
server_names = ["localhost", "127.0.0.1"]
log_format = "text"
bootstrap_token_file = "$DEMO/bootstrap-token"
EOF

"$CTL_BIN" --config "$CONF" serve >"$DEMO/controller.log" 2>&1 &
CTL_PID=$!
echo "$CTL_PID" >"$DEMO/controller.pid"
info "dg-controller pid $CTL_PID, log $DEMO/controller.log"

deadline=$((SECONDS + 60))
until tcp_open "$API_PORT"; do
	kill -0 "$CTL_PID" 2>/dev/null || {
		show_log "$DEMO/controller.log"
		die "dg-controller exited during start-up"
	}
	((SECONDS < deadline)) || {
		show_log "$DEMO/controller.log"
		die "dg-controller did not accept connections on $API_ADDR within 60s"
	}
	sleep 0.5
done

"$CTL_BIN" --config "$CONF" print-ca >"$CA" 2>>"$DEMO/controller-cli.log" ||
	die "dg-controller print-ca failed (see $DEMO/controller-cli.log)"
grep -q -- '-----BEGIN CERTIFICATE-----' "$CA" || die "print-ca did not print a PEM certificate"
info "CA certificate: $CA ($(openssl x509 -in "$CA" -noout -fingerprint -sha256 2>/dev/null | sed 's/.*=//' || echo '?'))"

# First administrator. Setup needs no Bearer header, only the one-time bootstrap token the controller
# wrote to bootstrap_token_file at its first start.
ADMIN_PASSWORD=$(python3 -c 'import secrets, string; a = string.ascii_letters + string.digits; print("".join(secrets.choice(a) for _ in range(20)))')
(
	umask 077
	printf '%s\n' "$ADMIN_PASSWORD" >"$DEMO/admin-password"
)
setup=$(grpcurl -connect-timeout 5 -max-time 30 -cacert "$CA" \
	-d "$(jq -nc --arg p "$ADMIN_PASSWORD" --arg b "$(cat "$DEMO/bootstrap-token" 2>/dev/null)" \
		'{username:"admin", password:$p, bootstrapToken:$b}')" \
	"$API_ADDR" dataguardian.v1.AuthService/Setup 2>"$DEMO/rpc.err") || {
	sed 's/^/    /' "$DEMO/rpc.err" >&2
	die "AuthService/Setup failed"
}
setup=$(camel_keys <<<"$setup")
TOKEN=$(field "$setup" .token)
[[ -n "$TOKEN" ]] || die "AuthService/Setup returned no token: $setup"
(
	umask 077
	printf '%s\n' "$TOKEN" >"$DEMO/token"
)
EXPIRES=$(field "$setup" .expiresAt)
info "admin session until ${EXPIRES:-?} (password in $DEMO/admin-password)"

join=$(rpc AgentService/CreateJoinToken '{}')
JOIN_TOKEN=$(field "$join" .token)
CA_FP=$(field "$join" .caFingerprint)
[[ -n "$JOIN_TOKEN" && "$CA_FP" == sha256:* ]] || die "unexpected CreateJoinToken response: $join"
info "join token created; CA fingerprint $CA_FP"

"$AGENT_BIN" enroll --controller "https://127.0.0.1:$API_PORT" --token "$JOIN_TOKEN" \
	--ca-fingerprint "$CA_FP" --state-dir "$DEMO/agent" >"$DEMO/enroll.out" 2>"$DEMO/enroll.log" || {
	cat "$DEMO/enroll.out" "$DEMO/enroll.log" >&2
	die "dg-agent enroll failed"
}
AGENT_ID=$(grep -v '^[[:space:]]*$' "$DEMO/enroll.out" | tail -n 1 | tr -d '[:space:]')
[[ -n "$AGENT_ID" ]] || die "dg-agent enroll printed no agent id"
info "enrolled agent $AGENT_ID"

"$AGENT_BIN" run --state-dir "$DEMO/agent" --local-root "$DEMO/backups" >"$DEMO/agent.log" 2>&1 &
AGENT_PID=$!
echo "$AGENT_PID" >"$DEMO/agent.pid"
info "dg-agent pid $AGENT_PID, log $DEMO/agent.log"

deadline=$((SECONDS + 30))
while :; do
	agents=$(rpc AgentService/ListAgents '{}')
	status=$(jq -r --arg id "$AGENT_ID" '.agents[]? | select(.id == $id) | .status // "AGENT_STATUS_UNSPECIFIED"' <<<"$agents")
	[[ "$status" == AGENT_STATUS_ONLINE ]] && break
	kill -0 "$AGENT_PID" 2>/dev/null || {
		show_log "$DEMO/agent.log"
		die "dg-agent exited before coming online"
	}
	((SECONDS < deadline)) || {
		printf '%s\n' "$agents" >&2
		show_log "$DEMO/agent.log"
		die "agent $AGENT_ID is ${status:-not listed}, not AGENT_STATUS_ONLINE, after 30s"
	}
	sleep 1
done
jq -r --arg id "$AGENT_ID" '.agents[] | select(.id == $id) |
	"    agent online: \(.hostname // "?") v\(.version // "?"); tools: \([.tools[]? | "\(.name) \(.version // "")"] | join(", "))"' <<<"$agents"

# =================================================================================================
say "6/8 storage, datasource, job, backup"
storage=$(rpc StorageService/CreateStorage "$(jq -nc --arg p "$DEMO/backups" --arg a "$AGENT_ID" \
	'{name:"demo-local", local:{path:$p, agentId:$a}}')")
STORAGE_ID=$(field "$storage" .id)
[[ -n "$STORAGE_ID" ]] || die "CreateStorage returned no id: $storage"
info "storage demo-local $STORAGE_ID -> $DEMO/backups"

datasource=$(rpc DatasourceService/CreateDatasource "$(jq -nc --arg a "$AGENT_ID" --arg h "$PG_HOST" \
	--argjson p "$PG_PORT" --arg u "$PG_USER" --arg pw "$DG_DEMO_PG_PASSWORD" '{
	name:"demo-source", engine:"ENGINE_POSTGRES", host:$h, port:$p,
	database:"dg_demo_source", username:$u, password:$pw,
	tlsMode:"TLS_MODE_DISABLE", agentId:$a}')")
DS_ID=$(field "$datasource" .id)
[[ -n "$DS_ID" ]] || die "CreateDatasource returned no id: $datasource"
info "datasource demo-source $DS_ID"

job=$(rpc BackupJobService/CreateBackupJob "$(jq -nc --arg d "$DS_ID" --arg s "$STORAGE_ID" '{
	name:"demo-job", datasourceId:$d, storageIds:[$s],
	storageStrategy:"STORAGE_STRATEGY_FALLBACK", compressionLevel:3}')")
JOB_ID=$(field "$job" .id)
[[ -n "$JOB_ID" ]] || die "CreateBackupJob returned no id: $job"
info "backup job demo-job $JOB_ID"

t_backup=$SECONDS
run=$(rpc BackupJobService/RunNow "$(jq -nc --arg j "$JOB_ID" '{jobId:$j}')")
BACKUP_EX=$(field "$run" .id)
[[ -n "$BACKUP_EX" ]] || die "RunNow returned no execution id: $run"
backup_ex=$(wait_execution "$BACKUP_EX" backup) || die "backup $BACKUP_EX did not complete"
t_backup=$((SECONDS - t_backup))

# =================================================================================================
say "7/8 list backups, restore into dg_demo_restored"
backups=$(rpc BackupService/ListBackups '{}')
jq . <<<"$backups"
backup=$(jq -c --arg id "$BACKUP_EX" '.backups[]? | select(.id == $id)' <<<"$backups")
[[ -n "$backup" ]] || die "ListBackups does not list backup $BACKUP_EX"

t_restore=$SECONDS
restore=$(rpc BackupService/RestoreBackup "$(jq -nc --arg b "$BACKUP_EX" '{
	backupId:$b, targetDatabase:"dg_demo_restored", createDatabase:true,
	confirmTargetDatabase:"dg_demo_restored"}')")
RESTORE_EX=$(field "$restore" .id)
[[ -n "$RESTORE_EX" ]] || die "RestoreBackup returned no execution id: $restore"
restore_ex=$(wait_execution "$RESTORE_EX" restore) || die "restore $RESTORE_EX did not complete"
t_restore=$((SECONDS - t_restore))

# =================================================================================================
say "8/8 compare dg_demo_source with dg_demo_restored"
# Tables (with their primary key as sort order; whole-row text when there is none) and sequences.
# Names come back quoted (%I) so they can be pasted into SQL.
OBJECTS_SQL="
SELECT 'table', format('%I.%I', n.nspname, c.relname),
       coalesce((SELECT string_agg(format('t.%I', a.attname), ', ' ORDER BY k.ord)
                   FROM pg_index i
                   CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
                   JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                  WHERE i.indrelid = c.oid AND i.indisprimary), 't::text')
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg_toast%'
UNION ALL
SELECT 'sequence', format('%I.%I', n.nspname, c.relname), ''
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind = 'S' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
 ORDER BY 1, 2"

# fingerprint DB KIND NAME ORDER — "<rows> <md5 of all rows in key order>" (or ERROR …).
fingerprint() {
	local db=$1 kind=$2 name=$3 order=$4 sql
	if [[ "$kind" == table ]]; then
		sql="SELECT count(*) || ' ' || md5(coalesce(string_agg(t::text, '|' ORDER BY $order), '')) FROM $name t"
	else
		# log_cnt differs legitimately after setval(); compare the value that matters.
		sql="SELECT 1 || ' ' || md5(last_value::text || '/' || is_called::text) FROM $name"
	fi
	local out
	if out=$("${PSQL[@]}" -d "$db" -At -c "SET TIME ZONE 'UTC'; $sql" 2>&1); then
		printf '%s\n' "$out"
	else
		printf 'ERROR: %s\n' "$(grep -m 1 -E 'ERROR|FATAL|error' <<<"$out" | sed -E 's/.*(ERROR|FATAL|error): *//')"
	fi
}

MISMATCHES=0
printf '    %-9s %-26s %10s %10s  %-8s %s\n' kind name source restored md5 result
while IFS=$'\t' read -r kind name order; do
	src=$(fingerprint dg_demo_source "$kind" "$name" "$order")
	dst=$(fingerprint dg_demo_restored "$kind" "$name" "$order")
	if [[ "$src" == "$dst" && "$src" != ERROR* ]]; then
		result=ok
	else
		result=MISMATCH
		MISMATCHES=$((MISMATCHES + 1))
	fi
	printf '    %-9s %-26s %10s %10s  %-8s %s\n' "$kind" "$name" "${src%% *}" "${dst%% *}" \
		"$(cut -c1-8 <<<"${src#* }")" "$result"
	[[ "$result" == ok ]] || printf '        source:   %s\n        restored: %s\n' "$src" "$dst"
done < <("${PSQL[@]}" -d dg_demo_source -At -F $'\t' -c "$OBJECTS_SQL")

# Tables that exist only in the restored database are a mismatch as well.
extra=$(comm -13 \
	<("${PSQL[@]}" -d dg_demo_source -At -F $'\t' -c "$OBJECTS_SQL" | cut -f2 | sort) \
	<("${PSQL[@]}" -d dg_demo_restored -At -F $'\t' -c "$OBJECTS_SQL" 2>/dev/null | cut -f2 | sort))
if [[ -n "$extra" ]]; then
	printf '    only in dg_demo_restored: %s\n' "$(tr '\n' ' ' <<<"$extra")"
	MISMATCHES=$((MISMATCHES + 1))
fi

# Schema: types, constraints, indexes, views, comments must survive too. pg_dump ≥ 15.14 writes a
# random \restrict key into plain dumps; drop those lines before comparing.
schema() { pg_dump -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" --schema-only "$1" 2>&1 | grep -v -E '^\\(un)?restrict ' || true; }
if diff <(schema dg_demo_source) <(schema dg_demo_restored) >"$DEMO/schema.diff"; then
	printf '    %-9s %-26s %43s\n' schema "(pg_dump --schema-only)" ok
else
	printf '    %-9s %-26s %43s\n' schema "(pg_dump --schema-only)" MISMATCH
	head -n 40 "$DEMO/schema.diff" | sed 's/^/        /'
	MISMATCHES=$((MISMATCHES + 1))
fi

# =================================================================================================
say "summary"
files=$(find "$DEMO/backups" -type f | wc -l)
bytes=$(find "$DEMO/backups" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
info "backup id:        $BACKUP_EX (job $JOB_ID, ${t_backup}s)"
info "raw bytes:        $(jq -r '.rawBytes // "0"' <<<"$backup")"
info "stored bytes:     $(jq -r '.storedBytes // "0"' <<<"$backup")"
info "chunks:           $(jq -r '.chunkCount // 0' <<<"$backup")"
info "sha256:           $(jq -r '.sha256 // "-"' <<<"$backup")"
info "files in $DEMO/backups: $files ($bytes bytes)"
find "$DEMO/backups" -type f -printf '%P  %s\n' | sort | head -n 20 | sed 's/^/        /'
info "backup execution: $(jq -r '.status' <<<"$backup_ex")"
info "restore:          $RESTORE_EX $(jq -r '.status' <<<"$restore_ex") into dg_demo_restored (${t_restore}s)"
if [[ "$MISMATCHES" -eq 0 ]]; then
	info "comparison:       identical (all tables, sequences and schema)"
else
	info "comparison:       $MISMATCHES MISMATCH(ES)"
fi
info "total time:       $((SECONDS - T0))s"

[[ "$MISMATCHES" -eq 0 ]] || die "restored database differs from the source"

if [[ "$KEEP" -eq 1 ]]; then
	LEAVE_RUNNING=1
	say "--keep: controller and agent left running"
	cat <<-EOF
		    controller  pid $CTL_PID   API https://$API_ADDR   agents https://127.0.0.1:$AGENT_PORT
		    agent       pid $AGENT_PID   id $AGENT_ID   logs $DEMO/{controller,agent}.log
		    admin password: $DEMO/admin-password   session token: $DEMO/token
		
		    grpcurl -cacert $CA -H "authorization: Bearer \$(cat $DEMO/token)" $API_ADDR \\
		        dataguardian.v1.BackupService/ListBackups
		
		    stop them with:  kill $AGENT_PID $CTL_PID   (or run deploy/demo.sh again)
	EOF
else
	say "demo passed"
fi
