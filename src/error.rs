//! The one error type of the crate.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use crate::protocol::methods::Message;

/// Any error, boxed, as a callback may return it: `Box<dyn std::error::Error + Send + Sync>`.
///
/// A callback declared `-> Result<(), BoxError>` can use `?` on any error type (an
/// `std::io::Error`, a cottontail [`Error`], an application's own error, a `String`...).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result alias used throughout cottontail.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// AMQP reply code for a normal shutdown (`REPLY_SUCCESS`).
pub const REPLY_SUCCESS: u16 = 200;
/// AMQP reply code 403 `ACCESS_REFUSED`.
pub const ACCESS_REFUSED: u16 = 403;
/// AMQP reply code 404 `NOT_FOUND`.
pub const NOT_FOUND: u16 = 404;
/// AMQP reply code 405 `RESOURCE_LOCKED`.
pub const RESOURCE_LOCKED: u16 = 405;
/// AMQP reply code 406 `PRECONDITION_FAILED`.
pub const PRECONDITION_FAILED: u16 = 406;
/// AMQP reply code 320 `CONNECTION_FORCED`.
pub const CONNECTION_FORCED: u16 = 320;
/// AMQP reply code 501 `FRAME_ERROR`.
pub const FRAME_ERROR: u16 = 501;
/// AMQP reply code 502 `SYNTAX_ERROR`.
pub const SYNTAX_ERROR: u16 = 502;
/// AMQP reply code 503 `COMMAND_INVALID`.
pub const COMMAND_INVALID: u16 = 503;
/// AMQP reply code 504 `CHANNEL_ERROR`.
pub const CHANNEL_ERROR: u16 = 504;
/// AMQP reply code 505 `UNEXPECTED_FRAME`.
pub const UNEXPECTED_FRAME: u16 = 505;
/// AMQP reply code 540 `NOT_IMPLEMENTED`.
pub const NOT_IMPLEMENTED: u16 = 540;
/// AMQP reply code 541 `INTERNAL_ERROR`.
pub const INTERNAL_ERROR: u16 = 541;

/// The most attempt errors [`Error::AllAttemptsFailed`] keeps: those of the last attempts.
pub const ATTEMPT_ERRORS_KEPT: usize = 32;

/// Everything that can go wrong in cottontail.
///
/// The error is `Clone + Send + Sync + 'static`: when a connection fails, the same error reaches
/// every caller that was waiting on it. Broker-initiated closes are data
/// ([`Error::ChannelClosed`], [`Error::ConnectionClosed`]) with [`Error::reply_code`] and
/// [`Error::is_soft`] to inspect them.
///
/// | pika exception | cottontail |
/// |---|---|
/// | `AMQPConnectionError` (socket) | [`Error::Io`] |
/// | `StreamLostError` | [`Error::StreamLost`] |
/// | `AuthenticationError` | [`Error::AuthenticationFailed`] |
/// | `ProbableAccessDeniedError` | [`Error::AccessRefused`] |
/// | `ConnectionClosedByBroker` | [`Error::ConnectionClosed`] |
/// | `ConnectionClosedByClient` | [`Error::ConnectionClosedByClient`] |
/// | `ChannelClosedByBroker` | [`Error::ChannelClosed`] |
/// | `ChannelClosedByClient` | [`Error::ChannelClosedByClient`] |
/// | `AMQPHeartbeatTimeout` | [`Error::HeartbeatTimeout`] |
/// | `ConnectionBlockedTimeout` | [`Error::ConnectionBlockedTimeout`] |
/// | `AMQPConnectionError` after several attempts | [`Error::AllAttemptsFailed`] |
/// | `ConnectionWrongState` / `ChannelWrongState` | the error that closed it ([`Error::ConnectionClosed`], [`Error::ChannelClosed`], ...) |
/// | `ConsumerCancelled` | the `consume()` iterator ends; `add_on_cancel_callback` |
/// | `NoFreeChannels` | [`Error::NoFreeChannels`] |
/// | `InvalidChannelNumber` | [`Error::InvalidChannelNumber`] |
/// | `DuplicateConsumerTag` | [`Error::DuplicateConsumerTag`] |
/// | `ReentrancyError` | [`Error::Reentrancy`] |
/// | `NackError` | [`Error::Nack`] |
/// | `UnroutableError` | [`Error::Unroutable`] |
/// | `ShortStringTooLong` | [`Error::InvalidArgument`] |
/// | (no counterpart: pika waits forever) | [`Error::Timeout`] |
/// | an exception a callback raises, out of `start_consuming` / `process_data_events` | the callback's own [`Error`], or [`Error::Callback`] with its error as `source()` |
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A socket operation failed (connection refused, name resolution, reset...).
    #[error("i/o error ({kind:?}) while {context}: {message}")]
    Io {
        /// What cottontail was doing.
        context: String,
        /// The kind of the underlying `std::io::Error`.
        kind: io::ErrorKind,
        /// The underlying error's message.
        message: String,
    },
    /// The socket closed or failed while the connection was open (pika's `StreamLostError`).
    #[error("connection to the broker was lost: {message}")]
    StreamLost {
        /// What happened to the stream.
        message: String,
    },
    /// TLS set-up or handshake failed (certificate not trusted, hostname mismatch...).
    #[error("tls error: {message}")]
    Tls {
        /// The TLS library's message.
        message: String,
    },
    /// The broker refused the credentials (wrong user or password, or a mechanism it does not offer).
    #[error("authentication failed: {reason}")]
    AuthenticationFailed {
        /// The broker's reply text, or what cottontail saw.
        reason: String,
    },
    /// The broker refused access to the virtual host (pika's `ProbableAccessDeniedError`).
    #[error("access refused to virtual host {vhost:?}: {reply_text}")]
    AccessRefused {
        /// The virtual host that was asked for.
        vhost: String,
        /// The broker's reply text.
        reply_text: String,
    },
    /// The broker closed the connection (pika's `ConnectionClosedByBroker`).
    #[error("connection closed by the broker: {reply_code} {reply_text}")]
    ConnectionClosed {
        /// The AMQP reply code (e.g. 320 `CONNECTION_FORCED`, 501 `FRAME_ERROR`).
        reply_code: u16,
        /// The broker's reply text.
        reply_text: String,
        /// Class of the method that caused the close, 0 if none.
        class_id: u16,
        /// Method that caused the close, 0 if none.
        method_id: u16,
    },
    /// The connection was closed by this client (pika's `ConnectionClosedByClient`).
    #[error("connection closed by the client: {reply_code} {reply_text}")]
    ConnectionClosedByClient {
        /// The reply code the client sent, or the code of the protocol error it detected.
        reply_code: u16,
        /// The reply text the client sent.
        reply_text: String,
    },
    /// The broker closed the channel (pika's `ChannelClosedByBroker`), e.g. 404 for a missing
    /// queue, 406 for a declare that does not match, 403 for a forbidden name.
    #[error("channel closed by the broker: {reply_code} {reply_text}")]
    ChannelClosed {
        /// The AMQP reply code.
        reply_code: u16,
        /// The broker's reply text.
        reply_text: String,
        /// Class of the method that caused the close.
        class_id: u16,
        /// Method that caused the close.
        method_id: u16,
    },
    /// The channel was closed by this client (pika's `ChannelClosedByClient`).
    #[error("channel closed by the client: {reply_code} {reply_text}")]
    ChannelClosedByClient {
        /// The reply code the client sent.
        reply_code: u16,
        /// The reply text the client sent.
        reply_text: String,
    },
    /// An operation did not complete within its deadline.
    #[error("timed out after {after:?} while {context}")]
    Timeout {
        /// What cottontail was waiting for.
        context: String,
        /// The deadline that passed.
        after: Duration,
    },
    /// The broker sent nothing for two heartbeat intervals (pika's `AMQPHeartbeatTimeout`).
    #[error("no frame from the broker for {silent_for:?} (heartbeat {heartbeat}s)")]
    HeartbeatTimeout {
        /// The negotiated heartbeat interval, in seconds.
        heartbeat: u16,
        /// How long the broker had been silent.
        silent_for: Duration,
    },
    /// The peer broke the protocol (oversized frame, bad frame end, unexpected frame, garbage).
    /// cottontail closed the connection with the given AMQP reply code.
    #[error("protocol violation by the peer ({reply_code}): {reason}")]
    Protocol {
        /// The reply code cottontail sent while closing (501, 503, 504 or 505).
        reply_code: u16,
        /// What was wrong.
        reason: String,
    },
    /// An argument was rejected before anything was sent (a name over 255 bytes, a bad URL...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Every channel number up to `channel_max` is in use (pika's `NoFreeChannels`).
    #[error("no free channel numbers (channel_max is {channel_max})")]
    NoFreeChannels {
        /// The negotiated channel_max.
        channel_max: u16,
    },
    /// The channel number is 0, above `channel_max`, or already in use.
    #[error("invalid channel number {number}: {reason}")]
    InvalidChannelNumber {
        /// The number asked for.
        number: u16,
        /// Why it cannot be used.
        reason: String,
    },
    /// A consumer with this tag already exists on the channel (pika's `DuplicateConsumerTag`),
    /// or a `basic_consume` with it timed out and the broker has not answered yet (it may
    /// still register that consumer, which the client then cancels; the tag is free again
    /// once the late reply came).
    #[error("duplicate consumer tag {0:?}")]
    DuplicateConsumerTag(String),
    /// `start_consuming` or a `consume()` iterator was used from inside a callback of the same
    /// connection, or on a channel another thread is consuming (pika's `ReentrancyError`).
    #[error(
        "start_consuming or consume() used inside a callback of the connection, or on a channel \
         another thread consumes"
    )]
    Reentrancy,
    /// The broker nacked a published message in confirm mode (pika's `NackError`).
    #[error("the broker nacked the message (delivery tag {delivery_tag})")]
    Nack {
        /// The publish sequence number that was nacked.
        delivery_tag: u64,
        /// The message that was nacked, as it was published.
        message: Box<Message>,
    },
    /// A mandatory message could not be routed and was returned (pika's `UnroutableError`).
    #[error("message returned as unroutable: {reply_code} {reply_text}")]
    Unroutable {
        /// The reply code of basic.return (312 `NO_ROUTE`).
        reply_code: u16,
        /// The reply text of basic.return.
        reply_text: String,
        /// The message that was returned, as it was published.
        message: Box<Message>,
    },
    /// An ack, nack or reject of a delivery received before the connection was recovered
    /// (see the crate docs' "Recovery" section): the channel it came on is gone, and the broker
    /// delivers the message again (with `redelivered` set) unless it was auto-acked. Nothing
    /// was sent: the recovered channel stays open.
    #[error("delivery tag {delivery_tag} is from before the connection was recovered (generation {generation}); the broker delivers that message again")]
    StaleDeliveryTag {
        /// The tag that was given.
        delivery_tag: u64,
        /// The connection's generation now (recoveries so far).
        generation: u64,
    },
    /// The connection was lost after a message was published in confirm mode and before the
    /// broker confirmed it: it may or may not have reached its queues. Publish it again if
    /// duplicates are acceptable (consumers then see it twice at most).
    #[error("the connection was lost before the broker confirmed message {delivery_tag}: it may or may not have been routed")]
    ConfirmUnknown {
        /// The message's publish sequence number.
        delivery_tag: u64,
        /// The message, as it was published.
        message: Box<Message>,
    },
    /// Every connection attempt failed (several parameter sets or `connection_attempts > 1`);
    /// the attempts' errors in order, the last one last.
    #[error("{failed} connection attempts failed; the last: {}", last_of(.attempts))]
    AllAttemptsFailed {
        /// How many attempts failed.
        failed: usize,
        /// The attempts' errors, in order: all of them, or, from
        /// [`Connection::open`](crate::Connection::open), the last [`ATTEMPT_ERRORS_KEPT`] of
        /// a longer run (a caller's `connection_attempts` must not grow it without bound).
        attempts: Vec<Error>,
    },
    /// The broker kept the connection blocked (resource alarm) longer than
    /// `blocked_connection_timeout`, so cottontail closed it (pika's `ConnectionBlockedTimeout`).
    #[error("the broker kept the connection blocked for more than {after:?}")]
    ConnectionBlockedTimeout {
        /// The `blocked_connection_timeout` that passed.
        after: Duration,
    },
    /// A callback returned an error that is not a cottontail [`Error`], or panicked; it ended
    /// the call that ran the callback ([`Channel::start_consuming`](crate::Channel::start_consuming),
    /// a [`Consumer`](crate::Consumer) iteration, [`Connection::process_data_events`](crate::Connection::process_data_events)
    /// or [`Connection::sleep`](crate::Connection::sleep)). [`source()`](std::error::Error::source)
    /// is the callback's own error, to downcast (and its message, which this error's does not
    /// repeat):
    /// `e.source().and_then(|s| s.downcast_ref::<std::io::Error>())`. A callback that returns a
    /// cottontail [`Error`] (say its `basic_ack` failed) ends the call with that error as it
    /// is, not wrapped in this variant.
    #[error("a callback failed")]
    Callback(#[source] CallbackError),
}

/// The error a callback returned, or its panic: what [`Error::Callback`] holds, shared (an
/// `Arc`) so that [`Error`] stays `Clone`.
///
/// It dereferences to the callback's error (`dyn std::error::Error + Send + Sync`), so
/// `downcast_ref` and `source` work on it directly, and [`Error::Callback`]'s
/// [`source()`](std::error::Error::source) is that error itself. Two `CallbackError`s are equal
/// when they are clones of one (the same error, by pointer), not when their messages match.
#[derive(Clone)]
pub struct CallbackError {
    error: Arc<dyn std::error::Error + Send + Sync + 'static>,
    panicked: bool,
    /// For a consumer callback: the consumer's tag and the delivery it failed on.
    delivery: Option<(String, u64)>,
}

impl CallbackError {
    /// Wraps an error (as is: a cottontail [`Error`] passed here is wrapped too).
    pub fn new(error: impl Into<BoxError>) -> Self {
        CallbackError {
            error: Arc::from(error.into()),
            panicked: false,
            delivery: None,
        }
    }

    /// A panic, with its message.
    pub(crate) fn panicked(message: String) -> Self {
        CallbackError {
            error: Arc::new(Panicked(message)),
            panicked: true,
            delivery: None,
        }
    }

    /// The same error, as a consumer callback's on `delivery_tag` of `consumer_tag`.
    pub(crate) fn on_delivery(mut self, consumer_tag: &str, delivery_tag: u64) -> Self {
        self.delivery = Some((consumer_tag.to_owned(), delivery_tag));
        self
    }

    /// For a consumer callback's error or panic, the tag of the delivery it failed on; `None`
    /// for other callbacks.
    ///
    /// That delivery stays unacknowledged (unless the callback acked it before failing): with
    /// a prefetch window it takes a place in the window until it is settled, so settle it
    /// (e.g. `channel.basic_nack(tag, NackOptions { requeue: false, ..Default::default() })`
    /// to dead-letter it) before consuming again, or close the channel to have it requeued.
    pub fn delivery_tag(&self) -> Option<u64> {
        self.delivery.as_ref().map(|(_, tag)| *tag)
    }

    /// For a consumer callback's error or panic, the consumer's tag; `None` for other callbacks.
    pub fn consumer_tag(&self) -> Option<&str> {
        self.delivery.as_ref().map(|(tag, _)| tag.as_str())
    }

    /// True when the callback panicked instead of returning an error; the error's message is
    /// then the panic's, with what panicked (e.g. "the callback of consumer ctag1.x on
    /// delivery 5 panicked: ...").
    pub fn is_panic(&self) -> bool {
        self.panicked
    }
}

// `CallbackError` is deliberately not an `Error` itself: thiserror's `source()` for
// `Error::Callback` calls `as_dyn_error()` by method syntax, which reaches the inner
// `dyn Error + Send + Sync` through this `Deref`, so the source is the callback's own error and
// downcasts to its type (tested in callback.rs).
impl std::ops::Deref for CallbackError {
    type Target = dyn std::error::Error + Send + Sync + 'static;

    fn deref(&self) -> &Self::Target {
        &*self.error
    }
}

impl std::fmt::Debug for CallbackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackError")
            .field("error", &self.error)
            .field("panicked", &self.panicked)
            .field("delivery", &self.delivery)
            .finish()
    }
}

impl std::fmt::Display for CallbackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.error, f)
    }
}

impl PartialEq for CallbackError {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.error, &other.error)
    }
}

impl Eq for CallbackError {}

/// A callback's panic, as the source of an [`Error::Callback`].
#[derive(Debug)]
struct Panicked(String);

impl std::fmt::Display for Panicked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Panicked {}

fn last_of(attempts: &[Error]) -> String {
    attempts
        .last()
        .map_or_else(|| "none".into(), ToString::to_string)
}

/// The text of a caught panic, for the error it becomes.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

impl Error {
    /// The error a callback's error ends its caller with: a cottontail [`Error`] as it is,
    /// anything else as [`Error::Callback`].
    pub(crate) fn from_callback(error: BoxError) -> Self {
        match error.downcast::<Error>() {
            Ok(e) => *e,
            Err(other) => Error::Callback(CallbackError::new(other)),
        }
    }

    pub(crate) fn io(context: impl Into<String>, err: &io::Error) -> Self {
        Error::Io {
            context: context.into(),
            kind: err.kind(),
            message: err.to_string(),
        }
    }

    pub(crate) fn timeout(context: impl Into<String>, after: Duration) -> Self {
        Error::Timeout {
            context: context.into(),
            after,
        }
    }

    pub(crate) fn protocol(reply_code: u16, reason: impl Into<String>) -> Self {
        Error::Protocol {
            reply_code,
            reason: reason.into(),
        }
    }

    /// The AMQP reply code carried by this error, if it is a close (by the broker or the client)
    /// or a protocol violation.
    pub fn reply_code(&self) -> Option<u16> {
        match self {
            Error::ConnectionClosed { reply_code, .. }
            | Error::ConnectionClosedByClient { reply_code, .. }
            | Error::ChannelClosed { reply_code, .. }
            | Error::ChannelClosedByClient { reply_code, .. }
            | Error::Protocol { reply_code, .. }
            | Error::Unroutable { reply_code, .. } => Some(*reply_code),
            Error::AccessRefused { .. } => Some(ACCESS_REFUSED),
            _ => None,
        }
    }

    /// The broker's reply text, for closes.
    pub fn reply_text(&self) -> Option<&str> {
        match self {
            Error::ConnectionClosed { reply_text, .. }
            | Error::ConnectionClosedByClient { reply_text, .. }
            | Error::ChannelClosed { reply_text, .. }
            | Error::ChannelClosedByClient { reply_text, .. }
            | Error::AccessRefused { reply_text, .. }
            | Error::Unroutable { reply_text, .. } => Some(reply_text),
            _ => None,
        }
    }

    /// True for a close by this application: [`Error::ChannelClosedByClient`] or
    /// [`Error::ConnectionClosedByClient`].
    pub fn is_closed_by_client(&self) -> bool {
        matches!(
            self,
            Error::ChannelClosedByClient { .. } | Error::ConnectionClosedByClient { .. }
        )
    }

    /// True for a soft error: one that closes only the channel (AMQP codes 311-406), so the
    /// connection can go on with a new channel.
    pub fn is_soft(&self) -> bool {
        matches!(self.reply_code(), Some(311..=406)) && !self.is_connection_error()
    }

    /// True when the whole connection is gone: every later call on it fails.
    pub fn is_connection_error(&self) -> bool {
        matches!(
            self,
            Error::Io { .. }
                | Error::StreamLost { .. }
                | Error::Tls { .. }
                | Error::AuthenticationFailed { .. }
                | Error::AccessRefused { .. }
                | Error::ConnectionClosed { .. }
                | Error::ConnectionClosedByClient { .. }
                | Error::HeartbeatTimeout { .. }
                | Error::Protocol { .. }
                | Error::AllAttemptsFailed { .. }
                | Error::ConnectionBlockedTimeout { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_traits<T: Clone + Send + Sync + std::error::Error + 'static>() {}

    #[test]
    fn error_is_clone_send_sync_static() {
        assert_traits::<Error>();
    }

    #[test]
    fn channel_close_is_soft_and_carries_its_code() {
        let e = Error::ChannelClosed {
            reply_code: 404,
            reply_text: "NOT_FOUND - no queue 'x'".into(),
            class_id: 50,
            method_id: 10,
        };
        assert!(e.is_soft());
        assert_eq!(e.reply_code(), Some(404));
        assert_eq!(
            e.to_string(),
            "channel closed by the broker: 404 NOT_FOUND - no queue 'x'"
        );
    }

    #[test]
    fn connection_close_is_hard() {
        let e = Error::ConnectionClosed {
            reply_code: 320,
            reply_text: "CONNECTION_FORCED".into(),
            class_id: 0,
            method_id: 0,
        };
        assert!(!e.is_soft());
        assert!(e.is_connection_error());
    }
}
