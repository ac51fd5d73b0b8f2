//! Helpers of the `Channel` method tests (`channel_methods.rs`, `channel_settle.rs`,
//! `channel_consuming.rs`): cleanup of what a test declares, the broker's view of a queue,
//! declaring, binding, publishing and draining, and `rabbitmqctl` listings.

use std::collections::BTreeSet;
use std::time::Duration;

use cottontail::{
    Channel, ConnectionParameters, Error, ExchangeDeclareOptions, FieldTable, QueueBindOptions,
    QueueDeclareOk, QueueDeclareOptions, QueueDeleteOptions,
};

use super::{connect, eventually, rabbitmqctl, unique};

/// Deletes the queues and exchanges a test made when it ends, even when it fails.
#[derive(Default)]
pub struct Cleanup {
    pub queues: Vec<String>,
    pub exchanges: Vec<String>,
}

impl Cleanup {
    pub fn queue(&mut self, name: &str) -> String {
        self.queues.push(name.to_string());
        name.to_string()
    }

    pub fn exchange(&mut self, name: &str) -> String {
        self.exchanges.push(name.to_string());
        name.to_string()
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        // No panics here: this may run while a failed test unwinds.
        let params = ConnectionParameters::new(super::HOST).with_port(super::PORT);
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

pub fn passive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        ..Default::default()
    }
}

/// What the broker holds for `queue`, seen from a separate connection.
pub fn broker_view(queue: &str) -> QueueDeclareOk {
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
pub fn broker_eventually_holds(queue: &str, ready: u32) -> u32 {
    let mut last = 0;
    eventually(Duration::from_secs(5), || {
        last = broker_view(queue).message_count;
        last == ready
    });
    last
}

pub fn declare_queue(channel: &Channel, cleanup: &mut Cleanup, prefix: &str) -> String {
    let queue = cleanup.queue(&unique(prefix));
    channel
        .queue_declare(&queue, QueueDeclareOptions::default())
        .unwrap();
    queue
}

/// Declares a queue (as [`declare_queue`]) holding `count` messages, "m0", "m1"...
pub fn queue_holding(
    channel: &Channel,
    cleanup: &mut Cleanup,
    prefix: &str,
    count: usize,
) -> String {
    let queue = declare_queue(channel, cleanup, prefix);
    for i in 0..count {
        publish(channel, "", &queue, &format!("m{i}"));
    }
    queue
}

/// Takes `count` messages of `queue` with `basic_get` (manual ack) and returns their delivery
/// tags.
pub fn get_tags(channel: &Channel, queue: &str, count: usize) -> Vec<u64> {
    (0..count)
        .map(|_| {
            channel
                .basic_get(queue, false)
                .unwrap()
                .expect("a message")
                .method
                .delivery_tag
        })
        .collect()
}

pub fn declare_exchange(
    channel: &Channel,
    cleanup: &mut Cleanup,
    prefix: &str,
    kind: &str,
) -> String {
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

pub fn bind(channel: &Channel, queue: &str, exchange: &str, routing_key: &str) {
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

pub fn publish(channel: &Channel, exchange: &str, routing_key: &str, body: &str) {
    channel
        .basic_publish(exchange, routing_key, body.as_bytes())
        .unwrap();
}

/// Takes (auto-ack) every message of `queue`. On the channel that published, the broker has
/// routed every earlier publish before it answers the gets.
pub fn drain(channel: &Channel, queue: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    while let Some(message) = channel.basic_get(queue, true).unwrap() {
        bodies.push(String::from_utf8(message.body).unwrap());
    }
    bodies
}

pub fn string_table(pairs: &[(&str, &str)]) -> FieldTable {
    pairs.iter().map(|&(key, value)| (key, value)).collect()
}

/// Asserts that `result` is a broker channel close with `code`, and returns the error.
#[track_caller]
pub fn expect_channel_closed<T: std::fmt::Debug>(
    result: cottontail::Result<T>,
    code: u16,
) -> Error {
    match result {
        Err(e @ Error::ChannelClosed { reply_code, .. }) if reply_code == code => e,
        other => panic!("expected Err(ChannelClosed {{ reply_code: {code}, .. }}), got {other:?}"),
    }
}

/// `rabbitmqctl list_bindings` rows (source, destination, destination kind, key) touching `name`.
pub fn broker_bindings(name: &str) -> Vec<(String, String, String, String)> {
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
pub fn broker_consumer_tags(queue: &str) -> BTreeSet<String> {
    rabbitmqctl(&["list_consumers", "-s", "queue_name", "consumer_tag"])
        .lines()
        .filter_map(|line| {
            let (q, tag) = line.split_once('\t')?;
            (q == queue).then(|| tag.to_string())
        })
        .collect()
}
