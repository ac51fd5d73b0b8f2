//! Automatic recovery (issue 14) against real brokers that go away: the private 3-node
//! cluster of `tests/support/cluster.rs` (ct1..ct3 on 127.0.0.1:5691-5693).
//!
//! - a node's application stopped and started again (`rabbitmqctl stop_app`/`start_app`),
//! - a node killed (`kill -9`) and restarted,
//! - the node a publisher and a consumer are connected to killed for good while they run,
//!   with a quorum queue on the other two,
//! - a connection whose broker side is closed over and over while 4 threads use it (every
//!   200 ms; and every millisecond, which also cuts recovery attempts short),
//! - channels restored by an attempt that is then cut short are restored by the next one
//!   (the minimal form of the fast storm's first failure).
//!
//! The tests share the cluster, so they run one at a time (a static mutex), and each brings
//! back any node it stopped or killed before it ends, even when it fails (guards).

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use cottontail::{
    BasicProperties, Channel, Connection, ConnectionParameters, ConsumeOptions, Consumed, Consumer,
    Delivery, Error, ExchangeDeclareOptions, ExchangeType, FieldTable, PublishOptions, QosOptions,
    QueueBindOptions, QueueDeclareOptions, RecoveryEvent, RecoveryPolicy, RecoveryReport,
};
use support::cluster::{Cluster, NODES, PORTS};
use support::{eventually, unique};

static SERIAL: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn policy() -> RecoveryPolicy {
    RecoveryPolicy::default()
        .with_initial_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_millis(500))
        .with_max_elapsed(Some(Duration::from_secs(90)))
}

/// Parameters for `nodes` in order, named `name`, with recovery on.
fn recovering_params(cluster: &Cluster, nodes: &[usize], name: &str) -> Vec<ConnectionParameters> {
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
fn events(connection: &Connection) -> mpsc::Receiver<RecoveryEvent> {
    let (tx, rx) = mpsc::channel();
    connection.add_on_recovery_callback(move |_c, event: &RecoveryEvent| {
        let _ = tx.send(event.clone());
    });
    rx
}

fn reports(events: &[RecoveryEvent]) -> Vec<RecoveryReport> {
    events
        .iter()
        .filter_map(|e| match e {
            RecoveryEvent::Recovered(report) => Some(report.clone()),
            _ => None,
        })
        .collect()
}

fn failed_attempts(events: &[RecoveryEvent]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, RecoveryEvent::AttemptFailed { .. }))
        .count()
}

fn persistent() -> PublishOptions {
    PublishOptions {
        properties: BasicProperties::default().with_delivery_mode(2),
        ..Default::default()
    }
}

/// The next delivery of `consumer`; panics on anything else (an inactivity timeout included).
fn next_delivery(consumer: &mut Consumer, what: &str) -> Delivery {
    match consumer.next() {
        Some(Ok(Consumed::Delivery(d))) => d,
        other => panic!("{what}: expected a delivery, got {other:?}"),
    }
}

fn text(delivery: &Delivery) -> String {
    String::from_utf8_lossy(&delivery.body).into_owned()
}

/// Entries of a /proc/self directory (threads: `task`, descriptors: `fd`).
fn proc_entries(dir: &str) -> usize {
    std::fs::read_dir(format!("/proc/self/{dir}"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Threads of this process whose name starts with `prefix` (Linux cuts names to 15 bytes).
fn threads_named(prefix: &str) -> usize {
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
fn server_ports(cluster: &Cluster, i: usize, name: &str) -> Vec<u16> {
    cluster
        .rabbitmqctl(i, &["list_connections", "-s", "port", "client_properties"])
        .lines()
        .filter(|line| line.contains(name))
        .filter_map(|line| line.split('\t').next()?.trim().parse().ok())
        .collect()
}

/// Starts node `i`'s application again when dropped (a test that stopped it and failed).
struct AppBack(Cluster, usize);

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
struct Revive(Cluster, usize);

impl Drop for Revive {
    fn drop(&mut self) {
        if let Err(message) = self.0.try_restart_node(self.1) {
            eprintln!("could not restart {}: {message}", NODES[self.1]);
        }
    }
}

/// Deletes queues and exchanges through node `node` when dropped, ignoring errors.
struct Tidy {
    cluster: Cluster,
    node: usize,
    queues: Vec<String>,
    exchanges: Vec<String>,
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

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

fn consume_options(tag: &str, inactivity: Duration) -> ConsumeOptions {
    ConsumeOptions {
        consumer_tag: Some(tag.into()),
        inactivity_timeout: Some(inactivity),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------
// 1. One node, stop_app / start_app.
// ---------------------------------------------------------------------------------------

#[test]
fn stop_app_and_start_app_of_the_only_node_recovers_topology_and_consumers() {
    let _serial = one_at_a_time();
    let cluster = Cluster::start();
    let _app = AppBack(cluster, 1);
    support::within(Duration::from_secs(150), "stop_app/start_app", move || {
        stop_app_scenario(cluster)
    });
    assert!(
        eventually(Duration::from_secs(5), || threads_named("cottontail-rec")
            == 0),
        "a recovery thread outlived its connection"
    );
}

fn stop_app_scenario(cluster: Cluster) {
    let name = unique("cr-stopapp");
    let mut tidy = Tidy {
        cluster,
        node: 1,
        queues: Vec::new(),
        exchanges: Vec::new(),
    };
    // A publish made while the node is down waits for the recovery: give it time enough.
    let params: Vec<ConnectionParameters> = recovering_params(&cluster, &[1], &name)
        .into_iter()
        .map(|p| p.with_rpc_timeout(Duration::from_secs(40)))
        .collect();
    let connection = Connection::open(params).unwrap();
    let events = events(&connection);

    let setup = connection.channel().unwrap();
    let exchange = unique("cr-fanout");
    setup
        .exchange_declare(
            &exchange,
            ExchangeDeclareOptions {
                exchange_type: ExchangeType::Fanout,
                ..Default::default()
            },
        )
        .unwrap();
    tidy.exchanges.push(exchange.clone());
    let kept = unique("cr-durable");
    setup.queue_declare(&kept, durable()).unwrap();
    tidy.queues.push(kept.clone());
    let temp = support::exclusive_queue(&setup);
    for queue in [&kept, &temp] {
        setup
            .queue_bind(queue, &exchange, QueueBindOptions::default())
            .unwrap();
    }
    let publisher = connection.channel().unwrap();
    publisher.confirm_delivery().unwrap();
    let kept_channel = connection.channel().unwrap();
    let temp_channel = connection.channel().unwrap();
    let mut kept_consumer = kept_channel
        .consume(&kept, consume_options("kept-tag", Duration::from_secs(20)))
        .unwrap();
    let mut temp_consumer = temp_channel
        .consume(&temp, consume_options("temp-tag", Duration::from_secs(20)))
        .unwrap();

    publisher
        .basic_publish_with(&exchange, "", b"before", &persistent())
        .unwrap();
    let kept_before = next_delivery(&mut kept_consumer, "kept before the loss");
    assert_eq!(kept_before.body, b"before");
    assert_eq!(kept_before.generation(), 0);
    let temp_before = next_delivery(&mut temp_consumer, "temp before the loss");
    assert_eq!(temp_before.body, b"before");
    temp_channel
        .basic_ack(temp_before.delivery_tag(), false)
        .unwrap();
    // `kept_before` stays unacked across the loss.

    let stopped = Instant::now();
    cluster.stop_app(1);
    let stop_took = stopped.elapsed();
    assert!(
        eventually(Duration::from_secs(10), || connection.is_recovering()),
        "the client did not notice that {} stopped",
        NODES[1]
    );
    // A publish while recovering waits for the recovery, then goes to the new connection.
    let during = {
        let publisher = publisher.clone();
        let exchange = exchange.clone();
        thread::spawn(move || publisher.basic_publish_with(&exchange, "", b"during", &persistent()))
    };
    thread::sleep(Duration::from_millis(500));
    assert!(
        connection.is_recovering(),
        "recovered while the app is stopped"
    );
    let starting = Instant::now();
    cluster.start_app(1);
    let start_took = starting.elapsed();
    connection
        .wait_for_recovery(Duration::from_secs(40))
        .expect("the connection recovers once the app runs again");
    let down_to_recovered = stopped.elapsed();
    assert_eq!(connection.recovery_generation(), 1);
    during
        .join()
        .unwrap()
        .expect("the publish made while recovering succeeds on the new connection");

    // The delivery from before the loss cannot be acked, and the channel stays open.
    let stale = kept_channel.basic_ack(kept_before.delivery_tag(), false);
    assert!(
        matches!(stale, Err(Error::StaleDeliveryTag { delivery_tag, generation: 1 }) if delivery_tag == kept_before.delivery_tag()),
        "{stale:?}"
    );
    assert!(kept_channel.is_open());

    // The durable queue's consumer goes on under its tag: the unacked persistent message comes
    // again (redelivered), then the one published while recovering.
    let mut kept_got = Vec::new();
    for _ in 0..2 {
        let d = next_delivery(&mut kept_consumer, "kept after the recovery");
        assert_eq!(d.consumer_tag(), "kept-tag");
        assert_eq!(d.generation(), 1);
        assert!(d.delivery_tag() > kept_before.delivery_tag());
        kept_channel.basic_ack(d.delivery_tag(), false).unwrap();
        kept_got.push((text(&d), d.redelivered()));
    }
    kept_got.sort();
    assert_eq!(
        kept_got,
        vec![("before".to_string(), true), ("during".to_string(), false)]
    );

    // The exclusive server-named queue has a new name, bound again, consumed again.
    let renamed = connection.current_queue_name(&temp);
    assert_ne!(renamed, temp, "the server-named queue keeps its old name");
    let d = next_delivery(&mut temp_consumer, "temp after the recovery");
    assert_eq!(
        (text(&d).as_str(), d.consumer_tag()),
        ("during", "temp-tag")
    );
    assert_eq!(d.routing_key(), "");
    temp_channel.basic_ack(d.delivery_tag(), false).unwrap();
    publisher.basic_publish(&exchange, "", b"after").unwrap();
    for (consumer, channel, tag) in [
        (&mut kept_consumer, &kept_channel, "kept-tag"),
        (&mut temp_consumer, &temp_channel, "temp-tag"),
    ] {
        let d = next_delivery(consumer, "after");
        assert_eq!((text(&d).as_str(), d.consumer_tag()), ("after", tag));
        assert!(!d.redelivered());
        channel.basic_ack(d.delivery_tag(), false).unwrap();
    }
    let probe = connection.channel().unwrap();
    let now = probe
        .queue_declare(&renamed, support::consuming::passive())
        .unwrap();
    assert_eq!(now.consumer_count, 1, "the renamed queue has its consumer");
    let gone = probe.queue_declare(&temp, support::consuming::passive());
    assert!(
        matches!(
            gone,
            Err(Error::ChannelClosed {
                reply_code: 404,
                ..
            })
        ),
        "the old server-named queue: {gone:?}"
    );

    // The recovery events ran on this thread while it iterated.
    connection.process_data_events(Duration::ZERO).unwrap();
    let events: Vec<RecoveryEvent> = events.try_iter().collect();
    let lost_cause = match events.first() {
        Some(RecoveryEvent::ConnectionLost { cause }) => cause.clone(),
        other => panic!("the first event is not ConnectionLost: {other:?} of {events:?}"),
    };
    let report = reports(&events);
    assert_eq!(report.len(), 1, "{events:?}");
    let report = &report[0];
    assert_eq!(report.generation, 1);
    assert_eq!(report.port, PORTS[1]);
    assert_eq!(report.renamed, vec![(temp.clone(), renamed.clone())]);
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    assert!(
        report.closed_channels.is_empty(),
        "{:?}",
        report.closed_channels
    );

    // Nothing is left waiting: the consumers cancel, the connection is usable and closes.
    assert_eq!(kept_consumer.cancel().unwrap(), 0);
    assert_eq!(temp_consumer.cancel().unwrap(), 0);
    connection.wait_for_recovery(Duration::ZERO).unwrap();
    assert!(!connection.is_recovering());
    connection.close().unwrap();

    println!(
        "stop_app/start_app: lost with {lost_cause}; stop_app took {stop_took:?}, start_app \
         {start_took:?}; stop_app to recovered {down_to_recovered:?}; report.took {:?} after \
         {} attempts ({} failed events); {temp} renamed {renamed}",
        report.took,
        report.attempt,
        failed_attempts(&events)
    );
}

// ---------------------------------------------------------------------------------------
// 2. One node, kill -9 and restart.
// ---------------------------------------------------------------------------------------

#[test]
fn kill_and_restart_of_the_only_node_recovers_topology_and_consumers() {
    let _serial = one_at_a_time();
    let cluster = Cluster::start();
    let _revive = Revive(cluster, 1);
    support::within(Duration::from_secs(150), "kill -9 and restart", move || {
        kill_restart_scenario(cluster)
    });
}

fn kill_restart_scenario(cluster: Cluster) {
    let name = unique("cr-kill");
    let mut tidy = Tidy {
        cluster,
        node: 1,
        queues: Vec::new(),
        exchanges: Vec::new(),
    };
    let connection = Connection::open(recovering_params(&cluster, &[1], &name)).unwrap();
    let events = events(&connection);
    let setup = connection.channel().unwrap();
    let exchange = unique("cr-direct");
    setup
        .exchange_declare(
            &exchange,
            ExchangeDeclareOptions {
                exchange_type: ExchangeType::Direct,
                durable: true,
                ..Default::default()
            },
        )
        .unwrap();
    tidy.exchanges.push(exchange.clone());
    let queue = unique("cr-kill-q");
    setup.queue_declare(&queue, durable()).unwrap();
    tidy.queues.push(queue.clone());
    setup
        .queue_bind(
            &queue,
            &exchange,
            QueueBindOptions {
                routing_key: Some("rk".into()),
                ..Default::default()
            },
        )
        .unwrap();
    let publisher = connection.channel().unwrap();
    publisher.confirm_delivery().unwrap();
    let consumer_channel = connection.channel().unwrap();
    consumer_channel
        .basic_qos(QosOptions {
            prefetch_count: 10,
            ..Default::default()
        })
        .unwrap();
    let mut consumer = consumer_channel
        .consume(&queue, consume_options("kill-tag", Duration::from_secs(20)))
        .unwrap();
    publisher
        .basic_publish_with(&exchange, "rk", b"before-1", &persistent())
        .unwrap();
    let d = next_delivery(&mut consumer, "before-1");
    assert_eq!(d.body, b"before-1");
    consumer_channel.basic_ack(d.delivery_tag(), false).unwrap();
    // Confirmed persistent and left unacked: it is on disk when the node dies.
    publisher
        .basic_publish_with(&exchange, "rk", b"before-2", &persistent())
        .unwrap();
    let unacked = next_delivery(&mut consumer, "before-2");
    assert_eq!(unacked.body, b"before-2");

    let killed = Instant::now();
    cluster.kill_node(1);
    assert!(
        eventually(Duration::from_secs(10), || connection.is_recovering()),
        "the client did not notice that {} died",
        NODES[1]
    );
    let noticed = killed.elapsed();
    thread::sleep(Duration::from_secs(1));
    assert!(
        connection.is_recovering(),
        "recovered while the node is dead"
    );
    let restarting = Instant::now();
    cluster.restart_node(1);
    let restart_took = restarting.elapsed();
    connection
        .wait_for_recovery(Duration::from_secs(60))
        .expect("the connection recovers once the node runs again");
    let kill_to_recovered = killed.elapsed();
    assert_eq!(connection.recovery_generation(), 1);

    let stale = consumer_channel.basic_ack(unacked.delivery_tag(), false);
    assert!(
        matches!(stale, Err(Error::StaleDeliveryTag { .. })),
        "{stale:?}"
    );
    // The consumer goes on: the unacked message again, then new ones, through the binding.
    publisher
        .basic_publish_with(&exchange, "rk", b"after-1", &persistent())
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        let d = next_delivery(&mut consumer, "after the recovery");
        assert_eq!(d.consumer_tag(), "kill-tag");
        assert_eq!(d.generation(), 1);
        consumer_channel.basic_ack(d.delivery_tag(), false).unwrap();
        got.push((text(&d), d.redelivered()));
    }
    got.sort();
    assert_eq!(got[0].0, "after-1");
    assert_eq!(
        got[1].0, "before-2",
        "the confirmed unacked message survives the kill"
    );
    let redelivered_flag = got[1].1;

    // The topology is back, as a second, plain connection sees it.
    let plain = cluster.connect(1);
    let probe = plain.channel().unwrap();
    probe
        .exchange_declare(
            &exchange,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
        )
        .expect("the exchange exists");
    let ok = probe
        .queue_declare(&queue, support::consuming::passive())
        .expect("the queue exists");
    assert_eq!(ok.consumer_count, 1, "the consumer is registered again");
    probe.basic_publish(&exchange, "rk", b"from-plain").unwrap();
    let d = next_delivery(&mut consumer, "from the plain connection");
    assert_eq!(d.body, b"from-plain", "the binding is back");
    consumer_channel.basic_ack(d.delivery_tag(), false).unwrap();
    plain.close().unwrap();

    connection.process_data_events(Duration::ZERO).unwrap();
    let events: Vec<RecoveryEvent> = events.try_iter().collect();
    let report = reports(&events);
    assert_eq!(report.len(), 1, "{events:?}");
    let report = &report[0];
    assert_eq!(report.port, PORTS[1]);
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    assert_eq!(consumer.cancel().unwrap(), 0);
    connection.close().unwrap();
    println!(
        "kill -9/restart: loss noticed after {noticed:?}; restart_node took {restart_took:?}; \
         kill to recovered {kill_to_recovered:?}; report.took {:?} (loss to recovered), attempt \
         {} ({} failed events); before-2 redelivered flag after the crash: {redelivered_flag}",
        report.took,
        report.attempt,
        failed_attempts(&events)
    );
}

// ---------------------------------------------------------------------------------------
// 3. Three nodes, the one the clients use is killed.
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct Published {
    confirmed: Vec<u32>,
    unknown: Vec<(u32, String)>,
    reports: Vec<RecoveryReport>,
}

#[derive(Default)]
struct Consumed3 {
    /// (number, redelivered, generation) in arrival order.
    seen: Vec<(u32, bool, u64)>,
    stale_acks: usize,
    ack_errors: Vec<String>,
    item_errors: Vec<String>,
    ended: Option<String>,
    reports: Vec<RecoveryReport>,
}

#[test]
fn killing_the_node_of_a_publisher_and_a_consumer_loses_no_confirmed_message() {
    let _serial = one_at_a_time();
    let cluster = Cluster::start();
    assert!(cluster.wait_running(3, Duration::from_secs(30)));
    let queue = unique("cr-quorum");
    // Dropped in reverse: ct1 is back before the queue is deleted (a quorum queue with a
    // member down may not delete).
    let _tidy = Tidy {
        cluster,
        node: 1,
        queues: vec![queue.clone()],
        exchanges: Vec::new(),
    };
    let _revive = Revive(cluster, 0);
    support::within(Duration::from_secs(170), "3-node kill", move || {
        cluster_kill_scenario(cluster, queue)
    });
}

/// A channel of `connection` in confirm mode, retried while the connection recovers.
fn confirming_channel(connection: &Connection) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match connection
            .channel()
            .and_then(|c| c.confirm_delivery().map(|()| c))
        {
            Ok(channel) => return channel,
            Err(e) if Instant::now() < deadline => {
                eprintln!("opening a confirming channel: {e}");
                thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("opening a confirming channel: {e}"),
        }
    }
}

fn cluster_kill_scenario(cluster: Cluster, queue: String) {
    {
        let admin = cluster.connect(0);
        admin
            .channel()
            .unwrap()
            .queue_declare(
                &queue,
                QueueDeclareOptions {
                    durable: true,
                    arguments: FieldTable::new().with("x-queue-type", "quorum"),
                    ..Default::default()
                },
            )
            .expect("declaring the quorum queue through ct1");
        admin.close().unwrap();
    }
    let publisher_name = unique("cr-publisher");
    let consumer_name = unique("cr-consumer");
    let publisher_conn =
        Connection::open(recovering_params(&cluster, &[0, 1, 2], &publisher_name)).unwrap();
    let consumer_conn =
        Connection::open(recovering_params(&cluster, &[0, 1, 2], &consumer_name)).unwrap();
    assert_eq!(server_ports(&cluster, 0, &publisher_name), [PORTS[0]]);
    assert_eq!(server_ports(&cluster, 0, &consumer_name), [PORTS[0]]);

    let stop_publishing = Arc::new(AtomicBool::new(false));
    let stop_consuming = Arc::new(AtomicBool::new(false));
    let published = Arc::new(Mutex::new(Published::default()));
    let consumed = Arc::new(Mutex::new(Consumed3::default()));

    let publishing = {
        let (connection, queue) = (publisher_conn.clone(), queue.clone());
        let (stop, published) = (stop_publishing.clone(), published.clone());
        thread::spawn(move || {
            let events = events(&connection);
            let mut channel = confirming_channel(&connection);
            let mut n = 0u32;
            while !stop.load(Ordering::SeqCst) {
                let result = channel.basic_publish_with(
                    "",
                    &queue,
                    format!("m-{n}").as_bytes(),
                    &persistent(),
                );
                // Runs the recovery callbacks on this thread.
                let _ = connection.process_data_events(Duration::ZERO);
                let mut p = published.lock().unwrap();
                p.reports
                    .extend(reports(&events.try_iter().collect::<Vec<_>>()));
                match result {
                    Ok(()) => p.confirmed.push(n),
                    Err(e) => {
                        let kind = match &e {
                            Error::ConfirmUnknown { .. } => "confirm unknown".to_string(),
                            Error::Nack { .. } => "nacked".to_string(),
                            e => e.to_string(),
                        };
                        p.unknown.push((n, kind));
                        drop(p);
                        // Not in a busy loop while a call fails at once.
                        thread::sleep(Duration::from_millis(20));
                        // RabbitMQ 3.10: a channel that first publishes to a quorum queue
                        // while its leader's node is down (the recovered channel does, at
                        // once) may get every publish nacked long after the new leader is
                        // elected, while a new channel works: the application's remedy.
                        if matches!(e, Error::Nack { .. }) {
                            let _ = channel.close();
                            thread::sleep(Duration::from_millis(200));
                            channel = confirming_channel(&connection);
                        }
                    }
                }
                n += 1;
            }
            channel.close().unwrap();
        })
    };

    let consuming = {
        let (connection, queue) = (consumer_conn.clone(), queue.clone());
        let (stop, consumed) = (stop_consuming.clone(), consumed.clone());
        thread::spawn(move || {
            let events = events(&connection);
            let channel = connection.channel().unwrap();
            channel
                .basic_qos(QosOptions {
                    prefetch_count: 50,
                    ..Default::default()
                })
                .unwrap();
            let mut consumer = channel
                .consume(
                    &queue,
                    consume_options("quorum-tag", Duration::from_millis(500)),
                )
                .unwrap();
            while !stop.load(Ordering::SeqCst) {
                let item = consumer.next();
                let mut c = consumed.lock().unwrap();
                c.reports
                    .extend(reports(&events.try_iter().collect::<Vec<_>>()));
                match item {
                    Some(Ok(Consumed::Delivery(d))) => {
                        let n: u32 = text(&d)
                            .strip_prefix("m-")
                            .and_then(|n| n.parse().ok())
                            .expect("a numbered body");
                        c.seen.push((n, d.redelivered(), d.generation()));
                        match channel.basic_ack(d.delivery_tag(), false) {
                            Ok(()) => {}
                            Err(Error::StaleDeliveryTag { .. }) => c.stale_acks += 1,
                            Err(e) => c.ack_errors.push(e.to_string()),
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => c.item_errors.push(e.to_string()),
                    None => {
                        c.ended = Some("the consume iterator ended".into());
                        return;
                    }
                }
            }
            let _ = consumer.cancel();
        })
    };

    // Some traffic first.
    assert!(
        eventually(Duration::from_secs(20), || {
            published.lock().unwrap().confirmed.len() >= 200
                && consumed.lock().unwrap().seen.len() >= 100
        }),
        "no traffic before the kill"
    );
    let confirmed_before = published.lock().unwrap().confirmed.len();
    let killed = Instant::now();
    cluster.kill_node(0);
    assert!(
        eventually(Duration::from_secs(60), || {
            publisher_conn.recovery_generation() >= 1 && consumer_conn.recovery_generation() >= 1
        }),
        "the publisher (generation {}) or the consumer (generation {}) did not recover",
        publisher_conn.recovery_generation(),
        consumer_conn.recovery_generation()
    );
    let both_recovered = killed.elapsed();
    // Keep publishing a while on the two remaining nodes.
    let confirmed_at_recovery = published.lock().unwrap().confirmed.len();
    assert!(
        eventually(Duration::from_secs(30), || {
            published.lock().unwrap().confirmed.len() >= confirmed_at_recovery + 200
        }),
        "publishing did not go on after the recovery: {}",
        {
            let p = published.lock().unwrap();
            format!(
                "{} confirmed ({confirmed_at_recovery} at the recovery), {} unknown, the last: \
                 {:?}; the queue on {}: {:?}",
                p.confirmed.len(),
                p.unknown.len(),
                p.unknown.iter().rev().take(5).collect::<Vec<_>>(),
                NODES[1],
                cluster.try_rabbitmqctl(
                    1,
                    &[
                        "list_queues",
                        "name",
                        "type",
                        "leader",
                        "online",
                        "messages"
                    ]
                )
            )
        }
    );
    thread::sleep(Duration::from_secs(1));
    stop_publishing.store(true, Ordering::SeqCst);
    publishing.join().expect("the publisher thread");
    let confirmed: Vec<u32> = published.lock().unwrap().confirmed.clone();
    let drained = eventually(Duration::from_secs(60), || {
        let c = consumed.lock().unwrap();
        let seen: HashSet<u32> = c.seen.iter().map(|s| s.0).collect();
        c.ended.is_some() || confirmed.iter().all(|n| seen.contains(n))
    });
    stop_consuming.store(true, Ordering::SeqCst);
    consuming.join().expect("the consumer thread");

    // Where each connection went, as the broker lists them.
    for (who, connection, name) in [
        ("publisher", &publisher_conn, &publisher_name),
        ("consumer", &consumer_conn, &consumer_name),
    ] {
        let ports = server_ports(&cluster, 1, name);
        assert!(
            ports.len() == 1 && ports[0] != PORTS[0],
            "the {who} is connected to ports {ports:?}"
        );
        assert!(!connection.is_recovering());
    }
    let p = published.lock().unwrap();
    let c = consumed.lock().unwrap();
    let times = |reports: &[RecoveryReport]| -> Vec<String> {
        reports
            .iter()
            .map(|r| {
                format!(
                    "gen {} to :{} in {:?} (attempt {})",
                    r.generation, r.port, r.took, r.attempt
                )
            })
            .collect()
    };
    println!(
        "3-node kill: publisher recoveries {:?}; consumer recoveries {:?}; both recovered \
         {both_recovered:?} after the kill",
        times(&p.reports),
        times(&c.reports)
    );
    for report in p.reports.iter().chain(&c.reports) {
        assert_ne!(
            report.port, PORTS[0],
            "recovered to the killed node: {report:?}"
        );
    }
    assert!(
        !p.reports.is_empty() && !c.reports.is_empty(),
        "no Recovered event heard"
    );

    let mut copies: HashMap<u32, Vec<bool>> = HashMap::new();
    for &(n, redelivered, _) in &c.seen {
        copies.entry(n).or_default().push(redelivered);
    }
    let lost: Vec<u32> = confirmed
        .iter()
        .copied()
        .filter(|n| !copies.contains_key(n))
        .collect();
    let duplicates: Vec<(u32, Vec<bool>)> = copies
        .iter()
        .filter(|(_, flags)| flags.len() > 1)
        .map(|(n, flags)| (*n, flags.clone()))
        .collect();
    let mut unknown_kinds: HashMap<&str, usize> = HashMap::new();
    for (_, kind) in &p.unknown {
        *unknown_kinds.entry(kind.as_str()).or_default() += 1;
    }
    let unknown_seen = p
        .unknown
        .iter()
        .filter(|(n, _)| copies.contains_key(n))
        .count();
    println!(
        "3-node kill: {} confirmed ({confirmed_before} before the kill), {} unknown {unknown_kinds:?} \
         ({unknown_seen} of them consumed anyway), {} deliveries of {} bodies, {} duplicated, \
         {} stale acks, ack errors {:?}, iterator errors {:?}; confirmed lost: {}",
        confirmed.len(),
        p.unknown.len(),
        c.seen.len(),
        copies.len(),
        duplicates.len(),
        c.stale_acks,
        c.ack_errors,
        c.item_errors,
        lost.len()
    );
    assert!(c.ended.is_none(), "{:?}", c.ended);
    assert!(drained, "the consumer did not drain the queue");
    assert!(lost.is_empty(), "confirmed but never consumed: {lost:?}");
    let bad: Vec<&(u32, Vec<bool>)> = duplicates
        .iter()
        .filter(|(_, flags)| !flags[1..].iter().all(|&r| r))
        .collect();
    assert!(
        bad.is_empty(),
        "bodies seen again without the redelivered flag (flags in order): {bad:?}"
    );
    drop((p, c));
    publisher_conn.close().unwrap();
    consumer_conn.close().unwrap();
}

// ---------------------------------------------------------------------------------------
// 4. A flaky network: the broker side closed every 200 ms for 10 s.
// ---------------------------------------------------------------------------------------

#[test]
fn a_storm_of_forced_closes_leaks_nothing_deadlocks_nothing_and_loses_nothing() {
    storm_test(
        "storm",
        Duration::from_millis(200),
        Duration::from_secs(10),
        20,
        0,
    );
}

/// The storm again, with closes every millisecond for 5 s: many hit the connection while it is
/// still being opened or restored, so recovery attempts fail and are made again.
#[test]
fn a_storm_faster_than_recovery_leaks_nothing_deadlocks_nothing_and_loses_nothing() {
    // Few recoveries complete while it lasts: most attempts are cut off.
    storm_test(
        "fast storm",
        Duration::from_millis(1),
        Duration::from_secs(5),
        1,
        5,
    );
}

/// Runs [`storm_scenario`] and checks that the process has no more threads and file
/// descriptors after it than before.
fn storm_test(
    what: &'static str,
    every: Duration,
    length: Duration,
    min_recoveries: u64,
    min_failed_attempts: usize,
) {
    let _serial = one_at_a_time();
    let cluster = Cluster::start();
    assert!(cluster.wait_running(3, Duration::from_secs(30)));
    // Let threads of earlier tests (their `within` threads) end first.
    thread::sleep(Duration::from_millis(200));
    let (threads_before, fds_before) = (proc_entries("task"), proc_entries("fd"));
    let counts = support::within(Duration::from_secs(120), what, move || {
        storm_scenario(cluster, every, length, min_recoveries, min_failed_attempts)
    });
    let settled = eventually(Duration::from_secs(10), || {
        proc_entries("task") <= threads_before && proc_entries("fd") <= fds_before
    });
    let (threads_after, fds_after) = (proc_entries("task"), proc_entries("fd"));
    println!(
        "{what}: {counts}; threads {threads_before} -> {threads_after}, fds {fds_before} -> \
         {fds_after}"
    );
    assert!(
        settled,
        "threads {threads_before} -> {threads_after}, file descriptors {fds_before} -> {fds_after}"
    );
}

/// Closes the connections named `name` on node `node` from inside the broker, every `every`
/// for `length`, each connection once, as `rabbitmqctl close_connection` does (320
/// CONNECTION_FORCED); returns how many it closed. A `rabbitmqctl close_connection` per close
/// would take about half a second (plus one to list the pids), so one `rabbitmqctl eval` does
/// it all. A connection is caught as soon as its client properties are known (its
/// connection.start-ok), so a fast storm also hits connections still being opened or restored.
fn close_storm(
    cluster: &Cluster,
    node: usize,
    name: &str,
    every: Duration,
    length: Duration,
) -> usize {
    let script = format!(
        "Name = <<\"{name}\">>, \
         Ours = fun(Pid) -> \
             case catch rabbit_networking:connection_info(Pid, [client_properties]) of \
                 [{{client_properties, Props}}] when is_list(Props) -> \
                     lists:keyfind(<<\"connection_name\">>, 1, Props) \
                         =:= {{<<\"connection_name\">>, longstr, Name}}; \
                 _ -> false \
             end \
         end, \
         Until = erlang:monotonic_time(millisecond) + {length}, \
         Loop = fun L(Closed) -> \
             case erlang:monotonic_time(millisecond) >= Until of \
                 true -> length(Closed); \
                 false -> \
                     Pids = [P || P <- rabbit_networking:connections_local(), \
                                  not lists:member(P, Closed), Ours(P)], \
                     [rabbit_networking:close_connection(P, \"test: flaky network\") \
                      || P <- Pids], \
                     timer:sleep({every}), \
                     L(Pids ++ Closed) \
             end \
         end, \
         Loop([]).",
        every = every.as_millis(),
        length = length.as_millis()
    );
    cluster
        .rabbitmqctl(node, &["eval", &script])
        .trim()
        .parse::<usize>()
        .expect("the number of closes")
}

/// Sets the flags and closes the connection when dropped.
struct StopOnDrop(Vec<Arc<AtomicBool>>, Connection);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        for flag in &self.0 {
            flag.store(true, Ordering::SeqCst);
        }
        let _ = self.1.close();
    }
}

#[derive(Default)]
struct StormPublished {
    confirmed: Vec<String>,
    unknown: usize,
    unexpected: Vec<String>,
}

#[derive(Default)]
struct StormConsumed {
    seen: Vec<(String, bool)>,
    stale_acks: usize,
    ack_errors: usize,
    problems: Vec<String>,
}

fn storm_scenario(
    cluster: Cluster,
    every: Duration,
    length: Duration,
    min_recoveries: u64,
    min_failed_attempts: usize,
) -> String {
    const NODE: usize = 2;
    let name = unique("cr-storm");
    let queue = unique("cr-storm-q");
    let _tidy = Tidy {
        cluster,
        node: NODE,
        queues: vec![queue.clone()],
        exchanges: Vec::new(),
    };
    let connection = Connection::open(recovering_params(&cluster, &[NODE], &name)).unwrap();
    let events = events(&connection);
    connection
        .channel()
        .unwrap()
        .queue_declare(&queue, durable())
        .unwrap();
    let stop_publishing = Arc::new(AtomicBool::new(false));
    let stop_consuming = Arc::new(AtomicBool::new(false));
    // On a failure, the workers stop and the connection closes before the queue is deleted
    // (else they hold the connection, whose recovery declares the queue again).
    let _stop = StopOnDrop(
        vec![stop_publishing.clone(), stop_consuming.clone()],
        connection.clone(),
    );
    let published = Arc::new(Mutex::new(StormPublished::default()));
    let consumed = Arc::new(Mutex::new(StormConsumed::default()));
    let mut workers = Vec::new();
    for k in 0..2 {
        let channel = connection.channel().unwrap();
        channel.confirm_delivery().unwrap();
        let (queue, stop, published) = (queue.clone(), stop_publishing.clone(), published.clone());
        workers.push(thread::spawn(move || {
            let mut i = 0u32;
            while !stop.load(Ordering::SeqCst) {
                let body = format!("p{k}-{i}");
                let result = channel.basic_publish_with("", &queue, body.as_bytes(), &persistent());
                let mut p = published.lock().unwrap();
                match result {
                    Ok(()) => p.confirmed.push(body),
                    Err(Error::ConfirmUnknown { .. }) => p.unknown += 1,
                    Err(e) if e.is_connection_error() || matches!(e, Error::Timeout { .. }) => {
                        p.unknown += 1
                    }
                    Err(e) => p.unexpected.push(format!("{body}: {e}")),
                }
                drop(p);
                i += 1;
                // Leave the 2 or so CPUs of a test machine to rabbitmqctl too.
                thread::sleep(Duration::from_millis(2));
            }
        }));
    }
    for k in 0..2 {
        let channel = connection.channel().unwrap();
        channel
            .basic_qos(QosOptions {
                prefetch_count: 20,
                ..Default::default()
            })
            .unwrap();
        let mut consumer = channel
            .consume(
                &queue,
                consume_options(&format!("storm-{k}"), Duration::from_millis(300)),
            )
            .unwrap();
        let (stop, consumed) = (stop_consuming.clone(), consumed.clone());
        workers.push(thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let item = consumer.next();
                let mut c = consumed.lock().unwrap();
                match item {
                    Some(Ok(Consumed::Delivery(d))) => {
                        c.seen.push((text(&d), d.redelivered()));
                        match channel.basic_ack(d.delivery_tag(), false) {
                            Ok(()) => {}
                            Err(Error::StaleDeliveryTag { .. }) => c.stale_acks += 1,
                            Err(e) if e.is_connection_error() => c.ack_errors += 1,
                            Err(e) => c.problems.push(format!("ack: {e}")),
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => c.problems.push(format!("consumer storm-{k}: {e}")),
                    None => {
                        c.problems.push(format!("consumer storm-{k} ended"));
                        return;
                    }
                }
            }
            if let Err(e) = consumer.cancel() {
                consumed
                    .lock()
                    .unwrap()
                    .problems
                    .push(format!("cancelling storm-{k}: {e}"));
            }
        }));
    }

    let storm = {
        let name = name.clone();
        thread::spawn(move || close_storm(&cluster, NODE, &name, every, length))
    };
    let closes = storm.join().unwrap();
    let storm_over = Instant::now();
    connection
        .wait_for_recovery(Duration::from_secs(30))
        .expect("the connection recovers after the storm");
    let recovered_after = storm_over.elapsed();
    // Some calm traffic, then stop the publishers and drain.
    let confirmed_then = published.lock().unwrap().confirmed.len();
    assert!(
        eventually(Duration::from_secs(20), || {
            published.lock().unwrap().confirmed.len() >= confirmed_then + 50
        }),
        "publishing does not go on after the storm: {}",
        {
            let p = published.lock().unwrap();
            let c = consumed.lock().unwrap();
            format!(
                "{closes} closes, generation {}, recovering {}, {} confirmed ({confirmed_then} \
                 at the end of the storm), {} unknown, unexpected {:?}, consumer problems {:?}, \
                 the broker's connections: {:?}",
                connection.recovery_generation(),
                connection.is_recovering(),
                p.confirmed.len(),
                p.unknown,
                p.unexpected.iter().rev().take(5).collect::<Vec<_>>(),
                c.problems.iter().rev().take(5).collect::<Vec<_>>(),
                cluster
                    .try_rabbitmqctl(
                        NODE,
                        &[
                            "list_connections",
                            "-s",
                            "pid",
                            "state",
                            "channels",
                            "client_properties"
                        ]
                    )
                    .map(|out| out
                        .lines()
                        .filter(|l| l.contains(&name))
                        .map(|l| l.split('\t').take(3).collect::<Vec<_>>().join(" "))
                        .collect::<Vec<_>>())
            )
        }
    );
    stop_publishing.store(true, Ordering::SeqCst);
    let confirmed: Vec<String> = {
        // The publishers stop within one publish.
        thread::sleep(Duration::from_millis(500));
        published.lock().unwrap().confirmed.clone()
    };
    let drained = eventually(Duration::from_secs(30), || {
        let c = consumed.lock().unwrap();
        let seen: HashSet<&str> = c.seen.iter().map(|(b, _)| b.as_str()).collect();
        confirmed.iter().all(|b| seen.contains(b.as_str()))
    });
    stop_consuming.store(true, Ordering::SeqCst);
    let joining = Instant::now();
    for worker in workers {
        worker.join().expect("a worker thread");
    }
    let joined_in = joining.elapsed();

    // A final round trip on the recovered connection.
    let final_channel = connection.channel().unwrap();
    final_channel.confirm_delivery().unwrap();
    final_channel
        .basic_publish("", &queue, b"final")
        .expect("the final publish");
    let mut last = final_channel
        .consume(&queue, consume_options("final", Duration::from_secs(10)))
        .unwrap();
    let mut final_seen = false;
    while let Some(Ok(Consumed::Delivery(d))) = last.next() {
        final_channel.basic_ack(d.delivery_tag(), false).unwrap();
        if d.body == b"final" {
            final_seen = true;
            break;
        }
    }
    last.cancel().unwrap();
    let generation = connection.recovery_generation();
    connection.process_data_events(Duration::ZERO).unwrap();
    connection.close().unwrap();
    let events: Vec<RecoveryEvent> = events.try_iter().collect();
    let lost_events = events
        .iter()
        .filter(|e| matches!(e, RecoveryEvent::ConnectionLost { .. }))
        .count();
    let recovered_events = reports(&events).len();
    let slowest = reports(&events).iter().map(|r| r.took).max();

    let p = published.lock().unwrap();
    let c = consumed.lock().unwrap();
    let seen: HashSet<&str> = c.seen.iter().map(|(b, _)| b.as_str()).collect();
    let lost: Vec<&String> = confirmed
        .iter()
        .filter(|b| !seen.contains(b.as_str()))
        .collect();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    let mut not_flagged = 0;
    for (body, redelivered) in &c.seen {
        let n = counts.entry(body.as_str()).or_default();
        *n += 1;
        if *n > 1 && !redelivered {
            not_flagged += 1;
        }
    }
    let summary = format!(
        "{closes} forced closes, {generation} recoveries, recovered {recovered_after:?} after the \
         storm, workers joined in {joined_in:?}; events: {lost_events} lost, {} attempts \
         failed, {recovered_events} recovered, the slowest in {slowest:?}; {} confirmed, {} unknown, {} deliveries \
         ({} duplicated, {not_flagged} of the copies without redelivered), {} stale acks, {} \
         acks lost with the connection; confirmed lost: {}",
        failed_attempts(&events),
        confirmed.len(),
        p.unknown,
        c.seen.len(),
        c.seen.len() - seen.len(),
        c.stale_acks,
        c.ack_errors,
        lost.len()
    );
    // A close may hit a connection the recovery is still opening or restoring: one more
    // attempt, not one more recovery.
    assert!(
        generation >= min_recoveries && generation <= closes as u64,
        "recoveries: {summary}"
    );
    assert!(
        failed_attempts(&events) >= min_failed_attempts,
        "failed attempts: {summary}"
    );
    assert_eq!(recovered_events as u64, generation, "{summary}");
    assert_eq!(lost_events as u64, generation, "{summary}");
    assert!(
        events
            .iter()
            .all(|e| !matches!(e, RecoveryEvent::Failed { .. })),
        "{events:?}"
    );
    assert!(
        p.unexpected.is_empty(),
        "publish errors: {:?}",
        p.unexpected
    );
    assert!(c.problems.is_empty(), "consumer problems: {:?}", c.problems);
    assert!(drained, "not drained: {summary}");
    assert!(lost.is_empty(), "confirmed but never consumed: {lost:?}");
    assert_eq!(
        not_flagged, 0,
        "copies without the redelivered flag: {summary}"
    );
    assert!(final_seen, "the final round trip failed");
    summary
}

// ---------------------------------------------------------------------------------------
// 5. A loss during a recovery attempt (the fast storm's failure, made small).
// ---------------------------------------------------------------------------------------

#[test]
fn channels_survive_a_loss_in_the_middle_of_a_recovery_attempt() {
    let _serial = one_at_a_time();
    let cluster = Cluster::start();
    let name = unique("cr-mid-restore");
    let connection = Connection::open(recovering_params(&cluster, &[2], &name)).unwrap();
    let events = events(&connection);
    // Many channels make each restore take a while, so closes land in it.
    let channels: Vec<Channel> = (0..20)
        .map(|_| {
            let channel = connection.channel().unwrap();
            channel.confirm_delivery().unwrap();
            channel
        })
        .collect();
    let closes = close_storm(
        &cluster,
        2,
        &name,
        Duration::from_millis(1),
        Duration::from_secs(3),
    );
    connection
        .wait_for_recovery(Duration::from_secs(30))
        .expect("recovered after the storm");
    let processed = connection.process_data_events(Duration::ZERO);
    let events: Vec<RecoveryEvent> = events.try_iter().collect();
    let closed: Vec<String> = channels
        .iter()
        .filter(|c| c.is_closed())
        .map(|c| {
            format!(
                "{} ({:?})",
                c.channel_number(),
                c.basic_publish("", "", b"x").err()
            )
        })
        .collect();
    let broker_channels = cluster
        .rabbitmqctl(
            2,
            &["list_connections", "-s", "channels", "client_properties"],
        )
        .lines()
        .filter(|line| line.contains(&name))
        .map(|line| line.split('\t').next().unwrap_or("").to_string())
        .collect::<Vec<_>>();
    let summary = format!(
        "{closes} closes, {} recoveries, {} failed attempts; the broker's channels on our \
         connection: {broker_channels:?}; process_data_events: {processed:?}",
        connection.recovery_generation(),
        failed_attempts(&events)
    );
    println!("mid-restore: {summary}; closed channels: {}", closed.len());
    assert!(
        closed.is_empty(),
        "{summary}: channels closed for good: {closed:?}"
    );
    processed.expect("process_data_events after the recovery");
    for channel in &channels {
        channel.basic_publish("", "", b"still here").unwrap();
    }
    connection.close().unwrap();
}
