//! Messages as the caller receives them: the method, the properties and the owned body.
//!
//! Each has its method's fields as accessors too (`delivery.routing_key()`), so everyday code
//! need not go through `.method`.

use crate::protocol::methods::{Deliver, GetOk, Return};
use crate::protocol::properties::BasicProperties;

/// A message pushed to a consumer (`basic.deliver`), pika's `(method, properties, body)`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Delivery {
    /// The deliver method: `consumer_tag`, `delivery_tag`, `redelivered`, `exchange`, `routing_key`.
    pub method: Deliver,
    /// The message's properties.
    pub properties: BasicProperties,
    /// The message body.
    pub body: Vec<u8>,
    /// Recoveries of the connection before it arrived (see [`generation`](Self::generation)).
    pub(crate) generation: u64,
}

/// A message fetched with [`Channel::basic_get`](crate::Channel::basic_get).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct GetMessage {
    /// The get-ok method: `delivery_tag`, `redelivered`, `exchange`, `routing_key`,
    /// `message_count` (messages left in the queue).
    pub method: GetOk,
    /// The message's properties.
    pub properties: BasicProperties,
    /// The message body.
    pub body: Vec<u8>,
    pub(crate) generation: u64,
}

/// A message the broker returned (`basic.return`): a mandatory message it could not route.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Returned {
    /// The return method: `reply_code`, `reply_text`, `exchange`, `routing_key`.
    pub method: Return,
    /// The message's properties.
    pub properties: BasicProperties,
    /// The message body.
    pub body: Vec<u8>,
}

impl Delivery {
    pub(crate) fn new(
        method: Deliver,
        properties: BasicProperties,
        body: Vec<u8>,
        generation: u64,
    ) -> Self {
        Delivery {
            method,
            properties,
            body,
            generation,
        }
    }

    /// How many times the connection had recovered when this delivery arrived (0 before any
    /// recovery). A delivery from an earlier generation than the connection's
    /// ([`Connection::recovery_generation`](crate::Connection::recovery_generation)) cannot be
    /// acked any more: its channel is gone ([`Error::StaleDeliveryTag`](crate::Error::StaleDeliveryTag)),
    /// and the broker delivers the message again unless it was auto-acked.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The tag to [`basic_ack`](crate::Channel::basic_ack) it with.
    pub fn delivery_tag(&self) -> u64 {
        self.method.delivery_tag
    }

    /// The consumer it was delivered to.
    pub fn consumer_tag(&self) -> &str {
        &self.method.consumer_tag
    }

    /// True if it was delivered before and not acknowledged.
    pub fn redelivered(&self) -> bool {
        self.method.redelivered
    }

    /// The exchange it was published to (`""`: the default exchange).
    pub fn exchange(&self) -> &str {
        &self.method.exchange
    }

    /// The routing key it was published with.
    pub fn routing_key(&self) -> &str {
        &self.method.routing_key
    }
}

impl GetMessage {
    pub(crate) fn new(
        method: GetOk,
        properties: BasicProperties,
        body: Vec<u8>,
        generation: u64,
    ) -> Self {
        GetMessage {
            method,
            properties,
            body,
            generation,
        }
    }

    /// How many times the connection had recovered when this message arrived (see
    /// [`Delivery::generation`]).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The tag to [`basic_ack`](crate::Channel::basic_ack) it with.
    pub fn delivery_tag(&self) -> u64 {
        self.method.delivery_tag
    }

    /// True if it was delivered before and not acknowledged.
    pub fn redelivered(&self) -> bool {
        self.method.redelivered
    }

    /// The exchange it was published to.
    pub fn exchange(&self) -> &str {
        &self.method.exchange
    }

    /// The routing key it was published with.
    pub fn routing_key(&self) -> &str {
        &self.method.routing_key
    }

    /// Messages left in the queue after this one.
    pub fn message_count(&self) -> u32 {
        self.method.message_count
    }
}

impl Returned {
    pub(crate) fn new(method: Return, properties: BasicProperties, body: Vec<u8>) -> Self {
        Returned {
            method,
            properties,
            body,
        }
    }

    /// Why it came back (312 `NO_ROUTE` for an unroutable mandatory message).
    pub fn reply_code(&self) -> u16 {
        self.method.reply_code
    }

    /// The broker's text for it.
    pub fn reply_text(&self) -> &str {
        &self.method.reply_text
    }

    /// The exchange it was published to.
    pub fn exchange(&self) -> &str {
        &self.method.exchange
    }

    /// The routing key it was published with.
    pub fn routing_key(&self) -> &str {
        &self.method.routing_key
    }
}
