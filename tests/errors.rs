//! Broker-initiated channel closes (404, 406, 403) as typed errors, against a real RabbitMQ.

mod support;

use cottontail::{
    BasicConsumeOptions, Error, ExchangeDeclareOptions, ExchangeType, QosOptions,
    QueueDeclareOptions,
};
use support::{connect, unique};

#[test]
fn passive_declare_of_missing_queue_closes_channel_with_404() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = unique("missing");
    let err = channel
        .queue_declare(
            &queue,
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
        )
        .unwrap_err();
    match &err {
        Error::ChannelClosed {
            reply_code,
            reply_text,
            class_id,
            method_id,
        } => {
            assert_eq!(*reply_code, 404);
            assert!(reply_text.contains(&queue), "{reply_text}");
            assert_eq!((*class_id, *method_id), (50, 10), "queue.declare");
        }
        other => panic!("expected ChannelClosed, got {other:?}"),
    }
    assert!(err.is_soft());
    assert!(channel.is_closed());
    // Every later call on the channel gets the same error.
    assert_eq!(
        channel.queue_declare("other", Default::default()),
        Err(err.clone())
    );
    assert_eq!(channel.basic_publish("", "x", b""), Err(err));
    // The connection is fine: a new channel works.
    assert!(connection.is_open());
    let fresh = connection.channel().unwrap();
    fresh
        .queue_declare(
            "",
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
        )
        .unwrap();
}

#[test]
fn redeclare_with_other_durability_is_406() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = unique("durability");
    channel
        .queue_declare(
            &queue,
            QueueDeclareOptions {
                durable: false,
                ..Default::default()
            },
        )
        .unwrap();
    let err = channel
        .queue_declare(
            &queue,
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ChannelClosed {
                reply_code: 406,
                ..
            }
        ),
        "{err:?}"
    );
    connection
        .channel()
        .unwrap()
        .queue_delete(&queue, Default::default())
        .unwrap();
}

#[test]
fn exchange_redeclare_with_other_type_is_406() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let exchange = unique("exchange-type");
    channel
        .exchange_declare(
            &exchange,
            ExchangeDeclareOptions {
                exchange_type: ExchangeType::Fanout,
                ..Default::default()
            },
        )
        .unwrap();
    let err = channel
        .exchange_declare(&exchange, ExchangeDeclareOptions::default())
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ChannelClosed {
                reply_code: 406,
                ..
            }
        ),
        "{err:?}"
    );
    connection
        .channel()
        .unwrap()
        .exchange_delete(&exchange, Default::default())
        .unwrap();
}

#[test]
fn publish_to_missing_exchange_closes_the_channel_for_the_next_call() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    channel
        .basic_publish(&unique("no-exchange"), "rk", b"x")
        .unwrap();
    let err = channel
        .basic_qos(QosOptions {
            prefetch_count: 1,
            ..Default::default()
        })
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ChannelClosed {
                reply_code: 404,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(connection.is_open());
}

#[test]
fn reserved_amq_name_is_403() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let err = channel
        .queue_declare("amq.cottontail-test", Default::default())
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ChannelClosed {
                reply_code: 403,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn exclusive_consumer_conflict_is_403_and_ends_nothing_else() {
    let connection = connect();
    let first = connection.channel().unwrap();
    let queue = support::exclusive_queue(&first);
    first
        .basic_consume(
            &queue,
            |_, _, _, _| {},
            BasicConsumeOptions {
                exclusive: true,
                ..Default::default()
            },
        )
        .unwrap();
    let second = connection.channel().unwrap();
    let err = second
        .basic_consume(&queue, |_, _, _, _| {}, Default::default())
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ChannelClosed {
                reply_code: 403,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(second.consumer_tags().is_empty());
    assert!(first.is_open());
}

#[test]
fn basic_get_on_missing_queue_is_404() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let err = channel
        .basic_get(&unique("missing-get"), false)
        .unwrap_err();
    assert_eq!(err.reply_code(), Some(404));
}
