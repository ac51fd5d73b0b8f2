//! pika 1.4 parity: pika programs ported to cottontail, each asserting what pika 1.4.4 did
//! against RabbitMQ 3.10 (the Python original is in each test's doc comment), or, where
//! cottontail differs on purpose, that its documented idiom gives pika's result.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cottontail::{BasicConsumeOptions, Channel, ConsumeOptions, Consumed, QueueDeclareOptions};
use support::consuming::passive;
use support::{connect, exclusive_queue, within};

const LIMIT: Duration = Duration::from_secs(30);

fn iterate(inactivity_ms: u64, auto_ack: bool) -> ConsumeOptions {
    ConsumeOptions {
        auto_ack,
        inactivity_timeout: Some(Duration::from_millis(inactivity_ms)),
        ..Default::default()
    }
}

fn ready(channel: &Channel, queue: &str) -> u32 {
    channel
        .queue_declare(queue, passive())
        .unwrap()
        .message_count
}

/// pika:
/// ```python
/// for rnd in range(2):
///     for method, props, body in ch.consume(q, inactivity_timeout=0.5):
///         if method is None: break
///         print(body, method.redelivered, method.consumer_tag)
///         ch.basic_ack(method.delivery_tag)
///         break
/// ```
/// pika's generator survives the `break` and the second `consume()` resumes it: the second
/// message comes from the same consumer, not redelivered. cottontail's idiom for that (its
/// docs on `consume`): keep the `Consumer` and iterate `&mut consumer`.
#[test]
// The port keeps pika's shape: a `for` that breaks after one message.
#[allow(clippy::never_loop)]
fn a_kept_consumer_resumes_after_break_without_redelivery() {
    within(LIMIT, "resume", || {
        let connection = connect();
        let ch = connection.channel().unwrap();
        let q = exclusive_queue(&ch);
        for i in 0..4 {
            ch.basic_publish("", &q, format!("m{i}").as_bytes())
                .unwrap();
        }
        let mut consumer = ch.consume(&q, iterate(500, false)).unwrap();
        let mut seen = Vec::new();
        for _round in 0..2 {
            for item in &mut consumer {
                match item.unwrap() {
                    Consumed::Delivery(d) => {
                        seen.push((d.body.clone(), d.redelivered(), d.consumer_tag().to_owned()));
                        ch.basic_ack(d.delivery_tag(), false).unwrap();
                        break;
                    }
                    _ => break,
                }
            }
        }
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[1].0, b"m1");
        assert!(!seen[1].1, "the second message is not redelivered");
        assert_eq!(seen[0].2, seen[1].2, "the same consumer (tag) both rounds");
        connection.close().unwrap();
    });
}

/// pika:
/// ```python
/// for rnd in range(3):
///     for m, p, b in ch.consume(q, auto_ack=True, inactivity_timeout=0.5):
///         if m is None: break
///         got.append(b); break
/// for m, p, b in ch.consume(q, auto_ack=True, inactivity_timeout=0.5):
///     if m is None: break
///     got.append(b)
/// print(len(got))   # 10
/// ```
/// pika gets all 10 messages; so does cottontail's idiom, a kept `Consumer` iterated by
/// `&mut`. (Dropping an `auto_ack` iterator loses what it had received: documented.)
#[test]
// The port keeps pika's shape: a `for` that breaks after one message.
#[allow(clippy::never_loop)]
fn a_kept_auto_ack_consumer_loses_no_message_across_breaks() {
    within(LIMIT, "auto-ack resume", || {
        let connection = connect();
        let ch = connection.channel().unwrap();
        let q = exclusive_queue(&ch);
        for i in 0..10 {
            ch.basic_publish("", &q, format!("{i}").as_bytes()).unwrap();
        }
        let mut consumer = ch.consume(&q, iterate(500, true)).unwrap();
        let mut got = Vec::new();
        for _round in 0..3 {
            for item in &mut consumer {
                match item.unwrap() {
                    Consumed::Delivery(d) => {
                        got.push(d.body);
                        break;
                    }
                    _ => break,
                }
            }
        }
        for item in &mut consumer {
            match item.unwrap() {
                Consumed::Delivery(d) => got.push(d.body),
                _ => break,
            }
        }
        let expected: Vec<Vec<u8>> = (0..10).map(|i| format!("{i}").into_bytes()).collect();
        assert_eq!(
            (got, ready(&ch, &q)),
            (expected, 0),
            "all 10, in order, none lost"
        );
        drop(consumer);
        connection.close().unwrap();
    });
}

/// pika:
/// ```python
/// def cb(ch, method, props, body):
///     ch.basic_ack(method.delivery_tag)
///     ch.close()
/// ch.basic_consume(q, cb)
/// ch.start_consuming()     # returns normally
/// ```
/// pika's `start_consuming` loops while the channel has consumers; closing the channel (by
/// the application) clears them and it returns `None`: a ported `start_consuming()?` must not
/// fail.
#[test]
fn closing_the_channel_in_a_callback_ends_start_consuming_normally() {
    within(LIMIT, "close channel in callback", || {
        let connection = connect();
        let ch = connection.channel().unwrap();
        let q = exclusive_queue(&ch);
        ch.basic_publish("", &q, b"x").unwrap();
        ch.basic_consume(
            &q,
            |ch, method, _properties, _body| -> cottontail::Result<()> {
                ch.basic_ack(method.delivery_tag, false)?;
                ch.close()
            },
            BasicConsumeOptions::default(),
        )
        .unwrap();
        let outcome = ch.start_consuming();
        assert!(ch.is_closed());
        assert_eq!(outcome, Ok(()), "pika: start_consuming returns normally");
        connection.close().unwrap();
    });
}

/// pika:
/// ```python
/// def cb(ch, method, props, body):
///     ch.basic_ack(method.delivery_tag)
///     connection.close()
/// ch.basic_consume(q, cb)
/// ch.start_consuming()     # returns normally; connection.is_open is False
/// ```
/// The same with `connection.close()` (also from `add_callback_threadsafe`, e.g. a shutdown
/// requested by another thread): pika returns normally.
#[test]
fn closing_the_connection_in_a_callback_ends_start_consuming_normally() {
    within(LIMIT, "close connection in callback", || {
        let (connection, ch) = a_consumer_that_closes_its_connection();
        let outcome = ch.start_consuming();
        assert!(connection.is_closed());
        assert_eq!(outcome, Ok(()), "pika: start_consuming returns normally");
    });
}

/// A connection whose channel holds one message and a consumer whose callback acks it, then
/// closes the connection.
fn a_consumer_that_closes_its_connection() -> (cottontail::Connection, Channel) {
    let connection = connect();
    let ch = connection.channel().unwrap();
    let q = exclusive_queue(&ch);
    ch.basic_publish("", &q, b"x").unwrap();
    let conn = connection.clone();
    ch.basic_consume(
        &q,
        move |ch, method, _properties, _body| -> cottontail::Result<()> {
            ch.basic_ack(method.delivery_tag, false)?;
            conn.close()
        },
        BasicConsumeOptions::default(),
    )
    .unwrap();
    (connection, ch)
}

/// pika:
/// ```python
/// def on_message(ch, m, p, b): ch.basic_ack(m.delivery_tag); conn.close()
/// ch.basic_consume(q, on_message)
/// while conn.is_open: conn.process_data_events(1)   # ends normally
/// conn.process_data_events(0)                        # raises ConnectionWrongStateError
/// ```
/// The same with the close in a timer (`call_later`): the call that ran the closing callback
/// returns normally, only the next one fails.
#[test]
fn closing_the_connection_in_a_callback_ends_process_data_events_normally() {
    within(
        LIMIT,
        "close connection in a callback of process_data_events",
        || {
            let (connection, _ch) = a_consumer_that_closes_its_connection();
            let mut calls = 0;
            while connection.is_open() {
                let outcome = connection.process_data_events(Duration::from_secs(1));
                assert_eq!(
                    outcome,
                    Ok(()),
                    "pika: process_data_events returns normally"
                );
                calls += 1;
                assert!(calls < 20, "the message was never handed to the callback");
            }
            let next = connection.process_data_events(Duration::ZERO);
            assert!(
                matches!(
                    next,
                    Err(cottontail::Error::ConnectionClosedByClient { .. })
                ),
                "the next call fails: {next:?}"
            );

            let connection = connect();
            let conn = connection.clone();
            connection.call_later(Duration::from_millis(50), move || conn.close());
            assert_eq!(
                connection.process_data_events(Duration::from_secs(10)),
                Ok(()),
                "pika: the call that ran the timer returns normally"
            );
            assert!(connection.is_closed());
            assert!(matches!(
                connection.sleep(Duration::from_millis(10)),
                Err(cottontail::Error::ConnectionClosedByClient { .. })
            ));
        },
    );
}

/// pika:
/// ```python
/// for m, p, b in ch.consume(q):
///     ch.basic_ack(m.delivery_tag)
///     ch.close()
/// print('done')            # the generator just ends
/// ```
/// pika's generator ends without an exception once the application closed the channel, so
/// `item?` must not fail.
#[test]
fn closing_the_channel_inside_a_consume_loop_ends_the_iterator_without_an_error() {
    within(LIMIT, "close channel in consume loop", || {
        let connection = connect();
        let ch = connection.channel().unwrap();
        let q = exclusive_queue(&ch);
        ch.basic_publish("", &q, b"x").unwrap();
        ch.basic_publish("", &q, b"y").unwrap();
        let mut items = Vec::new();
        for item in ch.consume(&q, ConsumeOptions::default()).unwrap() {
            match item {
                Ok(Consumed::Delivery(d)) => {
                    ch.basic_ack(d.delivery_tag(), false).unwrap();
                    ch.close().unwrap();
                    items.push(Ok(d.body));
                }
                Ok(_) => {}
                Err(e) => items.push(Err(e)),
            }
        }
        assert_eq!(
            items,
            vec![Ok(b"x".to_vec())],
            "pika: the generator just ends"
        );
        connection.close().unwrap();
    });
}

/// pika:
/// ```python
/// ch.add_on_cancel_callback(lambda frame: events.append(frame.method.consumer_tag))
/// for m, p, b in ch.consume(q):   # the queue is deleted meanwhile
///     pass
/// print(events)                   # []
/// ```
/// pika runs the channel's cancel callbacks only for `basic_consume` consumers: a `consume()`
/// generator's broker cancel goes to the generator (which ends) and to no callback.
#[test]
fn broker_cancel_of_a_consume_iterator_runs_no_cancel_callback() {
    within(LIMIT, "cancel callback for iterator", || {
        let connection = connect();
        let ch = connection.channel().unwrap();
        let q = ch
            .queue_declare("", QueueDeclareOptions::default())
            .unwrap()
            .queue;
        let events = Arc::new(Mutex::new(Vec::<String>::new()));
        let seen = events.clone();
        ch.add_on_cancel_callback(move |_ch, tag| seen.lock().unwrap().push(tag.to_owned()));
        let deleter = connection.clone();
        let queue = q.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            let other = deleter.channel().unwrap();
            other.queue_delete(&queue, Default::default()).unwrap();
            other.close().unwrap();
        });
        let items: Vec<_> = ch.consume(&q, ConsumeOptions::default()).unwrap().collect();
        assert!(items.is_empty());
        assert!(
            events.lock().unwrap().is_empty(),
            "pika: no cancel callback for a consume() generator's consumer"
        );
        connection.close().unwrap();
    });
}

/// pika (what pika 1.4.4 printed, against RabbitMQ 3.10):
/// ```python
/// def on_a(ch, method, props, body):
///     ev.append('A-start:%s' % body); conn.process_data_events(0.3)
///     ev.append('A-mid:%s' % body); conn.sleep(0.2); ev.append('A-end:%s' % body)
///     ch.basic_ack(method.delivery_tag)
/// def on_b(ch, method, props, body):
///     ev.append('B:%s' % body); ch.basic_ack(method.delivery_tag)
/// ch1.basic_consume(qa, on_a); ch2.basic_consume(qb, on_b)   # two messages in each
/// conn.call_later(0.1, lambda: ev.append('timer'))
/// while len(ev) < 9: conn.process_data_events(1)
/// # A-start:0 A-mid:0 A-end:0 A-start:1 A-mid:1 A-end:1 (B:0 B:1 timer around them, never inside)
/// ```
/// pika never dispatches from inside a callback: a nested `process_data_events` or `sleep` only
/// keeps the I/O going. Before, cottontail ran the other channel's consumer and the timer
/// inside A's callback, so a callback could see another one half-way (and deadlock on a lock
/// it held); a nested `start_consuming` (of another channel) ran too, where pika raises
/// `ReentrancyError` (cottontail refuses a nested `consume()` the same way, where pika lets
/// its generator run).
#[test]
fn callbacks_never_nest_inside_process_data_events_or_sleep() {
    let connection = connect();
    let ch1 = connection.channel().unwrap();
    let ch2 = connection.channel().unwrap();
    let qa = exclusive_queue(&ch1);
    let qb = exclusive_queue(&ch2);
    for body in ["0", "1"] {
        ch1.basic_publish("", &qa, body.as_bytes()).unwrap();
        ch2.basic_publish("", &qb, body.as_bytes()).unwrap();
    }
    let events = Arc::new(Mutex::new(Vec::<String>::new()));
    let log = |events: &Arc<Mutex<Vec<String>>>, what: String| events.lock().unwrap().push(what);
    let nested = Arc::new(Mutex::new(Vec::new()));
    let (ev, seen, conn, other, queue) = (
        events.clone(),
        nested.clone(),
        connection.clone(),
        ch2.clone(),
        qa.clone(),
    );
    ch1.basic_consume(
        &qa,
        move |ch, method, _, body| -> cottontail::Result<()> {
            let body = String::from_utf8_lossy(body).into_owned();
            log(&ev, format!("A-start:{body}"));
            conn.process_data_events(Duration::from_millis(300))?;
            log(&ev, format!("A-mid:{body}"));
            conn.sleep(Duration::from_millis(200))?;
            log(&ev, format!("A-end:{body}"));
            let mut seen = seen.lock().unwrap();
            seen.push(other.start_consuming());
            seen.push(ch.consume(&queue, Default::default()).map(|_| ()));
            ch.basic_ack(method.delivery_tag, false)
        },
        Default::default(),
    )
    .unwrap();
    let ev = events.clone();
    ch2.basic_consume(
        &qb,
        move |ch, method, _, body| {
            log(&ev, format!("B:{}", String::from_utf8_lossy(body)));
            ch.basic_ack(method.delivery_tag, false)
        },
        Default::default(),
    )
    .unwrap();
    let ev = events.clone();
    connection.call_later(Duration::from_millis(100), move || log(&ev, "timer".into()));
    within(LIMIT, "nested dispatch", move || {
        while events.lock().unwrap().len() < 9 {
            connection
                .process_data_events(Duration::from_secs(1))
                .unwrap();
        }
        let events = events.lock().unwrap().clone();
        for body in ["0", "1"] {
            let start = events
                .iter()
                .position(|e| *e == format!("A-start:{body}"))
                .unwrap_or_else(|| panic!("no A-start:{body} in {events:?}"));
            assert_eq!(
                events[start..start + 3],
                [
                    format!("A-start:{body}"),
                    format!("A-mid:{body}"),
                    format!("A-end:{body}")
                ],
                "nothing ran inside A's callback: {events:?}"
            );
        }
        for once in ["B:0", "B:1", "timer"] {
            assert_eq!(
                events.iter().filter(|e| *e == once).count(),
                1,
                "{events:?}"
            );
        }
        let nested = nested.lock().unwrap();
        assert_eq!(nested.len(), 4);
        assert!(
            nested
                .iter()
                .all(|r| *r == Err(cottontail::Error::Reentrancy)),
            "start_consuming and consume() inside a callback: {nested:?}"
        );
    });
}

/// A timer that takes a lock the running callback holds while it sleeps runs after the
/// callback returns, as in pika; before, it ran inside the callback's `sleep`, and a plain
/// `lock()` there deadlocked (here `try_lock` shows it).
#[test]
fn a_timer_never_runs_while_the_callback_that_sleeps_holds_its_lock() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = exclusive_queue(&channel);
    channel.basic_publish("", &queue, b"x").unwrap();
    let state = Arc::new(Mutex::new(0));
    let timer_saw = Arc::new(Mutex::new(None));
    let (held, saw) = (state.clone(), timer_saw.clone());
    connection.call_later(Duration::from_millis(50), move || {
        *saw.lock().unwrap() = Some(held.try_lock().is_ok());
    });
    let (held, conn) = (state.clone(), connection.clone());
    channel
        .basic_consume(
            &queue,
            move |ch, method, _, _| -> cottontail::Result<()> {
                let mut guard = held.lock().unwrap();
                conn.sleep(Duration::from_millis(200))?;
                *guard += 1;
                drop(guard);
                ch.basic_ack(method.delivery_tag, false)?;
                ch.stop_consuming(None)
            },
            Default::default(),
        )
        .unwrap();
    within(LIMIT, "timer and lock", move || {
        channel.start_consuming().unwrap();
        connection
            .process_data_events(Duration::from_millis(100))
            .unwrap();
        assert_eq!(*state.lock().unwrap(), 1);
        assert_eq!(
            *timer_saw.lock().unwrap(),
            Some(true),
            "the timer ran with the lock free"
        );
    });
}

/// A callback's own error that happens to be `ChannelClosedByClient` (it used a channel this
/// application closed) still ends `process_data_events` with that error: only the
/// connection's own close by the application ends it with `Ok` (pika re-raises a callback's
/// exception too).
#[test]
fn a_callbacks_channel_closed_by_client_error_still_ends_process_data_events() {
    within(LIMIT, "a callback's ChannelClosedByClient", || {
        let connection = connect();
        let ch = connection.channel().unwrap();
        let other = connection.channel().unwrap();
        other.close().unwrap();
        let q = exclusive_queue(&ch);
        ch.basic_publish("", &q, b"x").unwrap();
        let ran = Arc::new(AtomicUsize::new(0));
        let counter = ran.clone();
        ch.basic_consume(
            &q,
            move |ch, method, _, _| -> cottontail::Result<()> {
                counter.fetch_add(1, Ordering::SeqCst);
                ch.basic_ack(method.delivery_tag, false)?;
                // The callback's own failure: a publish on a channel it closed earlier.
                other.basic_publish("", "nowhere", b"y")
            },
            BasicConsumeOptions::default(),
        )
        .unwrap();
        let mut outcome = Ok(());
        while ran.load(Ordering::SeqCst) == 0 {
            outcome = connection.process_data_events(Duration::from_secs(5));
        }
        assert!(connection.is_open());
        assert!(
            matches!(
                outcome,
                Err(cottontail::Error::ChannelClosedByClient { .. })
            ),
            "the callback's error is lost: {outcome:?}"
        );
    });
}

/// The same for `start_consuming`: a timer's own `ChannelClosedByClient` (it used a channel
/// this application closed) ends `start_consuming` with that error, while closing the
/// consumed channel (or the connection) ends it normally.
#[test]
fn a_timers_channel_closed_by_client_error_still_ends_start_consuming() {
    within(LIMIT, "a timer's ChannelClosedByClient", || {
        let connection = connect();
        let ch = connection.channel().unwrap();
        let other = connection.channel().unwrap();
        other.close().unwrap();
        let q = exclusive_queue(&ch);
        ch.basic_consume(&q, |_, _, _, _| (), BasicConsumeOptions::default())
            .unwrap();
        connection.call_later(Duration::from_millis(50), move || {
            other.basic_publish("", "nowhere", b"y")
        });
        let outcome = ch.start_consuming();
        assert!(ch.is_open());
        assert!(
            matches!(
                outcome,
                Err(cottontail::Error::ChannelClosedByClient { .. })
            ),
            "the timer's error is lost: {outcome:?}"
        );
    });
}
