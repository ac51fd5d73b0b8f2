//! Consuming with callbacks, against a real RabbitMQ.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use cottontail::{BasicConsumeOptions, Error, QosOptions, QueueDeclareOptions};
use support::{connect, exclusive_queue, publish_numbered, rabbitmqctl, unique, within};

#[test]
fn consume_10000_with_manual_ack_in_order_and_the_queue_empties() {
    const N: u32 = 10_000;
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = unique("ten-thousand");
    channel
        .queue_declare(&queue, QueueDeclareOptions::default())
        .unwrap();
    publish_numbered(&channel, &queue, 0..N);
    channel
        .basic_qos(QosOptions {
            prefetch_count: 500,
            ..Default::default()
        })
        .unwrap();
    let mut next = 0u32;
    channel
        .basic_consume(
            &queue,
            move |ch, method, _, body| -> cottontail::Result<()> {
                let n = u32::from_be_bytes(body.try_into().expect("4-byte body"));
                assert_eq!(n, next, "out of order");
                next += 1;
                ch.basic_ack(method.delivery_tag, false)?;
                if next == N {
                    ch.stop_consuming(None)?;
                }
                Ok(())
            },
            BasicConsumeOptions::default(),
        )
        .unwrap();
    channel.start_consuming().unwrap();
    assert!(channel.consumer_tags().is_empty());
    // Checked from a second connection: nothing ready, nothing unacked.
    let other = connect();
    let ok = other
        .channel()
        .unwrap()
        .queue_declare(
            &queue,
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(ok.message_count, 0);
    assert_eq!(ok.consumer_count, 0);
    connection.close().unwrap();
    let ok = other
        .channel()
        .unwrap()
        .queue_declare(
            &queue,
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        ok.message_count, 0,
        "unacked messages came back after close"
    );
    other
        .channel()
        .unwrap()
        .queue_delete(&queue, Default::default())
        .unwrap();
}

#[test]
fn stop_consuming_from_another_thread_returns_promptly() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = support::exclusive_queue(&channel);
    channel
        .basic_consume(&queue, |_, _, _, _| {}, Default::default())
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let consumer = channel.clone();
    std::thread::spawn(move || {
        let result = consumer.start_consuming();
        tx.send((result, Instant::now())).unwrap()
    });
    std::thread::sleep(Duration::from_millis(200));
    channel.stop_consuming(None).unwrap();
    let stopped = Instant::now();
    let (result, returned) = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("start_consuming returned");
    result.unwrap();
    // Issue 4 asks for 100 ms. stop_consuming waits for the basic.cancel round trip (the
    // broker's time, not measured); start_consuming then only has to notice.
    let late = returned.saturating_duration_since(stopped);
    assert!(
        late < Duration::from_millis(100),
        "start_consuming returned {late:?} after stop_consuming"
    );
    assert!(rabbitmqctl(&["list_consumers", "-s"])
        .lines()
        .all(|l| !l.starts_with(&queue)));
}

#[test]
fn start_consuming_from_a_callback_is_a_reentrancy_error() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = support::exclusive_queue(&channel);
    channel.basic_publish("", &queue, b"x").unwrap();
    let (tx, rx) = mpsc::channel();
    channel
        .basic_consume(
            &queue,
            move |ch, _, _, _| {
                tx.send(ch.start_consuming()).unwrap();
                ch.stop_consuming(None)
            },
            BasicConsumeOptions {
                auto_ack: true,
                ..Default::default()
            },
        )
        .unwrap();
    channel.start_consuming().unwrap();
    assert_eq!(rx.recv().unwrap(), Err(Error::Reentrancy));
}

#[test]
fn duplicate_consumer_tag_is_rejected_without_touching_the_broker() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = support::exclusive_queue(&channel);
    let options = BasicConsumeOptions {
        consumer_tag: Some("my-tag".into()),
        ..Default::default()
    };
    assert_eq!(
        channel
            .basic_consume(&queue, |_, _, _, _| {}, options.clone())
            .unwrap(),
        "my-tag"
    );
    assert_eq!(
        channel.basic_consume(&queue, |_, _, _, _| {}, options),
        Err(Error::DuplicateConsumerTag("my-tag".into()))
    );
    assert!(channel.is_open());
    assert_eq!(channel.consumer_tags(), vec!["my-tag".to_string()]);
}

#[test]
fn queue_deleted_while_consuming_ends_start_consuming() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = unique("deleted-under-consumer");
    channel
        .queue_declare(&queue, QueueDeclareOptions::default())
        .unwrap();
    channel
        .basic_consume(&queue, |_, _, _, _| {}, Default::default())
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let consumer = channel.clone();
    std::thread::spawn(move || tx.send(consumer.start_consuming()).unwrap());
    std::thread::sleep(Duration::from_millis(200));
    connect()
        .channel()
        .unwrap()
        .queue_delete(&queue, Default::default())
        .unwrap();
    rx.recv_timeout(Duration::from_secs(5))
        .expect("start_consuming returned")
        .unwrap();
    assert!(channel.consumer_tags().is_empty());
    assert!(channel.is_open());
}

#[test]
fn callback_error_ends_start_consuming_with_it() {
    // A cottontail error comes back as it is (tests/callback_errors.rs has other error types).
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = support::exclusive_queue(&channel);
    channel.basic_publish("", &queue, b"x").unwrap();
    channel
        .basic_consume(
            &queue,
            |_, _, _, _| Err(Error::InvalidArgument("stop here".into())),
            BasicConsumeOptions {
                auto_ack: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        channel.start_consuming(),
        Err(Error::InvalidArgument("stop here".into()))
    );
}

/// An auto-ack `consume()` iterator on `queue` that gives up waiting after 5 s of nothing.
fn auto_ack_iterator(channel: &cottontail::Channel, queue: &str) -> cottontail::Consumer {
    channel
        .consume(
            queue,
            cottontail::ConsumeOptions {
                auto_ack: true,
                inactivity_timeout: Some(Duration::from_secs(5)),
                ..Default::default()
            },
        )
        .unwrap()
}

/// The broker cancels a `consume()` iterator's consumer (its queue is deleted) while messages
/// it received wait to be yielded: they are yielded first (as pika's generator does), then
/// the iterator ends. With auto-ack the broker no longer holds them, so nothing else has them.
#[test]
fn an_iterator_cancelled_by_the_broker_yields_what_it_received_then_ends() {
    use cottontail::Consumed;
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = support::exclusive_queue(&channel);
    support::publish_numbered(&channel, &queue, 0..10);
    let mut consumer = auto_ack_iterator(&channel, &queue);
    let mut bodies = Vec::new();
    match consumer.next() {
        Some(Ok(Consumed::Delivery(d))) => bodies.push(d.body),
        other => panic!("expected the first message, got {other:?}"),
    }
    assert!(
        support::eventually(Duration::from_secs(5), || consumer.waiting_message_count()
            == 9),
        "the other nine did not arrive"
    );
    let other = connection.channel().unwrap();
    other.queue_delete(&queue, Default::default()).unwrap();
    // The broker's basic.cancel reaches the channel; a pump of the channel (here
    // process_data_events) handles it before the iterator looks again.
    connection
        .process_data_events(Duration::from_millis(300))
        .unwrap();
    for item in consumer.by_ref() {
        match item.unwrap() {
            Consumed::Delivery(d) => bodies.push(d.body),
            other => panic!("the iterator neither yielded nor ended: {other:?}"),
        }
    }
    let expected: Vec<Vec<u8>> = (0..10u32).map(|i| i.to_be_bytes().to_vec()).collect();
    assert_eq!(bodies, expected);
    assert!(channel.consumer_tags().is_empty());
}

/// `start_consuming` on a channel whose only consumer is an iterator nobody iterates: when
/// the broker cancels it while it holds messages, no consumer is left and `start_consuming`
/// returns (the iterator still yields what it holds, then ends).
#[test]
fn start_consuming_returns_when_the_broker_cancels_an_idle_iterator_holding_messages() {
    use cottontail::Consumed;
    support::within(Duration::from_secs(20), "start_consuming", || {
        let connection = connect();
        let channel = connection.channel().unwrap();
        let queue = support::exclusive_queue(&channel);
        publish_numbered(&channel, &queue, 0..5);
        let mut consumer = auto_ack_iterator(&channel, &queue);
        let deleter = {
            let connection = connection.clone();
            let queue = queue.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                let other = connection.channel().unwrap();
                other.queue_delete(&queue, Default::default()).unwrap();
            })
        };
        channel.start_consuming().unwrap();
        deleter.join().unwrap();
        assert!(channel.consumer_tags().is_empty());
        let yielded = consumer
            .by_ref()
            .map(|item| match item.unwrap() {
                Consumed::Delivery(d) => d.body,
                other => panic!("{other:?}"),
            })
            .count();
        assert_eq!(yielded, 5);
        connection.close().unwrap();
    });
}

/// 80 x 1 MiB delivered to a `consume()` iterator nobody iterates, read while another
/// iterator waits (so reading goes on past 16 MiB), pass the connection's 64 MiB limit on
/// messages held for callers: reading pauses for everyone, and an RPC on another channel
/// times out at its `rpc_timeout`. Its error says why. Iterating takes the messages, reading
/// goes on, and the channel's next RPC gets its own reply.
#[test]
fn an_rpc_behind_messages_nobody_takes_times_out_saying_why() {
    const MIB: usize = 1 << 20;
    const MESSAGES: usize = 80;
    let connection =
        cottontail::Connection::open(support::params().with_rpc_timeout(Duration::from_secs(2)))
            .unwrap();
    let channel = connection.channel().unwrap();
    let queue = support::exclusive_queue(&channel);
    let empty = support::exclusive_queue(&channel);
    channel.confirm_delivery().unwrap();
    let body = vec![b'x'; MIB];
    for _ in 0..MESSAGES {
        channel.basic_publish("", &queue, &body).unwrap();
    }
    let mut waiting = channel
        .consume(
            &empty,
            cottontail::ConsumeOptions {
                inactivity_timeout: Some(Duration::from_millis(100)),
                ..Default::default()
            },
        )
        .unwrap();
    let mut unread = channel
        .consume(&queue, cottontail::ConsumeOptions::default())
        .unwrap();
    // Until the held messages reach the limit and stop growing for a second: reading has
    // paused there.
    let started = Instant::now();
    let mut last = (0, Instant::now());
    while last.0 < 64 || last.1.elapsed() < Duration::from_secs(1) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{} messages held after 20 s",
            last.0
        );
        assert!(matches!(
            waiting.next(),
            Some(Ok(cottontail::Consumed::Inactive))
        ));
        let held = unread.waiting_message_count();
        if held != last.0 {
            last = (held, Instant::now());
        }
    }
    assert!(
        (64..MESSAGES).contains(&last.0),
        "{} messages held: reading should pause at 64 MiB",
        last.0
    );
    let other = connection.channel();
    let declared = other.and_then(|o| o.queue_declare(&queue, support::consuming::passive()));
    match &declared {
        Err(Error::Timeout { context, .. }) => assert!(
            context.contains("reading was paused")
                && context.contains("wait for consumers that do not take them"),
            "{context}"
        ),
        other => panic!("expected a timeout behind 64 MiB nobody takes, got {other:?}"),
    }
    for n in 0..MESSAGES {
        match unread.next() {
            Some(Ok(cottontail::Consumed::Delivery(d))) => {
                assert_eq!(d.body.len(), MIB);
                channel.basic_ack(d.delivery_tag(), false).unwrap();
            }
            other => panic!("message {n}: {other:?}"),
        }
    }
    let ok = channel
        .queue_declare(&queue, support::consuming::passive())
        .unwrap();
    assert_eq!((ok.queue.as_str(), ok.message_count), (queue.as_str(), 0));
}

/// With a consumer of `queue` on `channel` and nothing pumping it, waits until every one of
/// the queue's `n` messages left it for the client (auto-acked: the queue holds nothing;
/// `manual` ack: all unacked), then has the broker close the channel (a publish to a missing
/// exchange, 404).
fn closed_by_the_broker_behind_deliveries(
    channel: &cottontail::Channel,
    queue: &str,
    n: usize,
    manual: bool,
) {
    let sent = if manual { (0, n) } else { (0, 0) };
    assert!(
        support::eventually(Duration::from_secs(10), || {
            support::broker_counts(queue) == Some(sent)
        }),
        "the broker did not send every message: {:?}",
        support::broker_counts(queue)
    );
    // Delivered by the queue to the channel; a moment more to reach the client.
    std::thread::sleep(Duration::from_millis(200));
    channel
        .basic_publish(&unique("missing-exchange"), "k", b"x")
        .unwrap();
    assert!(
        support::eventually(Duration::from_secs(5), || channel.is_closed()),
        "the broker did not close the channel"
    );
}

/// Deletes `queue` on a channel of its own.
fn delete(connection: &cottontail::Connection, queue: &str) {
    let channel = connection.channel().unwrap();
    channel.queue_delete(queue, Default::default()).unwrap();
}

#[test]
fn auto_acked_deliveries_read_before_the_broker_closes_the_channel_are_handed_out_first() {
    const N: u32 = 200;
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = support::named_queue(&channel, "closed-behind");
    publish_numbered(&channel, &queue, 0..N);
    let (tx, rx) = mpsc::channel();
    channel
        .basic_consume(
            &queue,
            move |_, _, _, body| {
                tx.send(u32::from_be_bytes(body.try_into().expect("4-byte body")))
                    .unwrap()
            },
            BasicConsumeOptions {
                auto_ack: true,
                ..Default::default()
            },
        )
        .unwrap();
    closed_by_the_broker_behind_deliveries(&channel, &queue, N as usize, false);
    // Every message the broker counts delivered reaches the callback, in order, and only
    // then does start_consuming end with the channel's error.
    let error = channel.start_consuming().unwrap_err();
    assert_eq!(error.reply_code(), Some(404), "{error}");
    let got: Vec<u32> = rx.try_iter().collect();
    assert_eq!(got, (0..N).collect::<Vec<_>>());
    assert_eq!(support::message_count(&connection, &queue), 0);
    delete(&connection, &queue);
}

#[test]
fn manual_ack_deliveries_read_before_the_broker_closes_the_channel_go_back_to_the_queue() {
    const N: u32 = 200;
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = support::named_queue(&channel, "closed-behind-manual");
    publish_numbered(&channel, &queue, 0..N);
    let (tx, rx) = mpsc::channel();
    channel
        .basic_consume(
            &queue,
            move |_, method, _, _| tx.send(method.delivery_tag).unwrap(),
            BasicConsumeOptions::default(),
        )
        .unwrap();
    closed_by_the_broker_behind_deliveries(&channel, &queue, N as usize, true);
    // They cannot be acked on a closed channel: none reaches the callback, and the broker
    // holds every one again.
    let error = channel.start_consuming().unwrap_err();
    assert_eq!(error.reply_code(), Some(404), "{error}");
    assert_eq!(rx.try_iter().count(), 0);
    assert_eq!(support::message_count(&connection, &queue), N);
    delete(&connection, &queue);
}

/// A channel the broker closed keeps the deliveries it had read (to hand out the auto-acked
/// ones), but they no longer count against the connection's inbound limits: 24 MiB of
/// manual-ack messages on a closed channel nobody pumps must not pause reading for the other
/// channels (here: the broker's close of another channel is still read).
#[test]
fn what_a_channel_the_broker_closed_holds_does_not_pause_reading_for_the_others() {
    const N: usize = 24;
    let connection = connect();
    let held = connection.channel().unwrap();
    let queue = support::named_queue(&held, "closed-holding");
    let body = vec![7u8; 1 << 20];
    for _ in 0..N {
        held.basic_publish("", &queue, &body).unwrap();
    }
    held.basic_consume(&queue, |_, _, _, _| {}, BasicConsumeOptions::default())
        .unwrap();
    assert!(
        support::eventually(Duration::from_secs(20), || {
            support::broker_counts(&queue) == Some((0, N))
        }),
        "{:?}",
        support::broker_counts(&queue)
    );
    // A call the broker refuses (404) closes the channel; this caller reads past the soft
    // limit meanwhile, since it waits for the reply.
    let missing = held.queue_declare(
        &unique("missing"),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
    );
    assert_eq!(missing.unwrap_err().reply_code(), Some(404));
    let other = connection.channel().unwrap();
    other
        .basic_publish(&unique("missing-exchange"), "k", b"x")
        .unwrap();
    assert!(
        support::eventually(Duration::from_secs(5), || other.is_closed()),
        "the broker's close of another channel was not read while the closed one held {N} MiB"
    );
    // The broker requeued them with the channel.
    assert_eq!(support::message_count(&connection, &queue), N as u32);
    drop(held);
    delete(&connection, &queue);
}

/// `basic_cancel` of an `auto_ack` consumer whose channel the broker closed hands back the
/// messages that had arrived and were not handed out, as it does on an open channel (there
/// is no cancel to send: the consumer went with the channel).
#[test]
fn basic_cancel_on_a_channel_the_broker_closed_hands_back_its_auto_acked_messages() {
    const N: u32 = 20;
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = support::named_queue(&channel, "cancel-closed");
    publish_numbered(&channel, &queue, 0..N);
    let consumer = channel
        .consume(
            &queue,
            cottontail::ConsumeOptions {
                auto_ack: true,
                ..Default::default()
            },
        )
        .unwrap();
    let tag = consumer.consumer_tag().to_owned();
    closed_by_the_broker_behind_deliveries(&channel, &queue, N as usize, false);
    let returned = channel.basic_cancel(&tag).unwrap();
    let numbers: Vec<u32> = returned
        .iter()
        .map(|d| u32::from_be_bytes(d.body[..].try_into().expect("4-byte body")))
        .collect();
    assert_eq!(numbers, (0..N).collect::<Vec<_>>());
    drop(consumer);
    delete(&connection, &queue);
}

/// `consumer_tags()` lists no consumer once the channel is closed, by the application or by
/// the broker (a 404 here), as pika's does; before, the closed channel's consumers were still
/// listed.
#[test]
fn a_closed_channels_consumer_tags_are_empty() {
    let connection = connect();
    let queue = unique("closed-tags");
    for broker_closes in [false, true] {
        let channel = connection.channel().unwrap();
        channel
            .queue_declare(
                &queue,
                QueueDeclareOptions {
                    auto_delete: true,
                    ..Default::default()
                },
            )
            .unwrap();
        channel
            .basic_consume(&queue, |_, _, _, _| {}, BasicConsumeOptions::default())
            .unwrap();
        assert_eq!(channel.consumer_tags().len(), 1);
        if broker_closes {
            let missing = channel.queue_declare(
                &unique("no-such-queue"),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
            );
            assert!(
                matches!(
                    missing,
                    Err(Error::ChannelClosed {
                        reply_code: 404,
                        ..
                    })
                ),
                "{missing:?}"
            );
        } else {
            channel.close().unwrap();
        }
        assert!(channel.is_closed());
        assert_eq!(
            channel.consumer_tags(),
            Vec::<String>::new(),
            "broker closed it: {broker_closes}"
        );
    }
    connection.close().unwrap();
}

/// A callback that cancels its own consumer and starts a new one under the same tag: the new
/// consumer's callback gets the later messages (the running one is not put back in its place).
#[test]
fn a_callback_that_replaces_its_consumer_under_the_same_tag_hands_over_to_the_new_one() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = unique("replace-same-tag");
    channel
        .queue_declare(&queue, QueueDeclareOptions::default())
        .unwrap();
    publish_numbered(&channel, &queue, 0..1);
    let (tx, rx) = mpsc::channel::<(&'static str, u32)>();
    let tag = String::from("same-tag");
    let options = || BasicConsumeOptions {
        auto_ack: true,
        consumer_tag: Some(tag.clone()),
        ..Default::default()
    };
    let (old_tx, new_tx) = (tx.clone(), tx);
    let queue2 = queue.clone();
    let mut new_options = Some(options());
    channel
        .basic_consume(
            &queue,
            move |ch, _, _, body| -> cottontail::Result<()> {
                let n = u32::from_be_bytes(body.try_into().expect("4-byte body"));
                old_tx.send(("old", n)).unwrap();
                let Some(options) = new_options.take() else {
                    return ch.stop_consuming(None);
                };
                ch.basic_cancel("same-tag")?;
                let new_tx = new_tx.clone();
                ch.basic_consume(
                    &queue2,
                    move |ch, _, _, body| -> cottontail::Result<()> {
                        let n = u32::from_be_bytes(body.try_into().expect("4-byte body"));
                        new_tx.send(("new", n)).unwrap();
                        if n == 3 {
                            ch.stop_consuming(None)?;
                        }
                        Ok(())
                    },
                    options,
                )?;
                publish_numbered(ch, &queue2, 1..4);
                Ok(())
            },
            options(),
        )
        .unwrap();
    channel.start_consuming().unwrap();
    let got: Vec<_> = rx.try_iter().collect();
    assert_eq!(got, [("old", 0), ("new", 1), ("new", 2), ("new", 3)]);
}

/// Large bodies consumed by a callback are assembled in the buffers of earlier ones (the
/// callback only borrows them): each callback still sees exactly its own message, whatever
/// the sizes before it (larger, smaller, small ones between).
#[test]
fn large_bodies_consumed_by_a_callback_each_arrive_whole_and_alone() {
    let sizes: Vec<usize> = vec![
        1 << 20,
        300_000,
        10,
        (1 << 20) + 5,
        131_072,
        2 << 20,
        700_000,
        0,
        1 << 20,
        400_000,
    ];
    let body_of = |i: usize, size: usize| -> Vec<u8> {
        (0..size)
            .map(|j| (j.wrapping_mul(31).wrapping_add(i * 7919) >> 3) as u8)
            .collect()
    };
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = unique("large-bodies");
    channel
        .queue_declare(&queue, QueueDeclareOptions::default())
        .unwrap();
    for (i, &size) in sizes.iter().enumerate() {
        channel
            .basic_publish("", &queue, &body_of(i, size))
            .unwrap();
    }
    let (tx, rx) = mpsc::channel();
    let expected = sizes.len();
    let mut seen = 0;
    channel
        .basic_consume(
            &queue,
            move |ch, method, _, body| -> cottontail::Result<()> {
                tx.send(body.to_vec()).unwrap();
                ch.basic_ack(method.delivery_tag, false)?;
                seen += 1;
                if seen == expected {
                    ch.stop_consuming(None)?;
                }
                Ok(())
            },
            BasicConsumeOptions::default(),
        )
        .unwrap();
    channel.start_consuming().unwrap();
    let got: Vec<Vec<u8>> = rx.try_iter().collect();
    assert_eq!(got.len(), sizes.len());
    for (i, (body, &size)) in got.iter().zip(&sizes).enumerate() {
        assert_eq!(body.len(), size, "message {i}");
        assert!(*body == body_of(i, size), "message {i}: other bytes");
    }
}

/// A large body's buffer handed back by a callback is reused only for a body that needs at
/// least half of it: 128 KiB messages fetched with basic_get after 4 MiB ones consumed by a
/// callback each hold a buffer of about their own size (what the inbound limits count), not
/// the 4 MiB one.
#[test]
fn a_body_never_holds_a_buffer_much_larger_than_itself_after_large_ones_were_consumed() {
    within(Duration::from_secs(60), "spare buffer size", || {
        let connection = connect();
        let ch = connection.channel().unwrap();
        let big_q = exclusive_queue(&ch);
        let small_q = exclusive_queue(&ch);
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        ch.basic_consume(
            &big_q,
            move |ch, method, _, _body| -> cottontail::Result<()> {
                counter.fetch_add(1, Ordering::SeqCst);
                ch.basic_ack(method.delivery_tag, false)
            },
            BasicConsumeOptions::default(),
        )
        .unwrap();
        let mut kept = Vec::new();
        for i in 0..8 {
            ch.basic_publish("", &big_q, &vec![1u8; 4 << 20]).unwrap();
            ch.basic_publish("", &small_q, &vec![2u8; 128 * 1024])
                .unwrap();
            while seen.load(Ordering::SeqCst) <= i {
                connection
                    .process_data_events(Duration::from_secs(5))
                    .unwrap();
            }
            let got = ch.basic_get(&small_q, true).unwrap().expect("a message");
            kept.push(got.body);
        }
        let held: usize = kept.iter().map(|b| b.capacity()).sum();
        let data: usize = kept.iter().map(|b| b.len()).sum();
        assert!(
            held <= 2 * data,
            "{data} bytes of bodies kept hold {held} bytes of buffers"
        );
    });
}
