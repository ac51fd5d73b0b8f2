//! Faults a real RabbitMQ will not produce, played by a scripted fake broker: oversized frames,
//! bad frame ends, frames on channels that were never opened, overlong bodies, garbage, a socket
//! cut mid-frame, silence (during the handshake and after it), a forced close while several
//! channels wait, and a cancel of an `RpcClient`'s direct reply-to consumer. Each test checks
//! the exact typed error and that nothing hangs.
//!
//! The fake broker (tests/support/fake_broker.rs) is a `TcpListener` on 127.0.0.1 driven by a
//! thread of the test; it gets the client through the handshake and channel.open, then
//! misbehaves as scripted.

use std::io::Write;
use std::time::{Duration, Instant};

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{basic, channel, connection, AMQPClass};
use cottontail::{CallOptions, Connection, Error, QosOptions, RpcClient};

#[path = "support/fake_broker.rs"]
mod fake_broker;

use fake_broker::{client_params, connection_close_code, join, spawn_fake, Peer};

fn must_fail<T>(result: cottontail::Result<T>, what: &str) -> Error {
    match result {
        Ok(_) => panic!("{what} succeeded; it must fail"),
        Err(e) => e,
    }
}

/// The generous bound every failure must arrive within.
const PROMPT: Duration = Duration::from_secs(5);

fn assert_prompt(started: Instant, what: &str) {
    let elapsed = started.elapsed();
    assert!(elapsed < PROMPT, "{what} took {elapsed:?}");
}

/// Checks that `err` is [`Error::Protocol`] with `reply_code`.
fn assert_protocol(err: &Error, reply_code: u16) {
    assert!(
        matches!(err, Error::Protocol { reply_code: code, .. } if *code == reply_code),
        "expected Error::Protocol {{ reply_code: {reply_code}, .. }}, got {err:?}"
    );
}

/// This process's resident set size, in bytes.
fn vm_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("reading /proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS in /proc/self/status");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmRSS value");
    kib * 1024
}

// ---------------------------------------------------------------------------------------------
// Frame-level violations
// ---------------------------------------------------------------------------------------------

#[test]
fn frame_larger_than_frame_max_closes_connection_with_frame_error() {
    let (port, fake) = spawn_fake(|broker| {
        let mut peer = broker.accept_and_handshake(0, 131_072);
        peer.open_channel(1);
        peer.expect_get(1);
        // A body frame header announcing 2 GiB, and nothing after it.
        peer.send_raw(&[3, 0, 1, 0x80, 0, 0, 0]);
        peer.drain()
    });
    let rss_before = vm_rss();
    let connection = Connection::open(client_params(port)).expect("open");
    let channel = connection.channel().expect("channel");
    let started = Instant::now();
    let err = must_fail(channel.basic_get("q", true), "basic.get");
    assert_prompt(started, "the frame error");
    assert_protocol(&err, 501);
    assert!(connection.is_closed());
    assert_protocol(&connection.close_reason().expect("a close reason"), 501);
    let growth = vm_rss().saturating_sub(rss_before);
    assert!(
        growth < 64 * 1024 * 1024,
        "resident memory grew by {growth} bytes after a 2 GiB frame header"
    );
    let frames = join(fake);
    if let Some(code) = connection_close_code(&frames) {
        assert_eq!(code, 501, "the client's connection.close");
    }
}

#[test]
fn bad_frame_end_octet_closes_connection_with_frame_error() {
    let (port, fake) = spawn_fake(|broker| {
        let mut peer = broker.accept_and_handshake(0, 131_072);
        peer.open_channel(1);
        peer.expect_qos(1);
        let mut frame = Peer::encode(&AMQPFrame::Method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})),
        ));
        *frame.last_mut().expect("non-empty frame") = 0x00;
        peer.send_raw(&frame);
        peer.drain()
    });
    let connection = Connection::open(client_params(port)).expect("open");
    let channel = connection.channel().expect("channel");
    let started = Instant::now();
    let err = must_fail(
        channel.basic_qos(QosOptions {
            prefetch_count: 1,
            ..Default::default()
        }),
        "basic.qos",
    );
    assert_prompt(started, "the frame error");
    assert_protocol(&err, 501);
    assert!(connection.is_closed());
    let frames = join(fake);
    if let Some(code) = connection_close_code(&frames) {
        assert_eq!(code, 501, "the client's connection.close");
    }
}

#[test]
fn frame_on_unopened_channel_closes_with_channel_error() {
    let (port, fake) = spawn_fake(|broker| {
        let mut peer = broker.accept_and_handshake(0, 131_072);
        peer.open_channel(1);
        peer.expect_qos(1);
        peer.send_method(
            9,
            AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})),
        );
        peer.drain()
    });
    let connection = Connection::open(client_params(port)).expect("open");
    let channel = connection.channel().expect("channel");
    let started = Instant::now();
    let err = must_fail(
        channel.basic_qos(QosOptions {
            prefetch_count: 1,
            ..Default::default()
        }),
        "basic.qos",
    );
    assert_prompt(started, "the channel error");
    assert_protocol(&err, 504);
    assert!(connection.is_closed());
    assert_protocol(&connection.close_reason().expect("a close reason"), 504);
    let frames = join(fake);
    if let Some(code) = connection_close_code(&frames) {
        assert_eq!(code, 504, "the client's connection.close");
    }
}

#[test]
fn body_longer_than_header_announces_is_a_frame_error() {
    let (port, fake) = spawn_fake(|broker| {
        let mut peer = broker.accept_and_handshake(0, 131_072);
        peer.open_channel(1);
        peer.expect_get(1);
        let mut bytes = Peer::get_ok_and_header(1, 1, 5);
        bytes.extend(Peer::encode(&AMQPFrame::Body(1, b"0123456789".to_vec())));
        peer.send_raw(&bytes);
        peer.drain()
    });
    let connection = Connection::open(client_params(port)).expect("open");
    let channel = connection.channel().expect("channel");
    let started = Instant::now();
    let err = must_fail(channel.basic_get("q", false), "basic.get");
    assert_prompt(started, "the frame error");
    assert_protocol(&err, 501);
    assert!(connection.is_closed());
    let frames = join(fake);
    if let Some(code) = connection_close_code(&frames) {
        assert_eq!(code, 501, "the client's connection.close");
    }
}

/// Sends 64 non-AMQP bytes starting with `first` after open, while basic.qos waits.
fn garbage_case(first: u8) {
    let (port, fake) = spawn_fake(move |broker| {
        let mut peer = broker.accept_and_handshake(0, 131_072);
        peer.open_channel(1);
        peer.expect_qos(1);
        // Deterministic pseudo-random bytes (xorshift), the first one chosen by the test.
        let mut state: u32 = 0x9E37_79B9 ^ u32::from(first);
        let mut garbage: Vec<u8> = (0..64)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                state as u8
            })
            .collect();
        garbage[0] = first;
        peer.send_raw(&garbage);
        peer.drain()
    });
    let connection = Connection::open(client_params(port)).expect("open");
    let channel = connection.channel().expect("channel");
    let started = Instant::now();
    let err = must_fail(
        channel.basic_qos(QosOptions {
            prefetch_count: 1,
            ..Default::default()
        }),
        "basic.qos",
    );
    assert_prompt(started, "the protocol error");
    assert!(
        matches!(err, Error::Protocol { .. }),
        "garbage starting with {first:#04x}: {err:?}"
    );
    assert_eq!(err.reply_code(), Some(501), "{err:?}");
    assert!(connection.is_closed());
    join(fake);
}

#[test]
fn garbage_bytes_close_the_connection() {
    // 'A' looks like the start of a protocol header; 0x07 is no frame type at all.
    garbage_case(b'A');
    garbage_case(0x07);
}

// ---------------------------------------------------------------------------------------------
// The socket goes away
// ---------------------------------------------------------------------------------------------

#[test]
fn peer_closing_socket_mid_frame_is_stream_lost() {
    let (port, fake) = spawn_fake(|broker| {
        let mut peer = broker.accept_and_handshake(0, 131_072);
        peer.open_channel(1);
        peer.expect_get(1);
        let frame = Peer::encode(&AMQPFrame::Method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::GetOk(basic::GetOk {
                delivery_tag: 1,
                redelivered: false,
                exchange: "some-exchange".into(),
                routing_key: "some-routing-key".into(),
                message_count: 0,
            })),
        ));
        // More than the 7-byte frame header, less than the frame.
        peer.send_raw(&frame[..frame.len() / 2]);
        std::thread::sleep(Duration::from_millis(50));
        peer.close();
    });
    let connection = Connection::open(client_params(port)).expect("open");
    let channel = connection.channel().expect("channel");
    let started = Instant::now();
    let err = must_fail(channel.basic_get("q", true), "basic.get");
    assert_prompt(started, "the lost stream");
    assert!(matches!(err, Error::StreamLost { .. }), "{err:?}");
    assert!(connection.is_closed());
    join(fake);
}

#[test]
fn a_reply_and_the_end_of_the_stream_together_end_the_next_call_at_once() {
    // The broker answers and closes the socket at once (qos-ok, then FIN): the read that takes
    // the reply stops short of the end of stream, and the next call must still read it
    // instead of waiting in its poll for a readiness that will not come again.
    let (port, fake) = spawn_fake(|broker| {
        let mut peer = broker.accept_and_handshake(0, 131_072);
        peer.open_channel(1);
        peer.expect_qos(1);
        // The client is waiting in its poll by now. Corked, the reply and the FIN leave in
        // one segment, so the readiness that wakes the client is the only one.
        std::thread::sleep(Duration::from_millis(100));
        socket2::SockRef::from(&*peer.stream())
            .set_tcp_cork(true)
            .expect("TCP_CORK");
        peer.send_raw(&Peer::encode(&AMQPFrame::Method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})),
        )));
        // FIN only: reading on, so what the client sends next draws no reset (a new
        // readiness of its own).
        peer.stream()
            .shutdown(std::net::Shutdown::Write)
            .expect("shutdown");
        peer.drain()
    });
    let connection = Connection::open(client_params(port)).expect("open");
    let channel = connection.channel().expect("channel");
    channel.basic_qos(QosOptions::default()).expect("basic.qos");
    let started = Instant::now();
    let err = must_fail(channel.basic_qos(QosOptions::default()), "basic.qos");
    let elapsed = started.elapsed();
    // Well inside client_params' 2 s rpc_timeout: the end of stream, not the timeout.
    assert!(
        elapsed < Duration::from_secs(1),
        "took {elapsed:?}: {err:?}"
    );
    assert!(matches!(err, Error::StreamLost { .. }), "{err:?}");
    join(fake);
}

// ---------------------------------------------------------------------------------------------
// Silence
// ---------------------------------------------------------------------------------------------

#[test]
fn peer_silent_after_start_makes_open_time_out() {
    let (port, fake) = spawn_fake(|broker| {
        let mut peer = broker.accept();
        peer.read_protocol_header();
        peer.send_start();
        peer.expect_start_ok();
        // Never answer; just wait for the client to give up.
        peer.drain()
    });
    let started = Instant::now();
    let err = must_fail(Connection::open(client_params(port)), "Connection::open");
    let elapsed = started.elapsed();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert!(
        elapsed < Duration::from_secs(3),
        "open gave up after {elapsed:?}"
    );
    let frames = join(fake);
    assert!(
        frames.iter().all(|f| matches!(f, AMQPFrame::Heartbeat)),
        "the client sent {frames:?} after start-ok"
    );
}

/// A socket closed right after start-ok is pika's "probable authentication failure" only
/// from a broker that does not announce `authentication_failure_close`: one that does (RabbitMQ)
/// refuses a login with connection.close 403, so its EOF is a lost stream, and
/// `connection_attempts` tries again (before, it was taken for a refusal and never retried).
#[test]
fn a_socket_closed_after_start_ok_is_retried_when_the_broker_closes_on_refusal() {
    for announces in [true, false] {
        let (port, fake) = spawn_fake(move |broker| {
            let mut peer = broker.accept();
            peer.read_protocol_header();
            if announces {
                peer.send_start_announcing(&["authentication_failure_close"]);
            } else {
                peer.send_start();
            }
            peer.expect_start_ok();
            peer.close();
            // A second attempt, if any, gets the whole handshake.
            let retried = broker
                .accept_within(Duration::from_secs(2))
                .map(|mut peer| {
                    peer.handshake(0, 131_072, &[]);
                    peer.drain();
                });
            retried.is_some()
        });
        let opened = Connection::open(
            client_params(port)
                .with_connection_attempts(2)
                .with_retry_delay(Duration::from_millis(50)),
        );
        if announces {
            let connection = opened.expect("the second attempt opens the connection");
            drop(connection);
            assert!(join(fake), "a second attempt was made");
        } else {
            let err = opened.map(|_| ()).unwrap_err();
            assert!(matches!(err, Error::AuthenticationFailed { .. }), "{err:?}");
            assert!(!join(fake), "a refused login is not retried");
        }
    }
}

#[test]
fn peer_that_never_sends_start_times_out() {
    let (port, fake) = spawn_fake(|broker| {
        let mut peer = broker.accept();
        peer.read_protocol_header();
        peer.drain()
    });
    let started = Instant::now();
    let err = must_fail(Connection::open(client_params(port)), "Connection::open");
    let elapsed = started.elapsed();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert!(
        elapsed < Duration::from_secs(3),
        "open gave up after {elapsed:?}"
    );
    join(fake);
}

#[test]
fn silent_peer_after_open_is_a_heartbeat_timeout() {
    let (port, fake) = spawn_fake(|broker| {
        let mut peer = broker.accept_and_handshake(1, 131_072);
        peer.open_channel(1);
        // Read (the client's heartbeats and its basic.qos) but never send anything.
        peer.drain()
    });
    let connection =
        Connection::open(client_params(port).with_rpc_timeout(Duration::from_secs(10)))
            .expect("open");
    assert_eq!(connection.heartbeat(), 1, "the broker's heartbeat is taken");
    let channel = connection.channel().expect("channel");
    let started = Instant::now();
    let waiter = std::thread::spawn(move || {
        channel.basic_qos(QosOptions {
            prefetch_count: 1,
            ..Default::default()
        })
    });
    let err = must_fail(join(waiter), "basic.qos");
    let elapsed = started.elapsed();
    assert!(matches!(err, Error::HeartbeatTimeout { .. }), "{err:?}");
    assert!(
        elapsed < Duration::from_secs(4),
        "the heartbeat timeout took {elapsed:?}"
    );
    assert!(connection.is_closed());
    let frames = join(fake);
    assert!(
        frames.iter().any(|f| matches!(f, AMQPFrame::Heartbeat)),
        "the client sent no heartbeat in 2 s of a 1 s interval: {frames:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// The broker closes the connection
// ---------------------------------------------------------------------------------------------

#[test]
fn broker_close_reaches_every_waiter() {
    let (port, fake) = spawn_fake(|broker| {
        let mut peer = broker.accept_and_handshake(0, 131_072);
        peer.open_channel(1);
        peer.open_channel(2);
        // Both channels' basic.qos, in whatever order the two threads sent them.
        let mut waiting = Vec::new();
        for _ in 0..2 {
            match peer.expect_method() {
                (ch, AMQPClass::Basic(basic::AMQPMethod::Qos(_))) => waiting.push(ch),
                other => panic!("fake broker: expected basic.qos, got {other:?}"),
            }
        }
        waiting.sort_unstable();
        assert_eq!(waiting, [1, 2]);
        peer.send_connection_close(320, "CONNECTION_FORCED - test");
        peer.drain()
    });
    let connection = Connection::open(client_params(port)).expect("open");
    let first = connection.channel().expect("channel 1");
    let second = connection.channel().expect("channel 2");
    assert_eq!((first.channel_number(), second.channel_number()), (1, 2));
    let started = Instant::now();
    let waiters: Vec<_> = [first, second]
        .into_iter()
        .map(|ch| {
            std::thread::spawn(move || {
                ch.basic_qos(QosOptions {
                    prefetch_count: 1,
                    ..Default::default()
                })
            })
        })
        .collect();
    for waiter in waiters {
        let err = must_fail(join(waiter), "basic.qos");
        match &err {
            Error::ConnectionClosed {
                reply_code: 320,
                reply_text,
                ..
            } => assert_eq!(reply_text, "CONNECTION_FORCED - test"),
            other => panic!("expected ConnectionClosed 320, got {other:?}"),
        }
    }
    assert_prompt(started, "the broker's close");
    assert!(connection.is_closed());
    let frames = join(fake);
    assert!(
        frames.iter().any(|f| matches!(
            f,
            AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)))
        )),
        "the client did not answer connection.close with close-ok: {frames:?}"
    );
}

/// A field table holding one array nested `depth` deep: 5 bytes a level, the most levels a
/// frame's bytes can buy.
fn deeply_nested_table(depth: usize) -> Vec<u8> {
    let mut array: Vec<u8> = 0u32.to_be_bytes().to_vec();
    for _ in 0..depth {
        let mut value = vec![b'A'];
        value.extend_from_slice(&array);
        array = (value.len() as u32).to_be_bytes().to_vec();
        array.extend_from_slice(&value);
    }
    let mut entry = vec![1u8, b'a', b'A'];
    entry.extend_from_slice(&array);
    let mut table = (entry.len() as u32).to_be_bytes().to_vec();
    table.extend_from_slice(&entry);
    table
}

fn raw_frame(frame_type: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![frame_type];
    frame.extend_from_slice(&channel.to_be_bytes());
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    frame.push(0xCE);
    frame
}

#[test]
fn deeply_nested_headers_in_a_full_frame_do_not_overflow_the_stack() {
    // The deepest nesting a 131072-byte frame can carry; parsing (or dropping) it recursively
    // needs hundreds of MiB of stack: without care the whole process aborts. cottontail
    // refuses it as a frame error.
    let depth = (131_072 - 8 - 14 - 7) / 5 - 2;
    let (port, fake) = spawn_fake(move |broker| {
        let mut peer = broker.accept_and_handshake(0, 131_072);
        peer.open_channel(1);
        peer.expect_get(1);
        let mut bytes = Peer::encode(&AMQPFrame::Method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::GetOk(basic::GetOk {
                delivery_tag: 1,
                redelivered: false,
                exchange: "".into(),
                routing_key: "q".into(),
                message_count: 0,
            })),
        ));
        let mut header = vec![0, 60, 0, 0];
        header.extend_from_slice(&2u64.to_be_bytes());
        header.extend_from_slice(&0x2000u16.to_be_bytes()); // headers only
        header.extend_from_slice(&deeply_nested_table(depth));
        assert!(header.len() + 8 <= 131_072, "{}", header.len());
        bytes.extend(raw_frame(2, 1, &header));
        bytes.extend(raw_frame(3, 1, b"ok"));
        peer.send_raw(&bytes);
        peer.drain()
    });
    let connection = Connection::open(client_params(port)).expect("open");
    let channel = connection.channel().expect("channel");
    let started = Instant::now();
    let err = must_fail(channel.basic_get("q", false), "basic.get");
    assert_prompt(started, "the frame error");
    assert_protocol(&err, 501);
    assert!(err.to_string().contains("nested"), "{err}");
    assert!(connection.is_closed());
    join(fake);
}

#[test]
fn headers_nested_within_the_limit_arrive() {
    let (port, fake) = spawn_fake(move |broker| {
        let mut peer = broker.accept_and_handshake(0, 131_072);
        peer.open_channel(1);
        peer.expect_get(1);
        let mut bytes = Peer::encode(&AMQPFrame::Method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::GetOk(basic::GetOk {
                delivery_tag: 1,
                redelivered: false,
                exchange: "".into(),
                // Many tag bytes ('A', 'F') that are not nesting: parsed like any other.
                routing_key: "AF".repeat(100).as_str().into(),
                message_count: 0,
            })),
        ));
        let mut header = vec![0, 60, 0, 0];
        header.extend_from_slice(&2u64.to_be_bytes());
        header.extend_from_slice(&0x2000u16.to_be_bytes());
        header.extend_from_slice(&deeply_nested_table(30));
        bytes.extend(raw_frame(2, 1, &header));
        bytes.extend(raw_frame(3, 1, b"ok"));
        peer.send_raw(&bytes);
        peer.drain()
    });
    let connection = Connection::open(client_params(port)).expect("open");
    let channel = connection.channel().expect("channel");
    let message = channel
        .basic_get("q", false)
        .expect("basic.get")
        .expect("a message");
    assert_eq!(message.body, b"ok");
    assert_eq!(message.method.routing_key.as_str(), "AF".repeat(100));
    assert!(message.properties.headers().is_some());
    drop(channel);
    drop(connection);
    join(fake);
}

#[test]
fn deeply_nested_server_properties_do_not_overflow_the_stack() {
    let depth = (131_072 - 8 - 200) / 5;
    let (port, fake) = spawn_fake(move |broker| {
        let mut peer = broker.accept();
        peer.read_protocol_header();
        // connection.start by hand: class 10, method 10, version 0-9, then the table.
        let mut start = vec![0, 10, 0, 10, 0, 9];
        start.extend_from_slice(&deeply_nested_table(depth));
        for text in [&b"PLAIN"[..], b"en_US"] {
            start.extend_from_slice(&(text.len() as u32).to_be_bytes());
            start.extend_from_slice(text);
        }
        peer.send_raw(&raw_frame(1, 0, &start));
        peer.drain();
    });
    let err = must_fail(Connection::open(client_params(port)), "open");
    assert_protocol(&err, 501);
    join(fake);
}

#[test]
fn a_flood_of_empty_deliveries_nobody_consumes_stops_reading_with_bounded_memory() {
    // 0-byte messages cost nothing in body bytes; back-pressure must count them anyway.
    const OFFERED: usize = 400_000;
    let (port, fake) = spawn_fake(|broker| {
        let mut peer = broker.accept_and_handshake(0, 131_072);
        peer.open_channel(1);
        let tag = match peer.expect_method() {
            (1, AMQPClass::Basic(basic::AMQPMethod::Consume(consume))) => consume.consumer_tag,
            other => panic!("fake broker: expected basic.consume, got {other:?}"),
        };
        peer.send_method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                consumer_tag: tag.clone(),
            })),
        );
        let mut one = Peer::encode(&AMQPFrame::Method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                consumer_tag: tag,
                delivery_tag: 1,
                redelivered: false,
                exchange: "".into(),
                routing_key: "q".into(),
            })),
        ));
        one.extend(Peer::encode(&AMQPFrame::Header(
            1,
            AMQPContentHeader {
                class_id: 60,
                body_size: 0,
                properties: amq_protocol::protocol::BasicProperties::default(),
            },
        )));
        let burst: Vec<u8> = one.repeat(1000);
        let stream = peer.stream();
        stream
            .set_write_timeout(Some(Duration::from_secs(1)))
            .expect("write timeout");
        // Count what the client lets through before its reading stops.
        let mut sent = 0;
        while sent < OFFERED && stream.write_all(&burst).is_ok() {
            sent += 1000;
        }
        sent
    });
    let connection = Connection::open(client_params(port)).expect("open");
    let channel = connection.channel().expect("channel");
    let before = vm_rss();
    channel
        .basic_consume("q", |_, _, _, _| {}, Default::default())
        .expect("basic.consume");
    let sent = join(fake);
    assert!(
        sent < OFFERED,
        "the client kept reading all {OFFERED} deliveries nobody consumed"
    );
    let grown = vm_rss().saturating_sub(before);
    assert!(grown < 64 * 1024 * 1024, "memory grew by {grown} bytes");
    assert!(connection.is_open());
}

// ---------------------------------------------------------------------------------------------
// The broker cancels an RpcClient's reply consumer
// ---------------------------------------------------------------------------------------------

/// RabbitMQ never cancels a direct reply-to consumer; a broker that does ends the client: the
/// waiting call fails at once with `ChannelClosedByClient` carrying reply code 0, the code
/// `Channel::close()` sends (pika's default), and the client's channel is closed.
#[test]
fn a_cancelled_rpc_reply_consumer_fails_the_call_with_reply_code_0() {
    let (port, fake) = spawn_fake(|broker| {
        let mut peer = broker.accept_and_handshake(0, 131_072);
        peer.open_channel(1);
        let tag = match peer.expect_method() {
            (1, AMQPClass::Basic(basic::AMQPMethod::Consume(consume))) => {
                assert_eq!(consume.queue.as_str(), "amq.rabbitmq.reply-to");
                consume.consumer_tag
            }
            other => panic!("fake broker: expected basic.consume, got {other:?}"),
        };
        peer.send_method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                consumer_tag: tag.clone(),
            })),
        );
        // The call's request: method, header, body.
        loop {
            match peer.read_frame() {
                Some(AMQPFrame::Body(1, _)) => break,
                Some(_) => {}
                None => panic!("fake broker: no request came"),
            }
        }
        peer.send_method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                consumer_tag: tag,
                nowait: true,
            })),
        );
        // The client closes its channel; answer, then wait for the connection's close.
        loop {
            match peer.expect_method() {
                (1, AMQPClass::Channel(channel::AMQPMethod::Close(close))) => {
                    peer.send_method(
                        1,
                        AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                    );
                    break close.reply_code;
                }
                (_, AMQPClass::Connection(_)) => panic!("fake broker: the connection closed first"),
                _ => {}
            }
        }
    });
    let connection = Connection::open(client_params(port)).expect("open");
    let client = RpcClient::new(&connection).expect("RpcClient::new");
    let started = Instant::now();
    let e = must_fail(
        client.call(
            "",
            "requests",
            b"x",
            CallOptions {
                timeout: Some(Duration::from_secs(5)),
                ..Default::default()
            },
        ),
        "a call whose reply consumer is cancelled",
    );
    assert_prompt(started, "the cancelled reply consumer");
    assert!(
        matches!(e, Error::ChannelClosedByClient { reply_code: 0, .. }),
        "{e:?}"
    );
    assert!(!client.is_open());
    assert_eq!(join(fake), 0, "the client's channel.close reply code");
}
