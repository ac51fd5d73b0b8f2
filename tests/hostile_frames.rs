//! Frames and volumes a real RabbitMQ will not send, played by the scripted fake broker (see
//! `faults.rs` and `hostile_peer.rs` for the others): a heartbeat with a payload, content on
//! channel 0, large messages started on many channels at once, and returned messages on many
//! channels at once, and methods crossing our channel.close. Each test checks the exact typed
//! error, or what the client keeps or sends.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{basic, channel, connection, AMQPClass};
use cottontail::Connection;

#[path = "support/fake_broker.rs"]
mod fake_broker;

use fake_broker::{client_params, join, protocol_reason, spawn_fake, Peer};

/// The connection is closed, and the client's connection.close to the fake carried `code`.
fn closed_with(connection: &Connection, fake: JoinHandle<Vec<AMQPFrame>>, code: u16) {
    assert!(!connection.is_open());
    assert_eq!(
        fake_broker::connection_close_code(&join(fake)),
        Some(code),
        "the client's connection.close"
    );
}

/// A heartbeat frame carrying a payload (AMQP's grammar gives it none; RabbitMQ refuses one)
/// is a frame error: the waiting call gets `Error::Protocol` 501 and the client closes the
/// connection with 501.
#[test]
fn a_heartbeat_with_a_payload_ends_the_connection_with_501() {
    let (port, fake) = spawn_fake(|broker| {
        let mut peer = broker.accept_and_handshake(0, 131_072);
        peer.open_channel(1);
        peer.expect_queue_declare(1);
        peer.send_raw(&[8, 0, 0, 0, 0, 0, 3, b'b', b'a', b'd', 0xCE]);
        peer.drain()
    });
    let connection = Connection::open(client_params(port)).expect("open");
    let channel = connection.channel().expect("channel");
    let reason = protocol_reason(channel.queue_declare("q", Default::default()), 501);
    assert!(
        reason.contains("heartbeat frame with a 3-byte payload"),
        "{reason}"
    );
    closed_with(&connection, fake, 501);
}

/// A basic.deliver on channel 0 (the connection's own) is 503 COMMAND_INVALID, as any other
/// non-connection method there is, whichever decoder read it; a content header there is 505
/// UNEXPECTED_FRAME (before, both said 504 "channel 0, which is not open").
#[test]
fn content_on_channel_0_is_refused() {
    for header_only in [false, true] {
        let (port, fake) = spawn_fake(move |broker| {
            let mut peer = broker.accept_and_handshake(0, 131_072);
            peer.open_channel(1);
            peer.expect_queue_declare(1);
            let frame = match header_only {
                false => AMQPFrame::Method(
                    0,
                    AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                        consumer_tag: "t".into(),
                        delivery_tag: 1,
                        redelivered: false,
                        exchange: "".into(),
                        routing_key: "q".into(),
                    })),
                ),
                true => AMQPFrame::Header(
                    0,
                    AMQPContentHeader {
                        class_id: 60,
                        body_size: 0,
                        properties: Default::default(),
                    },
                ),
            };
            peer.send_raw(&Peer::encode(&frame));
            peer.drain()
        });
        let connection = Connection::open(client_params(port)).expect("open");
        let channel = connection.channel().expect("channel");
        let code = if header_only { 505 } else { 503 };
        let reason = protocol_reason(channel.queue_declare("q", Default::default()), code);
        assert!(reason.contains("channel 0"), "{reason}");
        closed_with(&connection, fake, code);
    }
}

/// A peer that starts large messages on many channels and finishes none (RabbitMQ sends a
/// message's frames together): the bodies being received on all channels together may not
/// announce more than the largest body accepted, 512 MiB, so the third 200 MiB one ends the
/// connection with 501 FRAME_ERROR. Before, each channel could hold a message of up to
/// 512 MiB in progress (16 MiB reserved for each at its header), so 2,047 channels could hold
/// a terabyte, and the waiting call here timed out instead.
#[test]
fn messages_started_on_many_channels_are_bounded_together() {
    const ANNOUNCED: u64 = 200 << 20;
    let (port, fake) = spawn_fake(|broker| {
        let mut peer = broker.accept_and_handshake(0, 131_072);
        for channel in 1..=3 {
            peer.open_channel(channel);
        }
        peer.expect_queue_declare(1);
        for channel in 1..=3u16 {
            peer.send_raw(&Peer::encode(&AMQPFrame::Method(
                channel,
                AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
                    reply_code: 312,
                    reply_text: "NO_ROUTE".into(),
                    exchange: "".into(),
                    routing_key: "nowhere".into(),
                })),
            )));
            peer.send_raw(&Peer::encode(&AMQPFrame::Header(
                channel,
                AMQPContentHeader {
                    class_id: 60,
                    body_size: ANNOUNCED,
                    properties: Default::default(),
                },
            )));
            peer.send_raw(&Peer::encode(&AMQPFrame::Body(channel, vec![1; 1000])));
        }
        peer.drain()
    });
    let connection = Connection::open(client_params(port)).expect("open");
    let channels: Vec<_> = (0..3)
        .map(|_| connection.channel().expect("channel"))
        .collect();
    let reason = protocol_reason(channels[0].queue_declare("q", Default::default()), 501);
    assert!(
        reason.contains(&format!(
            "content of {ANNOUNCED} bytes announced on channel 3 while {} bytes",
            2 * ANNOUNCED
        )),
        "{reason}"
    );
    closed_with(&connection, fake, 501);
}

/// `rounds` returned 1 MiB messages on each of `channels` (1, 2, ...), as one burst.
fn returns(channels: std::ops::RangeInclusive<u16>, rounds: usize) -> Vec<u8> {
    let body = vec![7u8; 1 << 20];
    let mut round = Vec::new();
    for channel in channels {
        round.extend(Peer::encode(&AMQPFrame::Method(
            channel,
            AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
                reply_code: 312,
                reply_text: "NO_ROUTE".into(),
                exchange: "".into(),
                routing_key: "nowhere".into(),
            })),
        )));
        round.extend(Peer::encode(&AMQPFrame::Header(
            channel,
            AMQPContentHeader {
                class_id: 60,
                body_size: body.len() as u64,
                properties: Default::default(),
            },
        )));
        for piece in body.chunks(131_072 - 8) {
            round.extend(Peer::encode(&AMQPFrame::Body(channel, piece.to_vec())));
        }
    }
    round.repeat(rounds)
}

/// Opens `count` channels on a connection to a fake broker that sends `burst` once they are
/// open; once it has all been read, registers a return callback on each channel and returns
/// how many returned messages each callback got.
fn returned_to_late_callbacks(count: u16, burst: Vec<u8>) -> Vec<usize> {
    let (port, fake) = spawn_fake(move |broker| {
        let mut peer = broker.accept_and_handshake(0, 131_072);
        for channel in 1..=count {
            peer.open_channel(channel);
        }
        peer.send_raw(&burst);
        peer
    });
    let connection = Connection::open(client_params(port)).expect("open");
    let channels: Vec<_> = (0..count)
        .map(|_| connection.channel().expect("channel"))
        .collect();
    let peer = join(fake);
    // The fake has written everything; the last of it may still be on its way in.
    std::thread::sleep(Duration::from_secs(2));
    let handed: Vec<_> = (0..count)
        .map(|_| std::sync::Arc::new(AtomicUsize::new(0)))
        .collect();
    for (channel, handed) in channels.iter().zip(&handed) {
        let handed = handed.clone();
        channel.add_on_return_callback(move |_, _, _, body| {
            assert_eq!(body.len(), 1 << 20);
            handed.fetch_add(1, Ordering::SeqCst);
        });
    }
    connection
        .process_data_events(Duration::ZERO)
        .expect("process_data_events");
    assert!(connection.is_open());
    drop(peer);
    handed.iter().map(|h| h.load(Ordering::SeqCst)).collect()
}

/// A peer that returns messages on every channel (here 1 MiB on each of 32 channels, 20
/// times; a real RabbitMQ returns only what was published): what the client keeps for return
/// callbacks is bounded for the whole connection, 64 MiB, not only per channel (16 MiB each:
/// 480 of them here before).
#[test]
fn returns_on_many_channels_are_kept_within_one_bound_for_the_connection() {
    let handed = returned_to_late_callbacks(32, returns(1..=32, 20));
    let total: usize = handed.iter().sum();
    assert!((16..=64).contains(&total), "{total} kept: {handed:?}");
    assert!(handed.iter().all(|&n| n <= 16), "{handed:?}");
}

/// One channel whose returns nobody handles fills its own 16 MiB; another channel's returns
/// that come after are still kept for its callback.
#[test]
fn a_channel_whose_returns_nobody_handles_does_not_crowd_out_another_channels() {
    let mut burst = returns(1..=1, 40);
    burst.extend(returns(2..=2, 3));
    let handed = returned_to_late_callbacks(2, burst);
    assert_eq!(handed[1], 3, "{handed:?}");
    assert!((1..=16).contains(&handed[0]), "{handed:?}");
}

/// A broker's basic.cancel (not nowait) and channel.flow that cross our channel.close are not
/// answered: AMQP has them discarded once we sent the close, and RabbitMQ, which forgets the
/// channel when it handles our close, would take a late cancel-ok or flow-ok on that number
/// for a frame on a channel that is not open (504, closing the connection). Before, both
/// were answered after the close.
#[test]
fn nothing_follows_our_channel_close_on_its_channel() {
    let (port, fake) = spawn_fake(|broker| {
        let mut peer = broker.accept_and_handshake(0, 131_072);
        peer.open_channel(1);
        let (number, close) = peer.expect_method();
        assert!(
            matches!(close, AMQPClass::Channel(channel::AMQPMethod::Close(_))),
            "{close:?}"
        );
        assert_eq!(number, 1);
        peer.send_method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                consumer_tag: "gone".into(),
                nowait: false,
            })),
        );
        peer.send_method(
            1,
            AMQPClass::Channel(channel::AMQPMethod::Flow(channel::Flow { active: false })),
        );
        peer.stream()
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let after: Vec<AMQPFrame> = std::iter::from_fn(|| peer.read_frame()).collect();
        peer.stream()
            .set_read_timeout(Some(Duration::from_secs(8)))
            .unwrap();
        peer.send_method(
            1,
            AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
        );
        peer.expect_method();
        peer.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
        );
        after
    });
    let connection = Connection::open(client_params(port)).expect("open");
    connection
        .channel()
        .expect("channel")
        .close()
        .expect("close");
    connection.close().expect("connection close");
    let after = join(fake);
    assert!(
        after.is_empty(),
        "sent on channel 1 after its channel.close: {after:?}"
    );
}
