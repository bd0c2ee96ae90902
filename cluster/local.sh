#!/usr/bin/env bash
# A real multi-node Ray cluster and an MLflow tracking server on this one machine.
#
#   cluster/local.sh up             head node + DYNALAY_WORKERS worker nodes (own raylets) + MLflow
#   cluster/local.sh status         nodes, dashboard and MLflow addresses
#   cluster/local.sh env            `export` lines for a shell: eval "$(cluster/local.sh env)"
#   cluster/local.sh down           stop everything `up` started, worker nodes included
#   cluster/local.sh kill-worker N  SIGKILL worker node N (1-based) as a crashed machine would die
#   cluster/local.sh start-worker N start worker node N again (its processes, and so the trials it
#                                   runs, inherit the environment this command runs with)
#
# Every process is started by this script under `setsid`, so it leads its own process group;
# `down` signals exactly those groups (never `ray stop`, which would also stop every other Ray
# instance on the machine). State (pids, ports, URIs, logs, the auth token, MLflow's data) lives
# in DYNALAY_CLUSTER_DIR (default: runs/local-cluster in the repository).
#
# Settings (environment, with defaults):
#   DYNALAY_CLUSTER_DIR=runs/local-cluster  DYNALAY_VENV=<repo>/.venv
#   DYNALAY_RAY_PORT=6390 (GCS)             DYNALAY_RAY_CLIENT_PORT=<RAY_PORT+1>
#   DYNALAY_DASHBOARD_PORT=8265             DYNALAY_MLFLOW_PORT=5050
#   DYNALAY_AGENT_PORT=52465 (head's dashboard agent; worker N uses AGENT_PORT+N)
#   DYNALAY_WORKERS=1  DYNALAY_HEAD_CPUS=1  DYNALAY_WORKER_CPUS=1  DYNALAY_WORKER_GPUS=1
#   DYNALAY_OBJECT_STORE_BYTES=268435456    DYNALAY_UP_TIMEOUT=120 (seconds)
#   DYNALAY_RAY_TEMP_DIR=/tmp/dynalay-ray-<hash of the state dir>   DYNALAY_KEEP_RAY_LOGS=0
#   RAY_AUTH_MODE=token (set it to `disabled` to run without authentication; `up` warns loudly)
#   RAY_AUTH_TOKEN_PATH=<state dir>/auth_token (generated on first `up`, mode 0600)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"
PROG="local.sh"

die() { echo "$PROG: error: $*" >&2; exit 1; }
warn() { echo "$PROG: warning: $*" >&2; }

# ----------------------------------------------------------------------------- configuration

STATE_DIR="${DYNALAY_CLUSTER_DIR:-$REPO_DIR/runs/local-cluster}"
mkdir -p "$STATE_DIR"
STATE_DIR="$(cd "$STATE_DIR" && pwd)"
LOG_DIR="$STATE_DIR/logs"
STATE_FILE="$STATE_DIR/cluster.env"

VENV="${DYNALAY_VENV:-$REPO_DIR/.venv}"
RAY_PORT="${DYNALAY_RAY_PORT:-6390}"
RAY_CLIENT_PORT="${DYNALAY_RAY_CLIENT_PORT:-$((RAY_PORT + 1))}"
DASHBOARD_PORT="${DYNALAY_DASHBOARD_PORT:-8265}"
MLFLOW_PORT="${DYNALAY_MLFLOW_PORT:-5050}"
# Ray's default agent port, 52365, is the one every other `ray.init()` on this machine wants.
AGENT_PORT="${DYNALAY_AGENT_PORT:-52465}"
WORKERS="${DYNALAY_WORKERS:-1}"
HEAD_CPUS="${DYNALAY_HEAD_CPUS:-1}"
WORKER_CPUS="${DYNALAY_WORKER_CPUS:-1}"
WORKER_GPUS="${DYNALAY_WORKER_GPUS:-1}"
OBJECT_STORE_BYTES="${DYNALAY_OBJECT_STORE_BYTES:-268435456}"
UP_TIMEOUT="${DYNALAY_UP_TIMEOUT:-120}"
# Ray's sockets live under the temp dir and a Unix socket path may not exceed 107 bytes, so
# the temp dir is short and outside the (possibly deep) state dir. Its own temp dir also keeps
# this cluster out of /tmp/ray/ray_current_cluster: a plain `ray.init()` elsewhere on the
# machine starts its own instance instead of joining this one.
STATE_HASH="$(printf '%s' "$STATE_DIR" | cksum | cut -d' ' -f1)"
RAY_TEMP_DIR="${DYNALAY_RAY_TEMP_DIR:-/tmp/dynalay-ray-$STATE_HASH}"
AUTH_MODE="${RAY_AUTH_MODE:-token}"
TOKEN_PATH="${RAY_AUTH_TOKEN_PATH:-$STATE_DIR/auth_token}"

RAY_BIN="$VENV/bin/ray"
MLFLOW_BIN="$VENV/bin/mlflow"
PYTHON_BIN="$VENV/bin/python"

DASHBOARD_URL="http://127.0.0.1:$DASHBOARD_PORT"
MLFLOW_URI="http://127.0.0.1:$MLFLOW_PORT"

# ----------------------------------------------------------------------------- helpers

pid_alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# The environment every Ray process gets: the venv's bin first so that a job's `python` and
# `dynalay` are this project's, and exactly one token source (the file) when auth is on.
ray_env() {
    export PATH="$VENV/bin:$PATH"
    export RAY_USAGE_STATS_ENABLED=0
    # SIGTERM makes a node drain for up to 30 s by default; `down` should not wait that long.
    export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="${RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S:-3}"
    unset RAY_AUTH_TOKEN
    if [[ "$AUTH_MODE" == token ]]; then
        export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$TOKEN_PATH"
    else
        export RAY_AUTH_MODE="$AUTH_MODE"
        unset RAY_AUTH_TOKEN_PATH
    fi
}

curl_dashboard() {
    local path="$1"
    if [[ "$AUTH_MODE" == token ]]; then
        curl -fsS --max-time 5 -H "Authorization: Bearer $(cat "$TOKEN_PATH")" "$DASHBOARD_URL$path"
    else
        curl -fsS --max-time 5 "$DASHBOARD_URL$path"
    fi
}

# The ids of the nodes the GCS reports ALIVE, one per line (none when it cannot be asked).
alive_node_ids() {
    curl_dashboard "/api/v0/nodes?limit=1000" 2>/dev/null | "$PYTHON_BIN" -c '
import json, sys
for node in json.load(sys.stdin)["data"]["result"]["result"]:
    if node["state"] == "ALIVE":
        print(node["node_id"])' 2>/dev/null || true
}

alive_node_count() { alive_node_ids | grep -c . || true; }

# wait_until SECONDS WHAT COMMAND...: poll COMMAND every 0.25 s.
wait_until() {
    local seconds="$1" what="$2"; shift 2
    local deadline=$((SECONDS + seconds))
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.25
    done
}

nodes_alive_at_least() { (( $(alive_node_count) >= $1 )); }
dashboard_answers() { curl_dashboard /api/version >/dev/null 2>&1; }
mlflow_answers() { curl -fsS --max-time 5 "$MLFLOW_URI/health" >/dev/null 2>&1; }

ensure_token() {
    [[ "$AUTH_MODE" == token ]] || return 0
    if [[ ! -s "$TOKEN_PATH" ]]; then
        [[ -n "${RAY_AUTH_TOKEN_PATH:-}" ]] && die "RAY_AUTH_TOKEN_PATH=$TOKEN_PATH is empty or missing"
        (umask 077 && "$PYTHON_BIN" -c 'import secrets; print(secrets.token_hex(32), end="")' >"$TOKEN_PATH")
    fi
}

start_worker() {
    local index="$1" gcs_address="$2"
    local pid_file="$STATE_DIR/worker-$index.pid"
    pid_alive "$pid_file" && die "worker $index is already running (pid $(cat "$pid_file"))"
    # Two raylets on one host need distinct ports: the dashboard agent's port is fixed by
    # default, the node/object manager and worker ports are chosen by the OS (0). The head's
    # log monitor already follows the shared session's logs, so the worker runs none.
    ( ray_env; exec setsid "$RAY_BIN" start --block --address "$gcs_address" \
        --num-cpus "$WORKER_CPUS" --num-gpus "$WORKER_GPUS" \
        --object-store-memory "$OBJECT_STORE_BYTES" \
        --dashboard-agent-listen-port "$((AGENT_PORT + index))" \
        --node-manager-port 0 --object-manager-port 0 \
        --min-worker-port 0 --max-worker-port 0 \
        --include-log-monitor false --disable-usage-stats \
    ) >"$LOG_DIR/worker-$index.log" 2>&1 &
    echo $! >"$pid_file"
}

# stop_group PID_FILE SECONDS: SIGTERM the process (a `ray start --block` then stops its
# node's processes), wait, then SIGKILL whatever is left in its process group.
stop_group() {
    local pid_file="$1" seconds="$2" pid
    [[ -f "$pid_file" ]] || return 0
    pid="$(cat "$pid_file")"
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        local deadline=$((SECONDS + seconds))
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    fi
    kill -KILL -- "-$pid" 2>/dev/null || true
    # The group's members are gone only once none of them is left to reap or to exit.
    local deadline=$((SECONDS + 10))
    while pgrep -g "$pid" >/dev/null 2>&1 && ((SECONDS < deadline)); do sleep 0.1; done
    rm -f "$pid_file"
}

# write_state GCS_ADDRESS: what `status`, `env`, `down` and the worker commands read back.
write_state() {
    cat >"$STATE_FILE" <<EOF
RAY_GCS_ADDRESS=$1
RAY_DASHBOARD_URL=$DASHBOARD_URL
MLFLOW_TRACKING_URI=$MLFLOW_URI
RAY_TEMP_DIR=$RAY_TEMP_DIR
AUTH_MODE=$AUTH_MODE
TOKEN_PATH=$([[ "$AUTH_MODE" == token ]] && echo "$TOKEN_PATH")
WORKERS=$WORKERS
EOF
}

read_state() {
    [[ -f "$STATE_FILE" ]] || return 1
    # shellcheck disable=SC1090
    source "$STATE_FILE"
}

# ----------------------------------------------------------------------------- commands

cmd_up() {
    if pid_alive "$STATE_DIR/head.pid"; then
        echo "$PROG: already up"
        cmd_status
        return 0
    fi
    [[ -x "$RAY_BIN" && -x "$MLFLOW_BIN" ]] || die "no ray/mlflow in $VENV/bin (set DYNALAY_VENV)"
    local port
    for port in "$RAY_PORT" "$RAY_CLIENT_PORT" "$DASHBOARD_PORT" "$MLFLOW_PORT" "$AGENT_PORT"; do
        port_busy "$port" && die "port $port on 127.0.0.1 is in use (see the DYNALAY_*_PORT settings)"
    done
    if [[ "$AUTH_MODE" != token ]]; then
        warn "Ray token authentication is OFF (RAY_AUTH_MODE=$AUTH_MODE): anyone who can reach" \
             "this machine's Ray ports can run code on it"
    fi
    mkdir -p "$LOG_DIR" "$STATE_DIR/mlflow/artifacts"
    ensure_token
    local started=$SECONDS
    write_state ""  # already now, so that a failed `up` can clean up through `down`
    # Any failure from here on (a `die`, or a command failing under `set -e`) stops what was
    # started, so a failed `up` leaves no half cluster behind.
    trap 'echo "$PROG: up failed; stopping what was started" >&2; cmd_down >/dev/null 2>&1 || true' EXIT

    # MLflow starts first: it is the slowest to answer and needs nothing from Ray.
    # The job-execution feature (GenAI evaluation jobs) would add a dozen idle consumer processes.
    ( export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
      exec setsid "$MLFLOW_BIN" server \
        --backend-store-uri "sqlite:///$STATE_DIR/mlflow/mlflow.db" \
        --artifacts-destination "$STATE_DIR/mlflow/artifacts" --serve-artifacts \
        --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 \
    ) >"$LOG_DIR/mlflow.log" 2>&1 &
    echo $! >"$STATE_DIR/mlflow.pid"

    local address_file="$RAY_TEMP_DIR/ray_current_cluster"
    rm -f "$address_file"  # a stale one from an earlier session would be read too early
    ( ray_env; exec setsid "$RAY_BIN" start --head --block \
        --port "$RAY_PORT" --ray-client-server-port "$RAY_CLIENT_PORT" \
        --include-dashboard true --dashboard-host 127.0.0.1 --dashboard-port "$DASHBOARD_PORT" \
        --dashboard-agent-listen-port "$AGENT_PORT" \
        --num-cpus "$HEAD_CPUS" --num-gpus 0 --object-store-memory "$OBJECT_STORE_BYTES" \
        --min-worker-port 0 --max-worker-port 0 \
        --temp-dir "$RAY_TEMP_DIR" --disable-usage-stats \
    ) >"$LOG_DIR/head.log" 2>&1 &
    echo $! >"$STATE_DIR/head.pid"

    # `ray start` writes the GCS address it really uses once the head is up: Ray swaps a
    # loopback --node-ip-address for the host's routable IP on Linux, so it cannot be assumed.
    wait_until "$UP_TIMEOUT" "the head node" test -s "$address_file" \
        || die "the head node did not start within ${UP_TIMEOUT}s; see $LOG_DIR/head.log"
    wait_until "$UP_TIMEOUT" "the head's dashboard" dashboard_answers \
        || die "the head's dashboard did not answer on $DASHBOARD_URL within ${UP_TIMEOUT}s; see $LOG_DIR/head.log"
    local gcs_address head_ready=$((SECONDS - started))
    gcs_address="$(cat "$address_file")"

    local index
    for ((index = 1; index <= WORKERS; index++)); do start_worker "$index" "$gcs_address"; done
    wait_until "$UP_TIMEOUT" "$((WORKERS + 1)) nodes" nodes_alive_at_least "$((WORKERS + 1))" \
        || die "only $(alive_node_count) of $((WORKERS + 1)) Ray nodes came up; see $LOG_DIR/worker-*.log"
    local nodes_ready=$((SECONDS - started))
    wait_until "$UP_TIMEOUT" "MLflow" mlflow_answers \
        || die "MLflow did not answer on $MLFLOW_URI within ${UP_TIMEOUT}s; see $LOG_DIR/mlflow.log"
    trap - EXIT

    write_state "$gcs_address"
    echo "$PROG: up in $((SECONDS - started))s: head + $WORKERS worker node(s), MLflow" \
         "(head answered at ${head_ready}s, all nodes alive at ${nodes_ready}s)"
    print_addresses
}

print_addresses() {
    read_state || return 0
    echo "Ray GCS address:   $RAY_GCS_ADDRESS"
    echo "Ray dashboard:     $RAY_DASHBOARD_URL   (jobs: dynalay submit --address $RAY_DASHBOARD_URL ...)"
    echo "MLflow:            $MLFLOW_TRACKING_URI"
    if [[ "$AUTH_MODE" == token ]]; then
        echo "Ray auth:          token in $TOKEN_PATH   (eval \"\$(cluster/local.sh env)\" before ray/dynalay commands)"
    else
        echo "Ray auth:          OFF (RAY_AUTH_MODE=$AUTH_MODE)"
    fi
    echo "Logs:              $LOG_DIR, $RAY_TEMP_DIR/session_latest/logs"
}

cmd_status() {
    if ! pid_alive "$STATE_DIR/head.pid"; then
        echo "$PROG: not running (state in $STATE_DIR)"
        return 3
    fi
    read_state || die "the head runs but $STATE_FILE is missing; run down, then up"
    ray_env
    print_addresses
    local index state
    for ((index = 1; index <= WORKERS; index++)); do
        state=stopped
        pid_alive "$STATE_DIR/worker-$index.pid" && state="running (pid $(cat "$STATE_DIR/worker-$index.pid"))"
        echo "Worker node $index:     $state"
    done
    echo "MLflow server:     $(pid_alive "$STATE_DIR/mlflow.pid" && echo running || echo stopped)"
    echo
    "$RAY_BIN" list nodes --address "$RAY_DASHBOARD_URL" 2>&1 || true
    "$RAY_BIN" status --address "$RAY_GCS_ADDRESS" 2>&1 || true
}

cmd_env() {
    read_state || die "not running (state in $STATE_DIR); run up first"
    if [[ "$AUTH_MODE" == token ]]; then
        echo "export RAY_AUTH_MODE=token"
        echo "export RAY_AUTH_TOKEN_PATH='$TOKEN_PATH'"
    fi
    echo "export MLFLOW_TRACKING_URI='$MLFLOW_TRACKING_URI'"
    echo "# Ray dashboard / jobs API: $RAY_DASHBOARD_URL   GCS: $RAY_GCS_ADDRESS"
}

cmd_down() {
    local started=$SECONDS pid_file stoppers=()
    # Worker nodes first, all at once: a head stopped first leaves them retrying the GCS.
    # (`wait` names its jobs: a bare `wait` would also wait for nodes this shell started.)
    for pid_file in "$STATE_DIR"/worker-*.pid; do
        [[ -e "$pid_file" ]] || continue
        stop_group "$pid_file" 20 &
        stoppers+=($!)
    done
    ((${#stoppers[@]} == 0)) || wait "${stoppers[@]}"
    stoppers=()
    stop_group "$STATE_DIR/head.pid" 20 &
    stoppers+=($!)
    stop_group "$STATE_DIR/mlflow.pid" 20 &
    stoppers+=($!)
    wait "${stoppers[@]}"
    if [[ -f "$STATE_FILE" ]]; then
        read_state
        if [[ "${DYNALAY_KEEP_RAY_LOGS:-0}" != 1 && -n "$RAY_TEMP_DIR" && -d "$RAY_TEMP_DIR" ]]; then
            rm -rf "$RAY_TEMP_DIR"
        fi
        rm -f "$STATE_FILE"
    fi
    echo "$PROG: down in $((SECONDS - started))s"
}

cmd_kill_worker() {
    local index="${1:-1}" pid_file pid
    pid_file="$STATE_DIR/worker-$index.pid"
    pid_alive "$pid_file" || die "worker $index is not running"
    pid="$(cat "$pid_file")"
    # SIGKILL to the whole group: raylet, agents and the node's Ray workers die at once,
    # with no chance to drain or deregister, as on a machine that lost power.
    kill -KILL -- "-$pid"
    local deadline=$((SECONDS + 10))
    while pgrep -g "$pid" >/dev/null 2>&1 && ((SECONDS < deadline)); do sleep 0.1; done
    rm -f "$pid_file"
    echo "$PROG: killed worker $index (process group $pid)"
}

# A node killed a moment ago still counts as ALIVE until the GCS's health checks give up on
# it (about 20 s here), so the new worker is recognised by a node id not seen before.
has_new_node() { comm -13 "$1" <(alive_node_ids | sort) | grep -q .; }

cmd_start_worker() {
    local index="${1:-1}"
    read_state || die "not running (state in $STATE_DIR); run up first"
    local known="$STATE_DIR/nodes-before-worker-$index"
    alive_node_ids | sort >"$known"
    mkdir -p "$LOG_DIR"
    start_worker "$index" "$RAY_GCS_ADDRESS"
    wait_until "$UP_TIMEOUT" "worker $index" has_new_node "$known" \
        || die "worker $index did not join within ${UP_TIMEOUT}s; see $LOG_DIR/worker-$index.log"
    rm -f "$known"
    echo "$PROG: started worker $index"
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) cmd_env ;;
    kill-worker) cmd_kill_worker "${2:-1}" ;;
    start-worker) cmd_start_worker "${2:-1}" ;;
    *) echo "usage: $PROG up|down|status|env|kill-worker [N]|start-worker [N]" >&2; exit 2 ;;
esac
