//! A private 3-node RabbitMQ cluster for the cluster tests (groundwork for issue 14,
//! automatic recovery): `ct1@localhost`, `ct2@localhost`, `ct3@localhost` with AMQP on
//! 127.0.0.1:5691-5693 (Erlang distribution on 25691-25693), started and clustered by
//! `scripts/cluster.sh start`. The ports stay clear of the TLS node of `tls_broker.rs`
//! (5681, 5682, 25682), which may start while this cluster is still up. The main test
//! node `rabbit@localhost` (port 5672) is never touched.
//!
//! Lifetime: [`Cluster::start`] runs `scripts/cluster.sh start` once per test process (a
//! static) and the nodes are **left running** when the process exits: Rust runs no
//! destructors for statics, and a cluster that is already up with 3 running nodes makes the
//! next `start` return in about half a second instead of about 15 s. `start` rebuilds the
//! cluster from scratch when it finds anything else (nothing running, a node down, a crashed
//! earlier run). `scripts/cluster.sh stop` stops the nodes and removes their directories under
//! /tmp/cottontail-cluster; `scripts/test.sh` runs it when the suite ends.
//!
//! Node indexes are 0, 1, 2 for ct1, ct2, ct3. The tests sharing the cluster must run one at
//! a time (hold a static `Mutex` in the test file), and a test that kills or stops a node must
//! bring it back ([`Cluster::restart_node`], [`Cluster::start_app`]) before it ends.
#![allow(dead_code)]

use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cottontail::{Connection, ConnectionParameters};

/// The nodes' names, by index.
pub const NODES: [&str; 3] = ["ct1@localhost", "ct2@localhost", "ct3@localhost"];
/// The nodes' AMQP ports on 127.0.0.1, by index.
pub const PORTS: [u16; 3] = [5691, 5692, 5693];

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cluster.sh");

static STARTED: OnceLock<Result<(), String>> = OnceLock::new();

/// A handle on the running test cluster; see the module docs.
#[derive(Clone, Copy, Debug)]
pub struct Cluster {
    _started: (),
}

/// Runs `scripts/cluster.sh` with `args`; its stdout, or its stdout and stderr as the error.
fn script(args: &[&str]) -> Result<String, String> {
    let out = Command::new("bash")
        .arg(SCRIPT)
        .args(args)
        .output()
        .map_err(|e| format!("running {SCRIPT}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "`{SCRIPT} {}` failed ({}):\n{stdout}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn check(i: usize) {
    assert!(i < NODES.len(), "no cluster node {i} (0, 1 or 2)");
}

impl Cluster {
    /// Starts the cluster (once per test process) and returns a handle; panics with the
    /// script's output (including the tail of a failing node's log) if it cannot start.
    pub fn start() -> Cluster {
        let started = STARTED.get_or_init(|| {
            let out = script(&["start"])?;
            eprintln!("{out}");
            Ok(())
        });
        if let Err(message) = started {
            panic!(
                "the cluster tests need a private 3-node RabbitMQ cluster and it did not \
                 start:\n{message}"
            );
        }
        Cluster { _started: () }
    }

    /// Parameters for node `i`'s AMQP port.
    pub fn params(&self, i: usize) -> ConnectionParameters {
        check(i);
        ConnectionParameters::new("127.0.0.1").with_port(PORTS[i])
    }

    /// Parameters for the three nodes, in order.
    pub fn all_params(&self) -> [ConnectionParameters; 3] {
        [self.params(0), self.params(1), self.params(2)]
    }

    /// Opens a connection to node `i`.
    pub fn connect(&self, i: usize) -> Connection {
        Connection::open(self.params(i))
            .unwrap_or_else(|e| panic!("connecting to {} on port {}: {e}", NODES[i], PORTS[i]))
    }

    /// Runs `rabbitmqctl -n <node i> -q args...`: its stdout, or its output as the error.
    pub fn try_rabbitmqctl(&self, i: usize, args: &[&str]) -> Result<String, String> {
        check(i);
        let out = Command::new("rabbitmqctl")
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env(
                "PATH",
                format!("{}:/usr/sbin", std::env::var("PATH").unwrap_or_default()),
            )
            .args(["-n", NODES[i], "-q"])
            .args(args)
            .output()
            .map_err(|e| format!("running rabbitmqctl: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "rabbitmqctl -n {} {args:?} failed ({}): {}{}",
                NODES[i],
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Runs `rabbitmqctl -n <node i> -q args...` and returns its stdout; panics if it fails.
    pub fn rabbitmqctl(&self, i: usize, args: &[&str]) -> String {
        self.try_rabbitmqctl(i, args)
            .unwrap_or_else(|message| panic!("{message}"))
    }

    /// The running nodes as node `i` sees them (`cluster_status`); empty if `i` is down.
    pub fn running_nodes(&self, i: usize) -> Vec<String> {
        let Ok(json) = self.try_rabbitmqctl(i, &["cluster_status", "--formatter", "json"]) else {
            return Vec::new();
        };
        let Some(start) = json.find("\"running_nodes\":[") else {
            return Vec::new();
        };
        let rest = &json[start + "\"running_nodes\":[".len()..];
        let list = &rest[..rest.find(']').unwrap_or(rest.len())];
        list.split(',')
            .map(|name| name.trim().trim_matches('"').to_string())
            .filter(|name| !name.is_empty())
            .collect()
    }

    /// Waits up to `timeout` until some node reports `n` running nodes; false if none did.
    pub fn wait_running(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if (0..NODES.len()).any(|i| self.running_nodes(i).len() == n) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// `kill -9` of node `i`'s beam.smp (found by its `RABBITMQ_NODENAME`); its data stays,
    /// so [`restart_node`](Self::restart_node) brings it back as the same cluster member.
    pub fn kill_node(&self, i: usize) {
        check(i);
        script(&["kill-node", &(i + 1).to_string()]).unwrap_or_else(|message| panic!("{message}"));
    }

    /// Starts node `i` again on its data (after [`kill_node`](Self::kill_node); nothing
    /// happens to a node that runs) and waits until the cluster has 3 running nodes.
    pub fn restart_node(&self, i: usize) {
        self.try_restart_node(i)
            .unwrap_or_else(|message| panic!("{message}"));
    }

    /// [`restart_node`](Self::restart_node) without the panic (for a guard's `Drop`).
    pub fn try_restart_node(&self, i: usize) -> Result<(), String> {
        check(i);
        script(&["start-node", &(i + 1).to_string()])?;
        if self.wait_running(3, Duration::from_secs(30)) {
            Ok(())
        } else {
            Err(format!(
                "{} restarted but the cluster does not report 3 running nodes",
                NODES[i]
            ))
        }
    }

    /// `rabbitmqctl stop_app` on node `i`: the Erlang node stays up, RabbitMQ (and its AMQP
    /// listener) stops.
    pub fn stop_app(&self, i: usize) {
        self.rabbitmqctl(i, &["stop_app"]);
    }

    /// `rabbitmqctl start_app` on node `i`, after [`stop_app`](Self::stop_app).
    pub fn start_app(&self, i: usize) {
        self.rabbitmqctl(i, &["start_app"]);
    }

    /// Closes every client connection to node `i` (`rabbitmqctl close_all_connections`); the
    /// clients get a connection.close with code 320 (CONNECTION_FORCED) and `reason`.
    pub fn close_connections(&self, i: usize, reason: &str) {
        self.rabbitmqctl(i, &["close_all_connections", reason]);
    }

    /// Closes one connection on node `i` by its rabbitmqctl pid (as `list_connections pid`
    /// prints it).
    pub fn close_connection(&self, i: usize, pid: &str, reason: &str) {
        self.rabbitmqctl(i, &["close_connection", pid, reason]);
    }

    /// rabbitmqctl's pids of node `i`'s connections whose client properties mention
    /// `connection_name`.
    pub fn connections_named(&self, i: usize, connection_name: &str) -> Vec<String> {
        self.rabbitmqctl(i, &["list_connections", "-s", "pid", "client_properties"])
            .lines()
            .filter(|line| line.contains(connection_name))
            .filter_map(|line| line.split('\t').next().map(str::to_string))
            .collect()
    }
}
