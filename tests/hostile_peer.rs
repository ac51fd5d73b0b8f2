//! More of what a real RabbitMQ will not do, played by the scripted fake broker (see
//! `faults.rs` for the first set): a tune below the protocol's minimum frame size, a body
//! frame split so that its first bytes would complete a message its frame overruns, a peer
//! that floods requests needing replies while it reads nothing, a peer that closes the
//! connection and then drains our output a trickle at a time, one that stops reading while a
//! channel is dropped, one that sends methods needing replies after our connection.close, an
//! unasked connection.close-ok, a late update-secret-ok, a flood of cancels for unknown
//! consumers, replies that do not answer the request (late ones too), consume-oks and
//! cancel-oks that name another consumer tag, and concurrent update-secrets answered in order
//! (`hostile_frames.rs` has more). Each test checks the exact typed error, or that the client
//! stays bounded in time and memory.

use std::time::{Duration, Instant};

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{basic, channel, connection, AMQPClass};
use cottontail::{Connection, Error};

#[path = "support/fake_broker.rs"]
mod fake_broker;

use fake_broker::{client_params, join, protocol_reason, spawn_fake, FakeBroker, Peer};

#[test]
fn a_tune_below_the_minimum_frame_size_fails_the_open() {
    let (port, fake) = spawn_fake(|broker| {
        let mut peer = broker.accept();
        peer.start_and_tune(0, 100);
        peer.drain()
    });
    let started = Instant::now();
    let reason = protocol_reason(Connection::open(client_params(port)), 502);
    assert!(reason.contains("frame_max 100"), "{reason}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let frames = join(fake);
    assert!(
        !frames.iter().any(|f| matches!(
            f,
            AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Open(_)))
        )),
        "the client opened a connection on that tune: {frames:?}"
    );
}

/// A body frame longer than the body its header announced, sent so that its first bytes
/// arrive alone and would be just enough to fill the body: a frame error, and no message.
#[test]
fn a_body_frame_overrunning_its_message_is_refused_even_when_split() {
    let (port, fake) = spawn_fake(|broker| {
        let mut peer = broker.accept_and_handshake(0, 131_072);
        peer.open_channel(1);
        peer.expect_get(1);
        let mut bytes = Peer::get_ok_and_header(1, 1, 5);
        let body = Peer::encode(&AMQPFrame::Body(1, b"0123456789".to_vec()));
        // The frame's header and its first five payload bytes, then the rest a little later.
        let cut = 7 + 5;
        bytes.extend_from_slice(&body[..cut]);
        peer.send_raw(&bytes);
        std::thread::sleep(Duration::from_millis(300));
        peer.send_raw(&body[cut..]);
        peer.drain()
    });
    let connection = Connection::open(client_params(port)).expect("open");
    let channel = connection.channel().expect("channel");
    let reason = protocol_reason(channel.basic_get("q", false), 501);
    assert!(reason.contains("longer than"), "{reason}");
    assert!(connection.is_closed());
    join(fake);
}

/// The broker closes the connection while 6 MiB of ours wait to go out, then drains them in
/// slow bursts: the client ends the connection within the one second it gives its close-ok,
/// however the peer paces its reads. (Each write now waits only for what is left of that
/// second; before, each got a second of its own, so a peer that read just fast enough to keep
/// every write going could hold the connection open for as long as its trickle lasted. On this
/// machine the kernel wakes a blocked writer only once a third of its send buffer is free,
/// and these bursts end it within the second either way.)
#[test]
fn a_broker_that_closes_and_then_drains_a_trickle_cannot_hold_the_connection_open() {
    let broker = FakeBroker::bind_with_receive_buffer(8 * 1024);
    let port = broker.port();
    let (published_tx, published_rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let fake = std::thread::spawn(move || {
        let mut peer = broker.accept_and_handshake(0, 131_072);
        peer.open_channel(1);
        published_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the publish returned");
        peer.send_connection_close(320, "CONNECTION_FORCED - go away");
        let started = Instant::now();
        // Until the client is done, or at most as long as the trickle would take: 1.5 MiB
        // (enough for the client's blocked write to go on), then a pause of 0.8 s.
        let mut eof = false;
        while !eof && done_rx.try_recv().is_err() && started.elapsed() < Duration::from_secs(120) {
            let mut budget = 3 << 19;
            while !eof && budget > 0 {
                let n = peer.read_some(budget.min(64 * 1024));
                eof = n == 0;
                budget -= n.min(budget);
            }
            std::thread::sleep(Duration::from_millis(800));
        }
        started.elapsed()
    });
    let connection = Connection::open(client_params(port)).expect("open");
    let channel = connection.channel().expect("channel");
    for _ in 0..2 {
        channel
            .basic_publish("", "q", &vec![7u8; 3 << 20])
            .expect("the publish is queued");
    }
    published_tx.send(()).unwrap();
    let started = Instant::now();
    while !connection.is_closed() && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let closed_after = started.elapsed();
    drop(channel);
    drop(connection);
    let dropped_after = started.elapsed();
    done_tx.send(()).unwrap();
    let drained_for = join(fake);
    assert!(
        closed_after < Duration::from_secs(5) && dropped_after < Duration::from_secs(8),
        "the connection closed {closed_after:?} and was dropped {dropped_after:?} after the \
         broker's close (the peer drained for {drained_for:?})"
    );
}

/// A peer that sends requests needing a reply (here basic.cancel with nowait off, each
/// answered with a cancel-ok as long) and reads nothing: the client stops reading once a
/// megabyte of its replies waits unwritten, so the peer cannot make it queue replies without
/// bound, and its writes stall. The pause is the client's own doing: the peer's silence
/// meanwhile is no heartbeat timeout, and a call that times out meanwhile says why.
#[test]
fn a_peer_that_reads_none_of_our_replies_cannot_grow_them_without_bound() {
    use std::io::Write;
    const OFFERED: usize = 64 << 20;
    let (port, fake) = spawn_fake(|broker| {
        let mut peer = broker.accept_and_handshake(1, 131_072);
        peer.open_channel(1);
        let cancel = Peer::encode(&AMQPFrame::Method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                consumer_tag: "t".repeat(250).into(),
                nowait: false,
            })),
        ));
        let burst = cancel.repeat(1000);
        let stream = peer.stream();
        stream
            .set_write_timeout(Some(Duration::from_secs(1)))
            .expect("write timeout");
        // What the client takes before its reading stops (and the kernel's buffers fill).
        let mut sent = 0;
        while sent < OFFERED && stream.write_all(&burst).is_ok() {
            sent += burst.len();
        }
        // Kept open (and still not reading) until the test is done.
        (sent, peer)
    });
    let connection = Connection::open(client_params(port)).expect("open");
    let channel = connection.channel().expect("channel");
    let (sent, peer) = join(fake);
    assert!(
        sent < OFFERED,
        "the client read all {OFFERED} bytes of requests whose replies nobody read"
    );
    // Three heartbeat intervals of the peer's silence while reading is paused.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        connection.is_open(),
        "the connection ended: {:?}",
        connection.close_reason()
    );
    // A call meanwhile times out, saying why its reply cannot be read.
    match channel.queue_declare("q", Default::default()) {
        Err(Error::Timeout { context, .. }) => assert!(
            context.contains("reading was paused: the broker does not read"),
            "{context}"
        ),
        other => panic!("expected a timeout, got {other:?}"),
    }
    drop(peer);
    drop(channel);
    drop(connection);
}

/// A peer that stops reading while megabytes of publishes wait to go out (the outbound
/// buffer past its high-water mark, a publishing thread waiting for room): dropping another
/// channel returns at once, without waiting for room for its channel.close, and that close
/// reaches the peer once it reads again.
#[test]
fn dropping_a_channel_does_not_wait_for_a_peer_that_reads_nothing() {
    let broker = FakeBroker::bind_with_receive_buffer(8 * 1024);
    let port = broker.port();
    let (dropped_tx, dropped_rx) = std::sync::mpsc::channel::<()>();
    let fake = std::thread::spawn(move || {
        let mut peer = broker.accept_and_handshake(0, 131_072);
        peer.open_channel(1);
        peer.open_channel(2);
        dropped_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the client dropped its channel");
        while let Some(frame) = peer.read_frame() {
            if matches!(
                frame,
                AMQPFrame::Method(2, AMQPClass::Channel(channel::AMQPMethod::Close(_)))
            ) {
                return true;
            }
        }
        false
    });
    let connection =
        Connection::open(client_params(port).with_rpc_timeout(Duration::from_secs(10)))
            .expect("open");
    let publisher = connection.channel().expect("channel 1");
    let other = connection.channel().expect("channel 2");
    // 60 MiB: far more than the socket and the outbound buffer's high-water mark take (15 MiB
    // was sometimes all taken on a loaded machine), so the publishing thread ends up waiting
    // for room.
    let publishing = std::thread::spawn(move || {
        for _ in 0..20 {
            publisher.basic_publish("", "q", &vec![7u8; 3 << 20])?;
        }
        Ok::<(), cottontail::Error>(())
    });
    std::thread::sleep(Duration::from_secs(2));
    if publishing.is_finished() {
        panic!(
            "the publisher should be waiting for room while the peer reads nothing; it \
             ended with {:?}",
            publishing.join()
        );
    }
    let started = Instant::now();
    drop(other);
    let took = started.elapsed();
    dropped_tx.send(()).unwrap();
    let closed = join(fake);
    let _ = publishing.join();
    assert!(
        took < Duration::from_millis(500),
        "dropping a channel took {took:?} while the peer read nothing"
    );
    assert!(
        closed,
        "the dropped channel's channel.close never reached the peer"
    );
}

/// A broker that, after our connection.close, still sends methods that would need a reply (a
/// channel.close, a channel.flow) before its close-ok: AMQP says they are discarded, so the
/// client sends nothing on a channel after its connection.close, and the close completes.
#[test]
fn nothing_follows_our_connection_close_but_the_close_itself() {
    let (port, fake) = spawn_fake(|broker| {
        let mut peer = broker.accept_and_handshake(0, 131_072);
        peer.open_channel(1);
        match peer.expect_method() {
            (0, AMQPClass::Connection(connection::AMQPMethod::Close(_))) => {}
            other => panic!("expected connection.close, got {other:?}"),
        }
        peer.send_method(
            1,
            AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                reply_code: 404,
                reply_text: "NOT_FOUND - late".into(),
                class_id: 0,
                method_id: 0,
            })),
        );
        peer.send_method(
            1,
            AMQPClass::Channel(channel::AMQPMethod::Flow(channel::Flow { active: false })),
        );
        peer.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
        );
        peer.drain()
    });
    let connection = Connection::open(client_params(port)).expect("open");
    let _channel = connection.channel().expect("channel");
    connection.close().expect("the close-ok came");
    let after_close = join(fake);
    let on_channels: Vec<_> = after_close
        .iter()
        .filter(|f| matches!(f, AMQPFrame::Method(ch, _) if *ch != 0))
        .collect();
    assert!(
        on_channels.is_empty(),
        "sent after connection.close: {on_channels:?}"
    );
}

/// A connection.close-ok the client never asked for (it sent no connection.close) is the
/// peer's protocol error, not a close by the application: the waiting call gets
/// `Error::Protocol` 503, and the connection's close reason is not "closed by the client".
#[test]
fn an_unasked_connection_close_ok_is_a_protocol_error_not_a_client_close() {
    let (port, fake) = spawn_fake(|broker| {
        let mut peer = broker.accept_and_handshake(0, 131_072);
        peer.open_channel(1);
        peer.expect_qos(1);
        peer.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
        );
        peer.drain()
    });
    let connection = Connection::open(client_params(port)).expect("open");
    let channel = connection.channel().expect("channel");
    let result = channel.basic_qos(Default::default());
    let reason = protocol_reason(result, 503);
    assert!(reason.contains("close-ok"), "{reason}");
    let closed = connection.close_reason();
    assert!(
        !closed.as_ref().is_some_and(Error::is_closed_by_client),
        "{closed:?}"
    );
    join(fake);
}

/// An update-secret that timed out is answered late, while the next update-secret waits: that
/// late ok is the first call's, so the second call does not take it for its own (here the
/// broker then refuses the second secret and closes the connection with 530).
#[test]
fn a_late_update_secret_ok_is_not_taken_for_the_next_calls() {
    let update_secret = |peer: &mut Peer| match peer.expect_method() {
        (0, AMQPClass::Connection(connection::AMQPMethod::UpdateSecret(_))) => {}
        other => panic!("expected connection.update-secret, got {other:?}"),
    };
    let (port, fake) = spawn_fake(move |broker| {
        let mut peer = broker.accept_and_handshake(0, 131_072);
        update_secret(&mut peer);
        update_secret(&mut peer);
        peer.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::UpdateSecretOk(
                connection::UpdateSecretOk {},
            )),
        );
        std::thread::sleep(Duration::from_millis(300));
        peer.send_connection_close(530, "NOT_ALLOWED - new secret refused");
        peer.drain()
    });
    let connection = Connection::open(client_params(port)).expect("open");
    let first = connection.update_secret("first", "rotation");
    assert!(matches!(first, Err(Error::Timeout { .. })), "{first:?}");
    let second = connection.update_secret("second", "rotation");
    assert!(
        matches!(
            second,
            Err(Error::ConnectionClosed {
                reply_code: 530,
                ..
            })
        ),
        "the second update_secret took the first one's late ok: {second:?}"
    );
    join(fake);
}

/// Two threads update the secret at once; the broker answers the first and refuses the
/// second (530): exactly one call succeeds and the other gets the refusal. One update-secret-ok
/// answers one call, the oldest (before, both calls returned `Ok` on the one answer).
#[test]
fn concurrent_update_secrets_each_wait_for_their_own_answer() {
    let (port, fake) = spawn_fake(|broker| {
        let mut peer = broker.accept_and_handshake(0, 131_072);
        for _ in 0..2 {
            match peer.expect_method() {
                (0, AMQPClass::Connection(connection::AMQPMethod::UpdateSecret(_))) => {}
                other => panic!("expected connection.update-secret, got {other:?}"),
            }
        }
        peer.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::UpdateSecretOk(
                connection::UpdateSecretOk {},
            )),
        );
        std::thread::sleep(Duration::from_millis(500));
        peer.send_connection_close(530, "NOT_ALLOWED - second secret refused");
        peer.drain()
    });
    let connection = Connection::open(client_params(port)).expect("open");
    let start = std::sync::Barrier::new(2);
    let results: Vec<_> = std::thread::scope(|s| {
        let calls: Vec<_> = ["one", "two"]
            .into_iter()
            .map(|secret| {
                let (connection, start) = (&connection, &start);
                s.spawn(move || {
                    start.wait();
                    connection.update_secret(secret, "rotation")
                })
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    join(fake);
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let refused = results
        .iter()
        .filter(|r| {
            matches!(
                r,
                Err(Error::ConnectionClosed {
                    reply_code: 530,
                    ..
                })
            )
        })
        .count();
    assert_eq!((ok, refused), (1, 1), "{results:?}");
}

/// A flood of broker cancels for tags nobody has, then the cancel of a real consumer, all in
/// one burst: the real one is not crowded out, and the consumer's iterator ends.
#[test]
fn a_flood_of_unknown_cancels_does_not_hide_a_real_one() {
    let (port, fake) = spawn_fake(|broker| {
        let mut peer = broker.accept_and_handshake(0, 131_072);
        peer.open_channel(1);
        let tag = match peer.expect_method() {
            (1, AMQPClass::Basic(basic::AMQPMethod::Consume(c))) => c.consumer_tag.to_string(),
            other => panic!("expected basic.consume, got {other:?}"),
        };
        peer.send_method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                consumer_tag: tag.as_str().into(),
            })),
        );
        let cancel = |tag: &str| {
            Peer::encode(&AMQPFrame::Method(
                1,
                AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                    consumer_tag: tag.into(),
                    nowait: true,
                })),
            ))
        };
        let mut burst: Vec<u8> = (0..1_500)
            .flat_map(|i| cancel(&format!("nobody-{i}")))
            .collect();
        burst.extend(cancel(&tag));
        peer.send_raw(&burst);
        peer.drain()
    });
    let connection = Connection::open(client_params(port)).expect("open");
    let channel = connection.channel().expect("channel");
    let consumer = channel
        .consume(
            "q",
            cottontail::ConsumeOptions {
                inactivity_timeout: Some(Duration::from_millis(200)),
                ..Default::default()
            },
        )
        .expect("consume");
    let started = Instant::now();
    let mut inactive = 0;
    for item in consumer {
        match item {
            Ok(cottontail::Consumed::Inactive) => inactive += 1,
            other => panic!("only inactivity before the end, got {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the iterator did not end after the broker cancelled its consumer ({inactive} \
             inactivity timeouts)"
        );
    }
    drop(channel);
    drop(connection);
    join(fake);
}

/// A reply of the wrong kind (a basic.get-ok with a message, and a consume-ok, while a
/// queue.declare waits) is the peer's protocol error: the call gets `Error::Protocol` 503, the
/// client closes the connection with 503 (so the broker requeues what it sent), instead of
/// handing a wrong reply to the caller on a connection left open.
#[test]
fn a_reply_that_does_not_answer_the_request_ends_the_connection_with_503() {
    for wrong_get_ok in [true, false] {
        let (port, fake) = spawn_fake(move |broker| {
            let mut peer = broker.accept_and_handshake(0, 131_072);
            peer.open_channel(1);
            peer.expect_queue_declare(1);
            if wrong_get_ok {
                let mut bytes = Peer::get_ok_and_header(1, 1, 2);
                bytes.extend(Peer::encode(&AMQPFrame::Body(1, b"hi".to_vec())));
                peer.send_raw(&bytes);
            } else {
                peer.send_method(
                    1,
                    AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                        consumer_tag: "stray".into(),
                    })),
                );
            }
            peer.drain()
        });
        let connection = Connection::open(client_params(port)).expect("open");
        let channel = connection.channel().expect("channel");
        let declared = channel.queue_declare("q", Default::default());
        let reason = protocol_reason(declared, 503);
        assert!(reason.contains("does not answer"), "{reason}");
        assert!(!connection.is_open());
        let frames = join(fake);
        assert_eq!(
            fake_broker::connection_close_code(&frames),
            Some(503),
            "the client's connection.close (wrong get-ok: {wrong_get_ok})"
        );
    }
}

/// A consume-ok or cancel-ok naming a consumer tag other than the one asked for is the
/// peer's protocol error too (AMQP 0-9-1 echoes the client's tag; cottontail always names
/// one): 503, the connection closed, so the broker requeues what it sent for that tag instead
/// of leaving it unacked for a consumer the client does not know.
#[test]
fn a_consume_ok_or_cancel_ok_for_another_tag_ends_the_connection_with_503() {
    for cancel in [false, true] {
        let (port, fake) = spawn_fake(move |broker| {
            let mut peer = broker.accept_and_handshake(0, 131_072);
            peer.open_channel(1);
            let tag = match peer.expect_method() {
                (1, AMQPClass::Basic(basic::AMQPMethod::Consume(c))) => c.consumer_tag,
                other => panic!("expected basic.consume, got {other:?}"),
            };
            let reply = |consumer_tag: &str| {
                AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                    consumer_tag: consumer_tag.into(),
                }))
            };
            if !cancel {
                peer.send_method(1, reply("not-the-one-asked-for"));
                return peer.drain();
            }
            peer.send_method(1, reply(tag.as_str()));
            match peer.expect_method() {
                (1, AMQPClass::Basic(basic::AMQPMethod::Cancel(_))) => {}
                other => panic!("expected basic.cancel, got {other:?}"),
            }
            peer.send_method(
                1,
                AMQPClass::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                    consumer_tag: "not-the-one-asked-for".into(),
                })),
            );
            peer.drain()
        });
        let connection = Connection::open(client_params(port)).expect("open");
        let channel = connection.channel().expect("channel");
        let consumed = channel.basic_consume("q", |_, _, _, _| {}, Default::default());
        let result = match cancel {
            false => consumed.map(drop),
            true => channel.basic_cancel(&consumed.expect("consume")).map(drop),
        };
        let reason = protocol_reason(result, 503);
        assert!(
            reason.contains("names consumer tag \"not-the-one-asked-for\""),
            "{reason}"
        );
        assert!(!connection.is_open());
        let frames = join(fake);
        assert_eq!(
            fake_broker::connection_close_code(&frames),
            Some(503),
            "the client's connection.close (cancel: {cancel})"
        );
    }
}

/// A late consume-ok (its `basic_consume` timed out) is checked like a timely one: one that
/// names another consumer (here a live one of the same channel) is a protocol error (503),
/// never taken as a reason to cancel that other consumer at the broker.
#[test]
fn a_late_consume_ok_naming_a_live_consumer_is_a_protocol_error_not_its_cancel() {
    let (port, fake) = spawn_fake(|broker| {
        let mut peer = broker.accept_and_handshake(0, 131_072);
        peer.open_channel(1);
        let live = match peer.expect_method() {
            (1, AMQPClass::Basic(basic::AMQPMethod::Consume(c))) => c.consumer_tag,
            other => panic!("expected basic.consume, got {other:?}"),
        };
        let consume_ok = |tag: &amq_protocol::types::ShortString| {
            AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                consumer_tag: tag.clone(),
            }))
        };
        peer.send_method(1, consume_ok(&live));
        match peer.expect_method() {
            (1, AMQPClass::Basic(basic::AMQPMethod::Consume(_))) => {}
            other => panic!("expected basic.consume, got {other:?}"),
        }
        // Past the client's rpc_timeout, a consume-ok naming the first consumer.
        std::thread::sleep(Duration::from_millis(2_500));
        peer.send_method(1, consume_ok(&live));
        (live.to_string(), peer.drain())
    });
    let connection = Connection::open(client_params(port)).expect("open");
    let channel = connection.channel().expect("channel");
    channel
        .basic_consume("q", |_, _, _, _| {}, Default::default())
        .unwrap();
    let timed_out = channel.basic_consume("q", |_, _, _, _| {}, Default::default());
    assert!(
        matches!(timed_out, Err(Error::Timeout { .. })),
        "{timed_out:?}"
    );
    let (live, frames) = join(fake);
    assert_eq!(
        fake_broker::connection_close_code(&frames),
        Some(503),
        "the client's connection.close"
    );
    let cancels: Vec<String> = frames
        .iter()
        .filter_map(|f| match f {
            AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::Cancel(c))) => {
                Some(c.consumer_tag.to_string())
            }
            _ => None,
        })
        .collect();
    assert!(
        !cancels.contains(&live),
        "the live consumer {live} was cancelled: {cancels:?}"
    );
    // Closed once the close it sent is answered or given up on (the fake answers none).
    let deadline = Instant::now() + Duration::from_secs(5);
    while connection.close_reason().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let reason = connection.close_reason();
    assert!(
        matches!(
            reason,
            Some(Error::Protocol {
                reply_code: 503,
                ..
            })
        ),
        "{reason:?}"
    );
}

/// The broker answers in order, also while the client closes the channel: a `basic_get` and a
/// `queue_declare` timed out, then `close()`; the late get-ok (arriving while the channel
/// closes) still answers the get, so the late declare-ok behind it answers the declare and
/// the connection stays open (RabbitMQ's own order, not a protocol error).
#[test]
fn a_late_get_ok_while_the_channel_closes_still_answers_its_get() {
    use amq_protocol::protocol::queue;
    let (port, fake) = spawn_fake(|broker| {
        let mut peer = broker.accept_and_handshake(0, 131_072);
        peer.open_channel(1);
        peer.expect_get(1);
        peer.expect_queue_declare(1);
        match peer.expect_method() {
            (1, AMQPClass::Channel(channel::AMQPMethod::Close(_))) => {}
            other => panic!("expected channel.close, got {other:?}"),
        }
        let mut bytes = Peer::get_ok_and_header(1, 1, 2);
        bytes.extend(Peer::encode(&AMQPFrame::Body(1, b"hi".to_vec())));
        bytes.extend(Peer::encode(&AMQPFrame::Method(
            1,
            AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                queue: "q".into(),
                message_count: 0,
                consumer_count: 0,
            })),
        )));
        bytes.extend(Peer::encode(&AMQPFrame::Method(
            1,
            AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
        )));
        peer.send_raw(&bytes);
        peer.drain()
    });
    let connection = Connection::open(client_params(port)).expect("open");
    let channel = connection.channel().expect("channel");
    let got = channel.basic_get("q", false);
    assert!(matches!(got, Err(Error::Timeout { .. })), "{got:?}");
    let declared = channel.queue_declare("q", Default::default());
    assert!(
        matches!(declared, Err(Error::Timeout { .. })),
        "{declared:?}"
    );
    channel.close().expect("close");
    // The declare-ok was read behind the close-ok, or is being read: give it a moment.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        connection.is_open(),
        "the connection closed: {:?}",
        connection.close_reason()
    );
    drop(channel);
    drop(connection);
    assert_ne!(fake_broker::connection_close_code(&join(fake)), Some(503));
}
