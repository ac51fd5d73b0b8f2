//! The encoded method and content-header frames of a channel's last publish.
//!
//! Most publishers send many messages to the same exchange and routing key with the same
//! properties. Encoding basic.publish and its content header through amq-protocol costs a
//! handful of allocations and ~2,000 instructions per message; reusing the last encoding and
//! patching the body size (8 bytes) costs a few comparisons. When only the properties differ
//! (an RPC's fresh correlation id), the method frame is kept and only the header re-encoded.
//! A miss encodes afresh with `gen_frame`, so the bytes are always amq-protocol's.

use amq_protocol::protocol::{basic, AMQPClass};

use super::properties::BasicProperties;

use crate::error::Result;
use crate::protocol::codec::{self, short};

/// Offset of the body size in a content header frame: frame header (7), class id (2), weight (2).
const BODY_SIZE_OFFSET: usize = 11;

#[derive(Debug, Default)]
pub(crate) struct PublishCache {
    exchange: String,
    routing_key: String,
    mandatory: bool,
    properties: BasicProperties,
    /// The method frame then the header frame.
    frames: Vec<u8>,
    /// Where the header frame starts in `frames`; 0 when the cache is empty.
    header_at: usize,
}

impl PublishCache {
    /// Encodes a publish's method and header frames into `buf` without the cache (for when
    /// another thread is using it).
    pub(crate) fn encode(
        buf: &mut Vec<u8>,
        channel: u16,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
        properties: &BasicProperties,
        body_size: u64,
    ) -> Result<()> {
        encode_publish(buf, channel, exchange, routing_key, mandatory)?;
        codec::encode_content_header(buf, channel, body_size, properties)
    }

    /// The method and header frames for this publish, encoded anew only when something other
    /// than the body size differs from the last one.
    pub(crate) fn frames(
        &mut self,
        channel: u16,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
        properties: &BasicProperties,
        body_size: u64,
    ) -> Result<&[u8]> {
        let method_hit = self.header_at > 0
            && self.mandatory == mandatory
            && self.exchange == exchange
            && self.routing_key == routing_key;
        if !method_hit {
            self.header_at = 0;
            self.frames.clear();
            encode_publish(&mut self.frames, channel, exchange, routing_key, mandatory)?;
            self.exchange.clear();
            self.exchange.push_str(exchange);
            self.routing_key.clear();
            self.routing_key.push_str(routing_key);
            self.mandatory = mandatory;
        }
        if !method_hit || &self.properties != properties {
            // Same method, new properties (an RPC's correlation id): only the header is new.
            let header_at = if method_hit {
                self.header_at
            } else {
                self.frames.len()
            };
            self.frames.truncate(header_at);
            // Unusable until the header is encoded: an error leaves nothing to reuse.
            self.header_at = 0;
            codec::encode_content_header(&mut self.frames, channel, body_size, properties)?;
            self.properties = properties.clone();
            self.header_at = header_at;
        }
        let at = self.header_at + BODY_SIZE_OFFSET;
        self.frames[at..at + 8].copy_from_slice(&body_size.to_be_bytes());
        Ok(&self.frames)
    }
}

/// Appends a basic.publish method frame.
fn encode_publish(
    buf: &mut Vec<u8>,
    channel: u16,
    exchange: &str,
    routing_key: &str,
    mandatory: bool,
) -> Result<()> {
    let method = AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
        exchange: short(exchange)?,
        routing_key: short(routing_key)?,
        mandatory,
        immediate: false,
    }));
    codec::encode_method(buf, channel, method)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh(channel: u16, ex: &str, rk: &str, props: &BasicProperties, size: u64) -> Vec<u8> {
        let mut buf = Vec::new();
        let method = AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: ex.into(),
            routing_key: rk.into(),
            mandatory: false,
            immediate: false,
        }));
        codec::encode_method(&mut buf, channel, method).unwrap();
        codec::encode_content_header(&mut buf, channel, size, props).unwrap();
        buf
    }

    #[test]
    fn a_hit_is_byte_identical_to_a_fresh_encoding() {
        let mut cache = PublishCache::default();
        let props = BasicProperties::default().with_delivery_mode(2);
        for size in [0u64, 5, 1 << 20, u32::MAX as u64 + 7] {
            let got = cache
                .frames(3, "ex", "rk", false, &props, size)
                .unwrap()
                .to_vec();
            assert_eq!(got, fresh(3, "ex", "rk", &props, size), "size {size}");
        }
    }

    #[test]
    fn any_difference_re_encodes() {
        let mut cache = PublishCache::default();
        let props = BasicProperties::default();
        cache.frames(1, "ex", "a", false, &props, 1).unwrap();
        let other_key = cache
            .frames(1, "ex", "b", false, &props, 1)
            .unwrap()
            .to_vec();
        assert_eq!(other_key, fresh(1, "ex", "b", &props, 1));
        let with_id = props.clone().with_message_id("m");
        let other_props = cache
            .frames(1, "ex", "b", false, &with_id, 1)
            .unwrap()
            .to_vec();
        assert_eq!(other_props, fresh(1, "ex", "b", &with_id, 1));
    }

    #[test]
    fn an_invalid_name_leaves_the_cache_empty() {
        let mut cache = PublishCache::default();
        let props = BasicProperties::default();
        cache.frames(1, "ex", "rk", false, &props, 1).unwrap();
        assert!(cache
            .frames(1, "ex", &"x".repeat(256), false, &props, 1)
            .is_err());
        assert_eq!(cache.header_at, 0);
        let again = cache
            .frames(1, "ex", "rk", false, &props, 2)
            .unwrap()
            .to_vec();
        assert_eq!(again, fresh(1, "ex", "rk", &props, 2));
    }
}
