//! Publishing: properties, bodies of every size, confirms, against a real RabbitMQ.

mod support;

use std::time::Duration;

use cottontail::{
    BasicProperties, Connection, Error, FieldTable, FieldValue, PublishOptions, QueueDeclareOptions,
};
use support::{connect, named_queue, publish_numbered, unique};

fn nested_headers() -> FieldTable {
    let inner = FieldTable::new()
        .with("depth", 2i64)
        .with("name", "inner table");
    let array: Vec<FieldValue> = vec![(-7).into(), true.into(), "in an array".into()];
    FieldTable::new()
        .with("string", "héllo wörld")
        .with("int", 42)
        .with("long", -1i64 << 40)
        .with("bool", false)
        .with("double", 2.5)
        .with("timestamp", FieldValue::Timestamp(1_700_000_000))
        .with("void", FieldValue::Void)
        .with("table", inner)
        .with("array", array)
}

#[test]
fn publish_then_get_round_trips_all_14_properties_and_nested_headers() {
    round_trip_properties(Some(nested_headers()));
}

/// Without a `headers` table the content header is encoded by hand (`protocol::fast`), not
/// by amq-protocol: the broker must read every other property the same.
#[test]
fn publish_then_get_round_trips_all_13_properties_besides_headers() {
    round_trip_properties(None);
}

/// Publishes a message with every property set (and `headers`, if given), gets it back and
/// compares each property.
fn round_trip_properties(headers: Option<FieldTable>) {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = named_queue(&channel, "props");
    let mut properties = BasicProperties::default()
        .with_content_type("application/json")
        .with_content_encoding("utf-8")
        .with_delivery_mode(2)
        .with_priority(5)
        .with_correlation_id("corr-1")
        .with_reply_to("reply-queue")
        .with_expiration("60000")
        .with_message_id("msg-1")
        .with_timestamp(1_700_000_123)
        .with_message_type("example.type")
        .with_user_id("guest")
        .with_app_id("cottontail-tests")
        .with_cluster_id("cluster-a");
    if let Some(headers) = headers {
        properties = properties.with_headers(headers);
    }
    channel
        .basic_publish_with(
            "",
            &queue,
            b"{\"hello\":1}",
            &PublishOptions {
                properties: properties.clone(),
                ..Default::default()
            },
        )
        .unwrap();
    let message = channel.basic_get(&queue, true).unwrap().expect("a message");
    assert_eq!(message.body, b"{\"hello\":1}");
    assert_eq!(message.method.routing_key.as_str(), queue);
    assert_eq!(message.method.message_count, 0);
    let got = &message.properties;
    assert_eq!(got.content_type(), properties.content_type());
    assert_eq!(got.content_encoding(), properties.content_encoding());
    assert_eq!(got.headers(), properties.headers());
    assert_eq!(got.delivery_mode(), Some(2));
    assert_eq!(got.priority(), Some(5));
    assert_eq!(got.correlation_id(), properties.correlation_id());
    assert_eq!(got.reply_to(), properties.reply_to());
    assert_eq!(got.expiration(), properties.expiration());
    assert_eq!(got.message_id(), properties.message_id());
    assert_eq!(got.timestamp(), Some(1_700_000_123));
    assert_eq!(got.message_type(), properties.message_type());
    assert_eq!(got.user_id(), properties.user_id());
    assert_eq!(got.app_id(), properties.app_id());
    assert_eq!(got.cluster_id(), properties.cluster_id());
    assert_eq!(got, &properties);
    channel.queue_delete(&queue, Default::default()).unwrap();
}

#[test]
fn empty_body_round_trips() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = named_queue(&channel, "empty");
    channel.basic_publish("", &queue, b"").unwrap();
    channel.basic_publish("", &queue, b"after").unwrap();
    let first = channel
        .basic_get(&queue, true)
        .unwrap()
        .expect("the empty message");
    assert!(first.body.is_empty());
    assert_eq!(first.method.message_count, 1);
    let second = channel
        .basic_get(&queue, true)
        .unwrap()
        .expect("the next message");
    assert_eq!(second.body, b"after");
    assert!(channel.basic_get(&queue, true).unwrap().is_none());
    channel.queue_delete(&queue, Default::default()).unwrap();
}

#[test]
fn one_mebibyte_body_crosses_frame_max_intact() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = named_queue(&channel, "big");
    let body: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    channel.basic_publish("", &queue, &body).unwrap();
    // With a small frame_max too: the body is split into many more frames.
    let small = Connection::open(support::params().with_frame_max(8192)).unwrap();
    let small_channel = small.channel().unwrap();
    // Confirmed, so it is in the queue before the other connection's basic.get looks.
    small_channel.confirm_delivery().unwrap();
    small_channel.basic_publish("", &queue, &body).unwrap();
    for _ in 0..2 {
        let got = channel
            .basic_get(&queue, true)
            .unwrap()
            .expect("the big message");
        assert_eq!(got.body.len(), body.len());
        assert!(got.body == body, "body differs");
    }
    channel.queue_delete(&queue, Default::default()).unwrap();
}

#[test]
fn large_bodies_published_faster_than_the_broker_reads_arrive_intact() {
    // 40 x 2 MiB in a tight loop: the socket fills, so publishes are written partly by the
    // caller and partly queued (only the part the socket did not take), or queued whole.
    const N: u32 = 40;
    const SIZE: u32 = 2 * 1024 * 1024;
    let body_of = |n: u32| -> Vec<u8> {
        (0..SIZE)
            .map(|i| (i.wrapping_add(n).wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect()
    };
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = named_queue(&channel, "big-burst");
    let bodies: Vec<Vec<u8>> = (0..N).map(body_of).collect();
    for body in &bodies {
        channel.basic_publish("", &queue, body).unwrap();
    }
    let reader = connect();
    let reading = reader.channel().unwrap();
    for (n, body) in bodies.iter().enumerate() {
        let got = (0..200)
            .find_map(|_| {
                let got = reading.basic_get(&queue, true).unwrap();
                if got.is_none() {
                    std::thread::sleep(std::time::Duration::from_millis(25));
                }
                got
            })
            .unwrap_or_else(|| panic!("message {n} did not arrive"));
        assert_eq!(got.body.len(), body.len(), "message {n}");
        assert!(got.body == *body, "message {n} differs");
    }
    assert!(reading.basic_get(&queue, true).unwrap().is_none());
    channel.queue_delete(&queue, Default::default()).unwrap();
}

#[test]
fn publishes_are_all_on_the_broker_after_close() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = named_queue(&channel, "close-flushes");
    publish_numbered(&channel, &queue, 0..5000);
    connection.close().unwrap();
    let other = connect();
    // The broker's queue process may still be enqueueing what the closed channel handed it.
    let mut held = 0;
    assert!(
        support::eventually(Duration::from_secs(5), || {
            held = support::message_count(&other, &queue);
            held == 5000
        }),
        "the broker holds {held} of 5000"
    );
    other
        .channel()
        .unwrap()
        .queue_delete(&queue, Default::default())
        .unwrap();
}

#[test]
fn confirm_mode_publish_returns_once_the_broker_has_the_message() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = named_queue(&channel, "confirm");
    channel.confirm_delivery().unwrap();
    for _ in 0..50 {
        channel.basic_publish("", &queue, b"confirmed").unwrap();
    }
    assert_eq!(support::message_count(&connection, &queue), 50);
    channel.queue_delete(&queue, Default::default()).unwrap();
}

#[test]
fn confirm_mode_unroutable_mandatory_message_is_unroutable_error() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    channel.confirm_delivery().unwrap();
    let err = channel
        .basic_publish_with(
            "",
            &unique("nowhere"),
            b"lost",
            &PublishOptions {
                mandatory: true,
                ..Default::default()
            },
        )
        .unwrap_err();
    match err {
        Error::Unroutable {
            reply_code: 312,
            reply_text,
            message,
        } => {
            assert_eq!(reply_text, "NO_ROUTE");
            // The error carries the message, as pika's UnroutableError does.
            assert_eq!(message.body, b"lost");
            assert_eq!(message.exchange, "");
            assert!(message.routing_key.contains("nowhere"), "{message:?}");
        }
        other => panic!("expected Unroutable, got {other:?}"),
    }
    // Not mandatory: the broker acks and drops it, as pika reports no error.
    channel
        .basic_publish("", &unique("nowhere"), b"dropped")
        .unwrap();
    assert!(channel.is_open());
}

#[test]
fn windowed_confirms_settle_every_message() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = named_queue(&channel, "window");
    channel.confirm_delivery().unwrap();
    let mut last = 0;
    for window in 0..3 {
        for i in 0..1000u32 {
            last = channel
                .basic_publish_deferred("", &queue, &i.to_le_bytes(), &PublishOptions::default())
                .unwrap();
        }
        assert_eq!(last, (window + 1) * 1000);
        let outcome = channel
            .wait_for_confirms(Some(Duration::from_secs(10)))
            .unwrap();
        assert!(outcome.all_confirmed(), "{outcome:?}");
    }
    let returned = channel
        .basic_publish_deferred(
            "",
            &unique("nowhere"),
            b"x",
            &PublishOptions {
                mandatory: true,
                ..Default::default()
            },
        )
        .unwrap();
    let outcome = channel.wait_for_confirms(None).unwrap();
    assert_eq!(outcome.returned, vec![returned]);
    assert_eq!(support::message_count(&connection, &queue), 3000);
    channel.queue_delete(&queue, Default::default()).unwrap();
}

#[test]
fn names_longer_than_255_bytes_are_rejected_before_sending() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let long = "q".repeat(256);
    let err = channel
        .queue_declare(&long, Default::default())
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    let err = channel.basic_publish("", &long, b"x").unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    // Nothing reached the broker: the channel is still usable.
    assert!(channel.is_open());
    channel
        .queue_declare(
            &"q".repeat(255),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
        )
        .unwrap();
}
