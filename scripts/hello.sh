#!/usr/bin/env bash
# The main job on a fresh Debian machine: bring up a local RabbitMQ (installing it if needed),
# then run tutorial 1: `receive` in the background, `send`, show what was received, stop.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/broker.sh
cargo build -q --example send --example receive
bin="${CARGO_TARGET_DIR:-target}/debug/examples"
out="$(mktemp)"
"$bin/receive" >"$out" 2>&1 &
receiver=$!
trap 'kill "$receiver" 2>/dev/null || true; rm -f "$out"' EXIT

for _ in $(seq 1 100); do grep -q "Waiting for messages" "$out" && break; sleep 0.1; done
"$bin/send"
for _ in $(seq 1 100); do grep -q "Received" "$out" && break; sleep 0.1; done
kill -INT "$receiver"
wait "$receiver" || true
cat "$out"
grep -q "\[x\] Received b'Hello World!'" "$out"
