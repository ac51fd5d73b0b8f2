//! The methods that carry a message (`basic.deliver`, `basic.get-ok`, `basic.return`) as
//! cottontail's own types, and their conversion from the codec's. They are what a consumer
//! callback gets as pika's `method` argument. `basic.get-ok` and `basic.return` have plain
//! `String` fields (the conversion moves the codec's strings); `basic.deliver`'s are
//! [`SharedStr`]s, shared with the previous delivery's when they repeat.

use amq_protocol::protocol::basic;

use super::properties::BasicProperties;
use super::shared_str::SharedStr;

/// The method of a delivery to a consumer (`basic.deliver`): pika's `method` argument of an
/// `on_message_callback`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Deliver {
    /// The consumer the message is for.
    pub consumer_tag: SharedStr,
    /// The tag to ack, nack or reject it with, on this channel.
    pub delivery_tag: u64,
    /// True if the message was delivered before and not acknowledged.
    pub redelivered: bool,
    /// The exchange it was published to (`""` for the default exchange).
    pub exchange: SharedStr,
    /// The routing key it was published with.
    pub routing_key: SharedStr,
}

/// The method of a message fetched with [`Channel::basic_get`](crate::Channel::basic_get)
/// (`basic.get-ok`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GetOk {
    /// The tag to ack, nack or reject it with, on this channel.
    pub delivery_tag: u64,
    /// True if the message was delivered before and not acknowledged.
    pub redelivered: bool,
    /// The exchange it was published to.
    pub exchange: String,
    /// The routing key it was published with.
    pub routing_key: String,
    /// Messages left in the queue.
    pub message_count: u32,
}

/// The method of a message the broker returned (`basic.return`), e.g. a mandatory message
/// nothing was bound to receive.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Return {
    /// Why: 312 `NO_ROUTE` for an unroutable mandatory message.
    pub reply_code: u16,
    /// The broker's text for it.
    pub reply_text: String,
    /// The exchange it was published to.
    pub exchange: String,
    /// The routing key it was published with.
    pub routing_key: String,
}

impl Deliver {
    /// The codec's method as ours (the slow path: `fast::deliver` decodes nearly every one).
    pub(crate) fn from_wire(m: basic::Deliver) -> Self {
        Deliver {
            consumer_tag: m.consumer_tag.as_str().into(),
            delivery_tag: m.delivery_tag,
            redelivered: m.redelivered,
            exchange: m.exchange.as_str().into(),
            routing_key: m.routing_key.as_str().into(),
        }
    }
}

impl GetOk {
    /// The codec's method as ours (its strings moved, not copied).
    pub(crate) fn from_wire(m: basic::GetOk) -> Self {
        GetOk {
            delivery_tag: m.delivery_tag,
            redelivered: m.redelivered,
            exchange: m.exchange.into(),
            routing_key: m.routing_key.into(),
            message_count: m.message_count,
        }
    }
}

impl Return {
    /// The codec's method as ours (its strings moved, not copied).
    pub(crate) fn from_wire(m: basic::Return) -> Self {
        Return {
            reply_code: m.reply_code,
            reply_text: m.reply_text.into(),
            exchange: m.exchange.into(),
            routing_key: m.routing_key.into(),
        }
    }
}

/// A message as it was published: what [`Error::Nack`](crate::Error::Nack) and
/// [`Error::Unroutable`](crate::Error::Unroutable) carry (pika's `NackError.messages` /
/// `UnroutableError.messages`), so the caller can log or republish it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Message {
    /// The exchange it was published to.
    pub exchange: String,
    /// The routing key it was published with.
    pub routing_key: String,
    /// Its properties.
    pub properties: BasicProperties,
    /// Its body.
    pub body: Vec<u8>,
}

impl Message {
    pub(crate) fn new(
        exchange: &str,
        routing_key: &str,
        properties: BasicProperties,
        body: Vec<u8>,
    ) -> Self {
        Message {
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
            properties,
            body,
        }
    }
}
