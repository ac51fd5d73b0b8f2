//! Returns in confirm mode, against a real RabbitMQ: with many threads publishing mandatory
//! messages on one channel, the broker acks several at once (`multiple`), and each
//! `basic.return` must still be charged to the very message that was returned.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use cottontail::{Channel, Error, PublishOptions};
use support::{connect, exclusive_queue, unique};

const THREADS: u32 = 8;
const PER_THREAD: u32 = 2_000;

/// Every fourth message goes to a routing key no queue is bound to.
fn unroutable(i: u32) -> bool {
    i % 4 == 3
}

/// Runs `publish(thread, i, routing_key)` for every message of every thread, all threads on
/// `channel` at once; returns, per thread, what each call gave back, in order.
fn publish_from_threads<T: Send>(
    channel: &Channel,
    queue: &str,
    nowhere: &str,
    publish: impl Fn(&Channel, &str, &[u8]) -> T + Sync,
) -> Vec<Vec<T>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let publish = &publish;
                s.spawn(move || {
                    (0..PER_THREAD)
                        .map(|i| {
                            let key = if unroutable(i) { nowhere } else { queue };
                            let body = format!("thread {t} message {i}");
                            publish(channel, key, body.as_bytes())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn concurrent_mandatory_publishes_each_report_their_own_return() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = exclusive_queue(&channel);
    let nowhere = unique("nowhere");
    channel.confirm_delivery().unwrap();

    let results = publish_from_threads(&channel, &queue, &nowhere, |ch, key, body| {
        ch.basic_publish_with(
            "",
            key,
            body,
            &PublishOptions {
                mandatory: true,
                ..Default::default()
            },
        )
    });

    let mut wrong = Vec::new();
    for (t, results) in results.iter().enumerate() {
        for (i, result) in results.iter().enumerate() {
            let ok = if unroutable(i as u32) {
                matches!(result, Err(Error::Unroutable { reply_code: 312, reply_text, .. })
                    if reply_text == "NO_ROUTE")
            } else {
                result.is_ok()
            };
            if !ok {
                wrong.push(format!("thread {t} message {i}: {result:?}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} publishes reported the wrong outcome, e.g. {:?}",
        wrong.len(),
        THREADS * PER_THREAD,
        &wrong[..wrong.len().min(10)]
    );
    let routable = THREADS * (0..PER_THREAD).filter(|&i| !unroutable(i)).count() as u32;
    assert_eq!(support::message_count(&connection, &queue), routable);
    channel.queue_delete(&queue, Default::default()).unwrap();
}

#[test]
fn deferred_mandatory_publishes_report_exactly_the_returned_sequence_numbers() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = exclusive_queue(&channel);
    let nowhere = unique("nowhere");
    channel.confirm_delivery().unwrap();

    let seqs = publish_from_threads(&channel, &queue, &nowhere, |ch, key, body| {
        ch.basic_publish_deferred(
            "",
            key,
            body,
            &PublishOptions {
                mandatory: true,
                ..Default::default()
            },
        )
        .unwrap()
    });
    let outcome = channel
        .wait_for_confirms(Some(Duration::from_secs(60)))
        .unwrap();

    let expected: BTreeSet<u64> = seqs
        .iter()
        .flat_map(|seqs| {
            seqs.iter()
                .enumerate()
                .filter(|&(i, _)| unroutable(i as u32))
                .map(|(_, &seq)| seq)
        })
        .collect();
    let returned: BTreeSet<u64> = outcome.returned.iter().copied().collect();
    assert_eq!(returned.len(), outcome.returned.len(), "no duplicates");
    assert!(outcome.nacked.is_empty(), "{:?}", outcome.nacked);
    let wrongly_returned: Vec<_> = returned.difference(&expected).collect();
    let missed: Vec<_> = expected.difference(&returned).collect();
    assert!(
        wrongly_returned.is_empty() && missed.is_empty(),
        "{} routable messages reported returned (e.g. {:?}), {} returned ones missed (e.g. {:?})",
        wrongly_returned.len(),
        &wrongly_returned[..wrongly_returned.len().min(10)],
        missed.len(),
        &missed[..missed.len().min(10)]
    );
    let routable = THREADS * (0..PER_THREAD).filter(|&i| !unroutable(i)).count() as u32;
    assert_eq!(support::message_count(&connection, &queue), routable);
    channel.queue_delete(&queue, Default::default()).unwrap();
}

/// `basic_publish_with` in confirm mode waits for its own message's outcome, while another
/// thread waits for windows of deferred publishes with `wait_for_confirms` on the same channel:
/// each nack reaches exactly one of them, its own publisher (never a window's wait, which
/// used to take it and leave the publisher a plain `Ok`).
#[test]
fn a_publish_waiting_for_its_confirm_keeps_its_nack_from_a_concurrent_window() {
    use std::sync::atomic::{AtomicBool, Ordering};

    const PUBLISHERS: usize = 4;
    const EACH: usize = 150;
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = support::one_message_queue(&channel);
    channel.confirm_delivery().unwrap();
    // The queue is full from here on: the broker nacks every later publish.
    channel.basic_publish("", &queue, b"first").unwrap();

    let done = AtomicBool::new(false);
    let (own, deferred, windows) = std::thread::scope(|s| {
        let publishers: Vec<_> = (0..PUBLISHERS)
            .map(|t| {
                let (channel, queue) = (&channel, &queue);
                s.spawn(move || {
                    (0..EACH)
                        .map(|i| {
                            let body = format!("publisher {t} message {i}");
                            channel.basic_publish_with(
                                "",
                                queue,
                                body.as_bytes(),
                                &Default::default(),
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let deferring = s.spawn(|| {
            (0..EACH)
                .map(|i| {
                    let body = format!("deferred {i}");
                    channel
                        .basic_publish_deferred("", &queue, body.as_bytes(), &Default::default())
                        .unwrap()
                })
                .collect::<BTreeSet<u64>>()
        });
        let waiter = s.spawn(|| {
            let mut nacked = Vec::new();
            loop {
                let last = done.load(Ordering::SeqCst);
                let outcome = channel
                    .wait_for_confirms(Some(Duration::from_secs(30)))
                    .unwrap();
                assert!(outcome.returned.is_empty() && outcome.unknown.is_empty());
                nacked.extend(outcome.nacked);
                if last {
                    return nacked;
                }
            }
        });
        let own: Vec<_> = publishers
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let deferred = deferring.join().unwrap();
        done.store(true, Ordering::SeqCst);
        (own, deferred, waiter.join().unwrap())
    });

    let mut own_seqs = BTreeSet::new();
    for result in &own {
        match result {
            Err(Error::Nack { delivery_tag, .. }) => {
                own_seqs.insert(*delivery_tag);
            }
            other => panic!("a publish into a full queue reported {other:?}, not its nack"),
        }
    }
    assert_eq!(own_seqs.len(), PUBLISHERS * EACH);
    let windows_seqs: BTreeSet<u64> = windows.iter().copied().collect();
    assert_eq!(windows_seqs.len(), windows.len(), "no nack reported twice");
    assert_eq!(
        windows_seqs, deferred,
        "the windows report the deferred publishes' nacks, and only those"
    );
    assert_eq!(support::message_count(&connection, &queue), 1);
}

/// An unroutable mandatory message published just before `close()`: RabbitMQ sends its
/// return, then its ack, while the channel closes; the return still marks the publish
/// returned (before, it was dropped with the channel's other late messages and the ack
/// reported the message confirmed).
#[test]
fn a_return_that_arrives_while_the_channel_closes_still_marks_its_publish_returned() {
    let connection = connect();
    for round in 0..20 {
        let channel = connection.channel().unwrap();
        channel.confirm_delivery().unwrap();
        let seq = channel
            .basic_publish_deferred(
                "",
                &unique("nowhere"),
                b"unroutable",
                &PublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
            )
            .unwrap();
        channel.close().unwrap();
        let outcome = channel
            .wait_for_confirms(Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(outcome.returned, vec![seq], "round {round}: {outcome:?}");
        assert!(!outcome.all_confirmed(), "round {round}");
    }
}

/// `confirm_delivery()` on one thread while another publishes on the same channel: the
/// publishes queued before the select are not numbered, the ones after it are, exactly as the
/// broker numbers them, so every confirm settles its own publish and nothing stays waiting
/// (before, a publish between the tracker and the select shifted every later confirm by one).
#[test]
fn confirm_delivery_while_another_thread_publishes_numbers_publishes_as_the_broker_does() {
    let connection = connect();
    for round in 0..30 {
        let channel = connection.channel().unwrap();
        let queue = exclusive_queue(&channel);
        let stop = std::sync::atomic::AtomicBool::new(false);
        let numbered = std::thread::scope(|s| {
            let publisher = s.spawn(|| {
                let mut numbered = Vec::new();
                // At most 5,000 after the select: the broker confirms them within the wait
                // below even on a loaded machine (unbounded, 70,000 once took over 5 s).
                while !stop.load(std::sync::atomic::Ordering::SeqCst) && numbered.len() < 5_000 {
                    let seq = channel
                        .basic_publish_deferred("", &queue, b"m", &PublishOptions::default())
                        .unwrap();
                    if seq > 0 {
                        numbered.push(seq);
                    }
                }
                numbered
            });
            std::thread::sleep(Duration::from_millis(2));
            channel.confirm_delivery().unwrap();
            std::thread::sleep(Duration::from_millis(5));
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            publisher.join().unwrap()
        });
        // Numbered 1, 2, 3... with no gap, and every one of them confirmed.
        assert_eq!(
            numbered,
            (1..=numbered.len() as u64).collect::<Vec<_>>(),
            "round {round}"
        );
        let outcome = channel
            .wait_for_confirms(Some(Duration::from_secs(30)))
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert!(outcome.all_confirmed(), "round {round}: {outcome:?}");
        // And the next publish waits for its own confirm, not one that never comes.
        channel
            .basic_publish_with("", &queue, b"last", &PublishOptions::default())
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        channel.close().unwrap();
    }
}

/// In confirm mode with a return callback registered, an unroutable mandatory message is
/// reported both ways, as pika both raises `UnroutableError` and runs the return callbacks:
/// `basic_publish_with` fails with `Error::Unroutable` and `wait_for_confirms` lists it in
/// `returned_messages`, and the return callback gets each too. Before, the confirm took the
/// return and the callback never ran.
#[test]
fn in_confirm_mode_returns_reach_the_return_callbacks_too() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    channel.add_on_return_callback(move |_, method, _, body| {
        let _ = tx.send((method.reply_code, body.to_vec()));
    });
    channel.confirm_delivery().unwrap();
    let mandatory = PublishOptions {
        mandatory: true,
        ..Default::default()
    };
    let nowhere = unique("nowhere");
    let published = channel.basic_publish_with("", &nowhere, b"direct", &mandatory);
    assert!(
        matches!(
            published,
            Err(Error::Unroutable {
                reply_code: 312,
                ..
            })
        ),
        "{published:?}"
    );
    channel
        .basic_publish_deferred("", &nowhere, b"deferred", &mandatory)
        .unwrap();
    let outcome = channel.wait_for_confirms(None).unwrap();
    let bodies: Vec<&[u8]> = outcome
        .returned_messages
        .iter()
        .map(|(_, m)| &m.body[..])
        .collect();
    assert_eq!(bodies, vec![&b"deferred"[..]]);
    connection.process_data_events(Duration::ZERO).unwrap();
    let called: Vec<_> = rx.try_iter().collect();
    assert_eq!(
        called,
        vec![(312, b"direct".to_vec()), (312, b"deferred".to_vec())],
        "what the return callback got"
    );
    connection.close().unwrap();
}

/// The consumer loop runs return callbacks and consumer callbacks in the order their messages
/// arrived, as pika dispatches them: a return that arrived after three deliveries and before
/// three more runs between them. Before, every queued delivery went first, so a return
/// waited behind a consumer whose queue never ran dry.
#[test]
fn return_callbacks_run_between_the_deliveries_they_arrived_between() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = exclusive_queue(&channel);
    let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = order.clone();
    // Whichever callback runs seventh ends the loop.
    channel.add_on_return_callback(move |ch, _, _, body| {
        let mut seen = seen.lock().unwrap();
        seen.push(format!("r:{}", String::from_utf8_lossy(body)));
        if seen.len() == 7 {
            ch.stop_consuming(None).unwrap();
        }
    });
    let seen = order.clone();
    channel
        .basic_consume(
            &queue,
            move |ch, deliver, _, body| {
                ch.basic_ack(deliver.delivery_tag, false).unwrap();
                let mut seen = seen.lock().unwrap();
                seen.push(format!("d:{}", String::from_utf8_lossy(body)));
                if seen.len() == 7 {
                    ch.stop_consuming(None).unwrap();
                }
            },
            Default::default(),
        )
        .unwrap();
    channel.confirm_delivery().unwrap();
    let publish = |key: &str, body: &str| {
        channel.basic_publish_with(
            "",
            key,
            body.as_bytes(),
            &PublishOptions {
                mandatory: true,
                ..Default::default()
            },
        )
    };
    // Each step is on its way before the next is sent: the broker counts deliveries unacked
    // once its channel process has passed them to the socket's writer, which sends what the
    // channel process gives it in order; the return precedes its publish's confirm.
    let arrived = |n: usize| {
        assert!(
            support::eventually(Duration::from_secs(20), || support::broker_counts(&queue)
                == Some((0, n))),
            "{n} deliveries were not sent: {:?}",
            support::broker_counts(&queue)
        );
    };
    for body in ["1", "2", "3"] {
        publish(&queue, body).unwrap();
    }
    arrived(3);
    let nowhere = unique("nowhere");
    assert!(matches!(
        publish(&nowhere, "returned"),
        Err(Error::Unroutable { .. })
    ));
    for body in ["4", "5", "6"] {
        publish(&queue, body).unwrap();
    }
    arrived(6);
    channel.start_consuming().unwrap();
    assert_eq!(
        *order.lock().unwrap(),
        ["d:1", "d:2", "d:3", "r:returned", "d:4", "d:5", "d:6"],
        "the order the callbacks ran in"
    );
    connection.close().unwrap();
}
