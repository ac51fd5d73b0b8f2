//! Large publishes written by the publishing thread itself (outbound rule 2): against a real
//! RabbitMQ, several threads publishing large and small messages on one connection deliver
//! every body intact and in order; against a fake broker that reads nothing for a while, or
//! only a trickle, a large publish still returns (its rest is queued for the I/O thread) and
//! every frame reaches the broker whole, in order, with nothing of another channel inside a
//! message.

mod support;

#[path = "support/fake_broker.rs"]
mod fake_broker;

use std::sync::mpsc;
use std::time::Duration;

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{basic, connection, AMQPClass};
use cottontail::{Connection, QueueDeclareOptions};
use fake_broker::{client_params, join, FakeBroker, Peer, FAKE_PATIENCE};
use support::{connect, unique};

/// A body of `size` bytes that differs for every `seed`.
fn body_of(seed: u32, size: u32) -> Vec<u8> {
    (0..size)
        .map(|i| (i.wrapping_add(seed << 20).wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

#[test]
fn threads_publishing_large_and_small_messages_on_one_connection_deliver_every_body_intact() {
    const LARGE: u32 = 8;
    // More than a loopback socket buffers (4 MiB at most here), less than the 8 MiB a
    // caller writes directly at most: every large publish is finished by its caller.
    const SIZE: u32 = 6 << 20;
    const SMALL: u32 = 1_000;
    let connection = connect();
    let queues: Vec<String> = ["large-a", "large-b", "small"]
        .iter()
        .map(|name| unique(name))
        .collect();
    let setup = connection.channel().unwrap();
    for queue in &queues {
        setup
            .queue_declare(
                queue,
                QueueDeclareOptions {
                    auto_delete: false,
                    ..Default::default()
                },
            )
            .unwrap();
    }
    std::thread::scope(|scope| {
        for (n, queue) in queues[..2].iter().enumerate() {
            let channel = connection.channel().unwrap();
            scope.spawn(move || {
                for i in 0..LARGE {
                    // Not a whole number of frames: the last body frame is short.
                    let body = body_of(n as u32 * 1000 + i, SIZE + 1000 + i);
                    channel.basic_publish("", queue, &body).unwrap();
                }
            });
        }
        // Confirmed, so its publishes are a round trip apart and the large ones find the
        // quiet moments in which a caller writes (and finishes) its own message.
        let channel = connection.channel().unwrap();
        channel.confirm_delivery().unwrap();
        let queue = &queues[2];
        scope.spawn(move || {
            for i in 0..SMALL {
                channel
                    .basic_publish("", queue, i.to_string().as_bytes())
                    .unwrap();
            }
        });
    });
    let reader = connect();
    let reading = reader.channel().unwrap();
    for (n, queue) in queues.iter().enumerate() {
        let expected = if n < 2 { LARGE } else { SMALL };
        let mut held = 0;
        assert!(
            support::eventually(Duration::from_secs(20), || {
                held = support::message_count(&reader, queue);
                held == expected
            }),
            "{queue}: the broker holds {held} of {expected}"
        );
        for i in 0..expected {
            let got = reading
                .basic_get(queue, true)
                .unwrap()
                .unwrap_or_else(|| panic!("{queue}: message {i} missing"));
            if n < 2 {
                let body = body_of(n as u32 * 1000 + i, SIZE + 1000 + i);
                assert_eq!(got.body.len(), body.len(), "{queue}: message {i}");
                assert!(got.body == body, "{queue}: message {i} differs");
            } else {
                assert_eq!(got.body, i.to_string().as_bytes(), "{queue}: message {i}");
            }
        }
        reading.queue_delete(queue, Default::default()).unwrap();
    }
}

/// Messages as a broker reassembles them from frames: per channel, in order; panics if a frame
/// of another channel lands inside a message (outbound rule 1).
#[derive(Default)]
struct Reassembly {
    /// The channel whose message is being received, and its body so far and expected size.
    open: Option<(u16, Vec<u8>, u64)>,
    /// Finished messages: (channel, routing key, body).
    done: Vec<(u16, String, Vec<u8>)>,
    key: String,
}

impl Reassembly {
    fn feed(&mut self, frame: AMQPFrame) {
        if let Some((channel, _, _)) = &self.open {
            let other = match &frame {
                AMQPFrame::Method(c, _) | AMQPFrame::Header(c, ..) | AMQPFrame::Body(c, _) => {
                    *c != *channel
                }
                _ => false,
            };
            assert!(
                !other,
                "a frame of another channel inside channel {channel}'s message: {frame:?}"
            );
        }
        match frame {
            AMQPFrame::Method(_, AMQPClass::Basic(basic::AMQPMethod::Publish(p))) => {
                assert!(self.open.is_none(), "a publish inside a message");
                self.key = p.routing_key.to_string();
            }
            AMQPFrame::Header(channel, header) => {
                self.open = Some((channel, Vec::new(), header.body_size));
                self.finish_if_whole();
            }
            AMQPFrame::Body(channel, bytes) => {
                let (open, body, _) = self.open.as_mut().expect("a body frame outside a message");
                assert_eq!(*open, channel);
                body.extend_from_slice(&bytes);
                self.finish_if_whole();
            }
            AMQPFrame::Heartbeat => {}
            other => panic!("fake broker: unexpected frame {other:?}"),
        }
    }

    fn finish_if_whole(&mut self) {
        if let Some((channel, body, size)) = self.open.take() {
            if body.len() as u64 == size {
                self.done
                    .push((channel, std::mem::take(&mut self.key), body));
            } else {
                self.open = Some((channel, body, size));
            }
        }
    }

    fn bodies(&self, channel: u16) -> Vec<&[u8]> {
        self.done
            .iter()
            .filter(|(c, _, _)| *c == channel)
            .map(|(_, _, body)| body.as_slice())
            .collect()
    }
}

/// Reads the client's connection.close and answers close-ok.
fn answer_close(peer: &mut Peer) {
    match peer.expect_method() {
        (0, AMQPClass::Connection(connection::AMQPMethod::Close(_))) => {}
        other => panic!("fake broker: expected connection.close, got {other:?}"),
    }
    peer.send_method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
    );
}

#[test]
fn a_large_publish_returns_while_the_broker_reads_nothing_and_arrives_whole_after() {
    const SMALL: usize = 200;
    let big = body_of(7, 4 << 20);
    let expected_big = big.clone();
    let broker = FakeBroker::bind_with_receive_buffer(8 * 1024);
    let port = broker.port();
    let (returned_tx, returned_rx) = mpsc::channel::<()>();
    let fake = std::thread::spawn(move || {
        let mut peer = broker.accept_and_handshake(0, 131_072);
        peer.open_channel(1);
        peer.open_channel(2);
        // Nothing is read until the large publish has returned.
        returned_rx
            .recv_timeout(FAKE_PATIENCE)
            .expect("the 4 MiB publish did not return while the broker read nothing");
        let mut got = Reassembly::default();
        while got.bodies(1).len() < 2 || got.bodies(2).len() < SMALL {
            got.feed(peer.read_frame().expect("the client's frames"));
        }
        answer_close(&mut peer);
        got
    });
    let connection = Connection::open(client_params(port)).unwrap();
    let large = connection.channel().unwrap();
    let small = connection.channel().unwrap();
    let smalls = std::thread::spawn(move || {
        for i in 0..SMALL {
            small
                .basic_publish("", "small", i.to_string().as_bytes())
                .unwrap();
        }
        // Kept open: dropping it would send channel.close.
        small
    });
    large.basic_publish("", "large", &big).unwrap();
    returned_tx.send(()).unwrap();
    large.basic_publish("", "large", b"after").unwrap();
    let _small = smalls.join().unwrap();
    connection.close().unwrap();
    let got = join(fake);
    let bodies = got.bodies(1);
    assert_eq!(bodies.len(), 2);
    assert_eq!(bodies[0].len(), expected_big.len());
    assert!(
        bodies[0] == expected_big.as_slice(),
        "the large body differs"
    );
    assert_eq!(bodies[1], b"after");
    let smalls: Vec<&[u8]> = got.bodies(2);
    let expected: Vec<String> = (0..SMALL).map(|i| i.to_string()).collect();
    assert_eq!(
        smalls,
        expected.iter().map(|s| s.as_bytes()).collect::<Vec<_>>(),
        "the small messages, in order"
    );
}

#[test]
fn a_large_publish_to_a_broker_that_reads_a_trickle_returns_without_waiting_for_it() {
    // 8 MB: as large as a caller writes directly (64 frames of 128 KiB). The fake takes 1 KiB
    // every 2 ms (about 0.5 MB/s), so writing the whole message would take longer than the
    // fake's patience: the publish must hand the rest to the I/O thread and return. (What
    // ends the caller's own write here is the 10 ms without room: the kernel reports room
    // only once a third of the send buffer is free. `rpc_timeout` bounds it otherwise.)
    let big = body_of(11, 8_000_000);
    let expected_big = big.clone();
    let broker = FakeBroker::bind_with_receive_buffer(8 * 1024);
    let port = broker.port();
    let (returned_tx, returned_rx) = mpsc::channel::<Duration>();
    let fake = std::thread::spawn(move || {
        let mut peer = broker.accept_and_handshake(0, 131_072);
        peer.open_channel(1);
        let started = std::time::Instant::now();
        let took = loop {
            if let Ok(took) = returned_rx.try_recv() {
                break took;
            }
            assert!(
                started.elapsed() < FAKE_PATIENCE,
                "the publish did not return while the broker read a trickle"
            );
            peer.read_some(1024);
            std::thread::sleep(Duration::from_millis(2));
        };
        let mut got = Reassembly::default();
        while got.bodies(1).is_empty() {
            got.feed(peer.read_frame().expect("the client's frames"));
        }
        answer_close(&mut peer);
        (got, took)
    });
    let connection = Connection::open(client_params(port)).unwrap();
    let channel = connection.channel().unwrap();
    let started = std::time::Instant::now();
    channel.basic_publish("", "large", &big).unwrap();
    returned_tx.send(started.elapsed()).unwrap();
    connection.close().unwrap();
    let (got, took) = join(fake);
    println!("the publish returned after {took:?}");
    let bodies = got.bodies(1);
    assert_eq!(bodies.len(), 1);
    assert!(
        bodies[0] == expected_big.as_slice(),
        "the large body differs"
    );
}
