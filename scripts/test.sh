#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: installs and starts RabbitMQ on 127.0.0.1
# (scripts/broker.sh), makes a virtualenv with pika for the interop tests, then runs the
# tests and the fmt / clippy / doc checks; stops the cluster tests' private nodes at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/broker.sh

# The TLS tests make certificates with openssl; a socket test reads `ss` (iproute2).
missing=()
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v ss >/dev/null 2>&1 || missing+=(iproute2)
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""; [ "$(id -u)" != 0 ] && sudo="sudo"
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

venv="${COTTONTAIL_VENV:-$PWD/target/venv}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import pika' 2>/dev/null; then
    echo "test: creating $venv with pika"
    if ! python3 -m venv "$venv" 2>/dev/null; then
        sudo=""; [ "$(id -u)" != 0 ] && sudo="sudo"
        $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
        python3 -m venv "$venv"
    fi
    "$venv/bin/pip" install -q 'pika>=1.3,<2'
fi
export COTTONTAIL_PYTHON="$venv/bin/python"

# The cluster tests leave their 3 private nodes running for the next test binary; stop them
# when the suite ends, so they do not take CPU and memory from whatever runs next (a
# benchmark above all). The main test node stays up.
trap './scripts/cluster.sh stop >/dev/null 2>&1 || true' EXIT

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps
cargo test --all-targets
cargo test --doc
