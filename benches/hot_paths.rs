//! Micro-benchmarks of cottontail's hot paths, through the public API against an in-process
//! fake broker (no RabbitMQ needed, so the numbers are the client's alone):
//!
//! - `publish_64b`: `basic_publish` of a 64-byte message: frame encoding (reused method and
//!   header frames), the body frame, queueing or the direct write.
//! - `ack`: `basic_ack` of one delivery tag: the ack template and its write.
//! - `consume_64b`: a delivery (method, header and body frames) from the socket to the
//!   `consume()` iterator: frame parsing, content assembly, routing and the hand-over.
//!
//! Run: `cargo bench --bench hot_paths`. The peers' side-by-side numbers against a real broker
//! are in BENCHMARKS.md (`examples/peer_bench.rs`).

#[path = "../tests/support/fake_broker.rs"]
mod fake_broker;

use std::io::Write;
use std::time::{Duration, Instant};

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{basic, AMQPClass};
use cottontail::{Connection, ConnectionParameters, ConsumeOptions, Consumed};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fake_broker::{spawn_fake, Peer};

/// Opens a connection and channel 1 against a fake that then runs `script`.
fn connect_to_fake(
    script: impl FnOnce(&mut Peer) + Send + 'static,
) -> (Connection, cottontail::Channel, std::thread::JoinHandle<()>) {
    let (port, fake) = spawn_fake(move |broker| {
        let mut peer = broker.accept_and_handshake(0, 131_072);
        peer.open_channel(1);
        script(&mut peer);
    });
    let connection = Connection::open(ConnectionParameters::new("127.0.0.1").with_port(port))
        .expect("connecting to the fake broker");
    let channel = connection.channel().expect("channel 1");
    (connection, channel, fake)
}

fn publish_and_ack(c: &mut Criterion) {
    // The fake reads and drops whatever the client sends.
    let (connection, channel, fake) = connect_to_fake(|peer| while peer.read_frame().is_some() {});
    let body = [b'x'; 64];
    let mut group = c.benchmark_group("client");
    group.throughput(Throughput::Elements(1));
    group.bench_function("publish_64b", |b| {
        b.iter(|| channel.basic_publish("", "bench", &body).unwrap())
    });
    let mut tag = 0u64;
    group.bench_function("ack", |b| {
        b.iter(|| {
            tag += 1;
            channel.basic_ack(tag, false).unwrap()
        })
    });
    group.finish();
    drop(channel);
    drop(connection);
    let _ = fake.join();
}

/// One delivery's frames on channel 1 for consumer `tag`.
fn delivery_frames(tag: &str, delivery_tag: u64) -> Vec<u8> {
    let mut bytes = Peer::encode(&AMQPFrame::Method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
            consumer_tag: tag.into(),
            delivery_tag,
            redelivered: false,
            exchange: "".into(),
            routing_key: "bench".into(),
        })),
    ));
    bytes.extend(Peer::encode(&AMQPFrame::Header(
        1,
        AMQPContentHeader {
            class_id: 60,
            body_size: 64,
            properties: amq_protocol::protocol::BasicProperties::default(),
        },
    )));
    bytes.extend(Peer::encode(&AMQPFrame::Body(1, vec![b'x'; 64])));
    bytes
}

fn consume(c: &mut Criterion) {
    let (tx, rx) = std::sync::mpsc::channel::<u64>();
    let (connection, channel, fake) = connect_to_fake(move |peer| {
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
        // Sends each batch the bench asks for, pre-encoded, in one write.
        let one = delivery_frames(tag.as_str(), 1);
        while let Ok(count) = rx.recv() {
            let batch = one.repeat(count as usize);
            if peer.stream().write_all(&batch).is_err() {
                return;
            }
        }
    });
    let mut consumer = channel
        .consume(
            "bench",
            ConsumeOptions {
                auto_ack: true,
                inactivity_timeout: Some(Duration::from_secs(5)),
                ..Default::default()
            },
        )
        .unwrap();
    let mut group = c.benchmark_group("client");
    group.throughput(Throughput::Elements(1));
    group.bench_function("consume_64b", |b| {
        b.iter_custom(|iters| {
            tx.send(iters).unwrap();
            let started = Instant::now();
            for _ in 0..iters {
                match consumer.next() {
                    Some(Ok(Consumed::Delivery(d))) => assert_eq!(d.body.len(), 64),
                    other => panic!("expected a delivery, got {other:?}"),
                }
            }
            started.elapsed()
        })
    });
    group.finish();
    drop(tx);
    drop(consumer);
    drop(channel);
    drop(connection);
    let _ = fake.join();
}

criterion_group!(benches, publish_and_ack, consume);
criterion_main!(benches);
