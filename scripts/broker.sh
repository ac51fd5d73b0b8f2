#!/usr/bin/env bash
# Make sure a RabbitMQ broker answers on 127.0.0.1:5672 (guest/guest), installing Debian's
# rabbitmq-server and starting it bound to loopback if needed. Idempotent; safe to run twice.
set -euo pipefail

port="${RABBITMQ_NODE_PORT:-5672}"

listening() {
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
}

if listening; then
    echo "broker: RabbitMQ already listening on 127.0.0.1:$port"
    exit 0
fi

sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi

if ! command -v rabbitmq-server >/dev/null 2>&1 && [ ! -x /usr/sbin/rabbitmq-server ]; then
    echo "broker: installing Debian's rabbitmq-server"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq rabbitmq-server >/dev/null
fi
export PATH="$PATH:/usr/sbin"

# Debian's package may have started a node on all interfaces through its service: stop it so the
# node below, bound to loopback only, is the one that runs.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet rabbitmq-server 2>/dev/null; then
    $sudo systemctl stop rabbitmq-server || true
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
        $sudo env ERL_EPMD_ADDRESS=127.0.0.1 rabbitmqctl -n rabbit@localhost await_startup >/dev/null 2>&1 || true
        echo "broker: ready"
        exit 0
    fi
    sleep 0.5
done
echo "broker: rabbitmq-server did not start within 60 s; last lines of $log:" >&2
tail -n 30 "$log" >&2 || true
exit 1
