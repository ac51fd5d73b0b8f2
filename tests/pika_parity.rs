//! pika 1.4 parity: pika programs ported to cottontail, each asserting what pika 1.4.4 did
//! against RabbitMQ 3.10 (the Python original is in each test's doc comment), or, where
//! cottontail differs on purpose, that its documented idiom gives pika's result.

mod support;

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
        let outcome = ch.start_consuming();
        assert!(connection.is_closed());
        assert_eq!(outcome, Ok(()), "pika: start_consuming returns normally");
    });
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
