//! A process that ends without closing its connection (`std::process::exit`, or a connection
//! kept in a `static`, which is never dropped): publishes and acks leave from the I/O thread
//! moments after their calls return (a publishing loop is written in large writes, acks are
//! merged), so what was still queued is lost with the process unless `Connection::flush`
//! wrote it first. pika writes each before its call returns, so a pika program ported
//! line by line needs the flush (a probe of such programs found 468-875 of 1,000 publishes
//! arriving, and all 10 acks of a consumer that exited lost).
//!
//! Each test runs the test binary again as a child that does the work and exits with
//! `std::process::exit`, then asks the broker what it holds, on a connection of its own.

mod support;

use std::process::Command;
use std::time::Duration;

use cottontail::{BasicConsumeOptions, QosOptions, QueueDeclareOptions};
use support::methods::{broker_view, Cleanup};
use support::{connect, eventually, unique};

/// Set (to the queue's name) in the child's environment.
const CHILD_QUEUE: &str = "COTTONTAIL_EXIT_CHILD_QUEUE";

/// Runs the test `name` of this binary again as a child for `queue`; returns its exit status
/// and output.
fn run_child(name: &str, queue: &str) -> std::process::Output {
    let exe = std::env::current_exe().expect("the test binary's path");
    let output = Command::new(exe)
        .env(CHILD_QUEUE, queue)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .output()
        .expect("running the test binary again as the child");
    assert!(
        output.status.success(),
        "the child failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// 1,000 publishes in a loop, `flush`, then `std::process::exit`: the broker holds all of
/// them once the child is gone.
#[test]
fn publishes_flushed_before_process_exit_all_arrive() {
    const MESSAGES: u32 = 1_000;
    if let Some(queue) = std::env::var_os(CHILD_QUEUE) {
        let queue = queue.to_string_lossy().into_owned();
        let connection = connect();
        let channel = connection.channel().unwrap();
        for i in 0..MESSAGES {
            channel
                .basic_publish("", &queue, format!("message {i}").as_bytes())
                .unwrap();
        }
        connection.flush(Duration::from_secs(10)).unwrap();
        std::process::exit(0);
    }
    let mut cleanup = Cleanup::default();
    let queue = cleanup.queue(&unique("exit-publish"));
    let connection = connect();
    let channel = connection.channel().unwrap();
    channel
        .queue_declare(&queue, QueueDeclareOptions::default())
        .unwrap();
    run_child("publishes_flushed_before_process_exit_all_arrive", &queue);
    let mut held = 0;
    eventually(Duration::from_secs(10), || {
        held = broker_view(&queue).message_count;
        held == MESSAGES
    });
    assert_eq!(
        held, MESSAGES,
        "messages the broker holds after the child exited"
    );
    connection.close().unwrap();
}

/// A consumer with prefetch 50 acks 10 messages one by one (the acks merge, and are held up
/// to 5 ms), calls `flush` and exits from its callback: the broker keeps the 40 it did not
/// ack, and only those (an ack lost with the process would bring its message back).
#[test]
fn acks_flushed_before_process_exit_are_not_redelivered() {
    if let Some(queue) = std::env::var_os(CHILD_QUEUE) {
        let queue = queue.to_string_lossy().into_owned();
        let connection = connect();
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
                &queue,
                move |ch, deliver, _, _| {
                    ch.basic_ack(deliver.delivery_tag, false).unwrap();
                    acked += 1;
                    if acked == 10 {
                        flushing.flush(Duration::from_secs(10)).unwrap();
                        std::process::exit(0);
                    }
                },
                BasicConsumeOptions::default(),
            )
            .unwrap();
        channel.start_consuming().unwrap();
        unreachable!("the callback exits the process");
    }
    let mut cleanup = Cleanup::default();
    let queue = cleanup.queue(&unique("exit-ack"));
    let connection = connect();
    let channel = connection.channel().unwrap();
    channel
        .queue_declare(&queue, QueueDeclareOptions::default())
        .unwrap();
    for i in 0..50 {
        channel
            .basic_publish("", &queue, format!("task {i}").as_bytes())
            .unwrap();
    }
    assert!(eventually(Duration::from_secs(5), || broker_view(&queue)
        .message_count
        == 50));
    run_child(
        "acks_flushed_before_process_exit_are_not_redelivered",
        &queue,
    );
    // The broker requeues the unacked ones once it sees the child's connection gone.
    let mut view = broker_view(&queue);
    eventually(Duration::from_secs(10), || {
        view = broker_view(&queue);
        view.consumer_count == 0 && view.message_count >= 40
    });
    assert_eq!(
        (view.message_count, view.consumer_count),
        (40, 0),
        "ready messages and consumers after the child exited"
    );
    connection.close().unwrap();
}
