//! What the broker sees of a consumer's acks now that cottontail merges consecutive single
//! acks (src/io/acks.rs): played against the scripted fake broker, which records every frame
//! the client writes and settles them the way RabbitMQ does (a multiple ack settles every
//! unsettled tag up to its own; naming a tag that is not unsettled is a channel error).
//!
//! Each test checks that the broker ends up with exactly the settlements the user asked for,
//! in the user's order, that merged acks reach the wire without further help from the user,
//! and that nothing hangs (every wait on either side is bounded).

use std::collections::BTreeSet;
use std::ops::RangeInclusive;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{basic, channel, connection, AMQPClass};
use amq_protocol::types::ShortString;
use cottontail::{Connection, ConsumeOptions, Consumed, Consumer, Delivery, RejectOptions};

#[path = "support/fake_broker.rs"]
mod fake_broker;

use fake_broker::{client_params, join, spawn_fake, Peer, FAKE_PATIENCE};

/// How long either side waits for the other's signal before failing the test.
const SIGNAL_PATIENCE: Duration = Duration::from_secs(5);

/// The bound within which held acks must reach the wire on their own (the library's is 5 ms;
/// this is a generous margin, not a timing measurement).
const ACK_PATIENCE: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------------
// The fake broker's side
// ---------------------------------------------------------------------------------------------

/// Handshake, channel.open on 1, then basic.consume answered with consume-ok (echoing the
/// client's tag). Returns the peer and the consumer tag.
fn open_consumer(broker: fake_broker::FakeBroker) -> (Peer, ShortString) {
    let mut peer = broker.accept_and_handshake(0, 131_072);
    peer.open_channel(1);
    let tag = match peer.expect_method() {
        (1, AMQPClass::Basic(basic::AMQPMethod::Consume(consume))) => {
            assert!(
                !consume.no_ack,
                "ConsumeOptions::default() must be manual-ack"
            );
            consume.consumer_tag
        }
        other => panic!("fake broker: expected basic.consume on 1, got {other:?}"),
    };
    peer.send_method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
            consumer_tag: tag.clone(),
        })),
    );
    (peer, tag)
}

/// The encoded deliveries `tags` (deliver, header, 1-frame body each), to be sent in one write.
fn deliveries(consumer_tag: &ShortString, tags: RangeInclusive<u64>) -> Vec<u8> {
    let mut bytes = Vec::new();
    for tag in tags {
        let body = format!("message {tag}").into_bytes();
        bytes.extend(Peer::encode(&AMQPFrame::Method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                consumer_tag: consumer_tag.clone(),
                delivery_tag: tag,
                redelivered: false,
                exchange: "".into(),
                routing_key: "q".into(),
            })),
        )));
        bytes.extend(Peer::encode(&AMQPFrame::Header(
            1,
            AMQPContentHeader {
                class_id: 60,
                body_size: body.len() as u64,
                properties: amq_protocol::protocol::BasicProperties::default(),
            },
        )));
        bytes.extend(Peer::encode(&AMQPFrame::Body(1, body)));
    }
    bytes
}

/// A settlement frame as the broker reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Settlement {
    Ack {
        tag: u64,
        multiple: bool,
    },
    Nack {
        tag: u64,
        multiple: bool,
        requeue: bool,
    },
    Reject {
        tag: u64,
        requeue: bool,
    },
}

impl Settlement {
    fn of(method: &AMQPClass) -> Option<Settlement> {
        match method {
            AMQPClass::Basic(basic::AMQPMethod::Ack(a)) => Some(Settlement::Ack {
                tag: a.delivery_tag,
                multiple: a.multiple,
            }),
            AMQPClass::Basic(basic::AMQPMethod::Nack(n)) => Some(Settlement::Nack {
                tag: n.delivery_tag,
                multiple: n.multiple,
                requeue: n.requeue,
            }),
            AMQPClass::Basic(basic::AMQPMethod::Reject(r)) => Some(Settlement::Reject {
                tag: r.delivery_tag,
                requeue: r.requeue,
            }),
            _ => None,
        }
    }

    fn tag_and_multiple(self) -> (u64, bool) {
        match self {
            Settlement::Ack { tag, multiple } | Settlement::Nack { tag, multiple, .. } => {
                (tag, multiple)
            }
            Settlement::Reject { tag, .. } => (tag, false),
        }
    }
}

/// Applies one settlement RabbitMQ-style: a multiple one settles every unsettled tag up to its
/// own (tag 0: all of them); every settlement must name a tag that is unsettled right now
/// (RabbitMQ closes the channel with 406 PRECONDITION_FAILED "unknown delivery tag" otherwise).
fn apply(unsettled: &mut BTreeSet<u64>, settlement: Settlement) {
    let (tag, multiple) = settlement.tag_and_multiple();
    if multiple && tag == 0 {
        unsettled.clear();
        return;
    }
    assert!(
        unsettled.contains(&tag),
        "{settlement:?} names tag {tag}, which is not unsettled (unsettled: {unsettled:?}); \
         RabbitMQ would close the channel with 406"
    );
    if multiple {
        unsettled.retain(|&t| t > tag);
    } else {
        unsettled.remove(&tag);
    }
}

/// Plays the broker until the client closes the connection: answers channel.close,
/// basic.cancel and connection.close; returns every method the client sent on the way (the
/// closes included), in order. Returns early if the client goes away or stays silent for
/// [`FAKE_PATIENCE`].
fn serve_until_closed(peer: &mut Peer) -> Vec<(u16, AMQPClass)> {
    let mut methods = Vec::new();
    while let Some(frame) = peer.read_frame() {
        let AMQPFrame::Method(ch, method) = frame else {
            continue;
        };
        methods.push((ch, method.clone()));
        match method {
            AMQPClass::Channel(channel::AMQPMethod::Close(_)) => peer.send_method(
                ch,
                AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
            ),
            AMQPClass::Basic(basic::AMQPMethod::Cancel(cancel)) => peer.send_method(
                ch,
                AMQPClass::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                    consumer_tag: cancel.consumer_tag,
                })),
            ),
            AMQPClass::Connection(connection::AMQPMethod::Close(_)) => {
                peer.send_method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
                );
                break;
            }
            _ => {}
        }
    }
    methods
}

/// The settlements among `methods`, all of which must be on channel 1.
fn settlements(methods: &[(u16, AMQPClass)]) -> Vec<Settlement> {
    methods
        .iter()
        .filter_map(|(ch, m)| {
            let s = Settlement::of(m)?;
            assert_eq!(*ch, 1, "{s:?} on channel {ch}");
            Some(s)
        })
        .collect()
}

/// Whether the client closed channel 1 and then the connection (in that order) among `methods`.
fn assert_closed_cleanly(methods: &[(u16, AMQPClass)]) {
    let channel_close = methods.iter().position(|(ch, m)| {
        *ch == 1 && matches!(m, AMQPClass::Channel(channel::AMQPMethod::Close(_)))
    });
    let connection_close = methods.iter().position(|(ch, m)| {
        *ch == 0 && matches!(m, AMQPClass::Connection(connection::AMQPMethod::Close(_)))
    });
    match (channel_close, connection_close) {
        (Some(a), Some(b)) => assert!(a < b, "connection.close before channel.close"),
        other => panic!("the client did not close channel and connection: {other:?}"),
    }
}

/// Reads frames until the settlements read settle `want` out of `1..=delivered`, each frame
/// within what is left of [`ACK_PATIENCE`] from now. Every frame must be a settlement on
/// channel 1. Returns the settlements read.
fn read_settlements_until(
    peer: &mut Peer,
    delivered: u64,
    want: &BTreeSet<u64>,
) -> Vec<Settlement> {
    let deadline = Instant::now() + ACK_PATIENCE;
    let mut unsettled: BTreeSet<u64> = (1..=delivered).collect();
    let mut read = Vec::new();
    loop {
        let settled: BTreeSet<u64> = (1..=delivered).filter(|t| !unsettled.contains(t)).collect();
        if &settled == want {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "held acks not written within {ACK_PATIENCE:?}: settled {settled:?}, read {read:?}"
        );
        peer.stream()
            .set_read_timeout(Some(left))
            .expect("read timeout");
        match peer.read_frame() {
            Some(AMQPFrame::Heartbeat) => {}
            Some(AMQPFrame::Method(1, method)) => {
                let s = Settlement::of(&method)
                    .unwrap_or_else(|| panic!("expected a settlement, got {method:?}"));
                apply(&mut unsettled, s);
                read.push(s);
            }
            Some(other) => panic!("expected a settlement on channel 1, got {other:?}"),
            None => panic!(
                "held acks not written within {ACK_PATIENCE:?} (or the client went away): \
                 settled {settled:?}, read {read:?}"
            ),
        }
    }
    peer.stream()
        .set_read_timeout(Some(FAKE_PATIENCE))
        .expect("read timeout");
    read
}

// ---------------------------------------------------------------------------------------------
// The client's side
// ---------------------------------------------------------------------------------------------

/// Waits (bounded) until `count` deliveries wait for the iterator.
fn wait_for_waiting(consumer: &Consumer, count: usize) {
    let deadline = Instant::now() + SIGNAL_PATIENCE;
    while consumer.waiting_message_count() != count {
        assert!(
            Instant::now() < deadline,
            "only {} of {count} deliveries arrived",
            consumer.waiting_message_count()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The iterator's next delivery, which must be there already (never blocks for long: the
/// deliveries are waiting, see [`wait_for_waiting`]).
fn next_delivery(consumer: &mut Consumer) -> Delivery {
    match consumer.next() {
        Some(Ok(Consumed::Delivery(d))) => d,
        other => panic!("expected a delivery, got {other:?}"),
    }
}

/// The fake broker's thread, returning the methods the client sent (see [`serve_until_closed`]).
type Recording = std::thread::JoinHandle<Vec<(u16, AMQPClass)>>;

/// A fake broker that delivers messages 1..=`n` to a consumer, then records what the client
/// sends until it closes; the client's connection, channel and consumer, once all `n`
/// messages wait in the client.
fn consuming_deliveries(n: u64) -> (Recording, Connection, cottontail::Channel, Consumer) {
    let (port, fake) = spawn_fake(move |broker| {
        let (mut peer, tag) = open_consumer(broker);
        peer.send_raw(&deliveries(&tag, 1..=n));
        serve_until_closed(&mut peer)
    });
    let connection = Connection::open(client_params(port)).expect("open");
    let channel = connection.channel().expect("channel");
    let consumer = consume(&channel);
    wait_for_waiting(&consumer, n as usize);
    (fake, connection, channel, consumer)
}

fn consume(channel: &cottontail::Channel) -> Consumer {
    channel
        .consume("q", ConsumeOptions::default())
        .expect("consume")
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// Acks 1..=100 but 37, in order, as fast as the iterator yields. The merged frames must
/// settle exactly what the user acked, never cover 37, and be few where merging is possible.
///
/// Note: a `basic.ack(multiple=true)` settles every unsettled tag at or below its own, so no
/// ack above 37 may be multiple while 37 is unsettled: acks 38..=100 can only go out one frame
/// each (63 frames). Merging can only shrink the run 1..=36.
#[test]
fn in_order_acks_reach_the_wire_merged_and_exact() {
    const N: u64 = 100;
    const SKIPPED: u64 = 37;
    let (fake, connection, channel, mut consumer) = consuming_deliveries(N);
    for expected in 1..=N {
        let delivery = next_delivery(&mut consumer);
        let tag = delivery.method.delivery_tag;
        assert_eq!(tag, expected, "deliveries out of order");
        assert_eq!(delivery.body, format!("message {tag}").into_bytes());
        if tag != SKIPPED {
            channel.basic_ack(tag, false).expect("basic_ack");
        }
    }
    channel.close().expect("channel.close");
    connection.close().expect("connection.close");
    drop(consumer);
    let methods = join(fake);
    assert_closed_cleanly(&methods);

    // Every settlement comes before channel.close.
    let close_at = methods
        .iter()
        .position(|(_, m)| matches!(m, AMQPClass::Channel(channel::AMQPMethod::Close(_))))
        .expect("channel.close");
    assert!(
        methods[close_at..]
            .iter()
            .all(|(_, m)| Settlement::of(m).is_none()),
        "a settlement after channel.close: {methods:?}"
    );

    let acks = settlements(&methods);
    let mut unsettled: BTreeSet<u64> = (1..=N).collect();
    for &s in &acks {
        assert!(
            matches!(s, Settlement::Ack { .. }),
            "only acks were asked for, got {s:?}"
        );
        apply(&mut unsettled, s);
        // (c) 37 is never covered, not even for a moment.
        assert!(
            unsettled.contains(&SKIPPED),
            "{s:?} settled {SKIPPED}, which the user never acked (frames: {acks:?})"
        );
    }
    // (a) Exactly what the user acked is settled.
    assert_eq!(unsettled, BTreeSet::from([SKIPPED]), "frames: {acks:?}");

    // (b) Few frames where merging is possible: the run 1..=36.
    let below: Vec<_> = acks
        .iter()
        .filter(|s| s.tag_and_multiple().0 < SKIPPED)
        .collect();
    assert!(
        below.len() <= 10,
        "{} frames for the 36 in-order acks below the gap: {below:?}",
        below.len()
    );
    // Above the gap every ack is necessarily its own single ack.
    let above: Vec<_> = acks
        .iter()
        .filter(|s| s.tag_and_multiple().0 > SKIPPED)
        .collect();
    assert_eq!(above.len() as u64, N - SKIPPED, "frames: {above:?}");
    assert!(
        above.iter().all(|s| matches!(
            s,
            Settlement::Ack {
                multiple: false,
                ..
            }
        )),
        "a multiple ack above {SKIPPED}: {above:?}"
    );
    assert!(
        acks.len() as u64 <= 10 + (N - SKIPPED),
        "{} ack frames for {} acks",
        acks.len(),
        N - 1
    );
}

/// With no gap, 100 in-order acks collapse into a handful of frames.
#[test]
fn in_order_acks_without_a_gap_collapse_into_few_frames() {
    const N: u64 = 100;
    let (fake, connection, channel, mut consumer) = consuming_deliveries(N);
    for expected in 1..=N {
        let tag = next_delivery(&mut consumer).method.delivery_tag;
        assert_eq!(tag, expected, "deliveries out of order");
        channel.basic_ack(tag, false).expect("basic_ack");
    }
    channel.close().expect("channel.close");
    connection.close().expect("connection.close");
    drop(consumer);
    let methods = join(fake);
    assert_closed_cleanly(&methods);
    let acks = settlements(&methods);
    let mut unsettled: BTreeSet<u64> = (1..=N).collect();
    for &s in &acks {
        assert!(matches!(s, Settlement::Ack { .. }), "got {s:?}");
        apply(&mut unsettled, s);
    }
    assert!(unsettled.is_empty(), "left unsettled: {unsettled:?}");
    assert!(acks.len() <= 10, "{} ack frames: {acks:?}", acks.len());
}

/// A single delivery, acked: nothing else is queued, so `basic.ack(1, multiple=false)` must
/// reach the broker without the client doing anything more.
#[test]
fn a_lone_ack_is_written_at_once() {
    let (client_acked, acked) = mpsc::channel::<()>();
    let (fake_saw, saw) = mpsc::channel::<()>();
    let (port, fake) = spawn_fake(move |broker| {
        let (mut peer, tag) = open_consumer(broker);
        peer.send_raw(&deliveries(&tag, 1..=1));
        acked
            .recv_timeout(SIGNAL_PATIENCE)
            .expect("the client never acked");
        peer.stream()
            .set_read_timeout(Some(ACK_PATIENCE))
            .expect("read timeout");
        let frame = peer.read_frame();
        let got = match &frame {
            Some(AMQPFrame::Method(1, method)) => Settlement::of(method),
            _ => None,
        };
        assert_eq!(
            got,
            Some(Settlement::Ack {
                tag: 1,
                multiple: false
            }),
            "within {ACK_PATIENCE:?} of the ack, the broker read {frame:?}"
        );
        peer.stream()
            .set_read_timeout(Some(FAKE_PATIENCE))
            .expect("read timeout");
        fake_saw.send(()).expect("signalling the client");
        serve_until_closed(&mut peer)
    });
    let connection = Connection::open(client_params(port)).expect("open");
    let channel = connection.channel().expect("channel");
    let mut consumer = consume(&channel);
    wait_for_waiting(&consumer, 1);
    let delivery = next_delivery(&mut consumer);
    assert_eq!(delivery.method.delivery_tag, 1);
    channel.basic_ack(1, false).expect("basic_ack");
    client_acked.send(()).expect("signalling the fake");
    // Nothing more until the fake has seen the ack (or given up).
    let verdict = saw.recv_timeout(SIGNAL_PATIENCE);
    let _ = channel.close();
    let _ = connection.close();
    drop(consumer);
    let methods = join(fake);
    verdict.expect("the fake never saw the ack");
    assert_closed_cleanly(&methods);
    assert_eq!(
        settlements(&methods),
        vec![],
        "settlements after the lone ack"
    );
}

/// Three acks held (seven deliveries still queued), then the client does nothing: the I/O
/// thread must write them on its own, settling exactly 1, 2 and 3.
#[test]
fn held_acks_are_written_within_the_deadline() {
    let (client_acked, acked) = mpsc::channel::<()>();
    let (fake_saw, saw) = mpsc::channel::<()>();
    let (port, fake) = spawn_fake(move |broker| {
        let (mut peer, tag) = open_consumer(broker);
        peer.send_raw(&deliveries(&tag, 1..=10));
        acked
            .recv_timeout(SIGNAL_PATIENCE)
            .expect("the client never acked");
        let read = read_settlements_until(&mut peer, 10, &BTreeSet::from([1, 2, 3]));
        fake_saw.send(()).expect("signalling the client");
        (read, serve_until_closed(&mut peer))
    });
    let connection = Connection::open(client_params(port)).expect("open");
    let channel = connection.channel().expect("channel");
    let mut consumer = consume(&channel);
    wait_for_waiting(&consumer, 10);
    for expected in 1..=3 {
        let tag = next_delivery(&mut consumer).method.delivery_tag;
        assert_eq!(tag, expected);
        channel.basic_ack(tag, false).expect("basic_ack");
    }
    client_acked.send(()).expect("signalling the fake");
    // Hands off until the fake has its verdict.
    let verdict = saw.recv_timeout(SIGNAL_PATIENCE);
    let _ = channel.close();
    let _ = connection.close();
    drop(consumer);
    let (read, methods) = join(fake);
    verdict.expect("the fake gave no verdict");
    assert!(
        read.len() <= 3,
        "acks 1..=3 took {} frames: {read:?}",
        read.len()
    );
    assert!(
        read.iter().all(|s| matches!(s, Settlement::Ack { .. })),
        "{read:?}"
    );
    assert_closed_cleanly(&methods);
    assert_eq!(
        settlements(&methods),
        vec![],
        "settlements after acks 1..=3 were written"
    );
}

/// Acks 1..=4 are held (more deliveries are queued); a reject of 5 must write them first, as
/// one `ack(4, multiple=true)`, then itself unchanged.
#[test]
fn other_frames_flush_the_run_first() {
    let (port, fake) = spawn_fake(|broker| {
        let (mut peer, tag) = open_consumer(broker);
        peer.send_raw(&deliveries(&tag, 1..=10));
        serve_until_closed(&mut peer)
    });
    let connection = Connection::open(client_params(port)).expect("open");
    let channel = connection.channel().expect("channel");
    let mut consumer = consume(&channel);
    wait_for_waiting(&consumer, 10);
    // Take five first, so the acks and the reject follow each other closely.
    let tags: Vec<u64> = (0..5)
        .map(|_| next_delivery(&mut consumer).method.delivery_tag)
        .collect();
    assert_eq!(tags, vec![1, 2, 3, 4, 5]);
    for tag in 1..=4 {
        channel.basic_ack(tag, false).expect("basic_ack");
    }
    channel
        .basic_reject(5, RejectOptions::default())
        .expect("basic_reject");
    channel.close().expect("channel.close");
    connection.close().expect("connection.close");
    drop(consumer);
    let methods = join(fake);
    assert_closed_cleanly(&methods);
    assert_eq!(
        settlements(&methods),
        vec![
            Settlement::Ack {
                tag: 4,
                multiple: true
            },
            Settlement::Reject {
                tag: 5,
                requeue: true
            },
        ]
    );
}
