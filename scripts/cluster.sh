#!/usr/bin/env bash
# A private 3-node RabbitMQ cluster on loopback for the cluster tests (issue 14):
# ct1@localhost, ct2@localhost, ct3@localhost with AMQP on 127.0.0.1:5691-5693 and
# Erlang distribution on 25691-25693, data and logs under $COTTONTAIL_CLUSTER_BASE
# (default /tmp/cottontail-cluster). Never touches the main test node rabbit@localhost.
#
#   cluster.sh start        start the 3 nodes and cluster ct2, ct3 with ct1 (idempotent: a
#                           cluster already running with 3 nodes is left as it is; anything
#                           else is killed, wiped and started afresh); prints the AMQP ports
#   cluster.sh stop         stop the 3 nodes and remove their directories
#   cluster.sh status       print ct1's cluster_status (another node's if ct1 is down)
#   cluster.sh kill-node N  kill -9 node N (1-3), keeping its data (for the tests)
#   cluster.sh start-node N start node N (1-3) on its existing data and wait until it runs
#   cluster.sh wait-running wait until ct1 (or any node) reports 3 running nodes
#
# Needs Debian's rabbitmq-server (scripts/broker.sh installs it) and root or sudo.
set -euo pipefail

base="${COTTONTAIL_CLUSTER_BASE:-/tmp/cottontail-cluster}"
nodes=(ct1 ct2 ct3)
amqp_ports=(5691 5692 5693)
dist_ports=(25691 25692 25693)

sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
export PATH="$PATH:/usr/sbin"
export ERL_EPMD_ADDRESS=127.0.0.1

# rabbitmqctl against node NAME (Debian's wrapper runs it as the rabbitmq user, whose cookie
# the nodes share).
ctl() {
    local node="$1"
    shift
    $sudo env ERL_EPMD_ADDRESS=127.0.0.1 rabbitmqctl -n "$node@localhost" "$@"
}

listening() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# The pids of the beam.smp processes running node NAME: the node name is not on beam's command
# line (RabbitMQ sets it at boot from RABBITMQ_NODENAME), so read each beam's environment.
node_pids() {
    local want="RABBITMQ_NODENAME=$1@localhost" pid
    for pid in $(pgrep -x beam.smp || true); do
        if $sudo cat "/proc/$pid/environ" 2>/dev/null | tr '\0' '\n' | grep -qx "$want"; then
            echo "$pid"
        fi
    done
}

kill_node() {
    local name="$1" pids
    pids="$(node_pids "$name")"
    if [ -n "$pids" ]; then
        # shellcheck disable=SC2086
        $sudo kill -9 $pids 2>/dev/null || true
        for _ in $(seq 1 50); do
            [ -z "$(node_pids "$name")" ] && break
            sleep 0.1
        done
    fi
}

# Stop node NAME: SIGTERM (a clean init:stop in Erlang), then kill -9 after 10 s.
stop_node() {
    local name="$1" pids
    pids="$(node_pids "$name")"
    [ -z "$pids" ] && return 0
    # shellcheck disable=SC2086
    $sudo kill -TERM $pids 2>/dev/null || true
    for _ in $(seq 1 100); do
        [ -z "$(node_pids "$name")" ] && return 0
        sleep 0.1
    done
    kill_node "$name"
}

index_of() {
    case "$1" in
        1 | ct1) echo 0 ;;
        2 | ct2) echo 1 ;;
        3 | ct3) echo 2 ;;
        *) echo "cluster: no node $1 (1, 2 or 3)" >&2; exit 2 ;;
    esac
}

# Make node I's private directories and config (a fresh node, or one kept after kill-node).
prepare_node() {
    local dir="$base/${nodes[$1]}"
    $sudo mkdir -p "$dir/mnesia" "$dir/log"
    # Private config and plugin files: nothing shared with rabbit@localhost or each other.
    [ -f "$dir/rabbitmq.conf" ] || printf 'loopback_users.guest = true\n' | $sudo tee "$dir/rabbitmq.conf" >/dev/null
    [ -f "$dir/advanced.config" ] || printf '[].\n' | $sudo tee "$dir/advanced.config" >/dev/null
    [ -f "$dir/enabled_plugins" ] || printf '[].\n' | $sudo tee "$dir/enabled_plugins" >/dev/null
    $sudo chmod 755 "$base" "$dir"
    $sudo chown -R rabbitmq:rabbitmq "$dir"
}

launch_node() {
    local i="$1" name="${nodes[$1]}" dir="$base/${nodes[$1]}"
    prepare_node "$i"
    $sudo env RABBITMQ_NODENAME="$name@localhost" \
        RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 ERL_EPMD_ADDRESS=127.0.0.1 \
        RABBITMQ_NODE_PORT="${amqp_ports[$i]}" RABBITMQ_DIST_PORT="${dist_ports[$i]}" \
        RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log" \
        RABBITMQ_PID_FILE="$dir/mnesia/$name.pid" \
        RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
        RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
        setsid nohup rabbitmq-server >>"$base/$name.stdout" 2>&1 </dev/null &
}

fail_node() {
    local name="$1" why="$2" dir="$base/$1"
    echo "cluster: $name@localhost $why; last lines of its logs:" >&2
    tail -n 30 "$base/$name.stdout" >&2 2>/dev/null || true
    $sudo sh -c "tail -n 30 '$dir'/log/*.log" >&2 2>/dev/null || true
    exit 1
}

# Wait until node I has booted (AMQP listening and the app started); fail with its log if it
# dies or takes more than 60 s.
await_node() {
    local i="$1" name="${nodes[$1]}" seen=0
    for _ in $(seq 1 240); do
        if [ -n "$(node_pids "$name")" ]; then
            seen=1
        elif [ "$seen" = 1 ]; then
            fail_node "$name" "exited while booting"
        fi
        if listening "${amqp_ports[$i]}"; then
            if ctl "$name" -q await_startup --timeout 60 >/dev/null 2>&1; then
                return 0
            fi
            fail_node "$name" "did not finish booting"
        fi
        sleep 0.25
    done
    fail_node "$name" "did not start within 60 s"
}

running_count() {
    ctl "$1" -q cluster_status --formatter json 2>/dev/null |
        grep -o '"running_nodes":\[[^]]*\]' | grep -o '@localhost' | wc -l || true
}

wait_running() {
    local n
    for _ in $(seq 1 120); do
        for name in "${nodes[@]}"; do
            n="$(running_count "$name")"
            if [ "${n:-0}" = 3 ]; then return 0; fi
        done
        sleep 0.5
    done
    echo "cluster: the cluster did not report 3 running nodes within 60 s" >&2
    ctl ct1 cluster_status >&2 || true
    exit 1
}

print_ports() {
    for i in 0 1 2; do
        echo "${nodes[$i]}@localhost amqp://127.0.0.1:${amqp_ports[$i]}"
    done
}

cmd_stop() {
    for name in "${nodes[@]}"; do stop_node "$name" & done
    wait
    $sudo rm -rf "$base"
}

cmd_start() {
    if ! command -v rabbitmq-server >/dev/null 2>&1; then
        echo "cluster: rabbitmq-server is not installed; run scripts/broker.sh first" >&2
        exit 1
    fi
    if [ "$(running_count ct1)" = 3 ] && listening "${amqp_ports[0]}" &&
        listening "${amqp_ports[1]}" && listening "${amqp_ports[2]}"; then
        echo "cluster: already running"
        print_ports
        return 0
    fi
    # Anything else (nothing, a partial or crashed cluster): start afresh.
    for name in "${nodes[@]}"; do kill_node "$name"; done
    $sudo rm -rf "$base"
    $sudo mkdir -p "$base"
    for i in 0 1 2; do
        if listening "${amqp_ports[$i]}"; then
            echo "cluster: port ${amqp_ports[$i]} is taken by something else" >&2
            exit 1
        fi
    done
    echo "cluster: starting ct1, ct2, ct3 under $base"
    for i in 0 1 2; do launch_node "$i"; done
    for i in 0 1 2; do await_node "$i"; done
    for name in ct2 ct3; do
        ctl "$name" -q stop_app >/dev/null
        ctl "$name" -q join_cluster ct1@localhost >/dev/null
        ctl "$name" -q start_app >/dev/null
    done
    wait_running
    echo "cluster: ready (3 running nodes)"
    print_ports
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop; echo "cluster: stopped" ;;
    status)
        # ct1's view, or another node's if ct1 is down.
        ctl ct1 cluster_status 2>/dev/null || ctl ct2 cluster_status 2>/dev/null || ctl ct3 cluster_status
        ;;
    kill-node)
        kill_node "${nodes[$(index_of "${2:?node}")]}"
        ;;
    start-node)
        i="$(index_of "${2:?node}")"
        if [ -z "$(node_pids "${nodes[$i]}")" ]; then launch_node "$i"; fi
        await_node "$i"
        ;;
    wait-running) wait_running ;;
    *)
        echo "usage: $0 start|stop|status|kill-node N|start-node N|wait-running" >&2
        exit 2
        ;;
esac
