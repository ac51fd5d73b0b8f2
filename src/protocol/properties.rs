//! [`BasicProperties`]: a message's properties (pika's `pika.BasicProperties`) as cottontail's
//! own type, with `&str` accessors and builders that take `&str` or `String`, and its
//! conversion to and from the codec's type (`to_wire`, `from_wire`).

use amq_protocol::protocol::BasicProperties as WireProperties;
use amq_protocol::types::ShortString;

use super::table::{self, FieldTable, FieldValue};
use crate::error::{Error, Result};

/// A message's properties (pika's `BasicProperties`): all 14 AMQP basic properties, each
/// optional.
///
/// Build them with the `with_*` methods, read them with the accessors of the same names:
///
/// ```
/// use cottontail::{BasicProperties, DeliveryMode};
///
/// let props = BasicProperties::default()
///     .with_content_type("application/json")
///     .with_delivery_mode(DeliveryMode::Persistent)
///     .with_correlation_id("abc")
///     .with_header("x-retries", 3);
/// assert_eq!(props.correlation_id(), Some("abc"));
/// assert_eq!(props.delivery_mode(), Some(2));
/// assert_eq!(props.header("x-retries").and_then(|v| v.as_i64()), Some(3));
/// ```
///
/// Short-string properties (all the text ones) hold at most 255 bytes; a longer one is an
/// [`Error::InvalidArgument`] when the message is published.
#[derive(Clone, Default)]
pub struct BasicProperties {
    /// `None` while no property is set, the common case: empty properties cost no allocation,
    /// and moving a message moves one pointer for them instead of all fourteen.
    set: Option<Box<Fields>>,
}

/// Every property, each optional (what [`BasicProperties`] points to).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Fields {
    pub(crate) content_type: Option<String>,
    pub(crate) content_encoding: Option<String>,
    pub(crate) headers: Option<FieldTable>,
    pub(crate) delivery_mode: Option<u8>,
    pub(crate) priority: Option<u8>,
    pub(crate) correlation_id: Option<String>,
    pub(crate) reply_to: Option<String>,
    pub(crate) expiration: Option<String>,
    pub(crate) message_id: Option<String>,
    pub(crate) timestamp: Option<u64>,
    pub(crate) message_type: Option<String>,
    pub(crate) user_id: Option<String>,
    pub(crate) app_id: Option<String>,
    pub(crate) cluster_id: Option<String>,
}

/// No property set.
static UNSET: Fields = Fields {
    content_type: None,
    content_encoding: None,
    headers: None,
    delivery_mode: None,
    priority: None,
    correlation_id: None,
    reply_to: None,
    expiration: None,
    message_id: None,
    timestamp: None,
    message_type: None,
    user_id: None,
    app_id: None,
    cluster_id: None,
};

impl BasicProperties {
    /// Properties holding `fields` (no allocation if none is set).
    pub(crate) fn from_fields(fields: Fields) -> BasicProperties {
        BasicProperties {
            set: (fields != UNSET).then(|| Box::new(fields)),
        }
    }

    pub(crate) fn fields(&self) -> &Fields {
        self.set.as_deref().unwrap_or(&UNSET)
    }

    fn fields_mut(&mut self) -> &mut Fields {
        self.set.get_or_insert_with(Box::default)
    }
}

impl PartialEq for BasicProperties {
    fn eq(&self, other: &Self) -> bool {
        self.fields() == other.fields()
    }
}

impl Eq for BasicProperties {}

impl std::fmt::Debug for BasicProperties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = self.fields();
        f.debug_struct("BasicProperties")
            .field("content_type", &p.content_type)
            .field("content_encoding", &p.content_encoding)
            .field("headers", &p.headers)
            .field("delivery_mode", &p.delivery_mode)
            .field("priority", &p.priority)
            .field("correlation_id", &p.correlation_id)
            .field("reply_to", &p.reply_to)
            .field("expiration", &p.expiration)
            .field("message_id", &p.message_id)
            .field("timestamp", &p.timestamp)
            .field("message_type", &p.message_type)
            .field("user_id", &p.user_id)
            .field("app_id", &p.app_id)
            .field("cluster_id", &p.cluster_id)
            .finish()
    }
}

macro_rules! text_property {
    ($($field:ident, $with:ident, $doc:literal;)*) => {
        $(
            #[doc = concat!("The `", stringify!($field), "` property: ", $doc)]
            pub fn $field(&self) -> Option<&str> {
                self.fields().$field.as_deref()
            }

            #[doc = concat!("These properties with `", stringify!($field), "` set: ", $doc)]
            #[must_use]
            pub fn $with(mut self, value: impl Into<String>) -> Self {
                self.fields_mut().$field = Some(value.into());
                self
            }
        )*
    };
}

impl BasicProperties {
    text_property! {
        content_type, with_content_type, "the body's MIME type (`application/json`...).";
        content_encoding, with_content_encoding, "the body's encoding (`gzip`...).";
        correlation_id, with_correlation_id, "ties a reply to its request.";
        reply_to, with_reply_to, "the queue a reply should go to.";
        expiration, with_expiration, "the message's TTL in milliseconds, as text (`\"60000\"`).";
        message_id, with_message_id, "an application message id.";
        message_type, with_message_type, "pika's `type`: an application message type name.";
        user_id, with_user_id, "the publishing user (RabbitMQ checks it against the connection's).";
        app_id, with_app_id, "the publishing application's id.";
        cluster_id, with_cluster_id, "deprecated in AMQP 0-9-1; carried as is.";
    }

    /// The `headers` property: the message's header table.
    pub fn headers(&self) -> Option<&FieldTable> {
        self.fields().headers.as_ref()
    }

    /// One header's value (`None` when there are no headers or no such header).
    pub fn header(&self, name: &str) -> Option<&FieldValue> {
        self.fields().headers.as_ref()?.get(name)
    }

    /// These properties with the whole header table replaced.
    #[must_use]
    pub fn with_headers(mut self, headers: FieldTable) -> Self {
        self.fields_mut().headers = Some(headers);
        self
    }

    /// These properties with one header set (the table is created if there is none).
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<FieldValue>) -> Self {
        self.fields_mut()
            .headers
            .get_or_insert_with(FieldTable::default)
            .insert(name, value);
        self
    }

    /// The `delivery_mode` property: 1 transient, 2 persistent
    /// ([`DeliveryMode`](crate::DeliveryMode) converts it).
    pub fn delivery_mode(&self) -> Option<u8> {
        self.fields().delivery_mode
    }

    /// These properties with `delivery_mode` set: a [`DeliveryMode`](crate::DeliveryMode) or
    /// its number.
    #[must_use]
    pub fn with_delivery_mode(mut self, mode: impl Into<u8>) -> Self {
        self.fields_mut().delivery_mode = Some(mode.into());
        self
    }

    /// The `priority` property (0-9 on a priority queue).
    pub fn priority(&self) -> Option<u8> {
        self.fields().priority
    }

    /// These properties with `priority` set.
    #[must_use]
    pub fn with_priority(mut self, priority: u8) -> Self {
        self.fields_mut().priority = Some(priority);
        self
    }

    /// The `timestamp` property, in seconds since the Unix epoch.
    pub fn timestamp(&self) -> Option<u64> {
        self.fields().timestamp
    }

    /// These properties with `timestamp` set (seconds since the Unix epoch).
    #[must_use]
    pub fn with_timestamp(mut self, seconds: u64) -> Self {
        self.fields_mut().timestamp = Some(seconds);
        self
    }
}

impl BasicProperties {
    /// About how many bytes the properties hold on the heap (their strings and headers): what
    /// they count for the memory bounds of held and returned messages.
    pub(crate) fn held_bytes(&self) -> usize {
        let Some(p) = self.set.as_deref() else {
            return 0;
        };
        let texts = [
            &p.content_type,
            &p.content_encoding,
            &p.correlation_id,
            &p.reply_to,
            &p.expiration,
            &p.message_id,
            &p.message_type,
            &p.user_id,
            &p.app_id,
            &p.cluster_id,
        ];
        texts
            .iter()
            .map(|t| t.as_ref().map_or(0, String::len))
            .sum::<usize>()
            + p.headers.as_ref().map_or(0, FieldTable::held_bytes)
    }
}

fn short(name: &str, value: &Option<String>) -> Result<Option<ShortString>> {
    value
        .as_deref()
        .map(|v| {
            ShortString::try_new(v).map_err(|_| {
                Error::InvalidArgument(format!(
                    "property {name} is {} bytes long; at most 255 are allowed",
                    v.len()
                ))
            })
        })
        .transpose()
}

fn text(value: &Option<ShortString>) -> Option<String> {
    value.as_ref().map(|s| s.as_str().to_owned())
}

/// The codec's properties for `props`; a text property over 255 bytes or a header table that
/// cannot be encoded is an [`Error::InvalidArgument`].
pub(crate) fn to_wire(props: &BasicProperties) -> Result<WireProperties> {
    let mut wire = WireProperties::default();
    let Some(props) = props.set.as_deref() else {
        return Ok(wire);
    };
    macro_rules! set {
        ($($field:ident => $with:ident),*) => {
            $(if let Some(v) = short(stringify!($field), &props.$field)? {
                wire = wire.$with(v);
            })*
        };
    }
    set!(content_type => with_content_type, content_encoding => with_content_encoding,
        correlation_id => with_correlation_id, reply_to => with_reply_to,
        expiration => with_expiration, message_id => with_message_id,
        message_type => with_type, user_id => with_user_id, app_id => with_app_id,
        cluster_id => with_cluster_id);
    if let Some(headers) = &props.headers {
        wire = wire.with_headers(table::to_wire(headers)?);
    }
    if let Some(v) = props.delivery_mode {
        wire = wire.with_delivery_mode(v);
    }
    if let Some(v) = props.priority {
        wire = wire.with_priority(v);
    }
    if let Some(v) = props.timestamp {
        wire = wire.with_timestamp(v);
    }
    Ok(wire)
}

/// Our properties for the codec's.
pub(crate) fn from_wire(wire: &WireProperties) -> BasicProperties {
    BasicProperties::from_fields(Fields {
        content_type: text(wire.content_type()),
        content_encoding: text(wire.content_encoding()),
        headers: wire.headers().as_ref().map(table::from_wire),
        delivery_mode: *wire.delivery_mode(),
        priority: *wire.priority(),
        correlation_id: text(wire.correlation_id()),
        reply_to: text(wire.reply_to()),
        expiration: text(wire.expiration()),
        message_id: text(wire.message_id()),
        timestamp: *wire.timestamp(),
        message_type: text(wire.kind()),
        user_id: text(wire.user_id()),
        app_id: text(wire.app_id()),
        cluster_id: text(wire.cluster_id()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> BasicProperties {
        BasicProperties::default()
            .with_content_type("text/plain")
            .with_content_encoding("utf-8")
            .with_header("x-retries", 3)
            .with_delivery_mode(2)
            .with_priority(5)
            .with_correlation_id("abc")
            .with_reply_to("amq.rabbitmq.reply-to")
            .with_expiration("60000")
            .with_message_id("m-1")
            .with_timestamp(1_700_000_000)
            .with_message_type("greeting")
            .with_user_id("guest")
            .with_app_id("tests")
            .with_cluster_id("c")
    }

    #[test]
    fn every_property_survives_the_round_trip() {
        let props = full();
        assert_eq!(from_wire(&to_wire(&props).unwrap()), props);
        assert_eq!(
            from_wire(&to_wire(&BasicProperties::default()).unwrap()),
            BasicProperties::default()
        );
    }

    #[test]
    fn accessors_read_what_builders_wrote() {
        let props = full();
        assert_eq!(props.correlation_id(), Some("abc"));
        assert_eq!(props.message_type(), Some("greeting"));
        assert_eq!(props.delivery_mode(), Some(2));
        assert_eq!(props.timestamp(), Some(1_700_000_000));
        assert_eq!(
            props.header("x-retries").and_then(FieldValue::as_i64),
            Some(3)
        );
        assert_eq!(BasicProperties::default().header("x"), None);
    }

    #[test]
    fn an_over_long_text_property_is_named_in_the_error() {
        let props = BasicProperties::default().with_message_id("m".repeat(256));
        match to_wire(&props) {
            Err(Error::InvalidArgument(m)) => assert!(m.contains("message_id"), "{m}"),
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }
}
