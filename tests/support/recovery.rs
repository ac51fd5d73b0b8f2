//! What the recovery tests against the private cluster share (`tests/cluster_recovery.rs`,
//! `tests/recovery_storms.rs`): a recovering connection's parameters, its events, guards that
//! bring a stopped or killed node back and delete what a test declared, and counts of this
//! process's threads and file descriptors.
#![allow(dead_code)]

use std::sync::{mpsc, Mutex, MutexGuard};
use std::time::Duration;

use cottontail::{
    BasicProperties, Connection, ConnectionParameters, ConsumeOptions, Consumed, Consumer,
    Delivery, PublishOptions, QueueDeclareOptions, RecoveryEvent, RecoveryPolicy, RecoveryReport,
};

use super::cluster::{Cluster, NODES};

pub static SERIAL: Mutex<()> = Mutex::new(());

pub fn one_at_a_time() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn policy() -> RecoveryPolicy {
    RecoveryPolicy::default()
        .with_initial_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_millis(500))
        .with_max_elapsed(Some(Duration::from_secs(90)))
}

/// Parameters for `nodes` in order, named `name`, with recovery on.
pub fn recovering_params(
    cluster: &Cluster,
    nodes: &[usize],
    name: &str,
) -> Vec<ConnectionParameters> {
    nodes
        .iter()
        .map(|&i| {
            cluster
                .params(i)
                .with_connection_name(name)
                .with_recovery(policy())
        })
        .collect()
}

/// Every recovery event of `connection`, as its callbacks hear them.
pub fn events(connection: &Connection) -> mpsc::Receiver<RecoveryEvent> {
    let (tx, rx) = mpsc::channel();
    connection.add_on_recovery_callback(move |_c, event: &RecoveryEvent| {
        let _ = tx.send(event.clone());
    });
    rx
}

pub fn reports(events: &[RecoveryEvent]) -> Vec<RecoveryReport> {
    events
        .iter()
        .filter_map(|e| match e {
            RecoveryEvent::Recovered(report) => Some(report.clone()),
            _ => None,
        })
        .collect()
}

pub fn failed_attempts(events: &[RecoveryEvent]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, RecoveryEvent::AttemptFailed { .. }))
        .count()
}

pub fn persistent() -> PublishOptions {
    PublishOptions {
        properties: BasicProperties::default().with_delivery_mode(2),
        ..Default::default()
    }
}

/// The next delivery of `consumer`; panics on anything else (an inactivity timeout included).
pub fn next_delivery(consumer: &mut Consumer, what: &str) -> Delivery {
    match consumer.next() {
        Some(Ok(Consumed::Delivery(d))) => d,
        other => panic!("{what}: expected a delivery, got {other:?}"),
    }
}

pub fn text(delivery: &Delivery) -> String {
    String::from_utf8_lossy(&delivery.body).into_owned()
}

/// Entries of a /proc/self directory (threads: `task`, descriptors: `fd`).
pub fn proc_entries(dir: &str) -> usize {
    std::fs::read_dir(format!("/proc/self/{dir}"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Threads of this process whose name starts with `prefix` (Linux cuts names to 15 bytes).
pub fn threads_named(prefix: &str) -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|t| t.ok())
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .filter(|comm| comm.trim_end().starts_with(prefix))
        .count()
}

/// The server ports of the connections named `name` in the cluster, as node `i` lists them
/// (`list_connections` lists every node's connections).
pub fn server_ports(cluster: &Cluster, i: usize, name: &str) -> Vec<u16> {
    cluster
        .rabbitmqctl(i, &["list_connections", "-s", "port", "client_properties"])
        .lines()
        .filter(|line| line.contains(name))
        .filter_map(|line| line.split('\t').next()?.trim().parse().ok())
        .collect()
}

/// Starts node `i`'s application again when dropped (a test that stopped it and failed).
pub struct AppBack(pub Cluster, pub usize);

impl Drop for AppBack {
    fn drop(&mut self) {
        // start_app on a running application does nothing.
        if let Err(message) = self.0.try_rabbitmqctl(self.1, &["start_app"]) {
            eprintln!("could not start the app of {}: {message}", NODES[self.1]);
        }
        if !self.0.wait_running(3, Duration::from_secs(30)) {
            eprintln!("the cluster does not report 3 running nodes");
        }
    }
}

/// Restarts node `i` when dropped (nothing happens to a running node), then waits for 3
/// running nodes: a killed node comes back even when the test fails.
pub struct Revive(pub Cluster, pub usize);

impl Drop for Revive {
    fn drop(&mut self) {
        if let Err(message) = self.0.try_restart_node(self.1) {
            eprintln!("could not restart {}: {message}", NODES[self.1]);
        }
    }
}

/// Deletes queues and exchanges through node `node` when dropped, ignoring errors.
pub struct Tidy {
    pub cluster: Cluster,
    pub node: usize,
    pub queues: Vec<String>,
    pub exchanges: Vec<String>,
}

impl Drop for Tidy {
    fn drop(&mut self) {
        let Ok(connection) = Connection::open(self.cluster.params(self.node)) else {
            return;
        };
        for queue in &self.queues {
            if let Ok(channel) = connection.channel() {
                let _ = channel.queue_delete(queue, Default::default());
            }
        }
        for exchange in &self.exchanges {
            if let Ok(channel) = connection.channel() {
                let _ = channel.exchange_delete(exchange, Default::default());
            }
        }
        let _ = connection.close();
    }
}

pub fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

pub fn consume_options(tag: &str, inactivity: Duration) -> ConsumeOptions {
    ConsumeOptions {
        consumer_tag: Some(tag.into()),
        inactivity_timeout: Some(inactivity),
        ..Default::default()
    }
}

/// The start of a `rabbitmqctl eval` script that binds `Ours`, a fun telling whether a
/// connection pid is one whose client named it `name` (its `connection_name`), and `Name`.
pub fn erlang_ours(name: &str) -> String {
    format!(
        "Name = <<\"{name}\">>, \
         Ours = fun(Pid) -> \
             case catch rabbit_networking:connection_info(Pid, [client_properties]) of \
                 [{{client_properties, Props}}] when is_list(Props) -> \
                     lists:keyfind(<<\"connection_name\">>, 1, Props) \
                         =:= {{<<\"connection_name\">>, longstr, Name}}; \
                 _ -> false \
             end \
         end,"
    )
}
