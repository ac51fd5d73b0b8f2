//! Automatic recovery against a fake broker, for what a real one will not do on demand: go
//! silent (heartbeat timeout), take its time to accept the new connection, refuse every
//! attempt, close with a code recovery must not handle. The real-broker tests are
//! `tests/recovery.rs` and `tests/cluster_recovery.rs`. The last tests are about what the
//! consuming thread does while it waits for a recovery: it runs timers and threadsafe
//! callbacks on time, and a callback's error ends its call, whatever that error is.

#[path = "support/fake_broker.rs"]
mod fake_broker;
mod support;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{basic, channel, connection, AMQPClass};
use cottontail::{
    BasicConsumeOptions, Connection, ConsumeOptions, Consumed, Error, QosOptions, RecoveryEvent,
    RecoveryPolicy,
};
use fake_broker::{client_params, join, spawn_fake, Peer};

fn policy() -> RecoveryPolicy {
    RecoveryPolicy::default()
        .with_initial_delay(Duration::from_millis(20))
        .with_max_delay(Duration::from_millis(100))
}

fn send_close_ok(peer: &mut Peer) {
    peer.send_method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
    );
}

/// Reads until the client's connection.close, answers close-ok, reads to the end.
fn answer_close(peer: &mut Peer) {
    while let Some(frame) = peer.read_frame() {
        if let AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(_))) = frame
        {
            send_close_ok(peer);
            peer.drain();
            return;
        }
    }
}

fn answer_qos(peer: &mut Peer, channel: u16) -> u16 {
    let prefetch = match peer.expect_method() {
        (ch, AMQPClass::Basic(basic::AMQPMethod::Qos(qos))) if ch == channel => qos.prefetch_count,
        other => panic!("fake broker: expected basic.qos on {channel}, got {other:?}"),
    };
    peer.send_method(
        channel,
        AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})),
    );
    prefetch
}

/// The recovery's own channel for the topology: opened, then closed (nothing recorded here).
fn serve_recovery_channel(peer: &mut Peer) {
    let aux = match peer.expect_method() {
        (ch, AMQPClass::Channel(channel::AMQPMethod::Open(_))) => ch,
        other => panic!("fake broker: expected the recovery's channel.open, got {other:?}"),
    };
    peer.send_method(
        aux,
        AMQPClass::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {})),
    );
    match peer.expect_method() {
        (ch, AMQPClass::Channel(channel::AMQPMethod::Close(_))) if ch == aux => {}
        other => panic!("fake broker: expected channel.close on {aux}, got {other:?}"),
    }
    peer.send_method(
        aux,
        AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
    );
}

#[test]
fn a_heartbeat_timeout_reconnects_and_reopens_the_channel_with_its_number_and_qos() {
    let (port, fake) = spawn_fake(|broker| {
        let mut first = broker.accept_and_handshake(1, 131_072);
        first.open_channel(3);
        let prefetch = answer_qos(&mut first, 3);
        // Silent from now on: the client's heartbeat timeout ends this connection.
        first.drain();
        let mut second = broker.accept_and_handshake(0, 131_072);
        second.open_channel(3);
        let replayed = answer_qos(&mut second, 3);
        serve_recovery_channel(&mut second);
        // The application's next call goes out on the new connection.
        let after = answer_qos(&mut second, 3);
        answer_close(&mut second);
        (prefetch, replayed, after)
    });
    let connection = Connection::open(client_params(port).with_recovery(policy())).expect("open");
    let channel = connection.channel_with_number(3).expect("channel 3");
    channel
        .basic_qos(QosOptions {
            prefetch_count: 5,
            ..Default::default()
        })
        .unwrap();
    let started = Instant::now();
    assert!(
        support::eventually(Duration::from_secs(10), || connection.recovery_generation()
            == 1),
        "no recovery after the heartbeat timeout"
    );
    println!(
        "recovered {:?} after the broker went silent",
        started.elapsed()
    );
    connection
        .wait_for_recovery(Duration::from_secs(1))
        .unwrap();
    assert!(channel.is_open());
    assert_eq!(channel.channel_number(), 3);
    channel
        .basic_qos(QosOptions {
            prefetch_count: 7,
            ..Default::default()
        })
        .unwrap();
    connection.close().unwrap();
    assert_eq!(join(fake), (5, 5, 7));
}

#[test]
fn a_publish_made_while_recovering_waits_and_goes_out_on_the_new_connection() {
    let (lost_tx, lost_rx) = mpsc::channel();
    let (port, fake) = spawn_fake(move |broker| {
        let mut first = broker.accept_and_handshake(0, 131_072);
        first.open_channel(1);
        first.send_connection_close(320, "CONNECTION_FORCED - test");
        first.drain();
        lost_tx.send(()).unwrap();
        // Slow to take the new connection: the publish below waits meanwhile.
        std::thread::sleep(Duration::from_millis(500));
        let mut second = broker.accept_and_handshake(0, 131_072);
        second.open_channel(1);
        serve_recovery_channel(&mut second);
        let mut published = Vec::new();
        loop {
            match second.read_frame() {
                Some(AMQPFrame::Body(1, body)) => published.push(body.to_vec()),
                Some(AMQPFrame::Method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::Close(_)),
                )) => {
                    send_close_ok(&mut second);
                }
                Some(_) => {}
                None => break published,
            }
        }
    });
    let connection = Connection::open(
        client_params(port)
            .with_rpc_timeout(Duration::from_secs(5))
            .with_recovery(policy()),
    )
    .expect("open");
    let channel = connection.channel().expect("channel");
    lost_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(support::eventually(Duration::from_secs(2), || {
        connection.is_recovering()
    }));
    let started = Instant::now();
    channel
        .basic_publish("", "q", b"made while recovering")
        .unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300),
        "the publish did not wait for the recovery ({waited:?})"
    );
    assert_eq!(connection.recovery_generation(), 1);
    connection.close().unwrap();
    assert_eq!(join(fake), vec![b"made while recovering".to_vec()]);
}

#[test]
fn a_call_made_while_recovering_gives_up_at_its_own_deadline() {
    let (port, fake) = spawn_fake(|broker| {
        let mut first = broker.accept_and_handshake(0, 131_072);
        first.open_channel(1);
        first.send_connection_close(320, "CONNECTION_FORCED - test");
        first.drain();
        // Never accepts again until the client is done.
        std::thread::sleep(Duration::from_secs(2));
    });
    let connection = Connection::open(
        client_params(port)
            .with_rpc_timeout(Duration::from_millis(300))
            .with_recovery(policy()),
    )
    .expect("open");
    let channel = connection.channel().expect("channel");
    assert!(support::eventually(Duration::from_secs(2), || {
        connection.is_recovering()
    }));
    let started = Instant::now();
    let err = channel
        .basic_qos(QosOptions::default())
        .expect_err("no connection to send it on");
    let waited = started.elapsed();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(2),
        "waited {waited:?} for a 300 ms rpc_timeout"
    );
    drop(channel);
    drop(connection);
    join(fake);
}

#[test]
fn recovery_gives_up_after_its_attempts_and_every_call_gets_the_error() {
    let (port, fake) = spawn_fake(|broker| {
        let mut first = broker.accept_and_handshake(0, 131_072);
        first.open_channel(1);
        first.send_connection_close(320, "CONNECTION_FORCED - test");
        first.drain();
        // The listener goes: every attempt is refused.
        drop(broker);
    });
    let connection =
        Connection::open(client_params(port).with_recovery(policy().with_max_attempts(Some(3))))
            .expect("open");
    let (events_tx, events_rx) = mpsc::channel();
    connection.add_on_recovery_callback(move |_c, event: &RecoveryEvent| {
        events_tx.send(event.clone()).unwrap();
    });
    let channel = connection.channel().expect("channel");
    join(fake);
    let ended = connection.wait_for_recovery(Duration::from_secs(10));
    let cause = ended.expect_err("recovery gave up");
    assert!(cause.is_connection_error(), "{cause:?}");
    assert!(
        matches!(&cause, Error::AllAttemptsFailed { failed: 3, attempts } if attempts.len() == 3),
        "{cause:?}"
    );
    assert!(!connection.is_recovering());
    assert_eq!(connection.close_reason(), Some(cause.clone()));
    // Every call fails at once with the error that ended it.
    let started = Instant::now();
    assert_eq!(channel.basic_publish("", "q", b"x"), Err(cause.clone()));
    assert_eq!(connection.channel().map(|_| ()), Err(cause.clone()));
    assert!(started.elapsed() < Duration::from_secs(1));
    // The events: lost, three failed attempts, given up.
    connection
        .process_data_events(Duration::ZERO)
        .expect_err("the connection is closed");
    let events: Vec<RecoveryEvent> = events_rx.try_iter().collect();
    assert!(
        matches!(&events[0], RecoveryEvent::ConnectionLost { cause } if cause.reply_code() == Some(320)),
        "{events:?}"
    );
    let attempts = events
        .iter()
        .filter(|e| matches!(e, RecoveryEvent::AttemptFailed { .. }))
        .count();
    assert_eq!(attempts, 3, "{events:?}");
    assert!(
        matches!(events.last(), Some(RecoveryEvent::Failed { cause: c }) if *c == cause),
        "{events:?}"
    );
}

#[test]
fn a_close_recovery_does_not_handle_ends_the_connection_without_reconnecting() {
    // The engine is marked closed before its recovery hook says what follows (it first fails
    // every channel: many channels widen that window); a wait_for_recovery made the moment
    // the connection is seen closed must wait for that, not report it connected.
    const CHANNELS: u16 = 300;
    let (port, fake) = spawn_fake(|broker| {
        let mut first = broker.accept_and_handshake(0, 131_072);
        for number in 1..=CHANNELS {
            first.open_channel(number);
        }
        first.send_connection_close(530, "NOT_ALLOWED - test");
        first.drain();
        // No new connection may come.
        broker.accept_within(Duration::from_millis(700)).is_none()
    });
    let connection = Connection::open(client_params(port).with_recovery(policy())).expect("open");
    let channels: Vec<_> = (0..CHANNELS)
        .map(|_| connection.channel().expect("channel"))
        .collect();
    let started = Instant::now();
    while !connection.is_closed() {
        assert!(started.elapsed() < Duration::from_secs(5), "never closed");
        std::hint::spin_loop();
    }
    let ended = connection.wait_for_recovery(Duration::from_secs(5));
    assert!(
        matches!(
            &ended,
            Err(Error::ConnectionClosed {
                reply_code: 530,
                ..
            })
        ),
        "{ended:?}"
    );
    assert!(channels.iter().all(|c| c.is_closed()));
    assert!(join(fake), "the client reconnected after a 530");
}

#[test]
fn confirms_outstanding_at_the_loss_are_unknown_never_confirmed() {
    use cottontail::PublishOptions;
    let (port, fake) = spawn_fake(|broker| {
        let mut first = broker.accept_and_handshake(0, 131_072);
        first.open_channel(1);
        match first.expect_method() {
            (1, AMQPClass::Confirm(_)) => {}
            other => panic!("expected confirm.select, got {other:?}"),
        }
        first.send_method(
            1,
            AMQPClass::Confirm(amq_protocol::protocol::confirm::AMQPMethod::SelectOk(
                amq_protocol::protocol::confirm::SelectOk {},
            )),
        );
        // Three publishes (method, header, body each); the first is acked, then the
        // connection goes before the others are.
        let mut bodies = 0;
        while bodies < 3 {
            if let Some(AMQPFrame::Body(1, _)) = first.read_frame() {
                bodies += 1;
            }
        }
        first.send_method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: 1,
                multiple: false,
            })),
        );
        // The fourth publish (made with basic_publish, waiting for its confirm).
        while !matches!(first.read_frame(), Some(AMQPFrame::Body(1, _))) {}
        first.send_connection_close(320, "CONNECTION_FORCED - test");
        first.drain();
        let mut second = broker.accept_and_handshake(0, 131_072);
        second.open_channel(1);
        match second.expect_method() {
            (1, AMQPClass::Confirm(_)) => {}
            other => panic!("expected confirm.select again, got {other:?}"),
        }
        second.send_method(
            1,
            AMQPClass::Confirm(amq_protocol::protocol::confirm::AMQPMethod::SelectOk(
                amq_protocol::protocol::confirm::SelectOk {},
            )),
        );
        serve_recovery_channel(&mut second);
        // A publish after the recovery is the new channel's tag 1: acked.
        while !matches!(second.read_frame(), Some(AMQPFrame::Body(1, _))) {}
        second.send_method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: 1,
                multiple: false,
            })),
        );
        answer_close(&mut second);
    });
    let connection = Connection::open(client_params(port).with_recovery(policy())).expect("open");
    let channel = connection.channel().expect("channel");
    channel.confirm_delivery().unwrap();
    let options = PublishOptions::default();
    let seqs: Vec<u64> = (0..3)
        .map(|i| {
            channel
                .basic_publish_deferred("", "q", format!("m{i}").as_bytes(), &options)
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, [1, 2, 3]);
    let waited = channel.basic_publish("", "q", b"waits");
    assert!(
        matches!(&waited, Err(Error::ConfirmUnknown { delivery_tag: 4, message }) if message.body == b"waits"),
        "{waited:?}"
    );
    let outcome = channel.wait_for_confirms(None).unwrap();
    assert_eq!(outcome.unknown, vec![2, 3]);
    assert!(outcome.nacked.is_empty() && !outcome.all_confirmed());
    connection
        .wait_for_recovery(Duration::from_secs(5))
        .unwrap();
    // Numbering goes on; the new channel's first ack is for this one.
    assert_eq!(
        channel
            .basic_publish_deferred("", "q", b"after", &options)
            .unwrap(),
        5
    );
    let outcome = channel.wait_for_confirms(None).unwrap();
    assert!(outcome.all_confirmed(), "{outcome:?}");
    connection.close().unwrap();
    join(fake);
}

/// basic.get-ok with `delivery_tag`, its header and a 2-byte body on `channel`.
fn send_get_ok(peer: &mut Peer, channel: u16, delivery_tag: u64) {
    peer.send_raw(&Peer::get_ok_and_header(channel, delivery_tag, 2));
    peer.send_frame(&AMQPFrame::Body(channel, b"hi".to_vec()));
}

/// The application's delivery tags run on across recoveries (the new channel's tags plus the
/// old ones'): a broker whose tags would overflow them is refused with a typed protocol
/// error, never a panic (debug) or a wrapped tag (release), which an ack would then misuse.
#[test]
fn a_delivery_tag_that_would_overflow_across_a_recovery_is_a_protocol_error() {
    let (port, fake) = spawn_fake(|broker| {
        let mut first = broker.accept_and_handshake(0, 131_072);
        first.open_channel(1);
        first.expect_get(1);
        send_get_ok(&mut first, 1, u64::MAX);
        // The connection drops: the client recovers.
        drop(first);
        let mut second = broker.accept_and_handshake(0, 131_072);
        second.open_channel(1);
        serve_recovery_channel(&mut second);
        second.expect_get(1);
        send_get_ok(&mut second, 1, 1);
        second.drain()
    });
    let connection = Connection::open(client_params(port).with_recovery(policy())).expect("open");
    let channel = connection.channel().expect("channel");
    let first = channel.basic_get("q", true).unwrap().expect("a message");
    assert_eq!(first.method.delivery_tag, u64::MAX);
    assert!(
        support::eventually(Duration::from_secs(10), || connection.recovery_generation()
            == 1),
        "no recovery after the connection dropped"
    );
    connection
        .wait_for_recovery(Duration::from_secs(5))
        .unwrap();
    match channel.basic_get("q", true) {
        Err(Error::Protocol { reply_code, reason }) => {
            assert_eq!(reply_code, 503);
            assert!(reason.contains("overflows"), "{reason}");
        }
        other => panic!("expected a protocol error, got {other:?}"),
    }
    drop(connection);
    join(fake);
}

/// A policy whose retries come `delay` apart, exactly: while the fake refuses them, nothing
/// happens between two attempts.
fn slow_policy(delay: Duration) -> RecoveryPolicy {
    RecoveryPolicy::default()
        .with_initial_delay(delay)
        .with_max_delay(delay)
        .with_jitter(0.0)
}

/// A fake broker whose one connection opens channel 1 (and answers a basic.consume on it when
/// `consumer`), then stops listening and closes the connection with 320: the client recovers,
/// every attempt refused, until the test drops it. The receiver hears when the fake is done.
fn lost_and_refused(consumer: bool) -> (u16, std::thread::JoinHandle<()>, mpsc::Receiver<()>) {
    let (lost_tx, lost_rx) = mpsc::channel();
    let (port, fake) = spawn_fake(move |broker| {
        let mut first = broker.accept_and_handshake(0, 131_072);
        first.open_channel(1);
        if consumer {
            let tag = match first.expect_method() {
                (1, AMQPClass::Basic(basic::AMQPMethod::Consume(consume))) => consume.consumer_tag,
                other => panic!("fake broker: expected basic.consume on 1, got {other:?}"),
            };
            first.send_method(
                1,
                AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                    consumer_tag: tag,
                })),
            );
        }
        drop(broker);
        first.send_connection_close(320, "CONNECTION_FORCED - test");
        first.drain();
        lost_tx.send(()).unwrap();
    });
    (port, fake, lost_rx)
}

/// Waits until `connection` recovers from the fake's close.
fn until_recovering(connection: &Connection, lost: &mpsc::Receiver<()>) {
    lost.recv_timeout(Duration::from_secs(5))
        .expect("the fake closed the connection");
    assert!(support::eventually(Duration::from_secs(2), || {
        connection.is_recovering()
    }));
}

/// An [`Error::Timeout`] of the application's own, which no wait of cottontail's makes.
fn own_timeout() -> Error {
    Error::Timeout {
        context: "the application's own wait".into(),
        after: Duration::from_millis(1),
    }
}

#[test]
fn a_recovery_callbacks_timeout_error_ends_process_data_events_while_recovering() {
    let (port, fake, lost) = lost_and_refused(false);
    let connection =
        Connection::open(client_params(port).with_recovery(slow_policy(Duration::from_secs(1))))
            .expect("open");
    let _channel = connection.channel().expect("channel");
    // The second attempt fails a second after the first, while process_data_events waits.
    connection.add_on_recovery_callback(|_c, event: &RecoveryEvent| match event {
        RecoveryEvent::AttemptFailed { attempt: 2, .. } => Err(own_timeout()),
        _ => Ok(()),
    });
    until_recovering(&connection, &lost);
    let started = Instant::now();
    let ended = connection.process_data_events(Duration::from_secs(5));
    assert_eq!(ended, Err(own_timeout()), "after {:?}", started.elapsed());
    drop(connection);
    join(fake);
}

#[test]
fn a_timers_timeout_error_is_yielded_by_a_recovering_iterator_which_goes_on() {
    let (port, fake, lost) = lost_and_refused(true);
    let connection =
        Connection::open(client_params(port).with_recovery(slow_policy(Duration::from_secs(5))))
            .expect("open");
    let channel = connection.channel().expect("channel");
    let mut consumer = channel
        .consume(
            "q",
            ConsumeOptions {
                inactivity_timeout: Some(Duration::from_secs(2)),
                ..Default::default()
            },
        )
        .expect("consume");
    until_recovering(&connection, &lost);
    let scheduled = Instant::now();
    connection.call_later(Duration::from_millis(200), || Err::<(), _>(own_timeout()));
    let first = consumer.next();
    let waited = scheduled.elapsed();
    assert!(
        matches!(&first, Some(Err(e)) if *e == own_timeout()),
        "{first:?} after {waited:?}"
    );
    assert!(
        waited < Duration::from_millis(1500),
        "the 200 ms timer ran after {waited:?}"
    );
    // As after any callback's error, the iterator goes on: here to its inactivity timeout.
    let second = consumer.next();
    assert!(matches!(second, Some(Ok(Consumed::Inactive))), "{second:?}");
    drop(consumer);
    drop(channel);
    drop(connection);
    join(fake);
}

#[test]
fn timers_and_threadsafe_callbacks_run_on_time_while_process_data_events_waits_for_a_recovery() {
    let (port, fake, lost) = lost_and_refused(false);
    let connection =
        Connection::open(client_params(port).with_recovery(slow_policy(Duration::from_secs(5))))
            .expect("open");
    let _channel = connection.channel().expect("channel");
    until_recovering(&connection, &lost);
    let (ran_tx, ran_rx) = mpsc::channel();
    let timer_tx = ran_tx.clone();
    let scheduled = Instant::now();
    connection.call_later(Duration::from_millis(200), move || {
        timer_tx.send(("timer", scheduled.elapsed())).unwrap();
    });
    let other = connection.clone();
    let adder = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(400));
        let added = Instant::now();
        other
            .add_callback_threadsafe(move || {
                ran_tx.send(("threadsafe", added.elapsed())).unwrap();
            })
            .expect("add_callback_threadsafe");
    });
    connection
        .process_data_events(Duration::from_secs(2))
        .expect("process_data_events");
    adder.join().unwrap();
    let ran: Vec<_> = ran_rx.try_iter().collect();
    assert_eq!(
        ran.iter().map(|(what, _)| *what).collect::<Vec<_>>(),
        ["timer", "threadsafe"],
        "what ran inside process_data_events: {ran:?}"
    );
    for (what, after) in &ran {
        assert!(
            *after < Duration::from_millis(1500),
            "the {what} callback ran {after:?} after it was due"
        );
    }
    drop(connection);
    join(fake);
}

#[test]
fn a_threadsafe_callback_runs_at_once_while_start_consuming_waits_for_a_recovery() {
    let (port, fake, lost) = lost_and_refused(true);
    let connection =
        Connection::open(client_params(port).with_recovery(slow_policy(Duration::from_secs(5))))
            .expect("open");
    let channel = connection.channel().expect("channel");
    channel
        .basic_consume("q", |_ch, _m, _p, _body| {}, BasicConsumeOptions::default())
        .expect("basic_consume");
    until_recovering(&connection, &lost);
    let other = connection.clone();
    let adder = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        let added = Instant::now();
        other
            .add_callback_threadsafe(|| Err::<(), _>(std::io::Error::other("stop")))
            .expect("add_callback_threadsafe");
        added
    });
    let ended = channel.start_consuming();
    let stopped = Instant::now();
    let added = adder.join().unwrap();
    assert!(matches!(&ended, Err(Error::Callback(_))), "{ended:?}");
    let after = stopped.saturating_duration_since(added);
    assert!(
        after < Duration::from_millis(1500),
        "the threadsafe callback ended start_consuming {after:?} after it was added"
    );
    drop(channel);
    drop(connection);
    join(fake);
}

/// A recovery that gives up on a broker that accepts connections and never answers ends the
/// connection with a connection error (`AllAttemptsFailed`, holding each attempt's timeout),
/// not with the last attempt's `Timeout`, which read as one slow call: a caller retrying on
/// timeouts spun on a dead connection.
#[test]
fn recovery_that_gives_up_on_a_silent_broker_ends_with_a_connection_error() {
    let (port, fake) = spawn_fake(|broker| {
        let mut first = broker.accept_and_handshake(0, 131_072);
        first.send_connection_close(320, "CONNECTION_FORCED - test");
        first.drain();
        // Every attempt is accepted, then hears nothing.
        let silent: Vec<_> = (0..2).map(|_| broker.accept()).collect();
        std::thread::sleep(Duration::from_secs(6));
        drop(silent);
    });
    let connection =
        Connection::open(client_params(port).with_recovery(policy().with_max_attempts(Some(2))))
            .expect("open");
    let lost = Instant::now();
    while !connection.is_recovering() && lost.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(connection.is_recovering(), "the forced close was not seen");
    let cause = connection
        .wait_for_recovery(Duration::from_secs(15))
        .expect_err("recovery gave up");
    assert!(cause.is_connection_error(), "{cause:?}");
    match &cause {
        Error::AllAttemptsFailed {
            failed: 2,
            attempts,
        } => assert!(
            attempts.iter().all(|e| matches!(e, Error::Timeout { .. })),
            "{attempts:?}"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(connection.close_reason(), Some(cause));
    drop(connection);
    join(fake);
}
