//! Frames and volumes a real RabbitMQ will not send, played by the scripted fake broker (see
//! `faults.rs` and `hostile_peer.rs` for the others): a heartbeat with a payload, content on
//! channel 0, and returned messages on many channels at once. Each test checks the exact
//! typed error, or what the client keeps.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{basic, AMQPClass};
use cottontail::Connection;

#[path = "support/fake_broker.rs"]
mod fake_broker;

use fake_broker::{client_params, join, protocol_reason, spawn_fake, Peer};

/// A heartbeat frame carrying a payload (AMQP's grammar gives it none; RabbitMQ refuses one)
/// is a frame error: the waiting call gets `Error::Protocol` 501 and the client closes the
/// connection with 501.
#[test]
fn a_heartbeat_with_a_payload_ends_the_connection_with_501() {
    let (port, fake) = spawn_fake(|broker| {
        let mut peer = broker.accept_and_handshake(0, 131_072);
        peer.open_channel(1);
        match peer.expect_method() {
            (1, AMQPClass::Queue(_)) => {}
            other => panic!("expected queue.declare, got {other:?}"),
        }
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
    assert!(!connection.is_open());
    assert_eq!(
        fake_broker::connection_close_code(&join(fake)),
        Some(501),
        "the client's connection.close"
    );
}

/// A basic.deliver or a content header on channel 0 (the connection's own) is 503
/// COMMAND_INVALID, as any other non-connection method there is, whichever decoder read it
/// (before, the fast path's deliver and the header said 504 "channel 0, which is not open").
#[test]
fn content_on_channel_0_is_command_invalid() {
    use amq_protocol::frame::AMQPContentHeader;
    for header_only in [false, true] {
        let (port, fake) = spawn_fake(move |broker| {
            let mut peer = broker.accept_and_handshake(0, 131_072);
            peer.open_channel(1);
            match peer.expect_method() {
                (1, AMQPClass::Queue(_)) => {}
                other => panic!("expected queue.declare, got {other:?}"),
            }
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
        let reason = protocol_reason(channel.queue_declare("q", Default::default()), 503);
        assert!(reason.contains("channel 0"), "{reason}");
        assert_eq!(
            fake_broker::connection_close_code(&join(fake)),
            Some(503),
            "header only: {header_only}"
        );
    }
}

/// A peer that returns messages on every channel (here 1 MiB on each of 32 channels, 20
/// times; a real RabbitMQ returns only what was published): what the client keeps for return
/// callbacks is bounded for the whole connection, not per channel, so the callbacks
/// registered afterwards get at most 16 MiB of them (before: 16 MiB per channel, 512 here).
#[test]
fn returns_on_many_channels_are_kept_within_one_bound_for_the_connection() {
    const CHANNELS: u16 = 32;
    const ROUNDS: usize = 20;
    let (port, fake) = spawn_fake(|broker| {
        let mut peer = broker.accept_and_handshake(0, 131_072);
        for channel in 1..=CHANNELS {
            peer.open_channel(channel);
        }
        let body = vec![7u8; 1 << 20];
        let mut round = Vec::new();
        for channel in 1..=CHANNELS {
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
        for _ in 0..ROUNDS {
            peer.send_raw(&round);
        }
        peer
    });
    let connection = Connection::open(client_params(port)).expect("open");
    let channels: Vec<_> = (0..CHANNELS)
        .map(|_| connection.channel().expect("channel"))
        .collect();
    let peer = join(fake);
    // The fake has written everything; the last of it may still be on its way in.
    std::thread::sleep(Duration::from_secs(2));
    static HANDED: AtomicUsize = AtomicUsize::new(0);
    for channel in &channels {
        channel.add_on_return_callback(|_, _, _, body| {
            assert_eq!(body.len(), 1 << 20);
            HANDED.fetch_add(1, Ordering::SeqCst);
        });
    }
    connection
        .process_data_events(Duration::ZERO)
        .expect("process_data_events");
    let handed = HANDED.load(Ordering::SeqCst);
    assert!(
        (1..=16).contains(&handed),
        "{handed} returned 1 MiB messages were kept for the callbacks"
    );
    assert!(connection.is_open());
    drop(peer);
    drop(channels);
}
