//! A process that ends without closing its connection (`std::process::exit`, or a connection
//! kept in a `static`, which is never dropped): publishes and acks leave from the I/O thread
//! moments after their calls return (a publishing loop is written in large writes, acks are
//! merged), so what was still queued is lost with the process unless `Connection::flush`
//! wrote it first. pika writes each before its call returns, so a pika program ported line by
//! line needs the flush (a probe of such programs found 468-875 of 1,000 publishes arriving,
//! and all 10 acks of a consumer that exited lost).
//!
//! Each test runs the test binary again as a child that does the work and exits with
//! `std::process::exit`, against the scripted fake broker, which reads everything the child
//! sent until its socket closes. A real broker cannot show this reliably: RabbitMQ itself
//! drops frames it has read but not yet handled when a client's socket closes without
//! connection.close (under load, some of 1,000 publishes the client had handed to its kernel
//! were missing), so what the broker holds afterwards says nothing exact about the client.

use std::process::Command;
use std::time::Duration;

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{basic, AMQPClass};
use cottontail::{BasicConsumeOptions, Connection, QosOptions};

#[path = "support/fake_broker.rs"]
mod fake_broker;

use fake_broker::{client_params, join, spawn_fake, FakeBroker, Peer};

/// Set (to the fake broker's port) in the child's environment.
const CHILD_PORT: &str = "COTTONTAIL_EXIT_CHILD_PORT";

/// The fake broker's port, in the child.
fn child_port() -> Option<u16> {
    let port = std::env::var(CHILD_PORT).ok()?;
    Some(port.parse().expect("the fake broker's port"))
}

/// Runs the test `name` of this binary again as a child connecting to the fake on `port`.
fn run_child(name: &str, port: u16) {
    let exe = std::env::current_exe().expect("the test binary's path");
    let output = Command::new(exe)
        .env(CHILD_PORT, port.to_string())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .output()
        .expect("running the test binary again as the child");
    assert!(
        output.status.success(),
        "the child failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Every frame the client sends until its socket closes.
fn frames_until_eof(peer: &mut Peer) -> Vec<AMQPFrame> {
    std::iter::from_fn(|| peer.read_frame()).collect()
}

/// 1,000 publishes of 4 KiB in a loop, `flush`, then `std::process::exit`: the fake, which
/// reads slowly, reads all 1,000 before the child's socket closes.
#[test]
fn publishes_flushed_before_process_exit_all_leave() {
    const MESSAGES: usize = 1_000;
    if let Some(port) = child_port() {
        let connection = Connection::open(client_params(port)).unwrap();
        let channel = connection.channel().unwrap();
        // 4 MB in all: more than the kernel's socket buffers take.
        let body = vec![b'x'; 4096];
        for _ in 0..MESSAGES {
            channel.basic_publish("", "tasks", &body).unwrap();
        }
        connection.flush(Duration::from_secs(10)).unwrap();
        std::process::exit(0);
    }
    // A small receive window, so that much of the burst waits in the child until the fake
    // reads (which it does only after the handshake, as the child publishes).
    let broker = FakeBroker::bind_with_receive_buffer(4096);
    let port = broker.port();
    let fake = std::thread::spawn(move || {
        let mut peer = broker.accept_and_handshake(0, 131_072);
        peer.open_channel(1);
        std::thread::sleep(Duration::from_millis(200));
        frames_until_eof(&mut peer)
    });
    run_child("publishes_flushed_before_process_exit_all_leave", port);
    let publishes = join(fake)
        .iter()
        .filter(|f| {
            matches!(
                f,
                AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::Publish(_)))
            )
        })
        .count();
    assert_eq!(publishes, MESSAGES, "publishes that left the child");
}

/// A consumer with prefetch 50 acks 10 deliveries one by one (the acks merge, and are held up
/// to 5 ms), calls `flush` and exits from its callback: the fake has read acks settling
/// exactly deliveries 1 to 10 (an ack lost with the process would bring its message back).
#[test]
fn acks_flushed_before_process_exit_all_leave() {
    if let Some(port) = child_port() {
        let connection = Connection::open(client_params(port)).unwrap();
        let channel = connection.channel().unwrap();
        channel
            .basic_qos(QosOptions {
                prefetch_count: 50,
                ..Default::default()
            })
            .unwrap();
        let mut acked = 0;
        let flushing = connection.clone();
        channel
            .basic_consume(
                "tasks",
                move |ch, deliver, _, _| {
                    ch.basic_ack(deliver.delivery_tag, false).unwrap();
                    acked += 1;
                    if acked == 10 {
                        flushing.flush(Duration::from_secs(10)).unwrap();
                        std::process::exit(0);
                    }
                },
                BasicConsumeOptions {
                    consumer_tag: Some("worker".into()),
                    ..Default::default()
                },
            )
            .unwrap();
        channel.start_consuming().unwrap();
        unreachable!("the callback exits the process");
    }
    let (port, fake) = spawn_fake(|broker| {
        let mut peer = broker.accept_and_handshake(0, 131_072);
        peer.open_channel(1);
        peer.expect_qos(1);
        peer.send_method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})),
        );
        match peer.expect_method() {
            (1, AMQPClass::Basic(basic::AMQPMethod::Consume(consume))) => peer.send_method(
                1,
                AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                    consumer_tag: consume.consumer_tag,
                })),
            ),
            other => panic!("fake broker: expected basic.consume, got {other:?}"),
        }
        let mut deliveries = Vec::new();
        for tag in 1..=50u64 {
            deliveries.extend(Peer::encode(&AMQPFrame::Method(
                1,
                AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                    consumer_tag: "worker".into(),
                    delivery_tag: tag,
                    redelivered: false,
                    exchange: "".into(),
                    routing_key: "tasks".into(),
                })),
            )));
            deliveries.extend(Peer::encode(&AMQPFrame::Header(
                1,
                AMQPContentHeader {
                    class_id: 60,
                    body_size: 1,
                    properties: Default::default(),
                },
            )));
            deliveries.extend(Peer::encode(&AMQPFrame::Body(1, b"x".to_vec())));
        }
        peer.send_raw(&deliveries);
        frames_until_eof(&mut peer)
    });
    run_child("acks_flushed_before_process_exit_all_leave", port);
    let mut settled = std::collections::BTreeSet::new();
    for frame in join(fake) {
        if let AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::Ack(ack))) = frame {
            match ack.multiple {
                true => settled.extend(1..=ack.delivery_tag),
                false => {
                    settled.insert(ack.delivery_tag);
                }
            }
        }
    }
    assert_eq!(
        settled.into_iter().collect::<Vec<_>>(),
        (1..=10).collect::<Vec<u64>>(),
        "deliveries the child's acks settled"
    );
}
