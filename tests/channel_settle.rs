//! Settling and transactions against a real RabbitMQ: `basic_get`, acks / nacks / rejects
//! (single and multiple), `basic_recover`, qos, `tx_*`. Each test checks what the broker holds
//! or exactly what the caller gets.

mod support;

use std::thread;
use std::time::Duration;

use cottontail::{
    BasicProperties, ConsumeOptions, Consumed, NackOptions, PublishOptions, QosOptions,
    QueueDeclareOptions, RejectOptions,
};
use support::methods::*;
use support::{connect, eventually, unique};

#[test]
fn basic_get_returns_none_on_empty_and_counts_what_is_left() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let mut cleanup = Cleanup::default();
    let queue = declare_queue(&channel, &mut cleanup, "get");
    assert!(channel.basic_get(&queue, false).unwrap().is_none());
    let properties = BasicProperties::default().with_message_id("id-1");
    channel
        .basic_publish_with(
            "",
            &queue,
            b"first",
            &PublishOptions {
                properties: properties.clone(),
                ..Default::default()
            },
        )
        .unwrap();
    publish(&channel, "", &queue, "second");
    let message = channel.basic_get(&queue, false).unwrap().unwrap();
    assert_eq!(message.body, b"first");
    assert_eq!(message.method.message_count, 1);
    assert!(!message.method.redelivered);
    assert_eq!(message.method.routing_key.as_str(), queue);
    assert_eq!(message.properties.message_id(), Some("id-1"));
    channel
        .basic_ack(message.method.delivery_tag, false)
        .unwrap();
    let unacked = channel.basic_get(&queue, false).unwrap().unwrap();
    assert_eq!(unacked.body, b"second");
    assert_eq!(unacked.method.message_count, 0);
    // Closing the channel requeues the unacked one only: the ack reached the broker.
    channel.close().unwrap();
    assert_eq!(broker_eventually_holds(&queue, 1), 1);
    let check = connection.channel().unwrap();
    assert_eq!(drain(&check, &queue), ["second"]);
}

#[test]
fn basic_nack_without_requeue_dead_letters_the_message() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let mut cleanup = Cleanup::default();
    let dlx = declare_exchange(&channel, &mut cleanup, "dlx", "fanout");
    let dead = declare_queue(&channel, &mut cleanup, "dead-letters");
    bind(&channel, &dead, &dlx, "");
    let queue = cleanup.queue(&unique("with-dlx"));
    channel
        .queue_declare(
            &queue,
            QueueDeclareOptions {
                arguments: string_table(&[("x-dead-letter-exchange", &dlx)]),
                ..Default::default()
            },
        )
        .unwrap();
    publish(&channel, "", &queue, "poison");
    let message = channel.basic_get(&queue, false).unwrap().unwrap();
    channel
        .basic_nack(
            message.method.delivery_tag,
            NackOptions {
                requeue: false,
                ..Default::default()
            },
        )
        .unwrap();
    let mut dead_lettered = None;
    assert!(
        eventually(Duration::from_secs(5), || {
            dead_lettered = channel.basic_get(&dead, true).unwrap();
            dead_lettered.is_some()
        }),
        "nothing reached the dead-letter queue"
    );
    let dead_lettered = dead_lettered.unwrap();
    assert_eq!(dead_lettered.body, b"poison");
    let headers = dead_lettered
        .properties
        .headers()
        .cloned()
        .unwrap_or_default();
    assert!(headers.contains_key("x-death"), "{headers:?}");
    assert!(channel.basic_get(&queue, true).unwrap().is_none());
    channel.close().unwrap();
    assert_eq!(broker_view(&queue).message_count, 0);
}

#[test]
fn basic_reject_with_requeue_redelivers_with_the_redelivered_flag() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let mut cleanup = Cleanup::default();
    let queue = declare_queue(&channel, &mut cleanup, "reject");
    publish(&channel, "", &queue, "again");
    let first = channel.basic_get(&queue, false).unwrap().unwrap();
    assert!(!first.method.redelivered);
    channel
        .basic_reject(first.method.delivery_tag, RejectOptions::default())
        .unwrap();
    let second = channel.basic_get(&queue, false).unwrap().unwrap();
    assert_eq!(second.body, b"again");
    assert!(second.method.redelivered);
    assert_ne!(second.method.delivery_tag, first.method.delivery_tag);
    // Reject without requeue drops it (no dead-letter exchange).
    channel
        .basic_reject(second.method.delivery_tag, RejectOptions { requeue: false })
        .unwrap();
    channel.close().unwrap();
    assert_eq!(broker_view(&queue).message_count, 0);
}

#[test]
fn basic_nack_multiple_settles_every_delivery_up_to_the_tag() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let mut cleanup = Cleanup::default();
    let queue = queue_holding(&channel, &mut cleanup, "nack-multiple", 5);
    let tags = get_tags(&channel, &queue, 5);
    // Nack the first four at once, with requeue: they are ready again, the fifth stays unacked.
    channel
        .basic_nack(
            tags[3],
            NackOptions {
                multiple: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(broker_eventually_holds(&queue, 4), 4);
    let mut again = Vec::new();
    let mut last = 0;
    while let Some(message) = channel.basic_get(&queue, false).unwrap() {
        assert!(message.method.redelivered);
        last = message.method.delivery_tag;
        again.push(String::from_utf8(message.body).unwrap());
    }
    assert_eq!(again, ["m0", "m1", "m2", "m3"]);
    assert!(last > tags[4]);
    // Nack everything (the fifth and the four redeliveries) without requeue: all gone.
    channel
        .basic_nack(
            last,
            NackOptions {
                multiple: true,
                requeue: false,
            },
        )
        .unwrap();
    channel.close().unwrap();
    let view = broker_view(&queue);
    assert_eq!((view.message_count, view.consumer_count), (0, 0));
}

#[test]
fn basic_ack_multiple_acks_every_delivery_up_to_the_tag() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let mut cleanup = Cleanup::default();
    let queue = queue_holding(&channel, &mut cleanup, "ack-multiple", 4);
    let tags = get_tags(&channel, &queue, 4);
    channel.basic_ack(tags[2], true).unwrap();
    channel.close().unwrap();
    // Only the fourth was not acked, so only it comes back.
    assert_eq!(broker_eventually_holds(&queue, 1), 1);
    let check = connection.channel().unwrap();
    assert_eq!(drain(&check, &queue), ["m3"]);
}

#[test]
fn basic_recover_requeue_redelivers_unacked_messages_as_redelivered() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let mut cleanup = Cleanup::default();
    let queue = queue_holding(&channel, &mut cleanup, "recover", 3);
    for i in 0..3 {
        let message = channel.basic_get(&queue, false).unwrap().unwrap();
        assert_eq!(message.body, format!("m{i}").as_bytes());
        assert!(!message.method.redelivered);
    }
    assert!(channel.basic_get(&queue, false).unwrap().is_none());
    channel.basic_recover(true).unwrap();
    assert_eq!(broker_eventually_holds(&queue, 3), 3);
    let mut again = Vec::new();
    while let Some(message) = channel.basic_get(&queue, true).unwrap() {
        assert!(message.method.redelivered, "{message:?}");
        again.push(String::from_utf8(message.body).unwrap());
    }
    assert_eq!(again, ["m0", "m1", "m2"]);
    assert!(channel.is_open());
}

#[test]
fn basic_recover_requeue_redelivers_to_a_consumer() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let mut cleanup = Cleanup::default();
    let queue = queue_holding(&channel, &mut cleanup, "recover-consumer", 3);
    let mut consumer = channel
        .consume(
            &queue,
            ConsumeOptions {
                inactivity_timeout: Some(Duration::from_secs(5)),
                ..Default::default()
            },
        )
        .unwrap();
    let mut next = || match consumer.next() {
        Some(Ok(Consumed::Delivery(d))) => d,
        other => panic!("expected a delivery, got {other:?}"),
    };
    let first: Vec<_> = (0..3).map(|_| next()).collect();
    assert!(first.iter().all(|d| !d.method.redelivered));
    channel.basic_recover(true).unwrap();
    let second: Vec<_> = (0..3).map(|_| next()).collect();
    assert!(second.iter().all(|d| d.method.redelivered), "{second:?}");
    let bodies: Vec<&[u8]> = second.iter().map(|d| d.body.as_slice()).collect();
    assert_eq!(bodies, [b"m0", b"m1", b"m2"]);
    channel
        .basic_ack(second[2].method.delivery_tag, true)
        .unwrap();
    drop(consumer);
    channel.close().unwrap();
    assert_eq!(broker_view(&queue).message_count, 0);
}

#[test]
fn basic_qos_prefetch_one_dispatches_fairly_to_a_slow_and_a_fast_consumer() {
    const MESSAGES: usize = 20;
    let connection = connect();
    let setup = connection.channel().unwrap();
    let mut cleanup = Cleanup::default();
    let queue = declare_queue(&setup, &mut cleanup, "qos");
    // Both consumers stop once the two of them have handled every message (an inactivity
    // timeout only lets them look; the deadline keeps a lost message from hanging the test).
    let handled_by_both = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let spawn_consumer = |work: Duration| {
        let channel = connection.channel().unwrap();
        channel
            .basic_qos(QosOptions {
                prefetch_count: 1,
                ..Default::default()
            })
            .unwrap();
        let consumer = channel
            .consume(
                &queue,
                ConsumeOptions {
                    inactivity_timeout: Some(Duration::from_millis(100)),
                    ..Default::default()
                },
            )
            .unwrap();
        let handled_by_both = handled_by_both.clone();
        thread::spawn(move || {
            let mut handled = 0usize;
            for item in consumer {
                match item.unwrap() {
                    Consumed::Delivery(d) => {
                        thread::sleep(work);
                        channel.basic_ack(d.method.delivery_tag, false).unwrap();
                        handled += 1;
                        handled_by_both.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    _ => {
                        let all = handled_by_both.load(std::sync::atomic::Ordering::SeqCst);
                        if all >= MESSAGES || std::time::Instant::now() > deadline {
                            break;
                        }
                    }
                }
            }
            handled
        })
    };
    let slow = spawn_consumer(Duration::from_millis(300));
    let fast = spawn_consumer(Duration::ZERO);
    assert_eq!(broker_view(&queue).consumer_count, 2);
    for i in 0..MESSAGES {
        publish(&setup, "", &queue, &i.to_string());
    }
    let slow = slow.join().unwrap();
    let fast = fast.join().unwrap();
    assert_eq!(slow + fast, MESSAGES, "slow {slow}, fast {fast}");
    // Without prefetch the broker would push 10 to each; with prefetch 1 the slow one only
    // gets a new message when it acks.
    assert!(
        (1..=4).contains(&slow),
        "slow consumer got {slow}, fast {fast}"
    );
    assert_eq!(broker_view(&queue).message_count, 0);
}

#[test]
fn tx_rollback_publishes_nothing_and_tx_commit_publishes() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let mut cleanup = Cleanup::default();
    let queue = declare_queue(&channel, &mut cleanup, "tx");
    channel.tx_select().unwrap();
    for i in 0..3 {
        publish(&channel, "", &queue, &format!("rolled-back-{i}"));
    }
    assert_eq!(
        broker_view(&queue).message_count,
        0,
        "visible before commit"
    );
    channel.tx_rollback().unwrap();
    assert_eq!(broker_view(&queue).message_count, 0);
    publish(&channel, "", &queue, "committed-0");
    publish(&channel, "", &queue, "committed-1");
    assert_eq!(
        broker_view(&queue).message_count,
        0,
        "visible before commit"
    );
    channel.tx_commit().unwrap();
    assert_eq!(broker_eventually_holds(&queue, 2), 2);
    // Acks are transactional too: a rolled-back ack leaves the message unacked.
    let message = channel.basic_get(&queue, false).unwrap().unwrap();
    assert_eq!(message.body, b"committed-0");
    channel
        .basic_ack(message.method.delivery_tag, false)
        .unwrap();
    channel.tx_rollback().unwrap();
    channel.close().unwrap();
    let check = connection.channel().unwrap();
    assert_eq!(drain(&check, &queue), ["committed-0", "committed-1"]);
}

#[test]
fn tx_commit_without_tx_select_is_406() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    expect_channel_closed(channel.tx_commit(), 406);
    assert!(connection.is_open());
}
