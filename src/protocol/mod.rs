//! The protocol without I/O: frame encoding and decoding, the opening handshake, heartbeat
//! deadlines, content assembly, ack merging, confirm tracking and publish templates.
//!
//! Nothing here touches a socket, a thread or a lock, and nothing imports the engine, the
//! transport or the public API: every piece is a plain state machine fed bytes, frames and
//! `Instant`s, and unit-tested that way.

pub(crate) mod ack_frames;
pub(crate) mod acks;
pub(crate) mod codec;
pub(crate) mod confirms;
pub(crate) mod content;
pub(crate) mod fast;
pub(crate) mod handshake;
pub(crate) mod heartbeat;
pub(crate) mod methods;
pub(crate) mod nesting;
pub(crate) mod properties;
#[cfg(test)]
mod proptests;
pub(crate) mod publish_cache;
pub(crate) mod shared_str;
pub(crate) mod table;
