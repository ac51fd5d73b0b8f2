//! Automatic recovery when another connection holds an exclusive queue the lost connection
//! had declared (the usual leader-election pattern): the broker refuses it with 405
//! RESOURCE_LOCKED. For a while that ends the attempt (the broker may still hold our own lost
//! connection's queue until it notices the loss); after that the queue is skipped and
//! everything else recovered, instead of the whole connection waiting for as long as the other
//! holds it.

mod support;

use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use cottontail::{
    Connection, ConsumeOptions, Consumed, Entity, Error, QueueDeclareOptions, RecoveryEvent,
    RecoveryPolicy,
};
use support::{broker_connections_named, params, rabbitmqctl, unique};

/// The lost connection's heartbeat: 405 ends attempts for 2 x 1 s + 5 s after the loss.
const HEARTBEAT: u16 = 1;

#[test]
fn an_exclusive_queue_another_connection_took_is_skipped_and_the_rest_recovers() {
    support::ensure_broker();
    let name = unique("locked");
    let (lock, work) = (unique("locked-lock"), unique("locked-work"));
    // The recovery's first look at `lock` waits until the other connection has it.
    let (taken_tx, taken_rx) = mpsc::channel::<()>();
    let taken = Arc::new(Mutex::new(Some(taken_rx)));
    let policy = {
        let lock = lock.clone();
        RecoveryPolicy::default()
            .with_initial_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_millis(500))
            .with_topology_filter(move |entity| {
                if matches!(entity, Entity::Queue { name, .. } if *name == lock) {
                    if let Some(rx) = taken.lock().unwrap().take() {
                        let _ = rx.recv_timeout(Duration::from_secs(10));
                    }
                }
                true
            })
    };
    let connection = Connection::open(
        params()
            .with_connection_name(&name)
            .with_heartbeat(Some(HEARTBEAT))
            .with_recovery(policy),
    )
    .unwrap();
    let events = support::recovery::events(&connection);
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    let channel = connection.channel().unwrap();
    channel.queue_declare(&lock, exclusive.clone()).unwrap();
    channel
        .queue_declare(&work, QueueDeclareOptions::default())
        .unwrap();
    let mut consumer = channel
        .consume(
            &work,
            ConsumeOptions {
                auto_ack: true,
                inactivity_timeout: Some(Duration::from_secs(30)),
                ..Default::default()
            },
        )
        .unwrap();

    let pids = broker_connections_named(&name);
    assert_eq!(pids.len(), 1, "{pids:?}");
    rabbitmqctl(&["close_connection", &pids[0], "test: forced close"]);
    // Another connection takes the exclusive queue as soon as the broker deleted ours.
    let other = support::connect();
    let other_channel = other.channel().unwrap();
    let started = Instant::now();
    let mut declared = Err(Error::Timeout {
        context: "not tried".into(),
        after: Duration::ZERO,
    });
    while started.elapsed() < Duration::from_secs(10) {
        let channel = other.channel().unwrap();
        declared = channel.queue_declare(&lock, exclusive.clone());
        if declared.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    declared.expect("the other connection takes the exclusive queue");
    taken_tx.send(()).unwrap();

    connection
        .wait_for_recovery(Duration::from_secs(40))
        .expect("the connection recovers without the locked queue");
    let took = started.elapsed();
    println!("recovered {took:?} after the forced close");
    // The rest is back: the consumer gets what is published to its queue.
    other_channel.basic_publish("", &work, b"after").unwrap();
    match consumer.next() {
        Some(Ok(Consumed::Delivery(delivery))) => assert_eq!(delivery.body, b"after"),
        other => panic!("the consumer of {work} after the recovery: {other:?}"),
    }
    // The report says what was skipped, and why.
    connection.process_data_events(Duration::ZERO).unwrap();
    let events: Vec<RecoveryEvent> = events.try_iter().collect();
    let reports = support::recovery::reports(&events);
    assert_eq!(reports.len(), 1, "{events:?}");
    assert!(
        reports[0].skipped.iter().any(|(entity, error)| {
            matches!(entity, Entity::Queue { name, .. } if *name == lock)
                && error.as_ref().and_then(Error::reply_code) == Some(405)
        }),
        "{:?}",
        reports[0].skipped
    );
    drop(consumer);
    channel.queue_delete(&work, Default::default()).unwrap();
    connection.close().unwrap();
    other.close().unwrap();
}
