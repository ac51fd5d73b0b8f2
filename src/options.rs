//! Option structs for pika's keyword arguments. Each field has pika's name and `Default` gives
//! pika's default, so `Options { durable: true, ..Default::default() }` reads like
//! `durable=True` in Python.

use crate::protocol::table::FieldTable;

/// Keyword arguments of [`Channel::queue_declare`](crate::Channel::queue_declare).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueueDeclareOptions {
    /// Only check that the queue exists (404 if not). Defaults to `false`.
    pub passive: bool,
    /// Survive a broker restart. Defaults to `false`.
    pub durable: bool,
    /// Used by this connection only and deleted when it closes. Defaults to `false`.
    pub exclusive: bool,
    /// Deleted when its last consumer is cancelled. Defaults to `false`.
    pub auto_delete: bool,
    /// Extra arguments (`x-message-ttl`, `x-dead-letter-exchange`, `x-queue-type`...). Defaults to empty.
    pub arguments: FieldTable,
}

/// The broker's answer to `queue.declare`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueDeclareOk {
    /// The queue's name: the one asked for, or the one the broker generated for `""`.
    pub queue: String,
    /// Messages ready in the queue.
    pub message_count: u32,
    /// Consumers on the queue.
    pub consumer_count: u32,
}

/// Keyword arguments of [`Channel::exchange_declare`](crate::Channel::exchange_declare).
#[derive(Clone, Debug, PartialEq)]
pub struct ExchangeDeclareOptions {
    /// `direct`, `fanout`, `topic`, `headers`, or a plugin's type. Defaults to `"direct"`.
    pub exchange_type: String,
    /// Only check that the exchange exists (404 if not). Defaults to `false`.
    pub passive: bool,
    /// Survive a broker restart. Defaults to `false`.
    pub durable: bool,
    /// Deleted when its last binding is removed. Defaults to `false`.
    pub auto_delete: bool,
    /// Cannot be published to directly, only through exchange-to-exchange bindings. Defaults to `false`.
    pub internal: bool,
    /// Extra arguments (`alternate-exchange`...). Defaults to empty.
    pub arguments: FieldTable,
}

impl Default for ExchangeDeclareOptions {
    fn default() -> Self {
        ExchangeDeclareOptions {
            exchange_type: "direct".into(),
            passive: false,
            durable: false,
            auto_delete: false,
            internal: false,
            arguments: FieldTable::default(),
        }
    }
}

/// Keyword arguments of [`Channel::queue_bind`](crate::Channel::queue_bind).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueueBindOptions {
    /// The binding key. Defaults to `None`, which (as in pika) binds with the queue's name.
    pub routing_key: Option<String>,
    /// Binding arguments (`x-match` for headers exchanges...). Defaults to empty.
    pub arguments: FieldTable,
}

/// Keyword arguments of [`Channel::queue_delete`](crate::Channel::queue_delete).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueDeleteOptions {
    /// Only delete if the queue has no consumers (406 otherwise). Defaults to `false`.
    pub if_unused: bool,
    /// Only delete if the queue holds no messages (406 otherwise). Defaults to `false`.
    pub if_empty: bool,
}

/// Keyword arguments of [`Channel::basic_consume`](crate::Channel::basic_consume).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BasicConsumeOptions {
    /// The broker considers messages acknowledged once sent. Defaults to `false`.
    pub auto_ack: bool,
    /// Be the queue's only consumer (403 if another exists). Defaults to `false`.
    pub exclusive: bool,
    /// The consumer tag. Defaults to `None`: cottontail makes a unique one, as pika does.
    pub consumer_tag: Option<String>,
    /// Consumer arguments (`x-priority`...). Defaults to empty.
    pub arguments: FieldTable,
}

/// pika's `DeliveryMode`: the values of the `delivery_mode` property.
///
/// ```
/// use cottontail::{BasicProperties, DeliveryMode};
/// let persistent = BasicProperties::default().with_delivery_mode(DeliveryMode::Persistent);
/// assert_eq!(persistent.delivery_mode(), Some(2));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeliveryMode {
    /// 1: kept in memory only (pika's `DeliveryMode.Transient`).
    Transient = 1,
    /// 2: written to disk on a durable queue (pika's `DeliveryMode.Persistent`,
    /// `spec.PERSISTENT_DELIVERY_MODE`).
    Persistent = 2,
}

impl From<DeliveryMode> for u8 {
    fn from(mode: DeliveryMode) -> u8 {
        mode as u8
    }
}

/// pika's `ExchangeType`: the exchange types every RabbitMQ has.
///
/// ```
/// use cottontail::{ExchangeDeclareOptions, ExchangeType};
/// let options = ExchangeDeclareOptions { exchange_type: ExchangeType::Fanout.into(), ..Default::default() };
/// assert_eq!(options.exchange_type, "fanout");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExchangeType {
    /// `direct`: routes on an exact routing-key match.
    Direct,
    /// `fanout`: routes to every bound queue.
    Fanout,
    /// `headers`: routes on header values (`x-match` all or any).
    Headers,
    /// `topic`: routes on dotted patterns with `*` and `#`.
    Topic,
}

impl ExchangeType {
    /// The type's name as the broker knows it.
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeType::Direct => "direct",
            ExchangeType::Fanout => "fanout",
            ExchangeType::Headers => "headers",
            ExchangeType::Topic => "topic",
        }
    }
}

impl From<ExchangeType> for String {
    fn from(kind: ExchangeType) -> String {
        kind.as_str().to_string()
    }
}
