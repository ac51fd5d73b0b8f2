//! Every `Channel` method against a real RabbitMQ: routing (topic, headers, fanout,
//! exchange-to-exchange), deletes and purges, acks / nacks / rejects / recover, qos,
//! transactions, returns and confirms, cancels, the `consume()` iterator, and broker closes
//! while consuming. Each test checks what the broker holds or exactly what the caller gets.

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use cottontail::{
    BasicConsumeOptions, BasicProperties, Channel, ConnectionParameters, ConsumeOptions, Consumed,
    Error, ExchangeBindOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, FieldTable,
    NackOptions, PublishOptions, QosOptions, QueueBindOptions, QueueDeclareOk, QueueDeclareOptions,
    QueueDeleteOptions, RejectOptions,
};
use support::{connect, eventually, rabbitmqctl, unique};

/// Deletes the queues and exchanges a test made when it ends, even when it fails.
#[derive(Default)]
struct Cleanup {
    queues: Vec<String>,
    exchanges: Vec<String>,
}

impl Cleanup {
    fn queue(&mut self, name: &str) -> String {
        self.queues.push(name.to_string());
        name.to_string()
    }

    fn exchange(&mut self, name: &str) -> String {
        self.exchanges.push(name.to_string());
        name.to_string()
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        // No panics here: this may run while a failed test unwinds.
        let params = ConnectionParameters::new(support::HOST).with_port(support::PORT);
        let Ok(connection) = cottontail::Connection::open(params) else {
            return;
        };
        for queue in &self.queues {
            if let Ok(channel) = connection.channel() {
                let _ = channel.queue_delete(queue, QueueDeleteOptions::default());
            }
        }
        for exchange in &self.exchanges {
            if let Ok(channel) = connection.channel() {
                let _ = channel.exchange_delete(exchange, Default::default());
            }
        }
        let _ = connection.close();
    }
}

fn passive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        ..Default::default()
    }
}

/// What the broker holds for `queue`, seen from a separate connection.
fn broker_view(queue: &str) -> QueueDeclareOk {
    let connection = connect();
    let ok = connection
        .channel()
        .unwrap()
        .queue_declare(queue, passive())
        .unwrap();
    connection.close().unwrap();
    ok
}

/// Waits until the broker holds exactly `ready` ready messages in `queue`.
fn broker_eventually_holds(queue: &str, ready: u32) -> u32 {
    let mut last = 0;
    eventually(Duration::from_secs(5), || {
        last = broker_view(queue).message_count;
        last == ready
    });
    last
}

fn declare_queue(channel: &Channel, cleanup: &mut Cleanup, prefix: &str) -> String {
    let queue = cleanup.queue(&unique(prefix));
    channel
        .queue_declare(&queue, QueueDeclareOptions::default())
        .unwrap();
    queue
}

fn declare_exchange(channel: &Channel, cleanup: &mut Cleanup, prefix: &str, kind: &str) -> String {
    let exchange = cleanup.exchange(&unique(prefix));
    channel
        .exchange_declare(
            &exchange,
            ExchangeDeclareOptions {
                exchange_type: kind.into(),
                ..Default::default()
            },
        )
        .unwrap();
    exchange
}

fn bind(channel: &Channel, queue: &str, exchange: &str, routing_key: &str) {
    channel
        .queue_bind(
            queue,
            exchange,
            QueueBindOptions {
                routing_key: Some(routing_key.into()),
                ..Default::default()
            },
        )
        .unwrap();
}

fn publish(channel: &Channel, exchange: &str, routing_key: &str, body: &str) {
    channel
        .basic_publish(exchange, routing_key, body.as_bytes())
        .unwrap();
}

/// Takes (auto-ack) every message of `queue`. On the channel that published, the broker has
/// routed every earlier publish before it answers the gets.
fn drain(channel: &Channel, queue: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    while let Some(message) = channel.basic_get(queue, true).unwrap() {
        bodies.push(String::from_utf8(message.body).unwrap());
    }
    bodies
}

fn string_table(pairs: &[(&str, &str)]) -> FieldTable {
    pairs.iter().map(|&(key, value)| (key, value)).collect()
}

/// Asserts that `result` is a broker channel close with `code`, and returns the error.
#[track_caller]
fn expect_channel_closed<T: std::fmt::Debug>(result: cottontail::Result<T>, code: u16) -> Error {
    match result {
        Err(e @ Error::ChannelClosed { reply_code, .. }) if reply_code == code => e,
        other => panic!("expected Err(ChannelClosed {{ reply_code: {code}, .. }}), got {other:?}"),
    }
}

/// `rabbitmqctl list_bindings` rows (source, destination, destination kind, key) touching `name`.
fn broker_bindings(name: &str) -> Vec<(String, String, String, String)> {
    rabbitmqctl(&[
        "list_bindings",
        "-s",
        "source_name",
        "destination_name",
        "destination_kind",
        "routing_key",
    ])
    .lines()
    .filter_map(|line| {
        let cols: Vec<&str> = line.split('\t').collect();
        (cols.len() == 4 && (cols[0] == name || cols[1] == name)).then(|| {
            (
                cols[0].to_string(),
                cols[1].to_string(),
                cols[2].to_string(),
                cols[3].to_string(),
            )
        })
    })
    .collect()
}

/// Consumer tags the broker lists for `queue`.
fn broker_consumer_tags(queue: &str) -> BTreeSet<String> {
    rabbitmqctl(&["list_consumers", "-s", "queue_name", "consumer_tag"])
        .lines()
        .filter_map(|line| {
            let (q, tag) = line.split_once('\t')?;
            (q == queue).then(|| tag.to_string())
        })
        .collect()
}

#[test]
fn queue_declare_with_empty_name_gets_a_broker_name_and_reports_counts() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let mut cleanup = Cleanup::default();
    let ok = channel
        .queue_declare("", QueueDeclareOptions::default())
        .unwrap();
    cleanup.queue(&ok.queue);
    assert!(ok.queue.starts_with("amq.gen-"), "{}", ok.queue);
    assert_eq!((ok.message_count, ok.consumer_count), (0, 0));
    publish(&channel, "", &ok.queue, "one");
    publish(&channel, "", &ok.queue, "two");
    // A non-passive redeclare of an `amq.` name is 403: check it passively. RabbitMQ answers
    // declare's counts ahead of deliveries it has not enqueued yet, hence the polling.
    let mut again = None;
    eventually(Duration::from_secs(5), || {
        let ok = channel.queue_declare(&ok.queue, passive()).unwrap();
        let done = ok.message_count == 2;
        again = Some(ok);
        done
    });
    let again = again.unwrap();
    assert_eq!(again.queue, ok.queue);
    assert_eq!((again.message_count, again.consumer_count), (2, 0));
}

#[test]
fn topic_exchange_routes_star_and_hash_patterns() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let mut cleanup = Cleanup::default();
    let exchange = declare_exchange(&channel, &mut cleanup, "topic", "topic");
    let patterns = ["kern.*", "*.critical", "#", "kern.critical"];
    let queues: Vec<String> = patterns
        .iter()
        .map(|pattern| {
            let queue = declare_queue(&channel, &mut cleanup, "topic-q");
            bind(&channel, &queue, &exchange, pattern);
            queue
        })
        .collect();
    let keys = [
        "kern.critical",
        "kern.info",
        "auth.critical",
        "auth.info",
        "kern",
        "kern.disk.critical",
        "",
    ];
    for key in keys {
        publish(&channel, &exchange, key, &format!("msg:{key}"));
    }
    let expected: [&[&str]; 4] = [
        &["msg:kern.critical", "msg:kern.info"],
        &["msg:kern.critical", "msg:auth.critical"],
        &[
            "msg:kern.critical",
            "msg:kern.info",
            "msg:auth.critical",
            "msg:auth.info",
            "msg:kern",
            "msg:kern.disk.critical",
            "msg:",
        ],
        &["msg:kern.critical"],
    ];
    for ((pattern, queue), expected) in patterns.iter().zip(&queues).zip(expected) {
        assert_eq!(drain(&channel, queue), expected, "binding {pattern:?}");
    }
}

#[test]
fn headers_exchange_matches_all_and_any() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let mut cleanup = Cleanup::default();
    let exchange = declare_exchange(&channel, &mut cleanup, "headers", "headers");
    let all = declare_queue(&channel, &mut cleanup, "headers-all");
    let any = declare_queue(&channel, &mut cleanup, "headers-any");
    for (queue, x_match) in [(&all, "all"), (&any, "any")] {
        channel
            .queue_bind(
                queue,
                &exchange,
                QueueBindOptions {
                    routing_key: Some(String::new()),
                    arguments: string_table(&[
                        ("x-match", x_match),
                        ("format", "pdf"),
                        ("type", "report"),
                    ]),
                },
            )
            .unwrap();
    }
    let messages: [(&str, &[(&str, &str)]); 5] = [
        ("both", &[("format", "pdf"), ("type", "report")]),
        ("format-only", &[("format", "pdf")]),
        ("type-only", &[("type", "report"), ("extra", "x")]),
        ("other-values", &[("format", "zip"), ("type", "log")]),
        ("no-headers", &[]),
    ];
    for (body, headers) in messages {
        let mut properties = BasicProperties::default();
        if !headers.is_empty() {
            properties = properties.with_headers(string_table(headers));
        }
        channel
            .basic_publish_with(
                &exchange,
                "",
                body.as_bytes(),
                &PublishOptions {
                    properties: properties.clone(),
                    ..Default::default()
                },
            )
            .unwrap();
    }
    assert_eq!(drain(&channel, &all), ["both"]);
    assert_eq!(drain(&channel, &any), ["both", "format-only", "type-only"]);
}

#[test]
fn fanout_exchange_copies_every_message_to_each_bound_queue() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let mut cleanup = Cleanup::default();
    let exchange = declare_exchange(&channel, &mut cleanup, "fanout", "fanout");
    let first = declare_queue(&channel, &mut cleanup, "fanout-a");
    let second = declare_queue(&channel, &mut cleanup, "fanout-b");
    let unbound = declare_queue(&channel, &mut cleanup, "fanout-unbound");
    bind(&channel, &first, &exchange, "ignored");
    bind(&channel, &second, &exchange, "");
    for (i, key) in ["", "x", "anything.at.all"].iter().enumerate() {
        publish(&channel, &exchange, key, &format!("m{i}"));
    }
    assert_eq!(drain(&channel, &first), ["m0", "m1", "m2"]);
    assert_eq!(drain(&channel, &second), ["m0", "m1", "m2"]);
    assert!(drain(&channel, &unbound).is_empty());
}

#[test]
fn exchange_bind_routes_through_and_exchange_unbind_stops_it() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let mut cleanup = Cleanup::default();
    let source = declare_exchange(&channel, &mut cleanup, "e2e-source", "direct");
    let destination = declare_exchange(&channel, &mut cleanup, "e2e-dest", "direct");
    let queue = declare_queue(&channel, &mut cleanup, "e2e-q");
    bind(&channel, &queue, &destination, "k");

    publish(&channel, &source, "k", "before-bind");
    assert!(drain(&channel, &queue).is_empty());

    channel
        .exchange_bind(
            &destination,
            &source,
            ExchangeBindOptions {
                routing_key: "k".into(),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(broker_bindings(&source).contains(&(
        source.clone(),
        destination.clone(),
        "exchange".into(),
        "k".into()
    )));
    publish(&channel, &source, "k", "bound");
    publish(&channel, &source, "other-key", "wrong-key");
    assert_eq!(drain(&channel, &queue), ["bound"]);

    channel
        .exchange_unbind(
            &destination,
            &source,
            ExchangeBindOptions {
                routing_key: "k".into(),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(broker_bindings(&source).is_empty());
    publish(&channel, &source, "k", "after-unbind");
    assert!(drain(&channel, &queue).is_empty());
    // The destination itself still routes.
    publish(&channel, &destination, "k", "direct");
    assert_eq!(drain(&channel, &queue), ["direct"]);
}

#[test]
fn queue_unbind_stops_routing_and_removes_the_binding() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let mut cleanup = Cleanup::default();
    let exchange = declare_exchange(&channel, &mut cleanup, "unbind", "direct");
    let queue = declare_queue(&channel, &mut cleanup, "unbind-q");
    bind(&channel, &queue, &exchange, "a");
    bind(&channel, &queue, &exchange, "b");
    publish(&channel, &exchange, "a", "a1");
    publish(&channel, &exchange, "b", "b1");
    assert_eq!(drain(&channel, &queue), ["a1", "b1"]);

    channel
        .queue_unbind(
            &queue,
            &exchange,
            QueueBindOptions {
                routing_key: Some("a".into()),
                ..Default::default()
            },
        )
        .unwrap();
    let keys: Vec<String> = broker_bindings(&exchange)
        .into_iter()
        .map(|(_, _, _, key)| key)
        .collect();
    assert_eq!(keys, ["b"]);
    publish(&channel, &exchange, "a", "a2");
    publish(&channel, &exchange, "b", "b2");
    assert_eq!(drain(&channel, &queue), ["b2"]);
}

#[test]
fn queue_bind_without_routing_key_uses_the_queue_name_like_pika() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let mut cleanup = Cleanup::default();
    let exchange = declare_exchange(&channel, &mut cleanup, "bind-default", "direct");
    let queue = declare_queue(&channel, &mut cleanup, "bind-default-q");
    channel
        .queue_bind(&queue, &exchange, QueueBindOptions::default())
        .unwrap();
    publish(&channel, &exchange, &queue, "by-name");
    publish(&channel, &exchange, "", "empty-key");
    assert_eq!(drain(&channel, &queue), ["by-name"]);
    channel
        .queue_unbind(&queue, &exchange, QueueBindOptions::default())
        .unwrap();
    assert!(broker_bindings(&exchange).is_empty());
}

#[test]
fn queue_purge_returns_the_count_and_empties_the_queue() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let mut cleanup = Cleanup::default();
    let queue = declare_queue(&channel, &mut cleanup, "purge");
    for i in 0..7 {
        publish(&channel, "", &queue, &i.to_string());
    }
    assert_eq!(channel.queue_purge(&queue).unwrap(), 7);
    assert_eq!(broker_view(&queue).message_count, 0);
    assert!(channel.basic_get(&queue, true).unwrap().is_none());
    assert_eq!(channel.queue_purge(&queue).unwrap(), 0);
}

#[test]
fn queue_delete_returns_the_message_count_and_the_queue_is_gone() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let mut cleanup = Cleanup::default();
    let queue = declare_queue(&channel, &mut cleanup, "delete");
    for i in 0..5 {
        publish(&channel, "", &queue, &i.to_string());
    }
    assert_eq!(
        channel
            .queue_delete(&queue, QueueDeleteOptions::default())
            .unwrap(),
        5
    );
    let other = connection.channel().unwrap();
    expect_channel_closed(other.queue_declare(&queue, passive()), 404);
}

#[test]
fn queue_delete_if_empty_on_a_non_empty_queue_is_406_and_keeps_it() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let mut cleanup = Cleanup::default();
    let queue = declare_queue(&channel, &mut cleanup, "delete-if-empty");
    publish(&channel, "", &queue, "still here");
    let err = expect_channel_closed(
        channel.queue_delete(
            &queue,
            QueueDeleteOptions {
                if_empty: true,
                ..Default::default()
            },
        ),
        406,
    );
    assert!(err.is_soft());
    assert!(channel.is_closed());
    assert_eq!(broker_view(&queue).message_count, 1);
}

#[test]
fn queue_delete_if_unused_on_a_consumed_queue_is_406() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let mut cleanup = Cleanup::default();
    let queue = declare_queue(&channel, &mut cleanup, "delete-if-unused");
    channel
        .basic_consume(&queue, |_, _, _, _| {}, Default::default())
        .unwrap();
    let other = connection.channel().unwrap();
    expect_channel_closed(
        other.queue_delete(
            &queue,
            QueueDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        ),
        406,
    );
    assert_eq!(broker_view(&queue).consumer_count, 1);
}

#[test]
fn exchange_delete_if_unused_on_a_bound_exchange_is_406() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let mut cleanup = Cleanup::default();
    let exchange = declare_exchange(&channel, &mut cleanup, "delete-bound", "direct");
    let queue = declare_queue(&channel, &mut cleanup, "delete-bound-q");
    bind(&channel, &queue, &exchange, "k");
    expect_channel_closed(
        channel.exchange_delete(&exchange, ExchangeDeleteOptions { if_unused: true }),
        406,
    );
    assert!(channel.is_closed());
    // Still there, and still routing.
    let fresh = connection.channel().unwrap();
    fresh
        .exchange_declare(
            &exchange,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
        )
        .unwrap();
    publish(&fresh, &exchange, "k", "routed");
    assert_eq!(drain(&fresh, &queue), ["routed"]);
}

#[test]
fn exchange_delete_removes_the_exchange() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let mut cleanup = Cleanup::default();
    let exchange = declare_exchange(&channel, &mut cleanup, "delete-unused", "fanout");
    channel
        .exchange_delete(&exchange, ExchangeDeleteOptions { if_unused: true })
        .unwrap();
    let check = connection.channel().unwrap();
    expect_channel_closed(
        check.exchange_declare(
            &exchange,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
        ),
        404,
    );
}

#[test]
fn passive_exchange_declare_succeeds_for_an_existing_exchange_and_is_404_for_a_missing_one() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let mut cleanup = Cleanup::default();
    let exchange = declare_exchange(&channel, &mut cleanup, "passive", "topic");
    let passive_options = ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    };
    // Passive ignores the type: a `direct` passive declare of a topic exchange succeeds.
    channel
        .exchange_declare(&exchange, passive_options.clone())
        .unwrap();
    let missing = unique("missing-exchange");
    let err = expect_channel_closed(channel.exchange_declare(&missing, passive_options), 404);
    match &err {
        Error::ChannelClosed {
            reply_text,
            class_id,
            method_id,
            ..
        } => {
            assert!(reply_text.contains(&missing), "{reply_text}");
            assert_eq!((*class_id, *method_id), (40, 10), "exchange.declare");
        }
        _ => unreachable!(),
    }
    assert!(channel.is_closed());
    assert_eq!(channel.flow(true), Err(err));
    assert!(connection.is_open());
}

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
    let queue = declare_queue(&channel, &mut cleanup, "nack-multiple");
    for i in 0..5 {
        publish(&channel, "", &queue, &format!("m{i}"));
    }
    let tags: Vec<u64> = (0..5)
        .map(|_| {
            channel
                .basic_get(&queue, false)
                .unwrap()
                .unwrap()
                .method
                .delivery_tag
        })
        .collect();
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
    let queue = declare_queue(&channel, &mut cleanup, "ack-multiple");
    for i in 0..4 {
        publish(&channel, "", &queue, &format!("m{i}"));
    }
    let tags: Vec<u64> = (0..4)
        .map(|_| {
            channel
                .basic_get(&queue, false)
                .unwrap()
                .unwrap()
                .method
                .delivery_tag
        })
        .collect();
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
    let queue = declare_queue(&channel, &mut cleanup, "recover");
    for i in 0..3 {
        publish(&channel, "", &queue, &format!("m{i}"));
    }
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
    let queue = declare_queue(&channel, &mut cleanup, "recover-consumer");
    for i in 0..3 {
        publish(&channel, "", &queue, &format!("m{i}"));
    }
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
                    inactivity_timeout: Some(Duration::from_millis(800)),
                    ..Default::default()
                },
            )
            .unwrap();
        thread::spawn(move || {
            let mut handled = 0usize;
            for item in consumer {
                match item.unwrap() {
                    Consumed::Delivery(d) => {
                        thread::sleep(work);
                        channel.basic_ack(d.method.delivery_tag, false).unwrap();
                        handled += 1;
                    }
                    _ => break,
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
    let queue = declare_queue(&channel, &mut cleanup, "in-order");
    for i in 0..5 {
        publish(&channel, "", &queue, &format!("m{i}"));
    }
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
    let queue = declare_queue(&channel, &mut cleanup, "consumer-cancel");
    for i in 0..5 {
        publish(&channel, "", &queue, &format!("m{i}"));
    }
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
    let queue = declare_queue(&channel, &mut cleanup, "cancel-auto-ack");
    for i in 0..3 {
        publish(&channel, "", &queue, &format!("m{i}"));
    }
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

/// A connection whose RPCs give up after 3 s, so a hang fails fast.
fn connect_impatient() -> cottontail::Connection {
    cottontail::Connection::open(support::params().with_rpc_timeout(Duration::from_secs(3)))
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
    assert!(elapsed < Duration::from_secs(2), "cancel took {elapsed:?}");
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
        took < Duration::from_secs(2),
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
    assert!(elapsed < Duration::from_secs(2), "close took {elapsed:?}");
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
