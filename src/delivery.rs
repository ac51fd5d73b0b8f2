//! Messages as the caller receives them: the method, the properties and the owned body.

use amq_protocol::protocol::basic::{Deliver, GetOk, Return};
use amq_protocol::protocol::BasicProperties;

/// A message pushed to a consumer (`basic.deliver`), pika's `(method, properties, body)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery {
    /// The deliver method: `consumer_tag`, `delivery_tag`, `redelivered`, `exchange`, `routing_key`.
    pub method: Deliver,
    /// The message's properties.
    pub properties: BasicProperties,
    /// The message body.
    pub body: Vec<u8>,
}

/// A message fetched with [`Channel::basic_get`](crate::Channel::basic_get).
#[derive(Clone, Debug, PartialEq)]
pub struct GetMessage {
    /// The get-ok method: `delivery_tag`, `redelivered`, `exchange`, `routing_key`,
    /// `message_count` (messages left in the queue).
    pub method: GetOk,
    /// The message's properties.
    pub properties: BasicProperties,
    /// The message body.
    pub body: Vec<u8>,
}

/// A mandatory message the broker could not route (`basic.return`).
#[derive(Clone, Debug, PartialEq)]
pub struct Returned {
    /// The return method: `reply_code`, `reply_text`, `exchange`, `routing_key`.
    pub method: Return,
    /// The message's properties.
    pub properties: BasicProperties,
    /// The message body.
    pub body: Vec<u8>,
}
