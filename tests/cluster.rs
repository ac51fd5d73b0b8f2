//! The private 3-node cluster of `tests/support/cluster.rs` works (groundwork for issue 14):
//! it has 3 running nodes, a client reaches every node, a quorum queue declared through one
//! node is read through another, and it survives losing one of the three nodes. The tests
//! share the cluster, so they run one at a time.

mod support;

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cottontail::{Channel, Connection, FieldTable, QueueDeclareOptions, QueueDeleteOptions};
use support::cluster::{Cluster, NODES, PORTS};

static SERIAL: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn declare_quorum(channel: &Channel, queue: &str) {
    channel
        .queue_declare(
            queue,
            QueueDeclareOptions {
                durable: true,
                arguments: FieldTable::new().with("x-queue-type", "quorum"),
                ..Default::default()
            },
        )
        .expect("declaring a quorum queue");
}

/// Publishes `bodies` to `queue` with publisher confirms (each publish waits for its ack).
fn publish_confirmed(connection: &Connection, queue: &str, bodies: &[String]) {
    let channel = connection.channel().unwrap();
    channel.confirm_delivery().unwrap();
    for body in bodies {
        channel
            .basic_publish("", queue, body.as_bytes())
            .expect("publishing with confirms");
    }
    channel.close().unwrap();
}

/// Gets (auto-ack) every message of `queue` until it is empty.
fn drain(channel: &Channel, queue: &str) -> Vec<String> {
    let mut got = Vec::new();
    while let Some(message) = channel.basic_get(queue, true).expect("basic_get") {
        got.push(String::from_utf8(message.body).unwrap());
    }
    got
}

fn delete(connection: &Connection, queue: &str) {
    let channel = connection.channel().unwrap();
    channel
        .queue_delete(queue, QueueDeleteOptions::default())
        .unwrap();
    channel.close().unwrap();
}

/// Restarts a killed node if the test panics before it does.
struct Revive<'a>(&'a Cluster, usize);

impl Drop for Revive<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Err(message) = self.0.try_restart_node(self.1) {
                eprintln!("could not restart {}: {message}", NODES[self.1]);
            }
        }
    }
}

#[test]
fn the_cluster_has_three_running_nodes() {
    let _serial = one_at_a_time();
    let cluster = Cluster::start();
    for (i, node) in NODES.iter().enumerate() {
        let mut running = cluster.running_nodes(i);
        running.sort();
        assert_eq!(running, NODES, "{node} sees running nodes {running:?}");
    }
}

#[test]
fn a_quorum_queue_declared_on_node_1_is_read_through_node_3() {
    let _serial = one_at_a_time();
    let cluster = Cluster::start();
    let connections: Vec<Connection> = (0..3).map(|i| cluster.connect(i)).collect();
    for (i, connection) in connections.iter().enumerate() {
        let channel = connection.channel().unwrap_or_else(|e| {
            panic!("opening a channel on {} (port {}): {e}", NODES[i], PORTS[i])
        });
        channel.close().unwrap();
    }

    let queue = support::unique("cluster-quorum");
    let channel = connections[0].channel().unwrap();
    declare_quorum(&channel, &queue);
    channel.close().unwrap();
    let bodies: Vec<String> = (0..10).map(|n| format!("message {n}")).collect();
    publish_confirmed(&connections[0], &queue, &bodies);

    let channel = connections[2].channel().unwrap();
    assert_eq!(drain(&channel, &queue), bodies);
    channel.close().unwrap();

    delete(&connections[1], &queue);
    for connection in connections {
        connection.close().unwrap();
    }
}

#[test]
fn a_quorum_queue_survives_killing_node_1_and_node_1_comes_back() {
    let _serial = one_at_a_time();
    let cluster = Cluster::start();
    let queue = support::unique("cluster-survives");
    let bodies: Vec<String> = (0..5).map(|n| format!("kept {n}")).collect();
    {
        let first = cluster.connect(0);
        let channel = first.channel().unwrap();
        declare_quorum(&channel, &queue);
        channel.close().unwrap();
        publish_confirmed(&first, &queue, &bodies);
        first.close().unwrap();
    }

    cluster.kill_node(0);
    let revive = Revive(&cluster, 0);
    assert!(
        cluster.wait_running(2, Duration::from_secs(10)),
        "the cluster does not report 2 running nodes after killing {}",
        NODES[0]
    );

    // The queue's leader was probably on the killed node: until the two others elect a new
    // one, a get may fail (closing the channel) or time out, so retry on a fresh channel.
    let second = cluster.connect(1);
    let deadline = Instant::now() + Duration::from_secs(20);
    let got = loop {
        let channel = second.channel().expect("opening a channel on node 2");
        match channel.basic_get(&queue, true) {
            Ok(Some(message)) => {
                let mut got = vec![String::from_utf8(message.body).unwrap()];
                got.extend(drain(&channel, &queue));
                channel.close().unwrap();
                break got;
            }
            Ok(None) => panic!("the quorum queue is empty after losing {}", NODES[0]),
            Err(e) if Instant::now() < deadline => {
                eprintln!("basic_get through {} while electing: {e}", NODES[1]);
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(e) => panic!(
                "the quorum queue stayed unreadable through {}: {e}",
                NODES[1]
            ),
        }
    };
    assert_eq!(got, bodies);

    cluster.restart_node(0);
    drop(revive);
    for (i, node) in NODES.iter().enumerate() {
        assert_eq!(
            cluster.running_nodes(i).len(),
            3,
            "{node} after the restart"
        );
    }
    let first = cluster.connect(0);
    delete(&first, &queue);
    first.close().unwrap();
    second.close().unwrap();
}
