//! Merged acks against a real RabbitMQ: consecutive `basic_ack` calls may reach the broker as
//! one multiple ack, and must still settle exactly the messages the user acked. Each test leaves
//! some messages unacked on purpose, closes the consuming connection (the broker requeues what
//! is unacked), and checks from a second connection which messages the queue holds.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use cottontail::{
    Channel, ConsumeOptions, Consumed, Consumer, Delivery, Error, NackOptions, QosOptions,
    QueueDeclareOptions, RejectOptions,
};
use support::{connect, eventually, publish_numbered, rabbitmqctl, unique};

/// Declares a durable-less queue named after `what` holding messages `0..n` (4-byte bodies).
fn queue_with(channel: &Channel, what: &str, n: u32) -> String {
    let queue = unique(what);
    channel
        .queue_declare(&queue, QueueDeclareOptions::default())
        .unwrap();
    publish_numbered(channel, &queue, 0..n);
    queue
}

fn number(delivery: &Delivery) -> u32 {
    u32::from_be_bytes(delivery.body.as_slice().try_into().expect("4-byte body"))
}

/// Starts a manual-ack consumer and waits until all `n` messages wait in the client, so that
/// acks are made while more deliveries are queued (the case where they are merged).
fn consume_all_buffered(channel: &Channel, queue: &str, n: usize) -> Consumer {
    channel
        .basic_qos(QosOptions {
            prefetch_count: n as u16,
            ..Default::default()
        })
        .unwrap();
    let consumer = channel.consume(queue, ConsumeOptions::default()).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || consumer.waiting_message_count()
            == n),
        "only {} of {n} messages arrived",
        consumer.waiting_message_count()
    );
    consumer
}

fn next_delivery(consumer: &mut Consumer) -> Delivery {
    match consumer.next() {
        Some(Ok(Consumed::Delivery(d))) => d,
        other => panic!("expected a delivery, got {other:?}"),
    }
}

/// The message numbers `queue` holds, read (and removed) from a fresh connection.
fn left_in(queue: &str) -> BTreeSet<u32> {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let mut left = BTreeSet::new();
    while let Some(message) = channel.basic_get(queue, true).unwrap() {
        let n = u32::from_be_bytes(message.body.as_slice().try_into().unwrap());
        assert!(left.insert(n), "message {n} twice");
    }
    channel.queue_delete(queue, Default::default()).unwrap();
    left
}

#[test]
fn in_order_acks_with_some_left_out_settle_exactly_the_acked_ones() {
    const N: u32 = 600;
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = queue_with(&channel, "merge-gaps", N);
    let mut consumer = consume_all_buffered(&channel, &queue, N as usize);
    let skipped: BTreeSet<u32> = [0, 77, 78, 300, 555, N - 1].into();
    for _ in 0..N {
        let d = next_delivery(&mut consumer);
        if !skipped.contains(&number(&d)) {
            channel.basic_ack(d.method.delivery_tag, false).unwrap();
        }
    }
    drop(consumer);
    connection.close().unwrap();
    assert_eq!(left_in(&queue), skipped);
}

#[test]
fn everything_acked_in_order_leaves_nothing() {
    const N: u32 = 1000;
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = queue_with(&channel, "merge-all", N);
    let mut consumer = consume_all_buffered(&channel, &queue, N as usize);
    for _ in 0..N {
        let d = next_delivery(&mut consumer);
        channel.basic_ack(d.method.delivery_tag, false).unwrap();
    }
    // Still open: the broker must show nothing unacked without any further call.
    assert!(
        eventually(Duration::from_secs(10), || unacked(&queue) == Some(0)),
        "the broker still has unacked messages: {:?}",
        unacked(&queue)
    );
    drop(consumer);
    connection.close().unwrap();
    assert_eq!(left_in(&queue), BTreeSet::new());
}

/// messages_unacknowledged of `queue` as rabbitmqctl reports it.
fn unacked(queue: &str) -> Option<u64> {
    let out = rabbitmqctl(&["list_queues", "name", "messages_unacknowledged"]);
    out.lines().find_map(|line| {
        let mut fields = line.split('\t');
        (fields.next() == Some(queue))
            .then(|| fields.next()?.trim().parse().ok())
            .flatten()
    })
}

#[test]
fn held_acks_reach_the_broker_while_the_consumer_does_nothing() {
    const N: u32 = 50;
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = queue_with(&channel, "merge-idle", N);
    let mut consumer = consume_all_buffered(&channel, &queue, N as usize);
    for _ in 0..10 {
        let d = next_delivery(&mut consumer);
        channel.basic_ack(d.method.delivery_tag, false).unwrap();
    }
    // No further call on the connection: the I/O thread writes what is held.
    assert!(
        eventually(Duration::from_secs(10), || unacked(&queue) == Some(40)),
        "expected 40 unacked, the broker says {:?}",
        unacked(&queue)
    );
    drop(consumer);
    connection.close().unwrap();
    assert_eq!(left_in(&queue), (10..N).collect());
}

#[test]
fn rejects_nacks_and_multiple_acks_inside_runs_keep_their_meaning() {
    const N: u32 = 40;
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = queue_with(&channel, "merge-mixed", N);
    let mut consumer = consume_all_buffered(&channel, &queue, N as usize);
    let mut tags = Vec::new();
    for _ in 0..N {
        let d = next_delivery(&mut consumer);
        tags.push((number(&d), d.method.delivery_tag));
        let (n, tag) = *tags.last().unwrap();
        match n {
            // Dropped for good.
            9 => channel
                .basic_reject(tag, RejectOptions { requeue: false })
                .unwrap(),
            // Back to the queue.
            19 => channel.basic_nack(tag, NackOptions::default()).unwrap(),
            // 20..=24 left for the multiple ack at 25.
            20..=24 => {}
            25 => channel.basic_ack(tag, true).unwrap(),
            // Left unacked.
            33 | 39 => {}
            _ => channel.basic_ack(tag, false).unwrap(),
        }
    }
    drop(consumer);
    connection.close().unwrap();
    // 19 was requeued before the close and may have been delivered again, unacked: it is in
    // the queue either way.
    assert_eq!(left_in(&queue), [19, 33, 39].into());
}

#[test]
fn acks_from_several_threads_in_any_order_settle_exactly_theirs() {
    const N: u32 = 2000;
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = queue_with(&channel, "merge-threads", N);
    let mut consumer = consume_all_buffered(&channel, &queue, N as usize);
    let skipped: BTreeSet<u32> = [3, 500, 501, 1999].into();
    let (tx, rx) = std::sync::mpsc::channel::<Delivery>();
    let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let rx = rx.clone();
            let channel = channel.clone();
            let skipped = skipped.clone();
            std::thread::spawn(move || loop {
                let Ok(d) = rx.lock().unwrap().recv() else {
                    return;
                };
                if !skipped.contains(&number(&d)) {
                    channel.basic_ack(d.method.delivery_tag, false).unwrap();
                }
            })
        })
        .collect();
    for _ in 0..N {
        tx.send(next_delivery(&mut consumer)).unwrap();
    }
    drop(tx);
    for worker in workers {
        worker.join().unwrap();
    }
    drop(consumer);
    connection.close().unwrap();
    assert_eq!(left_in(&queue), skipped);
}

#[test]
fn acks_after_a_tx_rollback_do_not_cover_the_rolled_back_ones() {
    const N: u32 = 20;
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = queue_with(&channel, "merge-tx", N);
    channel.tx_select().unwrap();
    let mut consumer = consume_all_buffered(&channel, &queue, N as usize);
    for _ in 0..5 {
        let d = next_delivery(&mut consumer);
        channel.basic_ack(d.method.delivery_tag, false).unwrap();
    }
    // The acks of 0..5 are undone: those messages are unacked again.
    channel.tx_rollback().unwrap();
    for _ in 5..10 {
        let d = next_delivery(&mut consumer);
        channel.basic_ack(d.method.delivery_tag, false).unwrap();
    }
    channel.tx_commit().unwrap();
    drop(consumer);
    connection.close().unwrap();
    let expected: BTreeSet<u32> = (0..5).chain(10..N).collect();
    assert_eq!(left_in(&queue), expected);
}

#[test]
fn acks_after_basic_recover_settle_the_redeliveries_exactly() {
    const N: u32 = 30;
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = queue_with(&channel, "merge-recover", N);
    let mut consumer = consume_all_buffered(&channel, &queue, N as usize);
    for _ in 0..10 {
        let d = next_delivery(&mut consumer);
        channel.basic_ack(d.method.delivery_tag, false).unwrap();
    }
    // 10..30 were delivered (waiting in the client) and not acked: the broker sends them again
    // with new tags. The old copies are acked nowhere; only the new ones count.
    channel.basic_recover(true).unwrap();
    let mut stale = Vec::new();
    for _ in 10..N {
        stale.push(next_delivery(&mut consumer));
    }
    let mut redelivered = BTreeSet::new();
    while redelivered.len() < (N - 10) as usize {
        let d = next_delivery(&mut consumer);
        assert!(
            d.method.redelivered,
            "message {} not redelivered",
            number(&d)
        );
        redelivered.insert(number(&d));
        if number(&d) != 17 {
            channel.basic_ack(d.method.delivery_tag, false).unwrap();
        }
    }
    assert_eq!(redelivered, (10..N).collect());
    assert_eq!(stale.len(), (N - 10) as usize);
    drop(consumer);
    connection.close().unwrap();
    assert_eq!(left_in(&queue), [17].into());
}

#[test]
fn a_double_ack_still_closes_the_channel_with_406() {
    const N: u32 = 5;
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = queue_with(&channel, "merge-double", N);
    let mut consumer = consume_all_buffered(&channel, &queue, N as usize);
    let first = next_delivery(&mut consumer);
    let second = next_delivery(&mut consumer);
    channel.basic_ack(first.method.delivery_tag, false).unwrap();
    channel
        .basic_ack(second.method.delivery_tag, false)
        .unwrap();
    channel.basic_ack(first.method.delivery_tag, false).unwrap();
    let error = channel
        .basic_qos(QosOptions {
            prefetch_count: 10,
            ..Default::default()
        })
        .unwrap_err();
    match &error {
        Error::ChannelClosed {
            reply_code: 406,
            reply_text,
            ..
        } => assert!(
            reply_text.contains("unknown delivery tag 1"),
            "{reply_text}"
        ),
        other => panic!("expected a 406 channel close, got {other:?}"),
    }
    drop(consumer);
    connection.close().unwrap();
    // The acks before the faulty one were applied; the rest went back to the queue.
    assert_eq!(left_in(&queue), (2..N).collect());
}

#[test]
fn acks_of_a_manual_consumer_next_to_an_auto_ack_one_stay_exact() {
    const N: u32 = 300;
    let connection = connect();
    let channel = connection.channel().unwrap();
    let manual = queue_with(&channel, "merge-manual", N);
    let auto = queue_with(&channel, "merge-auto", N);
    channel.basic_qos(QosOptions::default()).unwrap();
    let mut auto_consumer = channel
        .consume(
            &auto,
            ConsumeOptions {
                auto_ack: true,
                ..Default::default()
            },
        )
        .unwrap();
    let mut consumer = channel.consume(&manual, ConsumeOptions::default()).unwrap();
    assert!(eventually(Duration::from_secs(5), || {
        consumer.waiting_message_count() == N as usize
            && auto_consumer.waiting_message_count() == N as usize
    }));
    for _ in 0..N {
        let d = next_delivery(&mut consumer);
        if number(&d) % 100 != 42 {
            channel.basic_ack(d.method.delivery_tag, false).unwrap();
        }
        next_delivery(&mut auto_consumer);
    }
    drop(consumer);
    drop(auto_consumer);
    connection.close().unwrap();
    assert_eq!(left_in(&manual), [42, 142, 242].into());
    assert_eq!(left_in(&auto), BTreeSet::new());
}

#[test]
fn acks_held_when_the_connection_closes_reach_the_broker_first() {
    const N: u32 = 50;
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = queue_with(&channel, "merge-close", N);
    let mut consumer = consume_all_buffered(&channel, &queue, N as usize);
    for _ in 0..10 {
        let d = next_delivery(&mut consumer);
        channel.basic_ack(d.method.delivery_tag, false).unwrap();
    }
    // At once, with 40 more deliveries waiting: the held acks go out before connection.close.
    connection.close().unwrap();
    drop(consumer);
    assert_eq!(left_in(&queue), (10..N).collect());
}
