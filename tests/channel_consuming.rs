//! Consuming against a real RabbitMQ: returns and confirms of mandatory publishes, broker and
//! client cancels, the `consume()` iterator, flow, channel closes while consuming, and
//! prompt cancels and closes with more than 16 MiB buffered. Each test checks what the broker
//! holds or exactly what the caller gets.

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use cottontail::{
    BasicConsumeOptions, BasicProperties, ConsumeOptions, Consumed, Error, PublishOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use support::methods::*;
use support::{connect, eventually, unique};

#[test]
fn mandatory_unroutable_message_runs_the_return_callback_inside_start_consuming() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let mut cleanup = Cleanup::default();
    // start_consuming needs a consumer to keep running until the return arrives.
    let queue = declare_queue(&channel, &mut cleanup, "return-cb");
    channel
        .basic_consume(
            &queue,
            |_, _, _, _| {},
            BasicConsumeOptions {
                auto_ack: true,
                ..Default::default()
            },
        )
        .unwrap();
    let (returned_tx, returned_rx) = mpsc::channel();
    channel.add_on_return_callback(move |ch, method, properties, body| {
        returned_tx
            .send((
                method.reply_code,
                method.reply_text.to_string(),
                method.exchange.to_string(),
                method.routing_key.to_string(),
                properties.correlation_id().as_ref().map(|s| s.to_string()),
                body.to_vec(),
            ))
            .unwrap();
        ch.stop_consuming(None).unwrap();
    });
    let (done_tx, done_rx) = mpsc::channel();
    let consuming = channel.clone();
    thread::spawn(move || done_tx.send(consuming.start_consuming()).unwrap());
    let key = unique("no-route");
    let properties = BasicProperties::default().with_correlation_id("c-1");
    channel
        .basic_publish_with(
            "",
            &key,
            b"lost",
            &PublishOptions {
                properties: properties.clone(),
                mandatory: true,
            },
        )
        .unwrap();
    // Routable mandatory messages are not returned.
    channel
        .basic_publish_with(
            "",
            &queue,
            b"found",
            &PublishOptions {
                properties: properties.clone(),
                mandatory: true,
            },
        )
        .unwrap();
    let returned = returned_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the return callback ran");
    assert_eq!(
        returned,
        (
            312,
            "NO_ROUTE".to_string(),
            String::new(),
            key,
            Some("c-1".to_string()),
            b"lost".to_vec()
        )
    );
    assert_eq!(
        done_rx.recv_timeout(Duration::from_secs(5)),
        Ok(Ok(())),
        "start_consuming returned after stop_consuming in the return callback"
    );
    assert!(returned_rx.try_recv().is_err(), "a second return");
    assert!(channel.consumer_tags().is_empty());
}

#[test]
fn mandatory_unroutable_message_runs_the_return_callback_while_iterating_consume() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let mut cleanup = Cleanup::default();
    let queue = declare_queue(&channel, &mut cleanup, "return-iter");
    let returns = Arc::new(AtomicUsize::new(0));
    let counter = returns.clone();
    channel.add_on_return_callback(move |_, method, _, body| {
        assert_eq!((method.reply_code, body), (312, &b"nowhere"[..]));
        counter.fetch_add(1, Ordering::SeqCst);
    });
    let exchange = declare_exchange(&channel, &mut cleanup, "return-iter-x", "direct");
    channel
        .basic_publish_with(
            &exchange,
            "unbound-key",
            b"nowhere",
            &PublishOptions {
                mandatory: true,
                ..Default::default()
            },
        )
        .unwrap();
    let mut consumer = channel
        .consume(
            &queue,
            ConsumeOptions {
                inactivity_timeout: Some(Duration::from_millis(200)),
                ..Default::default()
            },
        )
        .unwrap();
    let started = Instant::now();
    while returns.load(Ordering::SeqCst) == 0 && started.elapsed() < Duration::from_secs(5) {
        match consumer.next() {
            Some(Ok(Consumed::Inactive)) => {}
            other => panic!("expected only inactivity, got {other:?}"),
        }
    }
    assert_eq!(returns.load(Ordering::SeqCst), 1);
    assert_eq!(consumer.cancel(), Ok(0));
}

#[test]
fn confirm_mode_unroutable_mandatory_publish_is_an_unroutable_error() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let mut cleanup = Cleanup::default();
    let queue = declare_queue(&channel, &mut cleanup, "confirm");
    channel.confirm_delivery().unwrap();
    let key = unique("no-route");
    let result = channel.basic_publish_with(
        "",
        &key,
        b"lost",
        &PublishOptions {
            mandatory: true,
            ..Default::default()
        },
    );
    assert!(
        matches!(
            &result,
            Err(Error::Unroutable { reply_code: 312, reply_text, message })
                if reply_text == "NO_ROUTE" && message.body == b"lost" && message.routing_key == key
        ),
        "{result:?}"
    );
    // Not mandatory: the broker drops it silently and confirms.
    channel.basic_publish("", &key, b"dropped").unwrap();
    // The channel is fine and routable mandatory messages are confirmed.
    assert!(channel.is_open());
    channel
        .basic_publish_with(
            "",
            &queue,
            b"kept",
            &PublishOptions {
                mandatory: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(broker_view(&queue).message_count, 1);
}

#[test]
fn queue_deleted_while_consuming_runs_the_cancel_callback_and_start_consuming_returns() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let mut cleanup = Cleanup::default();
    let queue = declare_queue(&channel, &mut cleanup, "cancel-cb");
    let (cancelled_tx, cancelled_rx) = mpsc::channel();
    channel.add_on_cancel_callback(move |_, tag| cancelled_tx.send(tag.to_string()).unwrap());
    let tag = channel
        .basic_consume(&queue, |_, _, _, _| {}, Default::default())
        .unwrap();
    let (done_tx, done_rx) = mpsc::channel();
    let consuming = channel.clone();
    thread::spawn(move || done_tx.send(consuming.start_consuming()).unwrap());
    let other = connect();
    other
        .channel()
        .unwrap()
        .queue_delete(&queue, QueueDeleteOptions::default())
        .unwrap();
    assert_eq!(
        cancelled_rx.recv_timeout(Duration::from_secs(5)),
        Ok(tag),
        "cancel callback with the consumer tag"
    );
    assert_eq!(done_rx.recv_timeout(Duration::from_secs(5)), Ok(Ok(())));
    assert!(channel.consumer_tags().is_empty());
    assert!(channel.is_open());
    assert!(cancelled_rx.try_recv().is_err(), "a second cancel");
}

#[test]
fn queue_deleted_while_iterating_consume_ends_the_iterator() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let mut cleanup = Cleanup::default();
    let queue = declare_queue(&channel, &mut cleanup, "cancel-iter");
    // As in pika, the channel's cancel callbacks are not told (pika_parity.rs shows it).
    let consumer = channel.consume(&queue, ConsumeOptions::default()).unwrap();
    let (done_tx, done_rx) = mpsc::channel();
    thread::spawn(move || {
        let items: Vec<String> = consumer.map(|item| format!("{item:?}")).collect();
        done_tx.send(items).unwrap();
    });
    thread::sleep(Duration::from_millis(100));
    connect()
        .channel()
        .unwrap()
        .queue_delete(&queue, QueueDeleteOptions::default())
        .unwrap();
    assert_eq!(
        done_rx.recv_timeout(Duration::from_secs(5)),
        Ok(Vec::new()),
        "the iterator ended without yielding anything"
    );
    assert!(channel.consumer_tags().is_empty());
    assert!(channel.is_open());
}

#[test]
fn consume_on_an_empty_queue_yields_inactive_after_the_inactivity_timeout() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let mut cleanup = Cleanup::default();
    let queue = declare_queue(&channel, &mut cleanup, "inactive");
    let mut consumer = channel
        .consume(
            &queue,
            ConsumeOptions {
                inactivity_timeout: Some(Duration::from_millis(300)),
                ..Default::default()
            },
        )
        .unwrap();
    for _ in 0..2 {
        let started = Instant::now();
        let item = consumer.next();
        let elapsed = started.elapsed();
        assert!(matches!(item, Some(Ok(Consumed::Inactive))), "{item:?}");
        assert!(
            elapsed >= Duration::from_millis(250) && elapsed <= Duration::from_secs(2),
            "{elapsed:?}"
        );
    }
    assert_eq!(consumer.cancel(), Ok(0));
}

#[test]
fn consume_yields_deliveries_in_order_then_inactive() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let mut cleanup = Cleanup::default();
    let queue = queue_holding(&channel, &mut cleanup, "in-order", 5);
    let consumer = channel
        .consume(
            &queue,
            ConsumeOptions {
                inactivity_timeout: Some(Duration::from_millis(300)),
                ..Default::default()
            },
        )
        .unwrap();
    let tag = consumer.consumer_tag().to_string();
    let mut bodies = Vec::new();
    let mut last_tag = 0;
    for item in consumer {
        match item.unwrap() {
            Consumed::Delivery(d) => {
                assert_eq!(d.method.consumer_tag.as_str(), tag);
                assert!(!d.method.redelivered);
                assert!(d.method.delivery_tag > last_tag);
                last_tag = d.method.delivery_tag;
                bodies.push(String::from_utf8(d.body).unwrap());
            }
            _ => break,
        }
    }
    assert_eq!(bodies, ["m0", "m1", "m2", "m3", "m4"]);
    channel.basic_ack(last_tag, true).unwrap();
    channel.close().unwrap();
    assert_eq!(broker_view(&queue).message_count, 0);
}

#[test]
fn consumer_cancel_requeues_waiting_messages_and_returns_their_number() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let mut cleanup = Cleanup::default();
    let queue = queue_holding(&channel, &mut cleanup, "consumer-cancel", 5);
    let mut consumer = channel.consume(&queue, ConsumeOptions::default()).unwrap();
    let Some(Ok(Consumed::Delivery(first))) = consumer.next() else {
        panic!("expected a delivery");
    };
    assert_eq!(first.body, b"m0");
    channel.basic_ack(first.method.delivery_tag, false).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || consumer.waiting_message_count()
            == 4),
        "waiting: {}",
        consumer.waiting_message_count()
    );
    assert_eq!(consumer.cancel(), Ok(4));
    assert!(channel.consumer_tags().is_empty());
    assert_eq!(broker_eventually_holds(&queue, 4), 4);
    assert_eq!(broker_view(&queue).consumer_count, 0);
    // They were requeued, not left unacked: closing the channel changes nothing.
    channel.close().unwrap();
    assert_eq!(broker_view(&queue).message_count, 4);
    let check = connection.channel().unwrap();
    assert_eq!(drain(&check, &queue), ["m1", "m2", "m3", "m4"]);
}

#[test]
fn consumer_tags_lists_consumers_and_basic_cancel_removes_one() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let mut cleanup = Cleanup::default();
    let queue = declare_queue(&channel, &mut cleanup, "tags");
    let first = channel
        .basic_consume(&queue, |_, _, _, _| {}, Default::default())
        .unwrap();
    let second = channel
        .basic_consume(
            &queue,
            |_, _, _, _| {},
            BasicConsumeOptions {
                consumer_tag: Some(unique("my-tag")),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(first.starts_with(&format!("ctag{}.", channel.channel_number())));
    assert!(second.starts_with("cottontail-test-my-tag-"));
    let mut tags = channel.consumer_tags();
    tags.sort();
    let mut expected = vec![first.clone(), second.clone()];
    expected.sort();
    assert_eq!(tags, expected);
    assert_eq!(
        broker_consumer_tags(&queue),
        expected.iter().cloned().collect::<BTreeSet<_>>()
    );

    assert_eq!(channel.basic_cancel(&first), Ok(Vec::new()));
    assert_eq!(channel.consumer_tags(), vec![second.clone()]);
    // The queue process drops the consumer just after the channel's cancel-ok.
    let only_second = BTreeSet::from([second.clone()]);
    assert!(
        eventually(Duration::from_secs(5), || broker_consumer_tags(&queue)
            == only_second),
        "{:?}",
        broker_consumer_tags(&queue)
    );
    assert_eq!(broker_view(&queue).consumer_count, 1);
    // Cancelling an unknown or already cancelled tag does nothing.
    assert_eq!(channel.basic_cancel(&first), Ok(Vec::new()));
    assert!(channel.is_open());
    channel.basic_cancel(&second).unwrap();
    assert!(channel.consumer_tags().is_empty());
    assert!(eventually(Duration::from_secs(5), || broker_consumer_tags(
        &queue
    )
    .is_empty()));
}

#[test]
fn basic_cancel_of_an_auto_ack_consumer_returns_the_undispatched_messages() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let mut cleanup = Cleanup::default();
    let queue = queue_holding(&channel, &mut cleanup, "cancel-auto-ack", 3);
    let consumer = channel
        .consume(
            &queue,
            ConsumeOptions {
                auto_ack: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert!(eventually(Duration::from_secs(5), || consumer
        .waiting_message_count()
        == 3));
    let tag = consumer.consumer_tag().to_string();
    let returned = channel.basic_cancel(&tag).unwrap();
    let bodies: Vec<&[u8]> = returned.iter().map(|d| d.body.as_slice()).collect();
    assert_eq!(bodies, [b"m0", b"m1", b"m2"]);
    assert_eq!(broker_view(&queue).message_count, 0);
}

#[test]
fn broker_closing_the_channel_ends_start_consuming_with_the_error() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let mut cleanup = Cleanup::default();
    let queue = declare_queue(&channel, &mut cleanup, "closed-under-consumer");
    channel
        .basic_consume(&queue, |_, _, _, _| {}, Default::default())
        .unwrap();
    let (done_tx, done_rx) = mpsc::channel();
    let consuming = channel.clone();
    thread::spawn(move || done_tx.send(consuming.start_consuming()).unwrap());
    thread::sleep(Duration::from_millis(100));
    let missing = unique("missing");
    let err = expect_channel_closed(channel.queue_declare(&missing, passive()), 404);
    let ended = done_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("start_consuming returned instead of hanging");
    assert_eq!(ended, Err(err));
    assert!(channel.is_closed());
    assert!(connection.is_open());
    // The broker dropped the consumer with the channel.
    assert!(eventually(Duration::from_secs(5), || broker_view(&queue)
        .consumer_count
        == 0));
}

#[test]
fn flow_true_returns_true_and_the_channel_stays_usable() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let mut cleanup = Cleanup::default();
    assert_eq!(channel.flow(true), Ok(true));
    assert!(channel.is_open());
    let queue = declare_queue(&channel, &mut cleanup, "flow");
    publish(&channel, "", &queue, "after-flow");
    assert_eq!(drain(&channel, &queue), ["after-flow"]);
}

#[test]
fn close_closes_only_the_channel() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    assert!(channel.is_open());
    channel.close().unwrap();
    assert!(channel.is_closed());
    assert!(matches!(
        channel.flow(true),
        Err(Error::ChannelClosedByClient { reply_code: 0, .. })
    ));
    // Closing again does nothing.
    channel.close().unwrap();
    assert!(connection.is_open());
    assert!(connection.channel().unwrap().is_open());
}

#[test]
fn broker_closing_the_channel_makes_a_waiting_consume_iterator_yield_the_error_then_end() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let mut cleanup = Cleanup::default();
    let queue = declare_queue(&channel, &mut cleanup, "closed-under-iterator");
    let consumer = channel.consume(&queue, ConsumeOptions::default()).unwrap();
    let (done_tx, done_rx) = mpsc::channel();
    thread::spawn(move || done_tx.send(consumer.collect::<Vec<_>>()).unwrap());
    thread::sleep(Duration::from_millis(100));
    let err = expect_channel_closed(channel.queue_declare(&unique("missing"), passive()), 404);
    let items = done_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the iterator ended instead of hanging");
    assert_eq!(items, vec![Err(err)]);
}

#[test]
fn flow_false_is_refused_by_rabbitmq_with_a_connection_close_540() {
    // RabbitMQ does not implement pausing deliveries; 540 is a connection-level error.
    let connection = connect();
    let channel = connection.channel().unwrap();
    let err = channel.flow(false).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::ConnectionClosed {
                reply_code: 540,
                class_id: 20,
                method_id: 20,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(connection.is_closed());
    assert_eq!(connection.close_reason(), Some(err));
}

#[test]
fn basic_recover_without_requeue_is_refused_by_rabbitmq_with_a_connection_close_540() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let err = channel.basic_recover(false).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::ConnectionClosed {
                reply_code: 540,
                class_id: 60,
                method_id: 110,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(connection.is_closed());
}

/// More than the 16 MiB a channel may buffer before the I/O thread stops reading the socket.
const BACKLOG: usize = 24;
const MIB: usize = 1 << 20;

/// Fills `queue` with `BACKLOG` 1 MiB messages through a separate, confirmed connection.
fn fill_with_backlog(queue: &str) {
    let connection = connect();
    let channel = connection.channel().unwrap();
    channel.confirm_delivery().unwrap();
    let body = vec![b'x'; MIB];
    for _ in 0..BACKLOG {
        channel
            .basic_publish_deferred("", queue, &body, &PublishOptions::default())
            .unwrap();
    }
    assert!(channel.wait_for_confirms(None).unwrap().nacked.is_empty());
    connection.close().unwrap();
}

/// A connection whose RPCs give up after 10 s, so a hang fails well before the test harness's.
fn connect_impatient() -> cottontail::Connection {
    cottontail::Connection::open(support::params().with_rpc_timeout(Duration::from_secs(10)))
        .unwrap()
}

#[test]
fn consumer_cancel_with_over_16_mib_waiting_returns_promptly_and_requeues_them() {
    let connection = connect_impatient();
    let channel = connection.channel().unwrap();
    let mut cleanup = Cleanup::default();
    let queue = declare_queue(&channel, &mut cleanup, "cancel-backlog");
    fill_with_backlog(&queue);
    let consumer = channel.consume(&queue, ConsumeOptions::default()).unwrap();
    // Reading pauses once the channel holds 16 MiB (each message counts its 1 MiB body and a
    // little more): 16 of these messages.
    assert!(
        eventually(Duration::from_secs(5), || consumer.waiting_message_count()
            >= 16),
        "waiting: {}",
        consumer.waiting_message_count()
    );
    thread::sleep(Duration::from_millis(100));
    let waiting = consumer.waiting_message_count();
    let started = Instant::now();
    let cancelled = consumer.cancel();
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(5), "cancel took {elapsed:?}");
    // At least those waiting before; those still arriving while it cancels are requeued too.
    let requeued = cancelled.unwrap();
    assert!((waiting..=BACKLOG).contains(&requeued), "{requeued}");
    assert_eq!(
        broker_eventually_holds(&queue, BACKLOG as u32),
        BACKLOG as u32
    );
    assert_eq!(broker_view(&queue).consumer_count, 0);
    assert!(channel.is_open());
}

#[test]
fn stop_consuming_from_a_callback_with_over_16_mib_buffered_returns_promptly() {
    let connection = connect_impatient();
    let channel = connection.channel().unwrap();
    let mut cleanup = Cleanup::default();
    let queue = declare_queue(&channel, &mut cleanup, "stop-backlog");
    fill_with_backlog(&queue);
    let (took_tx, took_rx) = mpsc::channel();
    channel
        .basic_consume(
            &queue,
            move |ch, _, _, _| {
                // Let the I/O thread buffer past its limit first.
                thread::sleep(Duration::from_millis(300));
                let started = Instant::now();
                let stopped = ch.stop_consuming(None);
                took_tx.send(started.elapsed()).unwrap();
                stopped
            },
            Default::default(),
        )
        .unwrap();
    assert_eq!(channel.start_consuming(), Ok(()));
    let took = took_rx.recv().unwrap();
    assert!(
        took < Duration::from_secs(5),
        "stop_consuming took {took:?}"
    );
    assert!(channel.consumer_tags().is_empty());
    assert_eq!(broker_view(&queue).consumer_count, 0);
    // The one handed to the callback is unacked; closing the channel requeues it too.
    channel.close().unwrap();
    assert_eq!(
        broker_eventually_holds(&queue, BACKLOG as u32),
        BACKLOG as u32
    );
}

#[test]
fn channel_close_with_over_16_mib_buffered_returns_promptly_and_the_connection_stays_usable() {
    let connection = connect_impatient();
    let channel = connection.channel().unwrap();
    let mut cleanup = Cleanup::default();
    let queue = declare_queue(&channel, &mut cleanup, "close-backlog");
    fill_with_backlog(&queue);
    let consumer = channel.consume(&queue, ConsumeOptions::default()).unwrap();
    // 16 MiB held: reading has paused (see the test above).
    assert!(eventually(Duration::from_secs(5), || consumer
        .waiting_message_count()
        >= 16));
    let started = Instant::now();
    let closed = channel.close();
    let elapsed = started.elapsed();
    assert_eq!(closed, Ok(()));
    assert!(elapsed < Duration::from_secs(5), "close took {elapsed:?}");
    drop(consumer);
    // The connection reads again: a new channel opens and works.
    let fresh = connection.channel().unwrap();
    assert_eq!(fresh.flow(true), Ok(true));
    assert_eq!(
        broker_eventually_holds(&queue, BACKLOG as u32),
        BACKLOG as u32
    );
}

#[test]
fn channel_cancel_ends_consume_iterators_and_requeues_what_they_held() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = unique("channel-cancel");
    channel
        .queue_declare(&queue, QueueDeclareOptions::default())
        .unwrap();
    for i in 0..5u8 {
        channel.basic_publish("", &queue, &[i]).unwrap();
    }
    let mut consumer = channel
        .consume(
            &queue,
            ConsumeOptions {
                inactivity_timeout: Some(Duration::from_secs(2)),
                ..Default::default()
            },
        )
        .unwrap();
    let first = match consumer.next().unwrap().unwrap() {
        Consumed::Delivery(d) => d,
        _ => panic!("no delivery"),
    };
    assert_eq!(first.body, vec![0]);
    channel.basic_ack(first.method.delivery_tag, false).unwrap();
    assert!(eventually(Duration::from_secs(5), || {
        channel.waiting_message_count() == 4
    }));
    assert_eq!(consumer.waiting_message_count(), 4);
    // pika's channel.cancel(): the four not yet yielded go back to the queue.
    assert_eq!(channel.cancel().unwrap(), 4);
    assert!(
        consumer.next().is_none(),
        "the iterator ends once cancelled"
    );
    assert_eq!(channel.waiting_message_count(), 0);
    assert_eq!(broker_eventually_holds(&queue, 4), 4);
    channel.queue_delete(&queue, Default::default()).unwrap();
}

/// A timer that falls due while deliveries keep the consuming thread busy (a slow callback, a
/// prefetch window the broker keeps full) runs at the next delivery's turn. Before, it waited
/// until the channel's queue ran dry, here until the last of 600 deliveries (as pika's does).
#[test]
fn a_timer_runs_on_time_while_deliveries_keep_the_consumer_busy() {
    const MESSAGES: usize = 600;
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = support::exclusive_queue(&channel);
    for i in 0..MESSAGES {
        channel
            .basic_publish("", &queue, i.to_string().as_bytes())
            .unwrap();
    }
    channel
        .basic_qos(cottontail::QosOptions {
            prefetch_count: 50,
            ..Default::default()
        })
        .unwrap();
    let handled = Arc::new(AtomicUsize::new(0));
    let ran_at = Arc::new(std::sync::Mutex::new(None));
    let (count, seen) = (handled.clone(), ran_at.clone());
    connection.call_later(Duration::from_millis(50), move || {
        *seen.lock().unwrap() = Some(count.load(Ordering::SeqCst));
    });
    let count = handled.clone();
    channel
        .basic_consume(
            &queue,
            move |ch, method, _, _| -> cottontail::Result<()> {
                thread::sleep(Duration::from_millis(2));
                ch.basic_ack(method.delivery_tag, false)?;
                if count.fetch_add(1, Ordering::SeqCst) + 1 == MESSAGES {
                    ch.stop_consuming(None)?;
                }
                Ok(())
            },
            Default::default(),
        )
        .unwrap();
    support::within(Duration::from_secs(60), "consuming", move || {
        channel.start_consuming()
    })
    .unwrap();
    let ran_at = *ran_at.lock().unwrap();
    assert!(
        ran_at.is_some_and(|n| n < MESSAGES / 2),
        "the timer ran after {ran_at:?} of {MESSAGES} deliveries"
    );
    connection.close().unwrap();
}
