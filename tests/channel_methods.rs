//! `Channel` methods on exchanges, queues and bindings against a real RabbitMQ: routing
//! (topic, headers, fanout, exchange-to-exchange), binds and unbinds, deletes and purges,
//! passive declares. Each test checks what the broker holds or exactly what the caller gets.
//! (Settling is in `channel_settle.rs`, consuming in `channel_consuming.rs`.)

mod support;

use std::time::Duration;

use cottontail::{
    BasicProperties, Error, ExchangeBindOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    PublishOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use support::methods::*;
use support::{connect, eventually, unique};

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
