//! Connection parameters, credentials and `amqp://` URLs (pika's `ConnectionParameters` and
//! `URLParameters`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use amq_protocol::types::{AMQPValue, FieldTable};
use amq_protocol::uri::{AMQPScheme, AMQPUri};

use crate::error::{Error, Result};

/// The smallest `frame_max` AMQP allows (8192 bytes).
pub const FRAME_MIN_SIZE: u32 = 8192;

/// User name and password for SASL PLAIN (pika's `PlainCredentials`).
///
/// The password never appears in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct PlainCredentials {
    username: String,
    password: String,
}

impl PlainCredentials {
    /// Credentials for `username` with `password`.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        PlainCredentials {
            username: username.into(),
            password: password.into(),
        }
    }

    /// The user name.
    pub fn username(&self) -> &str {
        &self.username
    }

    pub(crate) fn password(&self) -> &str {
        &self.password
    }
}

impl Default for PlainCredentials {
    /// `guest` / `guest`, as pika.
    fn default() -> Self {
        PlainCredentials::new("guest", "guest")
    }
}

impl fmt::Debug for PlainCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlainCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Everything needed to open a [`Connection`](crate::Connection), with pika's names and defaults.
///
/// | field | default | meaning |
/// |---|---|---|
/// | `host` | `"localhost"` | broker host name or address |
/// | `port` | 5672 | broker port |
/// | `virtual_host` | `"/"` | virtual host to open |
/// | `credentials` | `guest` / `guest` | SASL PLAIN credentials |
/// | `channel_max` | 65535 | highest channel number we ask for (the smaller non-zero value of ours and the broker's wins) |
/// | `frame_max` | 131072 | largest frame we ask for (at least 8192; the smaller wins) |
/// | `heartbeat` | `None` | `None` takes the broker's value, `Some(0)` turns heartbeats off, `Some(n)` uses `n` seconds |
/// | `socket_timeout` | 10 s | bound on the TCP connect and on each socket wait during the handshake |
/// | `stack_timeout` | 15 s | bound on the whole of `Connection::open`, handshake included |
/// | `rpc_timeout` | 10 s | default deadline of every synchronous method (cottontail's; pika has none) |
/// | `locale` | `"en_US"` | locale sent in start-ok |
/// | `client_properties` | empty | merged over the properties cottontail sends (`connection_name` shows in the management UI) |
///
/// ```
/// use std::time::Duration;
/// use cottontail::ConnectionParameters;
///
/// let params = ConnectionParameters::new("127.0.0.1")
///     .port(5672)
///     .heartbeat(Some(30))
///     .rpc_timeout(Duration::from_secs(5));
/// let from_url: ConnectionParameters = "amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=30".parse()?;
/// assert_eq!(from_url.get_heartbeat(), Some(30));
/// # Ok::<(), cottontail::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct ConnectionParameters {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) virtual_host: String,
    pub(crate) credentials: PlainCredentials,
    pub(crate) channel_max: u16,
    pub(crate) frame_max: u32,
    pub(crate) heartbeat: Option<u16>,
    pub(crate) socket_timeout: Duration,
    pub(crate) stack_timeout: Duration,
    pub(crate) rpc_timeout: Duration,
    pub(crate) locale: String,
    pub(crate) client_properties: FieldTable,
    pub(crate) tls: bool,
}

impl Default for ConnectionParameters {
    fn default() -> Self {
        ConnectionParameters::new("localhost")
    }
}

impl ConnectionParameters {
    /// Parameters for `host` with every other field at its default.
    pub fn new(host: impl Into<String>) -> Self {
        ConnectionParameters {
            host: host.into(),
            port: 5672,
            virtual_host: "/".into(),
            credentials: PlainCredentials::default(),
            channel_max: 65535,
            frame_max: 131_072,
            heartbeat: None,
            socket_timeout: Duration::from_secs(10),
            stack_timeout: Duration::from_secs(15),
            rpc_timeout: Duration::from_secs(10),
            locale: "en_US".into(),
            client_properties: FieldTable::default(),
            tls: false,
        }
    }

    /// Parses an `amqp://user:pass@host:port/vhost?heartbeat=..&frame_max=..` URL.
    ///
    /// User, password and vhost are percent-decoded (`%2f` is `/`). Known query options:
    /// `heartbeat`, `frame_max`, `channel_max`, `socket_timeout` and `stack_timeout` (seconds,
    /// may be fractional), `connection_timeout` (milliseconds, sets `socket_timeout`), `locale`.
    /// Any other option is an error naming it.
    pub fn from_url(url: &str) -> Result<Self> {
        let uri: AMQPUri = url
            .parse()
            .map_err(|e: String| Error::InvalidArgument(format!("invalid AMQP URL: {e}")))?;
        let mut params = ConnectionParameters::new(uri.authority.host.clone());
        params.port = uri.authority.port;
        params.virtual_host = uri.vhost.clone();
        params.credentials = PlainCredentials::new(
            uri.authority.userinfo.username.clone(),
            uri.authority.userinfo.password.clone(),
        );
        params.tls = matches!(uri.scheme, AMQPScheme::AMQPS);
        if let Some(frame_max) = uri.query.frame_max {
            params = params.try_frame_max(frame_max)?;
        }
        if let Some(channel_max) = uri.query.channel_max {
            params.channel_max = channel_max;
        }
        if let Some(heartbeat) = uri.query.heartbeat {
            params.heartbeat = Some(heartbeat);
        }
        if let Some(ms) = uri.query.connection_timeout {
            params.socket_timeout = Duration::from_millis(ms);
        }
        // amq-protocol ignores options it does not know; pika rejects them, and so do we.
        if let Some((_, query)) = url.split_once('?') {
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                match key {
                    "heartbeat" | "frame_max" | "channel_max" | "connection_timeout" => {}
                    "socket_timeout" => params.socket_timeout = parse_seconds(key, value)?,
                    "stack_timeout" => params.stack_timeout = parse_seconds(key, value)?,
                    "locale" => params.locale = value.to_string(),
                    other => {
                        return Err(Error::InvalidArgument(format!(
                            "unknown URL option {other:?}"
                        )))
                    }
                }
            }
        }
        Ok(params)
    }

    /// Broker port. Defaults to 5672.
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Broker host. Defaults to `"localhost"`.
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = host.into();
        self
    }

    /// Virtual host to open. Defaults to `"/"`.
    pub fn virtual_host(mut self, vhost: impl Into<String>) -> Self {
        self.virtual_host = vhost.into();
        self
    }

    /// Credentials. Defaults to `guest` / `guest`.
    pub fn credentials(mut self, credentials: PlainCredentials) -> Self {
        self.credentials = credentials;
        self
    }

    /// Highest channel number to ask for. Defaults to 65535.
    pub fn channel_max(mut self, channel_max: u16) -> Self {
        self.channel_max = channel_max;
        self
    }

    /// Largest frame to ask for, at least 8192. Defaults to 131072.
    ///
    /// # Panics
    /// Never; a value below 8192 is raised to 8192. Use [`try_frame_max`](Self::try_frame_max)
    /// to get an error instead.
    pub fn frame_max(mut self, frame_max: u32) -> Self {
        self.frame_max = frame_max.max(FRAME_MIN_SIZE);
        self
    }

    /// Like [`frame_max`](Self::frame_max), but a value below 8192 is an error.
    pub fn try_frame_max(mut self, frame_max: u32) -> Result<Self> {
        if frame_max < FRAME_MIN_SIZE {
            return Err(Error::InvalidArgument(format!(
                "frame_max must be at least {FRAME_MIN_SIZE}, got {frame_max}"
            )));
        }
        self.frame_max = frame_max;
        Ok(self)
    }

    /// Heartbeat interval in seconds: `None` takes the broker's proposal, `Some(0)` turns
    /// heartbeats off, `Some(n)` uses `n` whatever the broker proposes (pika's rule).
    /// Defaults to `None`.
    pub fn heartbeat(mut self, heartbeat: Option<u16>) -> Self {
        self.heartbeat = heartbeat;
        self
    }

    /// Bound on the TCP connect and on each socket wait during the handshake. Defaults to 10 s.
    pub fn socket_timeout(mut self, timeout: Duration) -> Self {
        self.socket_timeout = timeout;
        self
    }

    /// Bound on the whole of `Connection::open`. Defaults to 15 s.
    pub fn stack_timeout(mut self, timeout: Duration) -> Self {
        self.stack_timeout = timeout;
        self
    }

    /// Default deadline of every synchronous channel method and of `close()`. Defaults to 10 s.
    pub fn rpc_timeout(mut self, timeout: Duration) -> Self {
        self.rpc_timeout = timeout;
        self
    }

    /// Locale sent to the broker. Defaults to `"en_US"`.
    pub fn locale(mut self, locale: impl Into<String>) -> Self {
        self.locale = locale.into();
        self
    }

    /// Client properties merged over cottontail's own (e.g. `connection_name`). Defaults to empty.
    pub fn client_properties(mut self, properties: FieldTable) -> Self {
        self.client_properties = properties;
        self
    }

    /// Sets the `connection_name` client property, shown by the management UI and
    /// `rabbitmqctl list_connections name`.
    pub fn connection_name(mut self, name: impl Into<String>) -> Self {
        self.client_properties.insert(
            "connection_name".into(),
            AMQPValue::LongString(name.into().into()),
        );
        self
    }

    /// The host.
    pub fn get_host(&self) -> &str {
        &self.host
    }
    /// The port.
    pub fn get_port(&self) -> u16 {
        self.port
    }
    /// The virtual host.
    pub fn get_virtual_host(&self) -> &str {
        &self.virtual_host
    }
    /// The credentials.
    pub fn get_credentials(&self) -> &PlainCredentials {
        &self.credentials
    }
    /// The requested heartbeat.
    pub fn get_heartbeat(&self) -> Option<u16> {
        self.heartbeat
    }
    /// The requested frame_max.
    pub fn get_frame_max(&self) -> u32 {
        self.frame_max
    }
    /// The requested channel_max.
    pub fn get_channel_max(&self) -> u16 {
        self.channel_max
    }
    /// The default RPC deadline.
    pub fn get_rpc_timeout(&self) -> Duration {
        self.rpc_timeout
    }
    /// True for an `amqps://` URL (TLS).
    pub fn is_tls(&self) -> bool {
        self.tls
    }
}

impl FromStr for ConnectionParameters {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        ConnectionParameters::from_url(s)
    }
}

fn parse_seconds(key: &str, value: &str) -> Result<Duration> {
    value
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| Error::InvalidArgument(format!("{key} must be seconds, got {value:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_pika() {
        let p = ConnectionParameters::default();
        assert_eq!(p.host, "localhost");
        assert_eq!(p.port, 5672);
        assert_eq!(p.virtual_host, "/");
        assert_eq!(p.channel_max, 65535);
        assert_eq!(p.frame_max, 131_072);
        assert_eq!(p.heartbeat, None);
        assert_eq!(p.credentials.username(), "guest");
        assert_eq!(p.locale, "en_US");
    }

    #[test]
    fn url_is_percent_decoded() {
        let p: ConnectionParameters = "amqp://us%40er:p%3Ass@h.example:5673/my%2fvhost?heartbeat=7&frame_max=10000&channel_max=12&socket_timeout=2.5"
            .parse()
            .unwrap();
        assert_eq!(p.credentials.username(), "us@er");
        assert_eq!(p.credentials.password(), "p:ss");
        assert_eq!(p.host, "h.example");
        assert_eq!(p.port, 5673);
        assert_eq!(p.virtual_host, "my/vhost");
        assert_eq!(p.heartbeat, Some(7));
        assert_eq!(p.frame_max, 10_000);
        assert_eq!(p.channel_max, 12);
        assert_eq!(p.socket_timeout, Duration::from_millis(2500));
    }

    #[test]
    fn url_unknown_option_is_an_error_naming_it() {
        let err = ConnectionParameters::from_url("amqp://localhost/?bogus=1").unwrap_err();
        assert_eq!(
            err,
            Error::InvalidArgument("unknown URL option \"bogus\"".into())
        );
    }

    #[test]
    fn url_frame_max_below_minimum_is_rejected() {
        assert!(ConnectionParameters::from_url("amqp://localhost/?frame_max=100").is_err());
    }

    #[test]
    fn password_is_not_in_debug_output() {
        let p = ConnectionParameters::new("h").credentials(PlainCredentials::new("u", "s3cr3t"));
        let dbg = format!("{p:?}");
        assert!(!dbg.contains("s3cr3t"), "{dbg}");
        assert!(dbg.contains("<redacted>"));
    }
}
