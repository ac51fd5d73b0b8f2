//! A consuming thread with nothing to hand out reads the socket itself (plain TCP): it takes
//! the connection's reading half, reads, parses and routes frames (for every channel, not only
//! its own), and returns to its consumer loop when something arrived for it, when connection
//! work or a cancel or a failure is signalled, or at its deadline. These tests check what a
//! caller sees of that against a real RabbitMQ (heartbeats, other channels' deliveries and
//! replies, stop_consuming, timers and threadsafe callbacks, broker and client closes, bursts),
//! and, with the scripted fake broker, that a hostile frame read that way still closes the
//! connection with the protocol error.
//!
//! Every blocking consumer runs on a thread of its own and reports through a channel read with
//! `recv_timeout`, so a bug fails the test instead of hanging it.

mod support;

#[path = "support/fake_broker.rs"]
mod fake_broker;

use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use amq_protocol::protocol::{basic, AMQPClass};
use cottontail::{
    BasicConsumeOptions, BoxError, Connection, ConsumeOptions, Consumed, Error, QosOptions,
    QueueDeclareOptions,
};
use support::consuming::{
    expect_all_in_order, iterate_on_a_thread, nudge, passive, publish, record_in_order, settle,
    start_consuming_on_a_thread, Cleanup, Item,
};
use support::{
    broker_connections_named, connect, eventually, exclusive_queue, params, publish_numbered,
    unique,
};

/// The next item of a consumer thread, within `within`.
fn next_item(rx: &mpsc::Receiver<Item>, within: Duration, what: &str) -> Item {
    rx.recv_timeout(within)
        .unwrap_or_else(|e| panic!("{what}: the consumer yielded nothing within {within:?} ({e})"))
}

/// The body of the next item, which must be a delivery.
fn next_body(rx: &mpsc::Receiver<Item>, within: Duration, what: &str) -> Vec<u8> {
    match next_item(rx, within, what) {
        Some(Ok(Consumed::Delivery(d))) => d.body,
        other => panic!("{what}: expected a delivery, got {other:?}"),
    }
}

/// Runs `f` and checks that it took less than 2.5 s (half the RPC timeout: a reply routed
/// without waking its waiter shows as a `Timeout` or as a call this slow).
fn promptly<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let value = f();
    let took = started.elapsed();
    assert!(took < Duration::from_millis(2500), "{what} took {took:?}");
    value
}

// ---------------------------------------------------------------------------------------------
// Against RabbitMQ
// ---------------------------------------------------------------------------------------------

#[test]
fn a_waiting_consumer_keeps_a_short_heartbeat_connection_alive() {
    let connection = Connection::open(params().with_heartbeat(Some(1))).unwrap();
    assert_eq!(connection.heartbeat(), 1);
    let channel = connection.channel().unwrap();
    let queue = exclusive_queue(&channel);
    let consumer = channel
        .consume(
            &queue,
            ConsumeOptions {
                auto_ack: true,
                inactivity_timeout: Some(Duration::from_secs(5)),
                ..Default::default()
            },
        )
        .unwrap();
    let started = Instant::now();
    let (consumer_thread, items) = iterate_on_a_thread(consumer);
    // Within the same 5 s wait (the nudge does not restart the inactivity timeout).
    nudge(&connection, consumer_thread);
    // Five heartbeat intervals with nothing but heartbeats on the wire, which the consuming
    // thread reads: the I/O thread must count them, or it gives up after two.
    match next_item(&items, Duration::from_secs(10), "the idle wait") {
        Some(Ok(Consumed::Inactive)) => {}
        other => panic!("expected Consumed::Inactive after 5 s, got {other:?}"),
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(4900) && waited < Duration::from_secs(8),
        "inactivity reported after {waited:?}"
    );
    assert!(connection.is_open(), "{:?}", connection.close_reason());

    // The same iterator (waiting again) gets a message published now from elsewhere.
    let publisher = connect();
    publish(&publisher.channel().unwrap(), &queue, b"after the silence");
    assert_eq!(
        next_body(
            &items,
            Duration::from_secs(4),
            "the message after the silence"
        ),
        b"after the silence"
    );
    assert!(connection.is_open(), "{:?}", connection.close_reason());
    channel.queue_declare(&queue, passive()).unwrap();
    publisher.close().unwrap();
}

#[test]
fn deliveries_and_replies_for_other_channels_arrive_while_a_consumer_reads() {
    const N: u32 = 100;
    let connection = Connection::open(params().with_rpc_timeout(Duration::from_secs(5))).unwrap();
    let channel_a = connection.channel().unwrap();
    let queue_a = exclusive_queue(&channel_a);
    let channel_b = connection.channel().unwrap();
    let queue_b = exclusive_queue(&channel_b);
    let auto_ack = ConsumeOptions {
        auto_ack: true,
        ..Default::default()
    };
    // A first, so that it is the one holding the reading half while B's messages come in.
    let (thread_a, items_a) =
        iterate_on_a_thread(channel_a.consume(&queue_a, auto_ack.clone()).unwrap());
    nudge(&connection, thread_a);
    let (_, items_b) = iterate_on_a_thread(channel_b.consume(&queue_b, auto_ack).unwrap());
    settle();

    let publisher = connect();
    let publishing = publisher.channel().unwrap();
    publish_numbered(&publishing, &queue_b, 0..N);
    // Meanwhile, RPCs on a third channel of the consumers' connection get their replies, each
    // promptly: well within the RPC timeout, so that a reply routed by the reading consumer
    // without waking its waiter fails here instead of passing late.
    let channel_c = connection.channel().unwrap();
    for round in 0..20u16 {
        let ok = promptly("queue.declare of B", || {
            channel_c.queue_declare(&queue_b, passive())
        })
        .unwrap();
        assert_eq!(ok.consumer_count, 1, "queue B's consumers, round {round}");
        let ok = promptly("queue.declare of A", || {
            channel_c.queue_declare(&queue_a, passive())
        })
        .unwrap();
        assert_eq!(
            (ok.message_count, ok.consumer_count),
            (0, 1),
            "queue A, round {round}"
        );
        promptly("basic.qos", || {
            channel_c.basic_qos(QosOptions {
                prefetch_count: round + 1,
                ..Default::default()
            })
        })
        .unwrap();
    }

    let deadline = Instant::now() + Duration::from_secs(5);
    for i in 0..N {
        let left = deadline.saturating_duration_since(Instant::now());
        let body = next_body(&items_b, left, &format!("message {i} of {N} on B"));
        assert_eq!(body, i.to_be_bytes(), "B's messages out of order at {i}");
    }
    assert!(
        items_a.try_recv().is_err(),
        "A yielded something while nothing was published to it"
    );

    publish(&publishing, &queue_a, b"for A");
    assert_eq!(
        next_body(&items_a, Duration::from_secs(2), "A's message"),
        b"for A"
    );

    // Cancelling from this thread ends both iterators (they are waiting, one of them reading).
    for (channel, items, name) in [(&channel_a, &items_a, "A"), (&channel_b, &items_b, "B")] {
        assert_eq!(channel.cancel().unwrap(), 0, "{name}'s messages requeued");
        match next_item(items, Duration::from_secs(2), name) {
            None => {}
            other => panic!("{name}: expected the iterator to end after cancel, got {other:?}"),
        }
    }
    assert!(connection.is_open(), "{:?}", connection.close_reason());
    publisher.close().unwrap();
    connection.close().unwrap();
}

#[test]
fn a_channel_the_broker_closes_while_a_consumer_reads_can_be_replaced_at_once() {
    // The broker's channel.close (here a 404) is routed by the reading consumer; its close-ok
    // must reach the broker right away, or a channel opened next with the same number is not
    // usable (the broker still waits for the close-ok of the old one).
    let connection = Connection::open(params().with_rpc_timeout(Duration::from_secs(3))).unwrap();
    let channel_a = connection.channel().unwrap();
    let queue_a = exclusive_queue(&channel_a);
    let (thread_a, items_a) = iterate_on_a_thread(
        channel_a
            .consume(
                &queue_a,
                ConsumeOptions {
                    auto_ack: true,
                    ..Default::default()
                },
            )
            .unwrap(),
    );
    nudge(&connection, thread_a);
    for round in 0..5 {
        let doomed = connection.channel().unwrap();
        let number = doomed.channel_number();
        let missing = unique("no-such-queue");
        match doomed.queue_declare(&missing, passive()) {
            Err(Error::ChannelClosed {
                reply_code: 404, ..
            }) => {}
            other => panic!("round {round}: expected a 404 channel close, got {other:?}"),
        }
        drop(doomed);
        let fresh = connection.channel().unwrap();
        assert_eq!(
            fresh.channel_number(),
            number,
            "round {round}: the number is reused"
        );
        let ok = promptly("queue.declare on the new channel", || {
            fresh.queue_declare(&queue_a, passive())
        })
        .unwrap_or_else(|e| panic!("round {round}: the new channel failed: {e}"));
        assert_eq!(ok.consumer_count, 1, "round {round}");
        drop(fresh);
        // The consumer may have stopped reading when the channels changed: make it read again.
        nudge(&connection, thread_a);
    }
    assert!(items_a.try_recv().is_err(), "A yielded something");
    assert!(connection.is_open(), "{:?}", connection.close_reason());
    connection.close().unwrap();
}

#[test]
fn stop_consuming_from_another_thread_while_the_consumer_reads() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = exclusive_queue(&channel);
    let tag = channel
        .basic_consume(&queue, |_, _, _, _| {}, Default::default())
        .unwrap();
    let (consumer_thread, result) = start_consuming_on_a_thread(&channel);
    nudge(&connection, consumer_thread);
    let started = Instant::now();
    channel.clone().stop_consuming(None).unwrap();
    result
        .recv_timeout(Duration::from_secs(2))
        .expect("start_consuming returned within 2 s of stop_consuming")
        .expect("start_consuming returned Ok");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(channel.consumer_tags().is_empty());
    assert!(channel.is_open());
    // The broker no longer has the consumer.
    let ok = channel.queue_declare(&queue, passive()).unwrap();
    assert_eq!(ok.consumer_count, 0, "consumer {tag} still on the broker");
}

#[test]
fn call_later_and_threadsafe_callbacks_run_while_the_consumer_reads() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = exclusive_queue(&channel);
    channel
        .basic_consume(&queue, |_, _, _, _| {}, Default::default())
        .unwrap();
    let (consumer_thread, result) = start_consuming_on_a_thread(&channel);
    nudge(&connection, consumer_thread);

    let (tx, rx) = mpsc::channel();
    let threadsafe = tx.clone();
    connection
        .add_callback_threadsafe(move || {
            threadsafe
                .send(("threadsafe", thread::current().id(), Instant::now()))
                .unwrap();
        })
        .unwrap();
    let (what, ran_on, _) = rx
        .recv_timeout(Duration::from_secs(2))
        .expect("the threadsafe callback ran within 2 s");
    assert_eq!(what, "threadsafe");
    assert_eq!(ran_on, consumer_thread, "the threadsafe callback's thread");

    let asked = Instant::now();
    connection.call_later(Duration::from_millis(200), move || {
        tx.send(("timer", thread::current().id(), Instant::now()))
            .unwrap();
    });
    let (what, ran_on, at) = rx
        .recv_timeout(Duration::from_secs(2))
        .expect("the timer ran within 2 s");
    assert_eq!(what, "timer");
    assert_eq!(ran_on, consumer_thread, "the timer's thread");
    let after = at - asked;
    assert!(
        after >= Duration::from_millis(200) && after < Duration::from_secs(2),
        "the timer ran after {after:?}"
    );

    // Still consuming (nothing ended it); it stops when asked.
    assert!(result.try_recv().is_err(), "start_consuming returned early");
    channel.stop_consuming(None).unwrap();
    result
        .recv_timeout(Duration::from_secs(2))
        .expect("start_consuming returned")
        .unwrap();
}

#[test]
fn broker_closing_the_connection_ends_a_reading_consumer_with_its_error() {
    let name = unique("forced-while-reading");
    let connection = Connection::open(params().with_connection_name(&name)).unwrap();
    let channel = connection.channel().unwrap();
    let queue = exclusive_queue(&channel);
    let (consumer_thread, items) =
        iterate_on_a_thread(channel.consume(&queue, Default::default()).unwrap());
    nudge(&connection, consumer_thread);
    let names = broker_connections_named(&name);
    assert_eq!(names.len(), 1, "{names:?}");
    support::rabbitmqctl(&["close_connection", &names[0], "closed by the test"]);
    match next_item(&items, Duration::from_secs(10), "the broker's close") {
        Some(Err(Error::ConnectionClosed {
            reply_code,
            reply_text,
            ..
        })) => {
            assert_eq!(reply_code, 320);
            assert!(reply_text.contains("closed by the test"), "{reply_text}");
        }
        other => panic!("expected Err(ConnectionClosed {{ 320 }}), got {other:?}"),
    }
    match next_item(&items, Duration::from_secs(2), "after the error") {
        None => {}
        other => panic!("expected the iterator to end after the error, got {other:?}"),
    }
    assert!(connection.is_closed());
    assert!(
        matches!(
            connection.close_reason(),
            Some(Error::ConnectionClosed {
                reply_code: 320,
                ..
            })
        ),
        "{:?}",
        connection.close_reason()
    );
    assert!(matches!(
        channel.basic_qos(QosOptions {
            prefetch_count: 1,
            ..Default::default()
        }),
        Err(Error::ConnectionClosed {
            reply_code: 320,
            ..
        })
    ));
}

#[test]
fn closing_the_connection_from_another_thread_ends_a_reading_consumer() {
    let name = unique("client-close-while-reading");
    let rpc_timeout = Duration::from_secs(5);
    let connection = Connection::open(
        params()
            .with_connection_name(&name)
            .with_rpc_timeout(rpc_timeout),
    )
    .unwrap();
    let channel = connection.channel().unwrap();
    let queue = exclusive_queue(&channel);
    let (consumer_thread, items) =
        iterate_on_a_thread(channel.consume(&queue, Default::default()).unwrap());
    nudge(&connection, consumer_thread);

    let started = Instant::now();
    connection.close().expect("close while a consumer reads");
    let took = started.elapsed();
    assert!(took < rpc_timeout, "close took {took:?}");

    let closed = Error::ConnectionClosedByClient {
        reply_code: 200,
        reply_text: "Normal shutdown".into(),
    };
    // The application's own close ends the iterator without an error item, as in pika.
    match next_item(&items, Duration::from_secs(2), "the client's close") {
        None => {}
        other => panic!("expected the iterator to end, got {other:?}"),
    }
    assert_eq!(connection.close_reason(), Some(closed));
    assert!(
        eventually(Duration::from_secs(5), || broker_connections_named(&name)
            .is_empty()),
        "the broker still lists the connection"
    );
}

#[test]
fn many_messages_in_bursts_are_all_received_in_order_by_a_reading_consumer() {
    const BURSTS: u32 = 20;
    const PER_BURST: u32 = 50;
    const N: u32 = BURSTS * PER_BURST;
    let queue = unique("bursts");
    let _cleanup = Cleanup(vec![queue.clone()]);
    let consuming = Connection::open(params().with_rpc_timeout(Duration::from_secs(5))).unwrap();
    let channel = consuming.channel().unwrap();
    channel
        .queue_declare(&queue, QueueDeclareOptions::default())
        .unwrap();
    channel
        .basic_qos(QosOptions {
            prefetch_count: 20,
            ..Default::default()
        })
        .unwrap();
    let received = Arc::new(Mutex::new(Vec::with_capacity(N as usize)));
    {
        let received = received.clone();
        channel
            .basic_consume(
                &queue,
                move |ch, method, _, body| -> Result<(), BoxError> {
                    let n = record_in_order(&received, body)?;
                    ch.basic_ack(method.delivery_tag, false)?;
                    if n + 1 == N {
                        ch.stop_consuming(None)?;
                    }
                    Ok(())
                },
                BasicConsumeOptions::default(),
            )
            .unwrap();
    }
    let (_, result) = start_consuming_on_a_thread(&channel);
    settle();

    let publisher = connect();
    let publishing = publisher.channel().unwrap();
    for burst in 0..BURSTS {
        publish_numbered(
            &publishing,
            &queue,
            burst * PER_BURST..(burst + 1) * PER_BURST,
        );
        // The consumer catches up and goes back to reading the socket.
        thread::sleep(Duration::from_millis(50));
    }
    expect_all_in_order(&result, &received, N, Duration::from_secs(30));
    assert!(channel.consumer_tags().is_empty());

    // From the other connection: nothing ready...
    let checking = publisher.channel().unwrap();
    let ok = checking.queue_declare(&queue, passive()).unwrap();
    assert_eq!((ok.message_count, ok.consumer_count), (0, 0));
    // ...and nothing unacked: closing the consumer's connection requeues nothing.
    consuming.close().unwrap();
    thread::sleep(Duration::from_millis(300));
    let ok = checking.queue_declare(&queue, passive()).unwrap();
    assert_eq!(
        ok.message_count, 0,
        "unacked messages came back after close"
    );
    publisher.close().unwrap();
}

// ---------------------------------------------------------------------------------------------
// Against the fake broker
// ---------------------------------------------------------------------------------------------

#[test]
fn a_hostile_frame_read_by_the_consumer_thread_closes_the_connection_with_the_protocol_error() {
    // The test tells the fake when the consumer waits by reading the socket.
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (port, fake) = fake_broker::spawn_fake(move |broker| {
        let mut peer = broker.accept_and_handshake(0, 131_072);
        peer.open_channel(1);
        let tag = match peer.expect_method() {
            (1, AMQPClass::Basic(basic::AMQPMethod::Consume(consume))) => consume.consumer_tag,
            other => panic!("fake broker: expected basic.consume on 1, got {other:?}"),
        };
        peer.send_method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                consumer_tag: tag,
            })),
        );
        go_rx
            .recv_timeout(fake_broker::FAKE_PATIENCE)
            .expect("fake broker: the test's go-ahead");
        // A body frame header announcing 2 GiB (frame_max is 128 KiB), and nothing after it.
        peer.send_raw(&[3, 0, 1, 0x80, 0, 0, 0]);
        peer.drain()
    });
    let connection = Connection::open(fake_broker::client_params(port)).expect("open");
    let channel = connection.channel().expect("channel");
    let (consumer_thread, items) =
        iterate_on_a_thread(channel.consume("q", Default::default()).expect("consume"));
    nudge(&connection, consumer_thread);
    let started = Instant::now();
    go_tx.send(()).unwrap();
    match next_item(&items, Duration::from_secs(5), "the frame error") {
        Some(Err(Error::Protocol { reply_code, .. })) => assert_eq!(reply_code, 501),
        other => panic!("expected Err(Error::Protocol {{ 501 }}), got {other:?}"),
    }
    match next_item(&items, Duration::from_secs(2), "after the error") {
        None => {}
        other => panic!("expected the iterator to end after the error, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(connection.is_closed());
    assert!(
        matches!(
            connection.close_reason(),
            Some(Error::Protocol {
                reply_code: 501,
                ..
            })
        ),
        "{:?}",
        connection.close_reason()
    );
    let frames = fake_broker::join(fake);
    assert_eq!(
        fake_broker::connection_close_code(&frames),
        Some(501),
        "the client's connection.close; the fake received {frames:?}"
    );
}
