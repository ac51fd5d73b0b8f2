//! Errors returned by callbacks (issue 13), against a real RabbitMQ: what consumer, timer and
//! threadsafe callbacks may return, the error that ends the call that ran them, what happens
//! to the message a failed consumer callback was handling, `add_callback_threadsafe` on a
//! closed connection, and `stop_consuming(Some(tag))` / `stop_consuming(None)`.

mod support;

use std::error::Error as _;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use cottontail::{
    BasicConsumeOptions, BoxError, Channel, Connection, ConsumeOptions, Consumed, Error,
    QueueDeclareOptions,
};
use support::consuming::{passive, publish, settle, start_consuming_on_a_thread, Cleanup};
use support::{broker_counts, connect, eventually, unique, within};

/// An application's own error type.
#[derive(Debug, PartialEq)]
struct BadOrder {
    id: u32,
}

impl std::fmt::Display for BadOrder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "order {} is not valid", self.id)
    }
}

impl std::error::Error for BadOrder {}

/// Parses an order id; an odd id is a bad order.
fn check_order(body: &[u8]) -> Result<u32, BadOrder> {
    let id: u32 = std::str::from_utf8(body)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if id % 2 == 1 {
        return Err(BadOrder { id });
    }
    Ok(id)
}

/// Declares a named queue that the test deletes when it ends.
fn declare(channel: &Channel, prefix: &str, cleanup: &mut Cleanup) -> String {
    let queue = unique(prefix);
    channel
        .queue_declare(&queue, QueueDeclareOptions::default())
        .unwrap();
    cleanup.0.push(queue.clone());
    queue
}

/// Runs `start_consuming` (on a thread of its own, so that a callback error that does not end
/// it fails the test instead of hanging it) and returns its error.
fn consume_until_error(channel: &Channel) -> Error {
    let channel = channel.clone();
    within(
        Duration::from_secs(10),
        "start_consuming after the callback failed",
        move || channel.start_consuming(),
    )
    .expect_err("start_consuming ended with the callback's error")
}

/// The broker's consumer count of `queue`, asked on a channel of its own.
fn consumer_count(connection: &Connection, queue: &str) -> u32 {
    let channel = connection.channel().unwrap();
    let ok = channel.queue_declare(queue, passive()).unwrap();
    channel.close().unwrap();
    ok.consumer_count
}

/// Checks, after a callback failed on the only message of `queue` without acking it on
/// `channel`: the broker holds it unacked (not acked, not requeued: it does not come back to
/// the failed consumer, whose callback ran `calls` times); once `channel` closes, the next
/// consumer gets it again, marked redelivered.
fn assert_unacked_then_redelivered(
    connection: &Connection,
    channel: &Channel,
    queue: &str,
    body: &[u8],
    calls: &AtomicUsize,
) {
    let before = calls.load(Ordering::SeqCst);
    connection
        .process_data_events(Duration::from_millis(300))
        .expect("no callback ran again");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        before,
        "the message came back to the failed consumer"
    );
    assert!(
        eventually(Duration::from_secs(5), || broker_counts(queue)
            == Some((0, 1))),
        "the broker should hold the message unacked after the failed callback: \
         (ready, unacked) = {:?}",
        broker_counts(queue)
    );
    channel.close().unwrap();
    let next = connection.channel().unwrap();
    let mut consumer = next
        .consume(
            queue,
            ConsumeOptions {
                inactivity_timeout: Some(Duration::from_secs(5)),
                ..Default::default()
            },
        )
        .unwrap();
    match consumer.next() {
        Some(Ok(Consumed::Delivery(d))) => {
            assert_eq!(d.body, body);
            assert!(
                d.method.redelivered,
                "the message was not marked redelivered"
            );
            next.basic_ack(d.method.delivery_tag, false).unwrap();
        }
        other => panic!("the next consumer got {other:?} instead of the message"),
    }
    consumer.cancel().unwrap();
    assert!(
        eventually(Duration::from_secs(5), || broker_counts(queue)
            == Some((0, 0))),
        "acked by the next consumer: {:?}",
        broker_counts(queue)
    );
}

#[test]
fn an_io_error_from_a_consumer_callback_ends_start_consuming_and_the_message_stays_unacked() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let mut cleanup = Cleanup(Vec::new());
    let queue = declare(&channel, "cb-io-error", &mut cleanup);
    publish(&channel, &queue, b"report-1");
    let calls = Arc::new(AtomicUsize::new(0));
    {
        let calls = calls.clone();
        channel
            .basic_consume(
                &queue,
                move |_, _, _, _| -> io::Result<()> {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        "disk says no",
                    ))
                },
                BasicConsumeOptions::default(),
            )
            .unwrap();
    }

    let err = consume_until_error(&channel);

    let Error::Callback(ref callback_error) = err else {
        panic!("expected Error::Callback, got {err:?}");
    };
    assert!(!callback_error.is_panic());
    let source = err.source().expect("Error::Callback has a source");
    let io_error = source
        .downcast_ref::<io::Error>()
        .unwrap_or_else(|| panic!("the source is not the io::Error: {source:?}"));
    assert_eq!(io_error.kind(), io::ErrorKind::PermissionDenied);
    assert_eq!(io_error.to_string(), "disk says no");
    assert_eq!(
        err.to_string(),
        "a callback failed",
        "the source's text is not repeated"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the callback ran once");
    // The consumer is still registered (as in pika): consuming could go on.
    assert_eq!(channel.consumer_tags().len(), 1);
    assert_unacked_then_redelivered(&connection, &channel, &queue, b"report-1", &calls);
}

#[test]
fn an_application_error_from_a_consumer_callback_ends_start_consuming_with_it_as_source() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let mut cleanup = Cleanup(Vec::new());
    let queue = declare(&channel, "cb-app-error", &mut cleanup);
    publish(&channel, &queue, b"2");
    publish(&channel, &queue, b"7");
    let (acked_tx, acked) = mpsc::channel();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    channel
        .basic_consume(
            &queue,
            move |ch, method, _, body| -> Result<(), BoxError> {
                counter.fetch_add(1, Ordering::SeqCst);
                // `?` on four error types: Utf8Error, BadOrder, cottontail::Error, SendError.
                std::str::from_utf8(body)?;
                let id = check_order(body)?;
                ch.basic_ack(method.delivery_tag, false)?;
                acked_tx.send(id)?;
                Ok(())
            },
            BasicConsumeOptions::default(),
        )
        .unwrap();

    let err = consume_until_error(&channel);

    assert!(matches!(err, Error::Callback(_)), "got {err:?}");
    let source = err.source().expect("Error::Callback has a source");
    assert_eq!(
        source.downcast_ref::<BadOrder>(),
        Some(&BadOrder { id: 7 }),
        "the source is not the application's error: {source:?}"
    );
    assert_eq!(source.to_string(), "order 7 is not valid");
    assert_eq!(acked.try_iter().collect::<Vec<_>>(), vec![2]);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_unacked_then_redelivered(&connection, &channel, &queue, b"7", &calls);
}

#[test]
fn a_callback_whose_basic_ack_fails_ends_start_consuming_with_that_cottontail_error() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = support::exclusive_queue(&channel);
    let missing = unique("cb-missing");
    publish(&channel, &queue, b"x");
    let (seen_tx, seen) = mpsc::channel();
    channel
        .basic_consume(
            &queue,
            move |ch, method, _, _| {
                // The broker closes the channel under the callback (404), so its ack fails.
                let declared = ch.queue_declare(&missing, passive());
                assert!(declared.is_err(), "{missing} exists");
                let acked = ch.basic_ack(method.delivery_tag, false);
                seen_tx.send(acked.clone()).unwrap();
                acked
            },
            BasicConsumeOptions::default(),
        )
        .unwrap();

    let err = consume_until_error(&channel);

    let ack_error = seen
        .recv_timeout(Duration::from_secs(1))
        .expect("the callback ran")
        .expect_err("basic_ack on the closed channel failed");
    assert!(
        matches!(
            ack_error,
            Error::ChannelClosed {
                reply_code: 404,
                ..
            }
        ),
        "basic_ack failed with {ack_error:?}"
    );
    // The very error, not wrapped in Error::Callback.
    assert_eq!(err, ack_error);
    assert!(err.source().is_none());
}

#[test]
fn a_timer_callback_error_comes_out_of_process_data_events_and_the_next_timer_waits() {
    let connection = connect();
    let later_ran = Arc::new(AtomicUsize::new(0));
    connection.call_later(Duration::from_millis(50), || -> io::Result<()> {
        Err(io::Error::new(io::ErrorKind::TimedOut, "the timer failed"))
    });
    {
        let later_ran = later_ran.clone();
        connection.call_later(Duration::from_millis(60), move || {
            later_ran.fetch_add(1, Ordering::SeqCst);
        });
    }
    let started = Instant::now();

    let err = connection
        .process_data_events(Duration::from_secs(5))
        .unwrap_err();

    assert!(
        started.elapsed() < Duration::from_secs(4),
        "process_data_events returned after {:?}",
        started.elapsed()
    );
    assert!(matches!(err, Error::Callback(_)), "got {err:?}");
    let io_error = err
        .source()
        .and_then(|s| s.downcast_ref::<io::Error>())
        .unwrap_or_else(|| panic!("the source is not the io::Error: {err:?}"));
    assert_eq!(io_error.kind(), io::ErrorKind::TimedOut);
    assert_eq!(io_error.to_string(), "the timer failed");
    // The failed timer is gone, the other one runs at the next call, once.
    assert!(eventually(Duration::from_secs(2), || {
        connection
            .process_data_events(Duration::from_millis(100))
            .expect("the second timer does not fail");
        later_ran.load(Ordering::SeqCst) == 1
    }));
    connection
        .process_data_events(Duration::from_millis(200))
        .unwrap();
    assert_eq!(later_ran.load(Ordering::SeqCst), 1);
    assert!(connection.is_open());
}

#[test]
fn a_timer_callback_error_ends_sleep_early() {
    let connection = connect();
    connection.call_later(Duration::from_millis(50), || {
        Err::<(), _>(BadOrder { id: 3 })
    });
    let started = Instant::now();

    let err = connection.sleep(Duration::from_secs(5)).unwrap_err();

    assert!(
        started.elapsed() < Duration::from_secs(4),
        "sleep returned after {:?}",
        started.elapsed()
    );
    let source = err.source().expect("a source");
    assert_eq!(source.downcast_ref::<BadOrder>(), Some(&BadOrder { id: 3 }));
}

#[test]
fn a_panicking_timer_becomes_a_callback_error_and_the_connection_goes_on() {
    let connection = connect();
    connection.call_later(Duration::from_millis(10), || -> cottontail::Result<()> {
        panic!("the timer's bug")
    });

    let err = connection
        .process_data_events(Duration::from_secs(5))
        .unwrap_err();

    let Error::Callback(ref callback_error) = err else {
        panic!("expected Error::Callback, got {err:?}");
    };
    assert!(callback_error.is_panic());
    let message = err.source().expect("a source").to_string();
    assert!(
        message.contains("the timer's bug") && message.contains("call_later"),
        "the panic message is missing: {message}"
    );
    // The connection and its event loop work on.
    let ran = Arc::new(AtomicUsize::new(0));
    let counter = ran.clone();
    connection.call_later(Duration::from_millis(10), move || {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    connection.sleep(Duration::from_millis(200)).unwrap();
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    assert!(connection.is_open());
}

#[test]
fn a_threadsafe_callback_error_comes_out_of_start_consuming() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = support::exclusive_queue(&channel);
    channel
        .basic_consume(&queue, |_, _, _, _| {}, BasicConsumeOptions::default())
        .unwrap();
    let (consumer_thread, result) = start_consuming_on_a_thread(&channel);
    settle();
    let (ran_tx, ran_on) = mpsc::channel();

    connection
        .add_callback_threadsafe(move || {
            ran_tx.send(thread::current().id()).unwrap();
            Err::<(), _>(BadOrder { id: 9 })
        })
        .unwrap();

    let err = result
        .recv_timeout(Duration::from_secs(5))
        .expect("start_consuming returned within 5 s")
        .unwrap_err();
    assert_eq!(ran_on.recv().unwrap(), consumer_thread);
    assert!(matches!(err, Error::Callback(_)), "got {err:?}");
    let source = err.source().expect("a source");
    assert_eq!(source.downcast_ref::<BadOrder>(), Some(&BadOrder { id: 9 }));
    // Nothing else stopped: the consumer is still there and the channel open.
    assert_eq!(channel.consumer_tags().len(), 1);
    assert!(channel.is_open());
}

#[test]
fn a_threadsafe_callback_error_is_yielded_by_a_consume_iteration_which_goes_on() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = support::exclusive_queue(&channel);
    let mut consumer = channel
        .consume(
            &queue,
            ConsumeOptions {
                auto_ack: true,
                inactivity_timeout: Some(Duration::from_secs(5)),
                ..Default::default()
            },
        )
        .unwrap();
    connection
        .add_callback_threadsafe(|| -> io::Result<()> {
            Err(io::Error::new(io::ErrorKind::InvalidData, "bad data"))
        })
        .unwrap();

    let err = match consumer.next() {
        Some(Err(e)) => e,
        other => panic!("expected the callback's error, got {other:?}"),
    };
    let io_error = err
        .source()
        .and_then(|s| s.downcast_ref::<io::Error>())
        .unwrap_or_else(|| panic!("the source is not the io::Error: {err:?}"));
    assert_eq!(io_error.kind(), io::ErrorKind::InvalidData);

    // The iterator goes on.
    publish(&channel, &queue, b"after");
    match consumer.next() {
        Some(Ok(Consumed::Delivery(d))) => assert_eq!(d.body, b"after"),
        other => panic!("expected the message after the error, got {other:?}"),
    }
}

#[test]
fn add_callback_threadsafe_on_a_closed_connection_is_its_close_reason() {
    let connection = connect();
    connection
        .add_callback_threadsafe(|| ())
        .expect("accepted while the connection is open");
    connection.close().unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let counter = ran.clone();

    let result = connection.add_callback_threadsafe(move || {
        counter.fetch_add(1, Ordering::SeqCst);
    });

    let err = result.expect_err("add_callback_threadsafe on a closed connection");
    assert!(
        matches!(err, Error::ConnectionClosedByClient { .. }),
        "got {err:?}"
    );
    assert_eq!(Some(err), connection.close_reason());
    assert_eq!(ran.load(Ordering::SeqCst), 0);
}

#[test]
fn stop_consuming_with_a_tag_cancels_only_that_consumer_and_none_cancels_all() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let mut cleanup = Cleanup(Vec::new());
    let queues: Vec<String> = (0..3)
        .map(|i| declare(&channel, &format!("stop-tag-{i}"), &mut cleanup))
        .collect();
    let (got_tx, got) = mpsc::channel::<(String, Vec<u8>)>();
    let tags: Vec<String> = queues
        .iter()
        .map(|queue| {
            let got_tx = got_tx.clone();
            channel
                .basic_consume(
                    queue,
                    move |ch, method, _, body| {
                        got_tx
                            .send((method.consumer_tag.to_string(), body.to_vec()))
                            .unwrap();
                        ch.basic_ack(method.delivery_tag, false)
                    },
                    BasicConsumeOptions::default(),
                )
                .unwrap()
        })
        .collect();
    let (_, result) = start_consuming_on_a_thread(&channel);
    let receive = |n: usize| -> Vec<(String, Vec<u8>)> {
        let mut all: Vec<_> = (0..n)
            .map(|_| {
                got.recv_timeout(Duration::from_secs(5))
                    .expect("a delivery within 5 s")
            })
            .collect();
        all.sort();
        all
    };
    for queue in &queues {
        publish(&channel, queue, b"first");
    }
    let mut expected: Vec<_> = tags
        .iter()
        .map(|t| (t.clone(), b"first".to_vec()))
        .collect();
    expected.sort();
    assert_eq!(receive(3), expected, "every consumer receives at first");

    channel.stop_consuming(Some(&tags[0])).unwrap();

    let mut left = vec![tags[1].clone(), tags[2].clone()];
    left.sort();
    let mut now = channel.consumer_tags();
    now.sort();
    assert_eq!(now, left);
    assert_eq!(consumer_count(&connection, &queues[0]), 0);
    assert_eq!(consumer_count(&connection, &queues[1]), 1);
    assert_eq!(consumer_count(&connection, &queues[2]), 1);
    for queue in &queues {
        publish(&channel, queue, b"second");
    }
    let mut expected: Vec<_> = left
        .iter()
        .map(|t| (t.clone(), b"second".to_vec()))
        .collect();
    expected.sort();
    assert_eq!(receive(2), expected, "the other consumers keep receiving");
    assert!(
        got.recv_timeout(Duration::from_millis(300)).is_err(),
        "the cancelled consumer received"
    );
    assert!(
        eventually(Duration::from_secs(5), || broker_counts(&queues[0])
            == Some((1, 0))),
        "the cancelled consumer's queue keeps its message: {:?}",
        broker_counts(&queues[0])
    );
    assert!(
        result.recv_timeout(Duration::from_millis(300)).is_err(),
        "start_consuming returned while consumers were left"
    );

    channel.stop_consuming(None).unwrap();

    result
        .recv_timeout(Duration::from_secs(5))
        .expect("start_consuming returned within 5 s of stop_consuming(None)")
        .expect("start_consuming ended without error");
    assert!(channel.consumer_tags().is_empty());
    for queue in &queues {
        assert_eq!(consumer_count(&connection, queue), 0, "{queue}");
    }
}
