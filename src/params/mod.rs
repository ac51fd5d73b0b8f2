//! Connection parameters, credentials and `amqp://` URLs (pika's `ConnectionParameters` and
//! `URLParameters`).

use std::str::FromStr;
use std::time::Duration;

use crate::protocol::table::{FieldTable, FieldValue};
use amq_protocol::uri::{AMQPScheme, AMQPUri, SASLMechanism};

use crate::error::{Error, Result};

mod pydict;
mod security;

pub use self::security::{Credentials, ExternalCredentials, PlainCredentials, SslOptions};

/// The smallest `frame_max` cottontail asks for (8192 bytes).
pub const FRAME_MIN_SIZE: u32 = 8192;
/// The largest `frame_max` cottontail asks for (131072 bytes, pika's `FRAME_MAX_SIZE` and
/// RabbitMQ's default); also the largest frame accepted before tuning.
pub const FRAME_MAX_SIZE: u32 = 131_072;

/// TCP socket options (pika's `tcp_options`). Unset fields keep the OS defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TcpOptions {
    /// Turn on TCP keepalive with this idle time before the first probe (`TCP_KEEPIDLE`).
    pub keepalive_idle: Option<Duration>,
    /// Interval between keepalive probes (`TCP_KEEPINTVL`).
    pub keepalive_interval: Option<Duration>,
    /// Unanswered probes before the connection is dropped (`TCP_KEEPCNT`).
    pub keepalive_count: Option<u32>,
    /// How long written data may stay unacknowledged before the OS drops the connection
    /// (`TCP_USER_TIMEOUT`, Linux).
    pub user_timeout: Option<Duration>,
}

/// Everything needed to open a [`Connection`](crate::Connection), with pika's names and defaults.
///
/// | field | default | meaning |
/// |---|---|---|
/// | `host` | `"localhost"` | broker host name or address |
/// | `port` | 5672 | broker port |
/// | `virtual_host` | `"/"` | virtual host to open |
/// | `credentials` | `guest` / `guest` | [`PlainCredentials`] (PLAIN) or [`ExternalCredentials`] (EXTERNAL) |
/// | `channel_max` | 65535 | highest channel number we ask for (the smaller non-zero value of ours and the broker's wins) |
/// | `frame_max` | 131072 | largest frame we ask for (8192 to 131072, as in pika; the smaller of ours and the broker's wins) |
/// | `heartbeat` | `None` | `None` takes the broker's value, `Some(0)` turns heartbeats off, `Some(n)` uses `n` seconds |
/// | `socket_timeout` | 10 s | bound on the TCP connect and on each socket wait during the handshake |
/// | `stack_timeout` | 15 s | bound on the whole of `Connection::open`, handshake included |
/// | `rpc_timeout` | 10 s | default deadline of every synchronous method (cottontail's; pika has none) |
/// | `locale` | `"en_US"` | locale sent in start-ok |
/// | `client_properties` | empty | merged over the properties cottontail sends (`connection_name` shows in the management UI) |
/// | `connection_attempts` | 1 | attempts per parameter set before the next one is tried |
/// | `retry_delay` | 2 s | pause between attempts |
/// | `blocked_connection_timeout` | `None` | tear the connection down (`Error::ConnectionBlockedTimeout`) when the broker keeps it blocked longer |
/// | `ssl_options` | `None` | TLS settings; `Some` (or an `amqps://` URL) connects with TLS |
/// | `tcp_options` | none set | keepalive and `TCP_USER_TIMEOUT` |
///
/// An `amqp://` / `amqps://` URL carries the same settings as query options (see
/// [`from_url`](Self::from_url)). Several parameter sets can be given to
/// [`Connection::open`](crate::Connection::open) to fail over between cluster nodes.
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
    pub(crate) credentials: Credentials,
    pub(crate) channel_max: u16,
    pub(crate) frame_max: u32,
    pub(crate) heartbeat: Option<u16>,
    pub(crate) socket_timeout: Duration,
    pub(crate) stack_timeout: Duration,
    pub(crate) rpc_timeout: Duration,
    pub(crate) locale: String,
    pub(crate) client_properties: FieldTable,
    pub(crate) connection_attempts: u32,
    pub(crate) retry_delay: Duration,
    pub(crate) blocked_connection_timeout: Option<Duration>,
    pub(crate) ssl_options: Option<SslOptions>,
    pub(crate) tcp_options: TcpOptions,
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
            credentials: Credentials::Plain(PlainCredentials::default()),
            channel_max: 65535,
            frame_max: 131_072,
            heartbeat: None,
            socket_timeout: Duration::from_secs(10),
            stack_timeout: Duration::from_secs(15),
            rpc_timeout: Duration::from_secs(10),
            locale: "en_US".into(),
            client_properties: FieldTable::default(),
            connection_attempts: 1,
            retry_delay: Duration::from_secs(2),
            blocked_connection_timeout: None,
            ssl_options: None,
            tcp_options: TcpOptions::default(),
        }
    }

    /// Parses an `amqp://user:pass@host:port/vhost?option=value&...` URL, or `amqps://` for
    /// TLS (pika's `URLParameters`).
    ///
    /// User, password and vhost are percent-decoded (`%2f` is `/`). Query options, with pika's
    /// names and formats: `heartbeat`, `frame_max`, `channel_max`, `connection_attempts`
    /// (integers); `socket_timeout`, `stack_timeout`, `retry_delay`,
    /// `blocked_connection_timeout` (seconds, may be fractional); `locale`; and as
    /// URL-encoded Python dicts: `client_properties` (e.g. `{'connection_name': 'worker-1'}`),
    /// `ssl_options` (`cafile`/`ca_certs`, `capath`, `cadata`, `certfile`, `keyfile`,
    /// `password`, `server_hostname`, `verify_certificate`, `verify_hostname`) and
    /// `tcp_options` (`TCP_KEEPIDLE`, `TCP_KEEPINTVL`, `TCP_KEEPCNT`, `TCP_USER_TIMEOUT`).
    /// amq-protocol's `connection_timeout` (milliseconds, sets `socket_timeout`) and
    /// `auth_mechanism` (`plain` or `external`) are accepted too. Any other option is an error
    /// naming it, as pika raises `ValueError`.
    pub fn from_url(url: &str) -> Result<Self> {
        let uri: AMQPUri = url
            .parse()
            .map_err(|e: String| Error::InvalidArgument(format!("invalid AMQP URL: {e}")))?;
        let mut params = ConnectionParameters::new(uri.authority.host.clone());
        params.port = uri.authority.port;
        params.virtual_host = uri.vhost.clone();
        params.credentials = Credentials::Plain(PlainCredentials::new(
            uri.authority.userinfo.username.clone(),
            uri.authority.userinfo.password.clone(),
        ));
        if matches!(uri.scheme, AMQPScheme::AMQPS) {
            params.ssl_options = Some(SslOptions::default());
        }
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
        match uri.query.auth_mechanism {
            None | Some(SASLMechanism::Plain) => {}
            Some(SASLMechanism::External) => params.credentials = ExternalCredentials.into(),
            Some(other) => {
                return Err(Error::InvalidArgument(format!(
                    "auth_mechanism {other} is not supported (plain or external)"
                )))
            }
        }
        // amq-protocol ignores options it does not know; pika rejects them, and so do we.
        let query = url.split_once('?').map_or("", |(_, q)| q);
        let query = query.split_once('#').map_or(query, |(q, _)| q);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, raw) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(raw)?;
            match key {
                "heartbeat" | "frame_max" | "channel_max" | "connection_timeout"
                | "auth_mechanism" => {}
                "socket_timeout" => params.socket_timeout = parse_seconds(key, &value)?,
                "stack_timeout" => params.stack_timeout = parse_seconds(key, &value)?,
                "retry_delay" => params.retry_delay = parse_seconds(key, &value)?,
                "blocked_connection_timeout" => {
                    params.blocked_connection_timeout = match value.as_str() {
                        "None" | "none" | "" => None,
                        v => Some(parse_seconds(key, v)?),
                    }
                }
                "connection_attempts" => {
                    params.connection_attempts = value
                        .parse::<u32>()
                        .ok()
                        .filter(|n| *n >= 1)
                        .ok_or_else(|| bad_option(key, &value, "a whole number from 1"))?
                }
                "locale" => params.locale = value,
                "client_properties" => {
                    for (k, v) in pydict::parse(&value).map_err(|e| bad_option(key, &value, &e))? {
                        params.client_properties.insert(k.as_str(), v.into_amqp());
                    }
                }
                "ssl_options" => {
                    let dict = pydict::parse(&value).map_err(|e| bad_option(key, &value, &e))?;
                    params.ssl_options = Some(ssl_options_from_dict(
                        params.ssl_options.take().unwrap_or_default(),
                        dict,
                    )?);
                }
                "tcp_options" => {
                    let dict = pydict::parse(&value).map_err(|e| bad_option(key, &value, &e))?;
                    params.tcp_options = tcp_options_from_dict(dict)?;
                }
                other => {
                    return Err(Error::InvalidArgument(format!(
                        "unknown URL option {other:?}"
                    )))
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

    /// Credentials: [`PlainCredentials`] or [`ExternalCredentials`]. Defaults to `guest` /
    /// `guest`.
    pub fn credentials(mut self, credentials: impl Into<Credentials>) -> Self {
        self.credentials = credentials.into();
        self
    }

    /// Attempts per parameter set (at least 1). Defaults to 1.
    pub fn connection_attempts(mut self, attempts: u32) -> Self {
        self.connection_attempts = attempts.max(1);
        self
    }

    /// Pause between connection attempts. Defaults to 2 s.
    pub fn retry_delay(mut self, delay: Duration) -> Self {
        self.retry_delay = delay;
        self
    }

    /// How long the broker may keep the connection blocked (resource alarm) before
    /// cottontail tears it down with [`Error::ConnectionBlockedTimeout`]; publishers wait
    /// while it is blocked. Defaults to `None` (wait as long as the broker blocks).
    pub fn blocked_connection_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.blocked_connection_timeout = timeout;
        self
    }

    /// TLS settings; `Some` connects with TLS. Defaults to `None` (plain TCP), or TLS with
    /// default options for an `amqps://` URL.
    pub fn ssl_options(mut self, options: Option<SslOptions>) -> Self {
        self.ssl_options = options;
        self
    }

    /// TCP keepalive and user-timeout settings. Defaults to the OS's.
    pub fn tcp_options(mut self, options: TcpOptions) -> Self {
        self.tcp_options = options;
        self
    }

    /// Highest channel number to ask for. Defaults to 65535.
    pub fn channel_max(mut self, channel_max: u16) -> Self {
        self.channel_max = channel_max;
        self
    }

    /// Largest frame to ask for, from 8192 to 131072 (pika's bounds). Defaults to 131072.
    ///
    /// A value outside is brought to the nearest bound; use
    /// [`try_frame_max`](Self::try_frame_max) to get an error instead.
    pub fn frame_max(mut self, frame_max: u32) -> Self {
        self.frame_max = frame_max.clamp(FRAME_MIN_SIZE, FRAME_MAX_SIZE);
        self
    }

    /// Like [`frame_max`](Self::frame_max), but a value outside 8192..=131072 is an error.
    pub fn try_frame_max(mut self, frame_max: u32) -> Result<Self> {
        if !(FRAME_MIN_SIZE..=FRAME_MAX_SIZE).contains(&frame_max) {
            return Err(Error::InvalidArgument(format!(
                "frame_max must be from {FRAME_MIN_SIZE} to {FRAME_MAX_SIZE}, got {frame_max}"
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
        self.client_properties
            .insert("connection_name", FieldValue::String(name.into()));
        self
    }

    /// Checks every value, as pika's setters do, and says which one is wrong:
    /// an empty host, port 0, a zero `socket_timeout`, `stack_timeout` or `rpc_timeout`, a
    /// virtual host or locale over 255 bytes, `frame_max` outside 8192..=131072, or
    /// `connection_attempts` of 0. [`Connection::open`](crate::Connection::open) calls it before
    /// touching the network; call it yourself to reject a configuration where it is built.
    pub fn validate(&self) -> Result<()> {
        let invalid = |what: String| Err(Error::InvalidArgument(what));
        if self.host.is_empty() {
            return invalid("host is empty".into());
        }
        if self.port == 0 {
            return invalid("port must not be 0".into());
        }
        for (name, value) in [
            ("socket_timeout", self.socket_timeout),
            ("stack_timeout", self.stack_timeout),
            ("rpc_timeout", self.rpc_timeout),
        ] {
            if value.is_zero() {
                return invalid(format!("{name} must be longer than 0"));
            }
        }
        for (name, value) in [
            ("virtual_host", &self.virtual_host),
            ("locale", &self.locale),
        ] {
            if value.len() > 255 {
                return invalid(format!("{name} is {} bytes, at most 255", value.len()));
            }
        }
        if !(FRAME_MIN_SIZE..=FRAME_MAX_SIZE).contains(&self.frame_max) {
            return invalid(format!(
                "frame_max must be from {FRAME_MIN_SIZE} to {FRAME_MAX_SIZE}, got {}",
                self.frame_max
            ));
        }
        if self.connection_attempts == 0 {
            return invalid("connection_attempts must be at least 1".into());
        }
        Ok(())
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
    pub fn get_credentials(&self) -> &Credentials {
        &self.credentials
    }
    /// Attempts per parameter set.
    pub fn get_connection_attempts(&self) -> u32 {
        self.connection_attempts
    }
    /// Pause between attempts.
    pub fn get_retry_delay(&self) -> Duration {
        self.retry_delay
    }
    /// The blocked-connection timeout.
    pub fn get_blocked_connection_timeout(&self) -> Option<Duration> {
        self.blocked_connection_timeout
    }
    /// The socket timeout.
    pub fn get_socket_timeout(&self) -> Duration {
        self.socket_timeout
    }
    /// The stack timeout.
    pub fn get_stack_timeout(&self) -> Duration {
        self.stack_timeout
    }
    /// The locale.
    pub fn get_locale(&self) -> &str {
        &self.locale
    }
    /// The client properties given.
    pub fn get_client_properties(&self) -> &FieldTable {
        &self.client_properties
    }
    /// The TLS settings.
    pub fn get_ssl_options(&self) -> Option<&SslOptions> {
        self.ssl_options.as_ref()
    }
    /// The TCP settings.
    pub fn get_tcp_options(&self) -> &TcpOptions {
        &self.tcp_options
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
    /// True when the connection uses TLS.
    pub fn is_tls(&self) -> bool {
        self.ssl_options.is_some()
    }
}

impl FromStr for ConnectionParameters {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        ConnectionParameters::from_url(s)
    }
}

fn bad_option(key: &str, value: &str, expected: &str) -> Error {
    Error::InvalidArgument(format!("URL option {key}={value:?}: expected {expected}"))
}

/// Decodes `%XX` escapes and `+` (a space, as Python's `parse_qs` reads it).
fn percent_decode(raw: &str) -> Result<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        Error::InvalidArgument(format!("bad percent escape in {raw:?}"))
                    })?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
        .map_err(|_| Error::InvalidArgument(format!("{raw:?} is not UTF-8 once decoded")))
}

fn ssl_options_from_dict(
    mut options: SslOptions,
    dict: Vec<(String, pydict::Value)>,
) -> Result<SslOptions> {
    let mut certfile = None;
    let mut keyfile = None;
    let mut password = None;
    for (key, value) in dict {
        let text = || {
            value
                .as_text()
                .ok_or_else(|| bad_option("ssl_options", &key, "a string value"))
        };
        match key.as_str() {
            "cafile" | "ca_certs" => options = options.ca_file(text()?)?,
            "cadata" => options = options.ca_certificate_pem(text()?),
            "capath" => options = options.ca_path(text()?)?,
            "certfile" => certfile = Some(text()?),
            "keyfile" => keyfile = Some(text()?),
            "password" => password = Some(text()?),
            "server_hostname" => options = options.server_hostname(text()?),
            "verify_certificate" | "verify_hostname" => {
                let verify = value
                    .as_bool()
                    .ok_or_else(|| bad_option("ssl_options", &key, "True or False"))?;
                options = if key == "verify_certificate" {
                    options.verify_certificate(verify)
                } else {
                    options.verify_hostname(verify)
                };
            }
            other => {
                return Err(Error::InvalidArgument(format!(
                    "unknown ssl_options key {other:?}"
                )))
            }
        }
    }
    if let Some(password) = password {
        options = options.client_key_password(password);
    }
    match (certfile, keyfile) {
        (Some(cert), Some(key)) => options.client_certificate_files(cert, key),
        (None, None) => Ok(options),
        _ => Err(Error::InvalidArgument(
            "ssl_options needs both certfile and keyfile for a client certificate".into(),
        )),
    }
}

fn tcp_options_from_dict(dict: Vec<(String, pydict::Value)>) -> Result<TcpOptions> {
    let mut options = TcpOptions::default();
    for (key, value) in dict {
        let n = value
            .as_u64()
            .ok_or_else(|| bad_option("tcp_options", &key, "a whole number"))?;
        match key.as_str() {
            "TCP_KEEPIDLE" => options.keepalive_idle = Some(Duration::from_secs(n)),
            "TCP_KEEPINTVL" => options.keepalive_interval = Some(Duration::from_secs(n)),
            "TCP_KEEPCNT" => options.keepalive_count = Some(n.min(u32::MAX as u64) as u32),
            "TCP_USER_TIMEOUT" => options.user_timeout = Some(Duration::from_millis(n)),
            other => {
                return Err(Error::InvalidArgument(format!(
                    "unknown tcp_options key {other:?}"
                )))
            }
        }
    }
    Ok(options)
}

fn parse_seconds(key: &str, value: &str) -> Result<Duration> {
    value
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| Error::InvalidArgument(format!("{key} must be seconds, got {value:?}")))
        .and_then(|v| {
            Duration::try_from_secs_f64(v).map_err(|_| {
                Error::InvalidArgument(format!(
                    "{key} of {value} seconds is more than a Duration holds"
                ))
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_too_large_for_a_duration_are_an_error_not_a_panic() {
        let err = parse_seconds("socket_timeout", "1e20").unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument(m) if m.contains("socket_timeout")),
            "{err:?}"
        );
        assert_eq!(
            parse_seconds("socket_timeout", "1.5").unwrap(),
            Duration::from_millis(1500)
        );
    }

    #[test]
    fn defaults_match_pika() {
        let p = ConnectionParameters::default();
        assert_eq!(p.host, "localhost");
        assert_eq!(p.port, 5672);
        assert_eq!(p.virtual_host, "/");
        assert_eq!(p.channel_max, 65535);
        assert_eq!(p.frame_max, 131_072);
        assert_eq!(p.heartbeat, None);
        assert_eq!(
            p.credentials,
            Credentials::Plain(PlainCredentials::new("guest", "guest"))
        );
        assert_eq!(p.connection_attempts, 1);
        assert_eq!(p.retry_delay, Duration::from_secs(2));
        assert_eq!(p.blocked_connection_timeout, None);
        assert!(p.ssl_options.is_none());
        assert_eq!(p.locale, "en_US");
    }

    #[test]
    fn url_is_percent_decoded() {
        let p: ConnectionParameters = "amqp://us%40er:p%3Ass@h.example:5673/my%2fvhost?heartbeat=7&frame_max=10000&channel_max=12&socket_timeout=2.5"
            .parse()
            .unwrap();
        assert_eq!(
            p.credentials,
            Credentials::Plain(PlainCredentials::new("us@er", "p:ss"))
        );
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
    fn url_frame_max_outside_pikas_bounds_is_rejected() {
        assert!(ConnectionParameters::from_url("amqp://localhost/?frame_max=100").is_err());
        assert!(ConnectionParameters::from_url("amqp://localhost/?frame_max=131073").is_err());
        assert_eq!(
            ConnectionParameters::new("h").frame_max(1 << 20).frame_max,
            131_072
        );
    }

    #[test]
    fn every_pika_url_option_is_read() {
        let url = "amqps://u:p@broker:5671/v?heartbeat=9&channel_max=7&frame_max=16384\
            &connection_attempts=3&retry_delay=0.5&socket_timeout=4&stack_timeout=6\
            &blocked_connection_timeout=30&locale=de_DE\
            &client_properties=%7B%27connection_name%27%3A+%27worker-1%27%7D\
            &tcp_options=%7B%27TCP_KEEPIDLE%27%3A+60%2C+%27TCP_KEEPINTVL%27%3A+10%2C+%27TCP_KEEPCNT%27%3A+3%2C+%27TCP_USER_TIMEOUT%27%3A+20000%7D\
            &ssl_options=%7B%27server_hostname%27%3A+%27rabbit.example%27%2C+%27verify_hostname%27%3A+False%7D";
        let p = ConnectionParameters::from_url(url).unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.virtual_host.as_str()),
            ("broker", 5671, "v")
        );
        assert_eq!(p.heartbeat, Some(9));
        assert_eq!(p.channel_max, 7);
        assert_eq!(p.frame_max, 16_384);
        assert_eq!(p.connection_attempts, 3);
        assert_eq!(p.retry_delay, Duration::from_millis(500));
        assert_eq!(p.socket_timeout, Duration::from_secs(4));
        assert_eq!(p.stack_timeout, Duration::from_secs(6));
        assert_eq!(p.blocked_connection_timeout, Some(Duration::from_secs(30)));
        assert_eq!(p.locale, "de_DE");
        assert_eq!(
            p.client_properties.get("connection_name"),
            Some(&FieldValue::String("worker-1".into()))
        );
        assert_eq!(
            p.tcp_options,
            TcpOptions {
                keepalive_idle: Some(Duration::from_secs(60)),
                keepalive_interval: Some(Duration::from_secs(10)),
                keepalive_count: Some(3),
                user_timeout: Some(Duration::from_secs(20)),
            }
        );
        let ssl = p.ssl_options.expect("amqps means TLS");
        assert_eq!(ssl.server_hostname.as_deref(), Some("rabbit.example"));
        assert!(ssl.skip_hostname && !ssl.skip_verify);
    }

    #[test]
    fn amqp_url_has_no_tls_and_amqps_defaults_to_5671() {
        assert!(!ConnectionParameters::from_url("amqp://h").unwrap().is_tls());
        let p = ConnectionParameters::from_url("amqps://h").unwrap();
        assert!(p.is_tls());
        assert_eq!(p.port, 5671);
    }

    #[test]
    fn url_option_values_are_checked() {
        for bad in [
            "amqp://h/?connection_attempts=0",
            "amqp://h/?retry_delay=soon",
            "amqp://h/?heartbeat=-1",
            "amqp://h/?ssl_options=%7B%27bogus%27%3A+1%7D",
            "amqp://h/?ssl_options=%7B%27certfile%27%3A+%27c.pem%27%7D",
            "amqp://h/?tcp_options=%7B%27TCP_NODELAY%27%3A+1%7D",
            "amqp://h/?client_properties=not-a-dict",
            "amqp://h/?auth_mechanism=amqplain",
        ] {
            let err = ConnectionParameters::from_url(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{bad}: {err:?}");
        }
        let p = ConnectionParameters::from_url("amqp://h/?auth_mechanism=external").unwrap();
        assert_eq!(p.credentials, Credentials::External(ExternalCredentials));
    }

    #[test]
    fn validate_names_the_wrong_value() {
        assert!(ConnectionParameters::default().validate().is_ok());
        let cases = [
            (ConnectionParameters::new(""), "host is empty"),
            (ConnectionParameters::new("h").port(0), "port must not be 0"),
            (
                ConnectionParameters::new("h").rpc_timeout(Duration::ZERO),
                "rpc_timeout must be longer than 0",
            ),
            (
                ConnectionParameters::new("h").virtual_host("v".repeat(256)),
                "virtual_host is 256 bytes, at most 255",
            ),
        ];
        for (params, message) in cases {
            assert_eq!(
                params.validate(),
                Err(Error::InvalidArgument(message.into()))
            );
        }
    }

    #[test]
    fn password_is_not_in_debug_output() {
        let p = ConnectionParameters::new("h").credentials(PlainCredentials::new("u", "s3cr3t"));
        let dbg = format!("{p:?}");
        let from_url = format!(
            "{:?}",
            ConnectionParameters::from_url("amqp://u:s3cr3t@h/").unwrap()
        );
        assert!(!from_url.contains("s3cr3t"), "{from_url}");
        assert!(!dbg.contains("s3cr3t"), "{dbg}");
        assert!(dbg.contains("<redacted>"));
    }
}
