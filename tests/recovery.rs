//! Automatic recovery against the shared test broker: the broker closes our connection
//! (`rabbitmqctl close_connection`, 320 CONNECTION_FORCED) and the connection comes back with
//! its channels, topology and consumers.

mod support;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use cottontail::{
    BasicConsumeOptions, ConfirmOutcome, Connection, ConsumeOptions, Consumed, Error,
    ExchangeDeclareOptions, ExchangeType, PublishOptions, QueueBindOptions, QueueDeclareOptions,
    RecoveryEvent, RecoveryPolicy,
};
use support::{broker_connections_named, eventually, params, rabbitmqctl, unique};

fn policy() -> RecoveryPolicy {
    RecoveryPolicy::default()
        .with_initial_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_millis(500))
}

/// A connection with recovery on, named so the test can find it on the broker.
fn recovering(name: &str) -> Connection {
    Connection::open(params().with_connection_name(name).with_recovery(policy())).unwrap()
}

/// Closes the broker side of the connection named `name`, as `rabbitmqctl close_connection`
/// does (320 CONNECTION_FORCED), and waits until the client has noticed and recovered.
fn force_close(connection: &Connection, name: &str) -> Duration {
    let generation = connection.recovery_generation();
    let pids = broker_connections_named(name);
    assert_eq!(
        pids.len(),
        1,
        "one broker connection named {name}: {pids:?}"
    );
    let started = Instant::now();
    rabbitmqctl(&["close_connection", &pids[0], "test: forced close"]);
    assert!(
        eventually(Duration::from_secs(15), || connection.recovery_generation()
            > generation),
        "the connection did not recover"
    );
    connection
        .wait_for_recovery(Duration::from_secs(5))
        .unwrap();
    started.elapsed()
}

#[test]
fn topology_and_a_server_named_queue_come_back_under_a_new_name() {
    support::ensure_broker();
    let name = unique("recovery-topology");
    let connection = recovering(&name);
    let channel = connection.channel().unwrap();
    let exchange = unique("recovery-x");
    channel
        .exchange_declare(
            &exchange,
            ExchangeDeclareOptions {
                exchange_type: ExchangeType::Fanout,
                auto_delete: true,
                ..Default::default()
            },
        )
        .unwrap();
    let old = channel
        .queue_declare(
            "",
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
        )
        .unwrap()
        .queue;
    channel
        .queue_bind(&old, &exchange, QueueBindOptions::default())
        .unwrap();
    let (events_tx, events_rx) = mpsc::channel();
    connection.add_on_recovery_callback(move |_c, event: &RecoveryEvent| {
        let _ = events_tx.send(event.clone());
    });

    let took = force_close(&connection, &name);
    println!("recovered in {took:?}");

    let new = connection.current_queue_name(&old);
    assert_ne!(new, old, "an exclusive server-named queue gets a new name");
    // The binding followed: a message published to the exchange reaches the new queue.
    channel.basic_publish(&exchange, "", b"after").unwrap();
    assert!(eventually(Duration::from_secs(5), || {
        matches!(channel.basic_get(&new, true), Ok(Some(m)) if m.body == b"after")
    }));
    // The old one is gone with the old connection.
    let probe = connection.channel().unwrap();
    let gone = probe.queue_declare(&old, support::consuming::passive());
    assert!(
        matches!(
            gone,
            Err(Error::ChannelClosed {
                reply_code: 404,
                ..
            })
        ),
        "{gone:?}"
    );
    // The events ran on this thread's next process_data_events.
    connection.process_data_events(Duration::ZERO).unwrap();
    let events: Vec<RecoveryEvent> = events_rx.try_iter().collect();
    assert!(
        matches!(events.first(), Some(RecoveryEvent::ConnectionLost { cause }) if cause.reply_code() == Some(320)),
        "{events:?}"
    );
    let report = events
        .iter()
        .find_map(|e| match e {
            RecoveryEvent::Recovered(report) => Some(report.clone()),
            _ => None,
        })
        .expect("a Recovered event");
    assert_eq!(report.renamed, vec![(old.clone(), new.clone())]);
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    assert_eq!(report.generation, 1);
}

#[test]
fn a_consumer_goes_on_with_its_tag_and_stale_acks_are_typed_errors() {
    support::ensure_broker();
    let name = unique("recovery-consumer");
    let connection = recovering(&name);
    let channel = connection.channel().unwrap();
    let queue = unique("recovery-q");
    channel
        .queue_declare(
            &queue,
            QueueDeclareOptions {
                auto_delete: false,
                ..Default::default()
            },
        )
        .unwrap();
    let cleanup = support::connect();
    let cleanup_channel = cleanup.channel().unwrap();
    let mut consumer = channel
        .consume(
            &queue,
            ConsumeOptions {
                consumer_tag: Some("kept-tag".into()),
                inactivity_timeout: Some(Duration::from_secs(10)),
                ..Default::default()
            },
        )
        .unwrap();
    cleanup_channel.basic_publish("", &queue, b"one").unwrap();
    let first = match consumer.next() {
        Some(Ok(Consumed::Delivery(d))) => d,
        other => panic!("{other:?}"),
    };
    assert_eq!(first.body, b"one");
    assert_eq!(first.generation(), 0);

    force_close(&connection, &name);

    // The delivery from before the recovery cannot be acked: a typed error, and the channel
    // stays open.
    let stale = channel.basic_ack(first.delivery_tag(), false);
    assert!(
        matches!(stale, Err(Error::StaleDeliveryTag { delivery_tag, generation: 1 }) if delivery_tag == first.delivery_tag()),
        "{stale:?}"
    );
    assert!(channel.is_open());
    // The broker delivers it again, to the same iterator, under the same tag.
    let again = match consumer.next() {
        Some(Ok(Consumed::Delivery(d))) => d,
        other => panic!("{other:?}"),
    };
    assert_eq!(again.body, b"one");
    assert!(again.redelivered());
    assert_eq!(again.consumer_tag(), "kept-tag");
    assert_eq!(again.generation(), 1);
    assert!(again.delivery_tag() > first.delivery_tag());
    channel.basic_ack(again.delivery_tag(), false).unwrap();
    cleanup_channel.basic_publish("", &queue, b"two").unwrap();
    let two = match consumer.next() {
        Some(Ok(Consumed::Delivery(d))) => d,
        other => panic!("{other:?}"),
    };
    assert_eq!(two.body, b"two");
    channel.basic_ack(two.delivery_tag(), false).unwrap();
    drop(consumer);
    // Nothing left unacked on the broker.
    assert!(eventually(Duration::from_secs(5), || {
        cleanup_channel
            .queue_declare(&queue, support::consuming::passive())
            .is_ok_and(|ok| ok.message_count == 0)
    }));
    cleanup_channel
        .queue_delete(&queue, Default::default())
        .unwrap();
}

#[test]
fn callback_consumers_and_confirming_publishers_go_on_across_forced_closes() {
    support::ensure_broker();
    let name = unique("recovery-confirms");
    let connection = recovering(&name);
    let queue = unique("recovery-cq");
    let publisher = connection.channel().unwrap();
    publisher
        .queue_declare(
            &queue,
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
        )
        .unwrap();
    publisher.confirm_delivery().unwrap();
    let consumer_channel = connection.channel().unwrap();
    consumer_channel
        .basic_qos(cottontail::QosOptions {
            prefetch_count: 10,
            ..Default::default()
        })
        .unwrap();
    let (got_tx, got_rx) = mpsc::channel::<Vec<u8>>();
    consumer_channel
        .basic_consume(
            &queue,
            move |ch, method, _props, body| {
                let _ = got_tx.send(body.to_vec());
                ch.basic_ack(method.delivery_tag, false)
            },
            BasicConsumeOptions::default(),
        )
        .unwrap();
    let consuming = {
        let channel = consumer_channel.clone();
        std::thread::spawn(move || channel.start_consuming())
    };
    let mut confirmed = Vec::new();
    let mut unknown = 0;
    for round in 0..3 {
        for i in 0..50u32 {
            let body = format!("{round}-{i}");
            match publisher.basic_publish_with(
                "",
                &queue,
                body.as_bytes(),
                &PublishOptions::default(),
            ) {
                Ok(()) => confirmed.push(body),
                Err(Error::ConfirmUnknown { .. }) => unknown += 1,
                Err(e) if e.is_connection_error() => unknown += 1,
                Err(e) => panic!("publish {body}: {e}"),
            }
        }
        force_close(&connection, &name);
    }
    // A window across no loss: every confirm known.
    for i in 0..20 {
        publisher
            .basic_publish_deferred(
                "",
                &queue,
                format!("w-{i}").as_bytes(),
                &PublishOptions::default(),
            )
            .unwrap();
        confirmed.push(format!("w-{i}"));
    }
    let outcome: ConfirmOutcome = publisher.wait_for_confirms(None).unwrap();
    assert!(outcome.all_confirmed(), "{outcome:?}");
    let mut seen = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while confirmed.iter().any(|b| !seen.contains(b.as_bytes())) && Instant::now() < deadline {
        if let Ok(body) = got_rx.recv_timeout(Duration::from_millis(200)) {
            seen.insert(body);
        }
    }
    let lost: Vec<&String> = confirmed
        .iter()
        .filter(|b| !seen.contains(b.as_bytes()))
        .collect();
    assert!(
        lost.is_empty(),
        "confirmed but never consumed: {lost:?} ({unknown} unknown)"
    );
    consumer_channel.stop_consuming(None).unwrap();
    consuming.join().unwrap().unwrap();
    publisher.queue_delete(&queue, Default::default()).unwrap();
    connection.close().unwrap();
}
