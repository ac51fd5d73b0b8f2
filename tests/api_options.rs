//! The keyword-like option structs and the message-carrying results against a real broker:
//! what reaches the broker with each option's default and non-default values, the messages
//! `Error::Unroutable` and `ConfirmOutcome` carry, headers through cottontail's own table
//! types, and `Channel::connection`.

mod support;

use cottontail::{
    BasicProperties, Error, ExchangeDeclareOptions, ExchangeType, FieldTable, FieldValue,
    NackOptions, PublishOptions, QosOptions, QueueBindOptions, QueueDeclareOptions, RejectOptions,
};
use support::consuming::passive;
use support::{connect, exclusive_queue, message_count, unique};

#[test]
fn wait_for_confirms_hands_back_the_returned_messages_with_their_sequence_numbers() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = exclusive_queue(&channel);
    channel.confirm_delivery().unwrap();
    let mandatory = PublishOptions {
        properties: BasicProperties::default().with_message_id("m-2"),
        mandatory: true,
    };
    let nowhere = unique("nowhere");
    let first = channel
        .basic_publish_deferred("", &queue, b"one", &PublishOptions::default())
        .unwrap();
    let lost = channel
        .basic_publish_deferred("", &nowhere, b"lost", &mandatory)
        .unwrap();
    let third = channel
        .basic_publish_deferred("", &queue, b"three", &mandatory)
        .unwrap();
    assert_eq!((first, lost, third), (1, 2, 3));
    let outcome = channel.wait_for_confirms(None).unwrap();
    assert!(!outcome.all_confirmed());
    assert!(outcome.nacked.is_empty(), "{outcome:?}");
    assert_eq!(outcome.returned, vec![2]);
    assert_eq!(outcome.returned_messages.len(), 1, "{outcome:?}");
    let (seq, returned) = &outcome.returned_messages[0];
    assert_eq!(*seq, 2);
    assert_eq!(returned.body, b"lost");
    assert_eq!(returned.reply_code(), 312);
    assert_eq!(returned.reply_text(), "NO_ROUTE");
    assert_eq!(returned.routing_key(), nowhere);
    assert_eq!(returned.properties.message_id(), Some("m-2"));
    assert_eq!(message_count(&connection, &queue), 2);
    // Taken by the outcome: the next window starts clean.
    assert!(channel.wait_for_confirms(None).unwrap().all_confirmed());
}

#[test]
fn nack_and_reject_requeue_by_default_as_pika_does() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = exclusive_queue(&channel);
    channel.basic_publish("", &queue, b"a").unwrap();
    channel.basic_publish("", &queue, b"b").unwrap();
    let a = channel.basic_get(&queue, false).unwrap().expect("a");
    let b = channel.basic_get(&queue, false).unwrap().expect("b");
    channel
        .basic_nack(a.delivery_tag(), NackOptions::default())
        .unwrap();
    channel
        .basic_reject(b.delivery_tag(), RejectOptions::default())
        .unwrap();
    // Both back in the queue, redelivered.
    let again = channel.basic_get(&queue, false).unwrap().expect("requeued");
    assert!(again.redelivered());
    let again2 = channel.basic_get(&queue, false).unwrap().expect("requeued");
    channel
        .basic_nack(
            again.delivery_tag(),
            NackOptions {
                requeue: false,
                ..Default::default()
            },
        )
        .unwrap();
    channel
        .basic_reject(again2.delivery_tag(), RejectOptions { requeue: false })
        .unwrap();
    assert_eq!(message_count(&connection, &queue), 0);
    assert!(channel.basic_get(&queue, false).unwrap().is_none());
}

#[test]
fn a_prefetch_size_is_refused_before_it_reaches_the_broker() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let err = channel
        .basic_qos(QosOptions {
            prefetch_size: 1024,
            ..Default::default()
        })
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidArgument(m) if m.contains("prefetch_size")),
        "{err:?}"
    );
    assert!(channel.is_open());
    channel
        .basic_qos(QosOptions {
            prefetch_count: 10,
            ..Default::default()
        })
        .unwrap();
}

#[test]
fn headers_exchange_routes_on_own_table_types_and_headers_read_back_as_str() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let exchange = unique("headers-x");
    channel
        .exchange_declare(
            &exchange,
            ExchangeDeclareOptions {
                exchange_type: ExchangeType::Headers,
                auto_delete: true,
                ..Default::default()
            },
        )
        .unwrap();
    let queue = exclusive_queue(&channel);
    channel
        .queue_bind(
            &queue,
            &exchange,
            QueueBindOptions {
                routing_key: Some(String::new()),
                arguments: FieldTable::new()
                    .with("x-match", "all")
                    .with("format", "pdf")
                    .with("pages", 3),
            },
        )
        .unwrap();
    let matching = PublishOptions {
        properties: BasicProperties::default()
            .with_header("format", "pdf")
            .with_header("pages", 3),
        ..Default::default()
    };
    let other = PublishOptions {
        properties: BasicProperties::default().with_header("format", "zip"),
        ..Default::default()
    };
    channel
        .basic_publish_with(&exchange, "", b"yes", &matching)
        .unwrap();
    channel
        .basic_publish_with(&exchange, "", b"no", &other)
        .unwrap();
    let got = channel.basic_get(&queue, true).unwrap().expect("routed");
    assert_eq!(got.body, b"yes");
    assert_eq!(
        got.properties.header("format").and_then(FieldValue::as_str),
        Some("pdf")
    );
    assert_eq!(
        got.properties.header("pages").and_then(FieldValue::as_i64),
        Some(3)
    );
    assert!(channel.basic_get(&queue, true).unwrap().is_none());
}

#[test]
fn a_custom_exchange_type_reaches_the_broker_by_its_name() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let kind: ExchangeType = "x-no-such-plugin".parse().unwrap();
    let err = channel
        .exchange_declare(
            &unique("custom-x"),
            ExchangeDeclareOptions {
                exchange_type: kind,
                ..Default::default()
            },
        )
        .unwrap_err();
    // RabbitMQ names the type it does not know, so it was sent as given.
    assert_eq!(err.reply_code(), Some(503), "{err:?}");
    assert!(
        err.reply_text().unwrap_or("").contains("x-no-such-plugin"),
        "{err:?}"
    );
}

#[test]
fn a_channel_knows_its_connection() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let same = channel.connection();
    let second = same.channel().unwrap();
    assert_ne!(second.channel_number(), channel.channel_number());
    let queue = exclusive_queue(&second);
    // The exclusive queue belongs to the connection both channels share.
    channel.queue_declare(&queue, passive()).unwrap();
    same.close().unwrap();
    assert!(connection.is_closed());
}

#[test]
fn close_sends_pikas_reply_code_zero() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    channel.close().unwrap();
    match channel.queue_declare("", QueueDeclareOptions::default()) {
        Err(Error::ChannelClosedByClient {
            reply_code,
            reply_text,
        }) => assert_eq!((reply_code, reply_text.as_str()), (0, "Normal shutdown")),
        other => panic!("expected ChannelClosedByClient, got {other:?}"),
    }
}

/// Unhandled returns are bounded by what they hold, headers included: 600 unroutable messages
/// with empty bodies and 60 kB of headers each (36 MB) leave at most 16 MiB of them for the
/// return callback that comes later, the newest, in order.
#[test]
fn unhandled_returns_are_bounded_by_their_headers_too() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let nowhere = unique("nowhere-headers");
    const SENT: usize = 600;
    let big = "h".repeat(60_000);
    for i in 0..SENT {
        let options = PublishOptions {
            properties: BasicProperties::default()
                .with_header("padding", big.as_str())
                .with_header("n", i as i64),
            mandatory: true,
        };
        channel
            .basic_publish_with("", &nowhere, b"", &options)
            .unwrap();
    }
    // A round trip after the last publish: every return is routed before its reply.
    channel
        .queue_declare(
            &nowhere,
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
        )
        .unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let into = seen.clone();
    channel.add_on_return_callback(move |_ch, _method, properties, _body| {
        let n = properties.header("n").and_then(FieldValue::as_i64).unwrap();
        into.lock().unwrap().push(n);
    });
    connection
        .process_data_events(std::time::Duration::from_secs(1))
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    let kept_bound = 16 * 1024 * 1024 / 60_000;
    assert!(
        !seen.is_empty() && seen.len() <= kept_bound,
        "{} of {SENT} returns kept (at most {kept_bound} fit in 16 MiB)",
        seen.len()
    );
    let newest: Vec<i64> = ((SENT - seen.len()) as i64..SENT as i64).collect();
    assert_eq!(seen, newest, "the newest are kept, in order");
}

/// A message the broker nacks (a full queue with `x-overflow: reject-publish`) comes back as
/// `Error::Nack` carrying the message as published; `basic_publish_deferred` reports it by its
/// sequence number.
#[test]
fn a_nacked_publish_carries_the_message() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = support::one_message_queue(&channel);
    channel.confirm_delivery().unwrap();
    let options = PublishOptions {
        properties: BasicProperties::default().with_message_id("second"),
        ..Default::default()
    };
    channel.basic_publish("", &queue, b"first").unwrap();
    match channel.basic_publish_with("", &queue, b"second", &options) {
        Err(Error::Nack {
            delivery_tag,
            message,
        }) => {
            assert_eq!(delivery_tag, 2);
            assert_eq!(message.body, b"second");
            assert_eq!(message.routing_key, queue);
            assert_eq!(message.properties.message_id(), Some("second"));
        }
        other => panic!("expected Error::Nack, got {other:?}"),
    }
    let third = channel
        .basic_publish_deferred("", &queue, b"third", &PublishOptions::default())
        .unwrap();
    let outcome = channel.wait_for_confirms(None).unwrap();
    assert_eq!(outcome.nacked, vec![third]);
    assert_eq!(message_count(&connection, &queue), 1);
}

/// A return callback's error ends the call that ran it, with the original error as source;
/// a return callback's error names no delivery.
#[test]
fn a_return_callbacks_error_ends_process_data_events() {
    use std::error::Error as _;
    let connection = connect();
    let channel = connection.channel().unwrap();
    channel.add_on_return_callback(|_ch, method, _properties, _body| {
        Err(std::io::Error::other(format!(
            "no route for {}",
            method.routing_key
        )))
    });
    let nowhere = unique("nowhere-cb");
    channel
        .basic_publish_with(
            "",
            &nowhere,
            b"x",
            &PublishOptions {
                mandatory: true,
                ..Default::default()
            },
        )
        .unwrap();
    let err = connection
        .process_data_events(std::time::Duration::from_secs(5))
        .unwrap_err();
    let Error::Callback(inner) = &err else {
        panic!("expected Error::Callback, got {err:?}");
    };
    assert_eq!(inner.delivery_tag(), None);
    let io = err
        .source()
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .expect("the io::Error as source");
    assert_eq!(io.to_string(), format!("no route for {nowhere}"));
    assert!(channel.is_open());
}

/// A consumer callback's error names the delivery it failed on, so the caller can settle it
/// and consume again: with a prefetch of 1 the next message then arrives.
#[test]
fn a_consumer_callbacks_error_names_its_delivery_to_settle() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = exclusive_queue(&channel);
    channel
        .basic_qos(QosOptions {
            prefetch_count: 1,
            ..Default::default()
        })
        .unwrap();
    channel.basic_publish("", &queue, b"bad").unwrap();
    channel.basic_publish("", &queue, b"good").unwrap();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = got.clone();
    let tag = channel
        .basic_consume(
            &queue,
            move |ch, method, _properties, body| -> Result<(), cottontail::BoxError> {
                if body == b"bad" {
                    return Err("cannot handle it".into());
                }
                seen.lock().unwrap().push(body.to_vec());
                ch.basic_ack(method.delivery_tag, false)?;
                ch.stop_consuming(None)?;
                Ok(())
            },
            Default::default(),
        )
        .unwrap();
    let err = channel.start_consuming().unwrap_err();
    let Error::Callback(inner) = &err else {
        panic!("expected Error::Callback, got {err:?}");
    };
    assert_eq!(inner.consumer_tag(), Some(tag.as_str()));
    let failed = inner.delivery_tag().expect("the failed delivery's tag");
    channel
        .basic_nack(
            failed,
            NackOptions {
                requeue: false,
                ..Default::default()
            },
        )
        .unwrap();
    channel.start_consuming().unwrap();
    assert_eq!(*got.lock().unwrap(), vec![b"good".to_vec()]);
    assert_eq!(message_count(&connection, &queue), 0);
}

/// A cancel callback's error (the broker cancelled the consumer: its queue was deleted) ends
/// `start_consuming` with that error as source.
#[test]
fn a_cancel_callbacks_error_ends_start_consuming() {
    use std::error::Error as _;
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = exclusive_queue(&channel);
    channel
        .basic_consume(
            &queue,
            |_ch, _method, _properties, _body| {},
            Default::default(),
        )
        .unwrap();
    channel.add_on_cancel_callback(|_ch, tag| {
        Err(std::io::Error::other(format!("consumer {tag} is gone")))
    });
    let other = connection.channel().unwrap();
    other.queue_delete(&queue, Default::default()).unwrap();
    let err = channel.start_consuming().unwrap_err();
    let source = err.source().map(ToString::to_string).unwrap_or_default();
    assert!(
        matches!(err, Error::Callback(_))
            && source.starts_with("consumer ")
            && source.ends_with(" is gone"),
        "{err:?}"
    );
    assert!(channel.consumer_tags().is_empty());
}

/// `stop_consuming` from another thread while a callback runs: the callback finishes and acks
/// its message, the messages the broker had sent ahead (prefetch 10) go back to the queue, and
/// `start_consuming` returns `Ok`. What the examples do on Ctrl-C.
#[test]
fn stop_consuming_lets_the_running_callback_finish_and_requeues_the_rest() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = exclusive_queue(&channel);
    for i in 0..10 {
        channel
            .basic_publish("", &queue, format!("m{i}").as_bytes())
            .unwrap();
    }
    channel
        .basic_qos(QosOptions {
            prefetch_count: 10,
            ..Default::default()
        })
        .unwrap();
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let handled = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = handled.clone();
    channel
        .basic_consume(
            &queue,
            move |ch, method, _properties, _body| {
                let _ = started_tx.send(());
                std::thread::sleep(std::time::Duration::from_millis(300));
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                ch.basic_ack(method.delivery_tag, false)
            },
            Default::default(),
        )
        .unwrap();
    let stopper = channel.clone();
    let stopping = std::thread::spawn(move || {
        started_rx.recv().unwrap();
        stopper.stop_consuming(None)
    });
    channel.start_consuming().unwrap();
    stopping.join().unwrap().unwrap();
    let handled = handled.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(handled, 1, "only the message in hand is handled");
    // The one handled was acked; the other nine are ready again (none unacked).
    assert_eq!(message_count(&connection, &queue), 9);
}
