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

/// A connection with recovery on to the test broker (started if need be), and its unique
/// name (`prefix` and a number), by which the test finds it on the broker.
fn recovering(prefix: &str) -> (String, Connection) {
    support::ensure_broker();
    let name = unique(prefix);
    let connection =
        Connection::open(params().with_connection_name(&name).with_recovery(policy())).unwrap();
    (name, connection)
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

/// The report of the first `Recovered` event received so far on `events`.
fn first_report(events: &mpsc::Receiver<RecoveryEvent>) -> cottontail::RecoveryReport {
    let events: Vec<RecoveryEvent> = events.try_iter().collect();
    support::recovery::reports(&events)
        .into_iter()
        .next()
        .expect("a Recovered event")
}

/// Declares an auto-delete fanout exchange named after `prefix` on `channel`.
fn auto_delete_fanout(channel: &cottontail::Channel, prefix: &str) -> String {
    let exchange = unique(prefix);
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
    exchange
}

#[test]
fn topology_and_a_server_named_queue_come_back_under_a_new_name() {
    let (name, connection) = recovering("recovery-topology");
    let channel = connection.channel().unwrap();
    let exchange = auto_delete_fanout(&channel, "recovery-x");
    let old = support::exclusive_queue(&channel);
    channel
        .queue_bind(&old, &exchange, QueueBindOptions::default())
        .unwrap();
    // An exchange-to-exchange binding in front of it: upstream -> exchange -> queue.
    let upstream = auto_delete_fanout(&channel, "recovery-up");
    channel
        .exchange_bind(&exchange, &upstream, Default::default())
        .unwrap();
    let (events_tx, events_rx) = mpsc::channel();
    connection.add_on_recovery_callback(move |_c, event: &RecoveryEvent| {
        let _ = events_tx.send(event.clone());
    });

    let took = force_close(&connection, &name);
    println!("recovered in {took:?}");

    let new = connection.current_queue_name(&old);
    assert_ne!(new, old, "an exclusive server-named queue gets a new name");
    // The bindings followed: a message published to either exchange reaches the new queue
    // (the auto-delete exchanges went with the old connection's bindings, and came back).
    for (via, body) in [
        (&exchange, &b"after"[..]),
        (&upstream, &b"through upstream"[..]),
    ] {
        channel.basic_publish(via, "", body).unwrap();
        assert!(
            eventually(Duration::from_secs(5), || {
                matches!(channel.basic_get(&new, true), Ok(Some(m)) if m.body == body)
            }),
            "nothing came through {via}"
        );
    }
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

/// A server-named queue that is neither exclusive nor auto-delete outlives the connection: the
/// recovery keeps it (same name, bindings, messages) instead of declaring a second one that
/// would leave it bound and filling unseen.
#[test]
fn a_server_named_queue_that_outlives_the_connection_keeps_its_name_and_messages() {
    let (name, connection) = recovering("recovery-kept-queue");
    let channel = connection.channel().unwrap();
    let exchange = auto_delete_fanout(&channel, "recovery-kept-x");
    let queue = channel
        .queue_declare("", QueueDeclareOptions::default())
        .unwrap()
        .queue;
    let _cleanup = support::consuming::Cleanup(vec![queue.clone()]);
    channel
        .queue_bind(&queue, &exchange, QueueBindOptions::default())
        .unwrap();
    channel.basic_publish(&exchange, "", b"before").unwrap();
    let (events_tx, events_rx) = mpsc::channel();
    connection.add_on_recovery_callback(move |_c, event: &RecoveryEvent| {
        let _ = events_tx.send(event.clone());
    });

    force_close(&connection, &name);

    assert_eq!(connection.current_queue_name(&queue), queue);
    connection.process_data_events(Duration::ZERO).unwrap();
    let report = first_report(&events_rx);
    assert!(report.renamed.is_empty(), "{:?}", report.renamed);
    // The message from before is still there, and the binding still routes to it.
    channel.basic_publish(&exchange, "", b"after").unwrap();
    let mut bodies = Vec::new();
    assert!(
        eventually(Duration::from_secs(5), || {
            while let Ok(Some(m)) = channel.basic_get(&queue, true) {
                bodies.push(m.body.clone());
            }
            bodies.len() >= 2
        }),
        "got {bodies:?}"
    );
    assert_eq!(bodies, vec![b"before".to_vec(), b"after".to_vec()]);
    // No second server-named queue bound to the exchange.
    let bound: Vec<String> = rabbitmqctl(&["list_bindings", "source_name", "destination_name"])
        .lines()
        .filter_map(|line| line.strip_prefix(&format!("{exchange}\t")))
        .map(str::to_string)
        .collect();
    assert_eq!(bound, vec![queue.clone()]);
}

#[test]
fn a_consumer_goes_on_with_its_tag_and_stale_acks_are_typed_errors() {
    let (name, connection) = recovering("recovery-consumer");
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
    let (name, connection) = recovering("recovery-confirms");
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

#[test]
fn a_loss_while_a_callback_runs_does_not_end_start_consuming() {
    let (name, connection) = recovering("recovery-callback");
    let channel = connection.channel().unwrap();
    let queue = unique("recovery-cb");
    channel
        .queue_declare(&queue, QueueDeclareOptions::default())
        .unwrap();
    let (entered_tx, entered_rx) = mpsc::channel::<()>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = std::sync::Mutex::new(release_rx);
    let (got_tx, got_rx) = mpsc::channel::<(Vec<u8>, bool, Result<(), Error>)>();
    channel
        .basic_consume(
            &queue,
            move |ch, method, _props, body| {
                if body == b"slow" && !method.redelivered {
                    entered_tx.send(()).unwrap();
                    release_rx.lock().unwrap().recv().unwrap();
                }
                let acked = ch.basic_ack(method.delivery_tag, false);
                got_tx
                    .send((body.to_vec(), method.redelivered, acked.clone()))
                    .unwrap();
                acked
            },
            BasicConsumeOptions::default(),
        )
        .unwrap();
    let consuming = {
        let channel = channel.clone();
        std::thread::spawn(move || channel.start_consuming())
    };
    let other = support::connect();
    let other_channel = other.channel().unwrap();
    other_channel.basic_publish("", &queue, b"slow").unwrap();
    entered_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    // The loss and the whole recovery happen while the callback runs.
    force_close(&connection, &name);
    release_tx.send(()).unwrap();
    let (body, redelivered, acked) = got_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!((body.as_slice(), redelivered), (&b"slow"[..], false));
    assert!(
        matches!(acked, Err(Error::StaleDeliveryTag { .. })),
        "{acked:?}"
    );
    // Consuming went on: the message comes again, then a new one.
    let (body, redelivered, acked) = got_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!((body.as_slice(), redelivered), (&b"slow"[..], true));
    acked.unwrap();
    other_channel.basic_publish("", &queue, b"next").unwrap();
    let (body, _, acked) = got_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(body, b"next");
    acked.unwrap();
    assert!(!consuming.is_finished());
    channel.stop_consuming(None).unwrap();
    consuming.join().unwrap().unwrap();
    other_channel
        .queue_delete(&queue, Default::default())
        .unwrap();
}

#[test]
fn process_data_events_waits_through_a_recovery_and_runs_its_events() {
    let (name, connection) = recovering("recovery-pde");
    let channel = connection.channel().unwrap();
    let queue = support::exclusive_queue(&channel);
    let (got_tx, got_rx) = mpsc::channel::<Vec<u8>>();
    channel
        .basic_consume(
            &queue,
            move |_ch, _method, _props, body| {
                let _ = got_tx.send(body.to_vec());
            },
            BasicConsumeOptions {
                auto_ack: true,
                ..Default::default()
            },
        )
        .unwrap();
    let (events_tx, events_rx) = mpsc::channel();
    connection.add_on_recovery_callback(move |_c, event: &RecoveryEvent| {
        let _ = events_tx.send(matches!(event, RecoveryEvent::Recovered(_)));
    });
    let pids = broker_connections_named(&name);
    rabbitmqctl(&["close_connection", &pids[0], "test: forced close"]);
    // The pika idiom: process events in a loop. It never returns the loss's error.
    let deadline = Instant::now() + Duration::from_secs(15);
    while connection.recovery_generation() == 0 {
        assert!(Instant::now() < deadline, "no recovery");
        connection
            .process_data_events(Duration::from_millis(50))
            .unwrap();
    }
    connection.process_data_events(Duration::ZERO).unwrap();
    assert!(events_rx.try_iter().any(|recovered| recovered));
    let queue = connection.current_queue_name(&queue);
    channel.basic_publish("", &queue, b"after").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        connection
            .process_data_events(Duration::from_millis(50))
            .unwrap();
        if let Ok(body) = got_rx.try_recv() {
            assert_eq!(body, b"after");
            break;
        }
        assert!(Instant::now() < deadline, "the consumer did not come back");
    }
}

#[test]
fn a_reused_channel_number_does_not_bring_back_an_old_consumer_and_tx_channels_close() {
    let (name, connection) = recovering("recovery-reuse");
    let setup = connection.channel().unwrap();
    let old_queue = unique("recovery-old");
    let new_queue = unique("recovery-new");
    for q in [&old_queue, &new_queue] {
        setup
            .queue_declare(q, QueueDeclareOptions::default())
            .unwrap();
    }
    let first = connection.channel().unwrap();
    let number = first.channel_number();
    first
        .basic_consume(
            &old_queue,
            |_ch, _m, _p, _b| {},
            BasicConsumeOptions::default(),
        )
        .unwrap();
    // Dropped, not closed: the number comes free once the broker answers.
    drop(first);
    let second = support::within(Duration::from_secs(5), "reusing the channel number", {
        let connection = connection.clone();
        move || loop {
            let channel = connection.channel().unwrap();
            if channel.channel_number() == number {
                break channel;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    second
        .basic_consume(
            &new_queue,
            |_ch, _m, _p, _b| {},
            BasicConsumeOptions::default(),
        )
        .unwrap();
    let transacted = connection.channel().unwrap();
    transacted.tx_select().unwrap();
    transacted
        .basic_publish("", &new_queue, b"in a transaction")
        .unwrap();
    let (events_tx, events_rx) = mpsc::channel();
    connection.add_on_recovery_callback(move |_c, event: &RecoveryEvent| {
        let _ = events_tx.send(event.clone());
    });

    force_close(&connection, &name);
    connection.process_data_events(Duration::ZERO).unwrap();

    let consumers = |q: &str| {
        setup
            .queue_declare(q, support::consuming::passive())
            .unwrap()
            .consumer_count
    };
    assert_eq!(
        consumers(&old_queue),
        0,
        "the dropped channel's consumer came back"
    );
    assert_eq!(consumers(&new_queue), 1);
    // The transaction went with the connection: its channel is closed, not recovered.
    assert!(transacted.is_closed());
    let commit = transacted.tx_commit();
    assert!(
        commit.as_ref().is_err_and(Error::is_connection_error),
        "{commit:?}"
    );
    let report = first_report(&events_rx);
    assert!(
        report
            .closed_channels
            .iter()
            .any(|(n, _)| *n == transacted.channel_number()),
        "{report:?}"
    );
    assert_eq!(consumers(&new_queue), 1);
    for q in [&old_queue, &new_queue] {
        setup.queue_delete(q, Default::default()).unwrap();
    }
}

#[test]
fn the_filter_leaves_entities_out_and_a_broker_closed_channel_stays_closed() {
    support::ensure_broker();
    let name = unique("recovery-filter");
    let skipped_queue = unique("recovery-skipped");
    let kept_queue = unique("recovery-kept");
    let filter_out = skipped_queue.clone();
    let connection = Connection::open(params().with_connection_name(&name).with_recovery(
        policy().with_topology_filter(move |entity| match entity {
            cottontail::Entity::Queue { name, .. } => *name != filter_out,
            cottontail::Entity::Consumer { queue, .. } => *queue != filter_out,
            _ => true,
        }),
    ))
    .unwrap();
    let channel = connection.channel().unwrap();
    let auto_delete = QueueDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    channel
        .queue_declare(&skipped_queue, auto_delete.clone())
        .unwrap();
    channel.queue_declare(&kept_queue, auto_delete).unwrap();
    let (cancelled_tx, cancelled_rx) = mpsc::channel();
    channel.add_on_cancel_callback(move |_ch, tag: &str| {
        let _ = cancelled_tx.send(tag.to_string());
    });
    let skipped_tag = channel
        .basic_consume(
            &skipped_queue,
            |_c, _m, _p, _b| {},
            BasicConsumeOptions::default(),
        )
        .unwrap();
    channel
        .basic_consume(
            &kept_queue,
            |_c, _m, _p, _b| {},
            BasicConsumeOptions::default(),
        )
        .unwrap();
    // A channel the broker closed before the loss is the application's business.
    let broken = connection.channel().unwrap();
    let refused = broken.queue_declare(&unique("recovery-missing"), support::consuming::passive());
    assert!(matches!(
        refused,
        Err(Error::ChannelClosed {
            reply_code: 404,
            ..
        })
    ));
    let (events_tx, events_rx) = mpsc::channel();
    connection.add_on_recovery_callback(move |_c, event: &RecoveryEvent| {
        let _ = events_tx.send(event.clone());
    });

    force_close(&connection, &name);

    // The filtered-out consumer is reported cancelled on the consuming thread, and its
    // auto-delete queue (deleted with the old connection's consumer) is not declared again.
    let consuming = {
        let channel = channel.clone();
        std::thread::spawn(move || channel.start_consuming())
    };
    assert_eq!(
        cancelled_rx.recv_timeout(Duration::from_secs(5)).unwrap(),
        skipped_tag
    );
    let probe = support::connect().channel().unwrap();
    assert!(probe
        .queue_declare(&skipped_queue, support::consuming::passive())
        .is_err());
    let probe = support::connect().channel().unwrap();
    let kept = probe
        .queue_declare(&kept_queue, support::consuming::passive())
        .unwrap();
    assert_eq!(kept.consumer_count, 1);
    assert!(broken.is_closed());
    assert!(matches!(
        broken.basic_publish("", "x", b"y"),
        Err(Error::ChannelClosed {
            reply_code: 404,
            ..
        })
    ));
    let report = first_report(&events_rx);
    assert!(
        report.skipped.iter().any(|(e, err)| err.is_none()
            && matches!(e, cottontail::Entity::Queue { name, .. } if *name == skipped_queue)),
        "{report:?}"
    );
    channel.stop_consuming(None).unwrap();
    consuming.join().unwrap().unwrap();
}

#[test]
fn an_rpc_client_and_an_rpc_server_go_on_after_a_recovery() {
    use cottontail::{rpc, CallOptions, RpcClient};
    let queue = unique("recovery-rpc-q");
    // The server on its own recovering connection, serving until its channel's consumer is
    // cancelled.
    let (server_name, server) = recovering("recovery-rpc-server");
    let serving = server.channel().unwrap();
    serving
        .queue_declare(&queue, QueueDeclareOptions::default())
        .unwrap();
    let served = {
        let serving = serving.clone();
        let queue = queue.clone();
        std::thread::spawn(move || {
            rpc::serve(&serving, &queue, |_props, body| {
                Ok([b"echo:".as_slice(), body].concat())
            })
        })
    };
    let (name, connection) = recovering("recovery-rpc");
    let client = RpcClient::new(&connection).unwrap();
    let call = |body: &str| {
        client.call(
            "",
            &queue,
            body.as_bytes(),
            CallOptions {
                timeout: Some(Duration::from_secs(5)),
                ..Default::default()
            },
        )
    };
    assert!(support::eventually(Duration::from_secs(5), || {
        call("before").is_ok_and(|reply| reply.body == b"echo:before")
    }));
    // The client's connection, then the server's.
    force_close(&connection, &name);
    assert_eq!(
        call("after the client's").unwrap().body,
        b"echo:after the client's"
    );
    force_close(&server, &server_name);
    assert_eq!(
        call("after the server's").unwrap().body,
        b"echo:after the server's"
    );
    serving.stop_consuming(None).unwrap();
    served.join().unwrap().unwrap();
    serving.queue_delete(&queue, Default::default()).unwrap();
}

/// A call pumping the client's channel when the connection is lost, after the client's
/// connection had done connection-level work (here a mandatory request's return, which moves
/// the engine's work counter on): the call ends by its deadline (with the loss, or a timeout)
/// and the client goes on after the recovery. (A pumper that kept comparing against the old
/// engine's counter after the recovery swapped engines under it would spin past its deadline;
/// that needs the swap to land inside one pump, which this test hits only by chance.)
#[test]
fn an_rpc_call_pumping_across_a_recovery_ends_by_its_deadline() {
    use cottontail::{CallOptions, RpcClient};
    let (name, connection) = recovering("recovery-rpc-pump");
    let client = RpcClient::new(&connection).unwrap();
    let nowhere = unique("recovery-rpc-nowhere");
    let options = |mandatory| CallOptions {
        timeout: Some(Duration::from_secs(4)),
        mandatory,
        ..Default::default()
    };
    let returned = client.call("", &nowhere, b"returned", options(true));
    assert!(
        matches!(returned, Err(Error::Unroutable { .. })),
        "{returned:?}"
    );
    let (done_tx, done_rx) = mpsc::channel();
    let pumping = {
        let (client, nowhere) = (client.clone(), nowhere.clone());
        std::thread::spawn(move || {
            let _ = done_tx.send(client.call("", &nowhere, b"lost", options(false)));
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    force_close(&connection, &name);
    let ended = done_rx
        .recv_timeout(Duration::from_secs(15))
        .expect("the call pumping at the loss never returned");
    assert!(ended.is_err(), "{ended:?}");
    pumping.join().unwrap();
    let again = client.call("", &nowhere, b"after", options(true));
    assert!(matches!(again, Err(Error::Unroutable { .. })), "{again:?}");
}
