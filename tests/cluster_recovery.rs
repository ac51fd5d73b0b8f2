//! Automatic recovery (issue 14) against real brokers that go away: the private 3-node
//! cluster of `tests/support/cluster.rs` (ct1..ct3 on 127.0.0.1:5691-5693).
//!
//! - a node's application stopped and started again (`rabbitmqctl stop_app`/`start_app`),
//! - a node killed (`kill -9`) and restarted,
//! - the node a publisher and a consumer are connected to killed for good while they run,
//!   with a quorum queue on the other two.
//!
//! Storms of forced closes are in `tests/recovery_storms.rs`. The tests share the cluster, so
//! they run one at a time (a static mutex), and each brings back any node it stopped or killed
//! before it ends, even when it fails (guards).

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use cottontail::{
    Channel, Connection, ConnectionParameters, Consumed, Error, ExchangeDeclareOptions,
    ExchangeType, FieldTable, QosOptions, QueueBindOptions, QueueDeclareOptions, RecoveryEvent,
    RecoveryReport,
};
use support::cluster::{Cluster, NODES, PORTS};
use support::recovery::*;
use support::{eventually, unique};

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
