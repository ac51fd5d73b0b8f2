//! Option structs for pika's keyword arguments. Each field has pika's name and `Default` gives
//! pika's default, so `Options { durable: true, ..Default::default() }` reads like
//! `durable=True` in Python.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;
use crate::protocol::properties::BasicProperties;
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
#[non_exhaustive]
pub struct QueueDeclareOk {
    /// The queue's name: the one asked for, or the one the broker generated for `""`.
    pub queue: String,
    /// Messages ready in the queue.
    pub message_count: u32,
    /// Consumers on the queue.
    pub consumer_count: u32,
}

/// Keyword arguments of [`Channel::exchange_declare`](crate::Channel::exchange_declare).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExchangeDeclareOptions {
    /// `direct`, `fanout`, `topic`, `headers`, or a plugin's type
    /// ([`ExchangeType::Custom`]). Defaults to [`ExchangeType::Direct`].
    pub exchange_type: ExchangeType,
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
/// assert_eq!(DeliveryMode::try_from(2), Ok(DeliveryMode::Persistent));
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

impl TryFrom<u8> for DeliveryMode {
    type Error = Error;

    /// 1 or 2; anything else is [`Error::InvalidArgument`].
    fn try_from(value: u8) -> Result<Self, Error> {
        match value {
            1 => Ok(DeliveryMode::Transient),
            2 => Ok(DeliveryMode::Persistent),
            other => Err(Error::InvalidArgument(format!(
                "delivery mode {other}: only 1 (transient) and 2 (persistent) exist"
            ))),
        }
    }
}

/// pika's `ExchangeType`: the type of an exchange, the four every RabbitMQ has or a plugin's.
///
/// ```
/// use cottontail::{ExchangeDeclareOptions, ExchangeType};
/// let options = ExchangeDeclareOptions { exchange_type: ExchangeType::Fanout, ..Default::default() };
/// assert_eq!(options.exchange_type.to_string(), "fanout");
/// assert_eq!("x-delayed-message".parse::<ExchangeType>(), Ok(ExchangeType::Custom("x-delayed-message".into())));
/// assert_eq!(ExchangeType::from("topic"), ExchangeType::Topic);
/// assert_eq!(ExchangeType::Custom("topic".into()), ExchangeType::Topic);
/// ```
///
/// Types compare by name: `ExchangeType::Custom("topic".into())` equals `ExchangeType::Topic`.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub enum ExchangeType {
    /// `direct`: routes on an exact routing-key match (the default).
    #[default]
    Direct,
    /// `fanout`: routes to every bound queue.
    Fanout,
    /// `headers`: routes on header values (`x-match` all or any).
    Headers,
    /// `topic`: routes on dotted patterns with `*` and `#`.
    Topic,
    /// A plugin's type, e.g. `x-delayed-message` or `x-consistent-hash`.
    Custom(String),
}

impl ExchangeType {
    /// The type's name as the broker knows it.
    pub fn as_str(&self) -> &str {
        match self {
            ExchangeType::Direct => "direct",
            ExchangeType::Fanout => "fanout",
            ExchangeType::Headers => "headers",
            ExchangeType::Topic => "topic",
            ExchangeType::Custom(name) => name,
        }
    }
}

impl PartialEq for ExchangeType {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for ExchangeType {}

impl std::hash::Hash for ExchangeType {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Display for ExchangeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for ExchangeType {
    /// The four standard names (exactly as the broker spells them) become their variants;
    /// any other name is [`ExchangeType::Custom`].
    fn from(name: &str) -> Self {
        match name {
            "direct" => ExchangeType::Direct,
            "fanout" => ExchangeType::Fanout,
            "headers" => ExchangeType::Headers,
            "topic" => ExchangeType::Topic,
            other => ExchangeType::Custom(other.to_owned()),
        }
    }
}

impl From<String> for ExchangeType {
    fn from(name: String) -> Self {
        ExchangeType::from(name.as_str())
    }
}

impl FromStr for ExchangeType {
    type Err = Error;

    /// As [`From<&str>`](#impl-From%3C%26str%3E-for-ExchangeType); only an empty name is an error.
    fn from_str(name: &str) -> Result<Self, Error> {
        if name.is_empty() {
            return Err(Error::InvalidArgument(
                "an exchange type cannot be empty".into(),
            ));
        }
        Ok(ExchangeType::from(name))
    }
}

/// Keyword arguments of [`Channel::basic_publish_with`](crate::Channel::basic_publish_with)
/// and [`Channel::basic_publish_deferred`](crate::Channel::basic_publish_deferred) (pika's
/// `properties=None, mandatory=False`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublishOptions {
    /// The message's properties. Defaults to none set.
    pub properties: BasicProperties,
    /// Return the message ([`Error::Unroutable`] in confirm mode, the return callbacks
    /// otherwise) if no queue is bound to receive it. Defaults to `false`.
    pub mandatory: bool,
}

/// Keyword arguments of [`Channel::basic_qos`](crate::Channel::basic_qos) (pika's
/// `basic_qos(prefetch_size=0, prefetch_count=0, global_qos=False)`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QosOptions {
    /// Bytes the broker may send ahead of acks; RabbitMQ implements only 0 (no limit), and
    /// anything else is refused before it is sent. Defaults to 0.
    pub prefetch_size: u32,
    /// Messages the broker may send ahead of acks; 0 means no limit. Defaults to 0.
    pub prefetch_count: u16,
    /// RabbitMQ's reading: `false` applies `prefetch_count` to each consumer started
    /// afterwards on the channel, `true` shares it among all of the channel's consumers.
    /// Defaults to `false`.
    pub global_qos: bool,
}

/// Keyword arguments of [`Channel::basic_nack`](crate::Channel::basic_nack) (pika's
/// `multiple=False, requeue=True`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NackOptions {
    /// Nack every unacknowledged delivery up to the tag. Defaults to `false`.
    pub multiple: bool,
    /// Put the messages back in their queue; `false` dead-letters or drops them. Defaults to
    /// `true`.
    pub requeue: bool,
}

impl Default for NackOptions {
    fn default() -> Self {
        NackOptions {
            multiple: false,
            requeue: true,
        }
    }
}

/// Keyword arguments of [`Channel::basic_reject`](crate::Channel::basic_reject) (pika's
/// `requeue=True`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RejectOptions {
    /// Put the message back in its queue; `false` dead-letters or drops it. Defaults to `true`.
    pub requeue: bool,
}

impl Default for RejectOptions {
    fn default() -> Self {
        RejectOptions { requeue: true }
    }
}

/// Keyword arguments of [`Channel::exchange_delete`](crate::Channel::exchange_delete) (pika's
/// `if_unused=False`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExchangeDeleteOptions {
    /// Only delete the exchange if it has no bindings (406 otherwise). Defaults to `false`.
    pub if_unused: bool,
}

/// Keyword arguments of [`Channel::exchange_bind`](crate::Channel::exchange_bind) and
/// [`Channel::exchange_unbind`](crate::Channel::exchange_unbind) (pika's `routing_key='',
/// arguments=None`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExchangeBindOptions {
    /// The binding key. Defaults to `""`.
    pub routing_key: String,
    /// Binding arguments. Defaults to empty.
    pub arguments: FieldTable,
}
