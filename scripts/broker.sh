#!/usr/bin/env bash
# Make sure a RabbitMQ broker answers on 127.0.0.1:5672 (guest/guest), installing Debian's
# rabbitmq-server and starting it bound to loopback if needed. Idempotent; safe to run twice.
set -euo pipefail

port="${RABBITMQ_NODE_PORT:-5672}"

listening() {
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
}

sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
export PATH="$PATH:/usr/sbin"
ctl() { $sudo env ERL_EPMD_ADDRESS=127.0.0.1 rabbitmqctl "$@"; }

# Debian's package may start its own node (rabbit@<hostname>, every interface) through its
# service; the tests want ours, bound to loopback, named rabbit@localhost.
stop_packaged_node() {
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet rabbitmq-server 2>/dev/null; then
        $sudo systemctl stop rabbitmq-server || true
    elif command -v service >/dev/null 2>&1; then
        $sudo service rabbitmq-server stop >/dev/null 2>&1 || true
    fi
    $sudo rabbitmqctl -q stop >/dev/null 2>&1 || true
}

if listening; then
    if ctl -n rabbit@localhost -q status >/dev/null 2>&1; then
        echo "broker: RabbitMQ already listening on 127.0.0.1:$port"
        exit 0
    fi
    echo "broker: port $port is taken by another node; stopping Debian's rabbitmq-server service"
    stop_packaged_node
    for _ in $(seq 1 40); do listening || break; sleep 0.5; done
    if listening; then
        echo "broker: port $port is still taken by something that is not rabbit@localhost" >&2
        exit 1
    fi
fi

if ! command -v rabbitmq-server >/dev/null 2>&1; then
    echo "broker: installing Debian's rabbitmq-server"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq rabbitmq-server >/dev/null
    stop_packaged_node
fi

log="${TMPDIR:-/tmp}/cottontail-rabbitmq.log"
echo "broker: starting rabbitmq-server on 127.0.0.1:$port (log: $log)"
$sudo env RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 ERL_EPMD_ADDRESS=127.0.0.1 \
    RABBITMQ_NODENAME=rabbit@localhost RABBITMQ_NODE_PORT="$port" \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
    setsid nohup rabbitmq-server >"$log" 2>&1 < /dev/null &

for _ in $(seq 1 120); do
    if listening; then
        # The AMQP listener opens before the node has finished booting; wait for it to be ready.
        ctl -n rabbit@localhost await_startup >/dev/null 2>&1 || true
        echo "broker: ready"
        exit 0
    fi
    sleep 0.5
done
echo "broker: rabbitmq-server did not start within 60 s; last lines of $log:" >&2
tail -n 30 "$log" >&2 || true
exit 1
