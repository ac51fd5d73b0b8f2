//! The methods that carry a message (`basic.deliver`, `basic.get-ok`, `basic.return`) as
//! cottontail's own types, with plain `String` fields, and their conversion from the codec's.
//! They are what a consumer callback gets as pika's `method` argument. The conversion moves
//! the codec's strings, so it costs no allocation.

use amq_protocol::protocol::basic;

/// The method of a delivery to a consumer (`basic.deliver`): pika's `method` argument of an
/// `on_message_callback`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Deliver {
    /// The consumer the message is for.
    pub consumer_tag: String,
    /// The tag to ack, nack or reject it with, on this channel.
    pub delivery_tag: u64,
    /// True if the message was delivered before and not acknowledged.
    pub redelivered: bool,
    /// The exchange it was published to (`""` for the default exchange).
    pub exchange: String,
    /// The routing key it was published with.
    pub routing_key: String,
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

impl From<basic::Deliver> for Deliver {
    fn from(m: basic::Deliver) -> Self {
        Deliver {
            consumer_tag: m.consumer_tag.into(),
            delivery_tag: m.delivery_tag,
            redelivered: m.redelivered,
            exchange: m.exchange.into(),
            routing_key: m.routing_key.into(),
        }
    }
}

impl From<basic::GetOk> for GetOk {
    fn from(m: basic::GetOk) -> Self {
        GetOk {
            delivery_tag: m.delivery_tag,
            redelivered: m.redelivered,
            exchange: m.exchange.into(),
            routing_key: m.routing_key.into(),
            message_count: m.message_count,
        }
    }
}

impl From<basic::Return> for Return {
    fn from(m: basic::Return) -> Self {
        Return {
            reply_code: m.reply_code,
            reply_text: m.reply_text.into(),
            exchange: m.exchange.into(),
            routing_key: m.routing_key.into(),
        }
    }
}
