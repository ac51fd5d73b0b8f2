//! Connection parameters, credentials and `amqp://` URLs (pika's `ConnectionParameters` and
//! `URLParameters`).

use std::fmt::Display;
use std::str::FromStr;
use std::time::Duration;

use crate::protocol::table::{FieldTable, FieldValue};

use crate::error::{Error, Result};

mod pydict;
mod security;
mod url;

pub use self::security::{
    Credentials, ExternalCredentials, PlainCredentials, SslOptions, TlsVersion,
};

/// The smallest `frame_max` cottontail asks for (8192 bytes). pika allows 4096 (its
/// `FRAME_MIN_SIZE`), but RabbitMQ 4.1 and later refuse a `frame_max` under 8192.
pub const FRAME_MIN_SIZE: u32 = 8192;
/// The largest `frame_max` cottontail asks for (131072 bytes, pika's `FRAME_MAX_SIZE` and
/// RabbitMQ's default); also the largest frame accepted before tuning.
pub const FRAME_MAX_SIZE: u32 = 131_072;

/// pika's `DEFAULT_PORT`.
const DEFAULT_PORT: u16 = 5672;
/// pika's `DEFAULT_SSL_PORT`: the port when `ssl_options` is set and no port is.
const DEFAULT_SSL_PORT: u16 = 5671;

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
/// Each setting has a builder `with_<name>(value)` that takes and returns the parameters, and a
/// getter `<name>()`. Builders store what they are given; [`validate`](Self::validate) (which
/// [`Connection::open`](crate::Connection::open) calls before opening a socket) refuses values
/// outside pika's ranges, naming the parameter and the range.
///
/// | field | default | allowed | meaning |
/// |---|---|---|---|
/// | `host` | `"localhost"` | not empty | broker host name or address |
/// | `port` | 5672, or 5671 when `ssl_options` is set | 1 to 65535 | broker port; a port set with [`with_port`](Self::with_port) is kept whatever `ssl_options` is |
/// | `virtual_host` | `"/"` | at most 255 bytes | virtual host to open |
/// | `credentials` | `guest` / `guest` | | [`PlainCredentials`] (PLAIN) or [`ExternalCredentials`] (EXTERNAL) |
/// | `channel_max` | 65535 | 1 to 65535 | highest channel number we ask for (the smaller of ours and the broker's wins) |
/// | `frame_max` | 131072 | 8192 to 131072 | largest frame we ask for (the smaller of ours and the broker's wins); pika allows down to 4096, RabbitMQ 4.1 and later refuse less than 8192 |
/// | `heartbeat` | `None` | | `None` takes the broker's value, `Some(0)` turns heartbeats off, `Some(n)` uses `n` seconds |
/// | `socket_timeout` | 10 s | more than 0 | bound on the TCP connect and on each socket wait during the handshake |
/// | `stack_timeout` | 15 s | more than 0 | bound on the whole of `Connection::open`, handshake included |
/// | `rpc_timeout` | 10 s | more than 0 | default deadline of every synchronous method (cottontail's; pika has none) |
/// | `locale` | `"en_US"` | at most 255 bytes | locale sent in start-ok |
/// | `client_properties` | empty | | merged over the properties cottontail sends (`connection_name` shows in the management UI) |
/// | `connection_attempts` | 1 | at least 1 | passes over the parameter list (the last set's counts, as in pika) |
/// | `retry_delay` | 2 s | | pause between two passes (the last set's counts) |
/// | `blocked_connection_timeout` | `None` | | tear the connection down (`Error::ConnectionBlockedTimeout`) when the broker keeps it blocked longer |
/// | `ssl_options` | `None` | | TLS settings; `Some` (or an `amqps://` URL) connects with TLS |
/// | `tcp_options` | none set | keepalive idle and interval 1 to 32767 whole seconds, count 1 to 127; user timeout whole milliseconds (0: the OS default) | keepalive and `TCP_USER_TIMEOUT` |
/// | `recovery` | `None` (off) | | automatic recovery after a connection loss: [`RecoveryPolicy`](crate::RecoveryPolicy); the first parameter set's counts |
///
/// An `amqp://` / `amqps://` URL carries the same settings as query options (see
/// [`from_url`](Self::from_url)). Several parameter sets can be given to
/// [`Connection::open`](crate::Connection::open) to fail over between cluster nodes.
///
/// Two parameter sets are equal (`==`) when every setting is, and when both or neither had
/// their port set explicitly (an implicit port follows `ssl_options`, an explicit one does
/// not).
///
/// ```
/// use std::time::Duration;
/// use cottontail::ConnectionParameters;
///
/// let params = ConnectionParameters::new("127.0.0.1")
///     .with_port(5672)
///     .with_heartbeat(Some(30))
///     .with_rpc_timeout(Duration::from_secs(5));
/// assert_eq!(params.heartbeat(), Some(30));
/// let from_url: ConnectionParameters = "amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=30".parse()?;
/// assert_eq!(from_url.heartbeat(), Some(30));
/// assert_eq!(from_url.virtual_host(), "/");
/// # Ok::<(), cottontail::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct ConnectionParameters {
    pub(crate) host: String,
    /// The port to connect to: the explicit one, else the default for `ssl_options`.
    pub(crate) port: u16,
    /// True once a port was given ([`with_port`](Self::with_port), a URL's port).
    pub(crate) explicit_port: bool,
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
    pub(crate) recovery: Option<crate::recovery::RecoveryPolicy>,
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
            port: DEFAULT_PORT,
            explicit_port: false,
            virtual_host: "/".into(),
            credentials: Credentials::Plain(PlainCredentials::default()),
            channel_max: 65535,
            frame_max: FRAME_MAX_SIZE,
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
            recovery: None,
        }
    }

    /// Broker host. Defaults to `"localhost"`; must not be empty.
    pub fn with_host(mut self, host: impl Into<String>) -> Self {
        self.host = host.into();
        self
    }

    /// Broker port, from 1 to 65535. Defaults to 5672, or to 5671 when `ssl_options` is set
    /// (pika's rule); a port set here is kept whatever `ssl_options` is.
    pub fn with_port(mut self, port: u16) -> Self {
        self.port = port;
        self.explicit_port = true;
        self
    }

    /// Virtual host to open, at most 255 bytes. Defaults to `"/"`.
    pub fn with_virtual_host(mut self, vhost: impl Into<String>) -> Self {
        self.virtual_host = vhost.into();
        self
    }

    /// Credentials: [`PlainCredentials`] or [`ExternalCredentials`]. Defaults to `guest` /
    /// `guest`.
    pub fn with_credentials(mut self, credentials: impl Into<Credentials>) -> Self {
        self.credentials = credentials.into();
        self
    }

    /// Connection attempts, at least 1. Defaults to 1. With a list of parameter sets the last
    /// set's value counts: it is the number of passes over the list (pika's rule,
    /// [`Connection::open`](crate::Connection::open)).
    pub fn with_connection_attempts(mut self, attempts: u32) -> Self {
        self.connection_attempts = attempts;
        self
    }

    /// Pause between connection attempts. Defaults to 2 s. With a list of parameter sets the
    /// last set's value counts: it is the pause between two passes over the list, not between
    /// two sets.
    pub fn with_retry_delay(mut self, delay: Duration) -> Self {
        self.retry_delay = delay;
        self
    }

    /// How long the broker may keep the connection blocked (resource alarm) before
    /// cottontail tears it down with [`Error::ConnectionBlockedTimeout`]; publishers wait
    /// while it is blocked. Defaults to `None` (wait as long as the broker blocks).
    pub fn with_blocked_connection_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.blocked_connection_timeout = timeout;
        self
    }

    /// Turns automatic recovery on: after a connection loss the connection reconnects (trying
    /// every parameter set given to [`Connection::open`](crate::Connection::open), in order),
    /// opens its channels again and declares its topology and consumers again (see the crate
    /// docs' "Recovery" section). Defaults to off, as in pika. When several parameter sets are
    /// given, the first one's policy counts. The URL option `recovery=true` sets
    /// [`RecoveryPolicy::default()`](crate::RecoveryPolicy).
    pub fn with_recovery(mut self, policy: crate::recovery::RecoveryPolicy) -> Self {
        self.recovery = Some(policy);
        self
    }

    /// The recovery policy, if recovery is on.
    pub fn recovery(&self) -> Option<&crate::recovery::RecoveryPolicy> {
        self.recovery.as_ref()
    }

    /// TLS settings; `Some` connects with TLS, on port 5671 unless a port was set with
    /// [`with_port`](Self::with_port). Defaults to `None` (plain TCP), or TLS with default
    /// options for an `amqps://` URL.
    pub fn with_ssl_options(mut self, options: Option<SslOptions>) -> Self {
        if !self.explicit_port {
            self.port = if options.is_some() {
                DEFAULT_SSL_PORT
            } else {
                DEFAULT_PORT
            };
        }
        self.ssl_options = options;
        self
    }

    /// TCP keepalive and user-timeout settings. Defaults to the OS's.
    pub fn with_tcp_options(mut self, options: TcpOptions) -> Self {
        self.tcp_options = options;
        self
    }

    /// Highest channel number to ask for, from 1 to 65535. Defaults to 65535.
    pub fn with_channel_max(mut self, channel_max: u16) -> Self {
        self.channel_max = channel_max;
        self
    }

    /// Largest frame to ask for, from 8192 to 131072. Defaults to 131072.
    pub fn with_frame_max(mut self, frame_max: u32) -> Self {
        self.frame_max = frame_max;
        self
    }

    /// Heartbeat interval in seconds: `None` takes the broker's proposal, `Some(0)` turns
    /// heartbeats off, `Some(n)` uses `n` whatever the broker proposes (pika's rule).
    /// Defaults to `None`.
    pub fn with_heartbeat(mut self, heartbeat: Option<u16>) -> Self {
        self.heartbeat = heartbeat;
        self
    }

    /// Bound on the TCP connect and on each socket wait during the handshake; more than 0.
    /// Defaults to 10 s.
    pub fn with_socket_timeout(mut self, timeout: Duration) -> Self {
        self.socket_timeout = timeout;
        self
    }

    /// Bound on the whole of `Connection::open`; more than 0. Defaults to 15 s.
    pub fn with_stack_timeout(mut self, timeout: Duration) -> Self {
        self.stack_timeout = timeout;
        self
    }

    /// Default deadline of every synchronous channel method and of `close()`; more than 0.
    /// Defaults to 10 s (pika waits for ever; the Java client's default is 10 minutes).
    ///
    /// A broker that blocks the connection (`connection.blocked`: a memory or disk alarm,
    /// once the connection has published) reads nothing from it until it unblocks: a
    /// synchronous method sent meanwhile ends with [`Error::Timeout`](crate::Error::Timeout)
    /// after this long, and takes effect once the broker reads it (a declare, say). A
    /// publish's confirm wait does not count the time blocked. Programs that declare or get
    /// through long alarms raise this, or watch
    /// [`add_on_connection_blocked_callback`](crate::Connection::add_on_connection_blocked_callback).
    pub fn with_rpc_timeout(mut self, timeout: Duration) -> Self {
        self.rpc_timeout = timeout;
        self
    }

    /// Locale sent to the broker, at most 255 bytes. Defaults to `"en_US"`.
    pub fn with_locale(mut self, locale: impl Into<String>) -> Self {
        self.locale = locale.into();
        self
    }

    /// Client properties merged over cottontail's own (e.g. `connection_name`). Defaults to empty.
    pub fn with_client_properties(mut self, properties: FieldTable) -> Self {
        self.client_properties = properties;
        self
    }

    /// Sets the `connection_name` client property, shown by the management UI and
    /// `rabbitmqctl list_connections name`.
    pub fn with_connection_name(mut self, name: impl Into<String>) -> Self {
        self.client_properties
            .insert("connection_name", FieldValue::String(name.into()));
        self
    }

    /// Checks every value against pika's ranges and says which one is wrong and what is
    /// allowed, as [`Error::InvalidArgument`]: an empty host; port 0; a zero
    /// `socket_timeout`, `stack_timeout` or `rpc_timeout`; a virtual host or locale over 255
    /// bytes; `frame_max` outside 8192..=131072; `channel_max` 0; `connection_attempts` 0;
    /// `ssl_options` whose minimum TLS version is newer than its maximum.
    /// [`Connection::open`](crate::Connection::open) calls it before opening any socket and
    /// [`from_url`](Self::from_url) before returning; call it yourself to reject a
    /// configuration where it is built.
    pub fn validate(&self) -> Result<()> {
        if self.host.is_empty() {
            return Err(Error::InvalidArgument("host must not be empty".into()));
        }
        if self.port == 0 {
            return Err(out_of_range("port", "from 1 to 65535", 0));
        }
        for (name, value) in [
            ("socket_timeout", self.socket_timeout),
            ("stack_timeout", self.stack_timeout),
            ("rpc_timeout", self.rpc_timeout),
        ] {
            if value.is_zero() {
                return Err(out_of_range(name, "more than 0 seconds", "0"));
            }
        }
        for (name, value) in [
            ("virtual_host", &self.virtual_host),
            ("locale", &self.locale),
        ] {
            if value.len() > 255 {
                return Err(out_of_range(
                    name,
                    "at most 255 bytes",
                    format_args!("{} bytes", value.len()),
                ));
            }
        }
        if !(FRAME_MIN_SIZE..=FRAME_MAX_SIZE).contains(&self.frame_max) {
            let range = format!("from {FRAME_MIN_SIZE} to {FRAME_MAX_SIZE}");
            return Err(out_of_range("frame_max", &range, self.frame_max));
        }
        if self.channel_max == 0 {
            return Err(out_of_range("channel_max", CHANNEL_RANGE, 0));
        }
        if self.connection_attempts == 0 {
            return Err(out_of_range("connection_attempts", "at least 1", 0));
        }
        if let Some(ssl) = &self.ssl_options {
            ssl.validate()?;
        }
        self.tcp_options.validate()?;
        // Refused here, before any socket, not at the broker's connection.start.
        crate::protocol::table::to_wire(&self.client_properties).map_err(|e| match e {
            Error::InvalidArgument(why) => {
                Error::InvalidArgument(format!("client_properties: {why}"))
            }
            other => other,
        })?;
        // The login must fit in the frame size allowed before tuning.
        crate::protocol::handshake::start_ok(&crate::protocol::handshake::Settings::from(self))?;
        Ok(())
    }

    /// The broker host.
    pub fn host(&self) -> &str {
        &self.host
    }
    /// The broker port: the one set, else 5671 with `ssl_options` and 5672 without.
    pub fn port(&self) -> u16 {
        self.port
    }
    /// The virtual host.
    pub fn virtual_host(&self) -> &str {
        &self.virtual_host
    }
    /// The credentials.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }
    /// Attempts per parameter set.
    pub fn connection_attempts(&self) -> u32 {
        self.connection_attempts
    }
    /// Pause between attempts.
    pub fn retry_delay(&self) -> Duration {
        self.retry_delay
    }
    /// The blocked-connection timeout.
    pub fn blocked_connection_timeout(&self) -> Option<Duration> {
        self.blocked_connection_timeout
    }
    /// The socket timeout.
    pub fn socket_timeout(&self) -> Duration {
        self.socket_timeout
    }
    /// The stack timeout.
    pub fn stack_timeout(&self) -> Duration {
        self.stack_timeout
    }
    /// The locale.
    pub fn locale(&self) -> &str {
        &self.locale
    }
    /// The client properties given.
    pub fn client_properties(&self) -> &FieldTable {
        &self.client_properties
    }
    /// The TLS settings.
    pub fn ssl_options(&self) -> Option<&SslOptions> {
        self.ssl_options.as_ref()
    }
    /// The TCP settings.
    pub fn tcp_options(&self) -> &TcpOptions {
        &self.tcp_options
    }
    /// The requested heartbeat.
    pub fn heartbeat(&self) -> Option<u16> {
        self.heartbeat
    }
    /// The requested frame_max.
    pub fn frame_max(&self) -> u32 {
        self.frame_max
    }
    /// The requested channel_max.
    pub fn channel_max(&self) -> u16 {
        self.channel_max
    }
    /// The default RPC deadline.
    pub fn rpc_timeout(&self) -> Duration {
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

/// `channel_max`'s range (pika's), as errors state it.
const CHANNEL_RANGE: &str = "from 1 to 65535";

impl TcpOptions {
    /// Linux's ranges (`TCP_KEEPIDLE` and `TCP_KEEPINTVL` 1 to 32767 whole seconds,
    /// `TCP_KEEPCNT` 1 to 127, `TCP_USER_TIMEOUT` whole milliseconds, 0 for the OS default):
    /// refused here rather than rounded by the socket call or refused by the OS after
    /// connecting.
    fn validate(&self) -> Result<()> {
        for (name, value) in [
            ("tcp_options keepalive_idle", self.keepalive_idle),
            ("tcp_options keepalive_interval", self.keepalive_interval),
        ] {
            if let Some(d) = value {
                if d.subsec_nanos() != 0 || !(1..=32767).contains(&d.as_secs()) {
                    return Err(out_of_range(
                        name,
                        "1 to 32767 whole seconds",
                        format_args!("{d:?}"),
                    ));
                }
            }
        }
        if let Some(count) = self.keepalive_count {
            if !(1..=127).contains(&count) {
                return Err(out_of_range(
                    "tcp_options keepalive_count",
                    "from 1 to 127",
                    count,
                ));
            }
        }
        if let Some(d) = self.user_timeout {
            if d.subsec_nanos() % 1_000_000 != 0 || d.as_millis() > u128::from(u32::MAX) {
                return Err(out_of_range(
                    "tcp_options user_timeout",
                    "whole milliseconds, at most u32::MAX (0: the OS default)",
                    format_args!("{d:?}"),
                ));
            }
        }
        Ok(())
    }
}

/// "`name` must be `allowed`, got `got`": the error for a value outside its range.
fn out_of_range(name: &str, allowed: &str, got: impl Display) -> Error {
    Error::InvalidArgument(format!("{name} must be {allowed}, got {got}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(message: &str) -> Result<()> {
        Err(Error::InvalidArgument(message.into()))
    }

    #[test]
    fn defaults_match_pika() {
        let p = ConnectionParameters::default();
        assert_eq!(p.host(), "localhost");
        assert_eq!(p.port(), 5672);
        assert_eq!(p.virtual_host(), "/");
        assert_eq!(p.channel_max(), 65535);
        assert_eq!(p.frame_max(), 131_072);
        assert_eq!(p.heartbeat(), None);
        assert_eq!(
            p.credentials(),
            &Credentials::Plain(PlainCredentials::new("guest", "guest"))
        );
        assert_eq!(p.connection_attempts(), 1);
        assert_eq!(p.retry_delay(), Duration::from_secs(2));
        assert_eq!(p.socket_timeout(), Duration::from_secs(10));
        assert_eq!(p.stack_timeout(), Duration::from_secs(15));
        assert_eq!(p.blocked_connection_timeout(), None);
        assert!(p.ssl_options().is_none() && !p.is_tls());
        assert_eq!(p.locale(), "en_US");
        assert_eq!(p.validate(), Ok(()));
    }

    #[test]
    fn each_builder_sets_what_its_getter_reads() {
        let tcp = TcpOptions {
            keepalive_idle: Some(Duration::from_secs(30)),
            ..TcpOptions::default()
        };
        let p = ConnectionParameters::new("a")
            .with_host("b")
            .with_port(5673)
            .with_virtual_host("v")
            .with_credentials(PlainCredentials::new("u", "p"))
            .with_connection_attempts(3)
            .with_retry_delay(Duration::from_millis(250))
            .with_blocked_connection_timeout(Some(Duration::from_secs(7)))
            .with_ssl_options(Some(SslOptions::new().with_server_hostname("n")))
            .with_tcp_options(tcp.clone())
            .with_channel_max(9)
            .with_frame_max(8192)
            .with_heartbeat(Some(0))
            .with_socket_timeout(Duration::from_secs(1))
            .with_stack_timeout(Duration::from_secs(2))
            .with_rpc_timeout(Duration::from_secs(3))
            .with_locale("de_DE")
            .with_connection_name("worker");
        assert_eq!(p.host(), "b");
        assert_eq!(p.port(), 5673);
        assert_eq!(p.virtual_host(), "v");
        assert_eq!(p.credentials(), &PlainCredentials::new("u", "p").into());
        assert_eq!(p.connection_attempts(), 3);
        assert_eq!(p.retry_delay(), Duration::from_millis(250));
        assert_eq!(p.blocked_connection_timeout(), Some(Duration::from_secs(7)));
        assert_eq!(
            p.ssl_options(),
            Some(&SslOptions::new().with_server_hostname("n"))
        );
        assert!(p.is_tls());
        assert_eq!(p.tcp_options(), &tcp);
        assert_eq!(p.channel_max(), 9);
        assert_eq!(p.frame_max(), 8192);
        assert_eq!(p.heartbeat(), Some(0));
        assert_eq!(p.socket_timeout(), Duration::from_secs(1));
        assert_eq!(p.stack_timeout(), Duration::from_secs(2));
        assert_eq!(p.rpc_timeout(), Duration::from_secs(3));
        assert_eq!(p.locale(), "de_DE");
        assert_eq!(
            p.client_properties().get("connection_name"),
            Some(&FieldValue::String("worker".into()))
        );
        assert_eq!(p.validate(), Ok(()));
        let properties = FieldTable::new().with("k", true);
        let p = p.with_client_properties(properties.clone());
        assert_eq!(p.client_properties(), &properties);
    }

    #[test]
    fn ssl_options_without_an_explicit_port_means_5671() {
        let tls = || Some(SslOptions::new());
        // pika: ConnectionParameters('h', ssl_options=...) has port 5671 ...
        assert_eq!(
            ConnectionParameters::new("h")
                .with_ssl_options(tls())
                .port(),
            5671
        );
        // ... ConnectionParameters('h', port=5672, ssl_options=...) keeps 5672.
        assert_eq!(
            ConnectionParameters::new("h")
                .with_port(5672)
                .with_ssl_options(tls())
                .port(),
            5672
        );
        // An explicit port wins in either order; without TLS again, 5672 again.
        assert_eq!(
            ConnectionParameters::new("h")
                .with_ssl_options(tls())
                .with_port(1234)
                .port(),
            1234
        );
        assert_eq!(
            ConnectionParameters::new("h")
                .with_ssl_options(tls())
                .with_ssl_options(None)
                .port(),
            5672
        );
    }

    #[test]
    fn out_of_range_values_are_kept_as_given_and_refused_by_validate() {
        let h = || ConnectionParameters::new("h");
        // No silent clamps: the getters read back what was given ...
        assert_eq!(h().with_frame_max(100).frame_max(), 100);
        assert_eq!(h().with_frame_max(1 << 20).frame_max(), 1 << 20);
        assert_eq!(h().with_connection_attempts(0).connection_attempts(), 0);
        assert_eq!(h().with_channel_max(0).channel_max(), 0);
        // ... and validate names the parameter, its range and the value.
        let cases = [
            (ConnectionParameters::new(""), "host must not be empty"),
            (h().with_port(0), "port must be from 1 to 65535, got 0"),
            (
                h().with_frame_max(100),
                "frame_max must be from 8192 to 131072, got 100",
            ),
            (
                h().with_frame_max(4096),
                "frame_max must be from 8192 to 131072, got 4096",
            ),
            (
                h().with_frame_max(131_073),
                "frame_max must be from 8192 to 131072, got 131073",
            ),
            (
                h().with_channel_max(0),
                "channel_max must be from 1 to 65535, got 0",
            ),
            (
                h().with_tcp_options(TcpOptions {
                    keepalive_idle: Some(Duration::from_millis(1900)),
                    ..Default::default()
                }),
                "tcp_options keepalive_idle must be 1 to 32767 whole seconds, got 1.9s",
            ),
            (
                h().with_tcp_options(TcpOptions {
                    keepalive_interval: Some(Duration::from_secs(40_000)),
                    ..Default::default()
                }),
                "tcp_options keepalive_interval must be 1 to 32767 whole seconds, got 40000s",
            ),
            (
                h().with_tcp_options(TcpOptions {
                    keepalive_count: Some(200),
                    ..Default::default()
                }),
                "tcp_options keepalive_count must be from 1 to 127, got 200",
            ),
            (
                h().with_tcp_options(TcpOptions {
                    user_timeout: Some(Duration::from_micros(500)),
                    ..Default::default()
                }),
                "tcp_options user_timeout must be whole milliseconds, at most u32::MAX (0: the \
                 OS default), got 500µs",
            ),
            (
                h().with_connection_attempts(0),
                "connection_attempts must be at least 1, got 0",
            ),
            (
                h().with_socket_timeout(Duration::ZERO),
                "socket_timeout must be more than 0 seconds, got 0",
            ),
            (
                h().with_stack_timeout(Duration::ZERO),
                "stack_timeout must be more than 0 seconds, got 0",
            ),
            (
                h().with_rpc_timeout(Duration::ZERO),
                "rpc_timeout must be more than 0 seconds, got 0",
            ),
            (
                h().with_virtual_host("v".repeat(256)),
                "virtual_host must be at most 255 bytes, got 256 bytes",
            ),
            (
                h().with_locale("l".repeat(256)),
                "locale must be at most 255 bytes, got 256 bytes",
            ),
            (
                h().with_ssl_options(Some(
                    SslOptions::new()
                        .with_min_tls_version(TlsVersion::Tls13)
                        .with_max_tls_version(TlsVersion::Tls12),
                )),
                "ssl_options: the minimum TLS version (tlsv1.3) is newer than the maximum \
                 (tlsv1.2)",
            ),
            (
                h().with_ssl_options(Some(SslOptions::new().with_server_hostname("rabbit\0evil"))),
                "ssl_options: server_hostname contains a NUL byte",
            ),
        ];
        for (params, message) in cases {
            assert_eq!(params.validate(), invalid(message));
        }
        // The bounds themselves are allowed.
        for ok in [
            h().with_frame_max(FRAME_MIN_SIZE),
            h().with_frame_max(FRAME_MAX_SIZE),
            h().with_channel_max(1),
            h().with_channel_max(65535),
            h().with_port(65535),
            h().with_connection_attempts(u32::MAX),
            h().with_virtual_host("v".repeat(255)),
            h().with_heartbeat(Some(u16::MAX)),
            h().with_rpc_timeout(Duration::MAX),
            h().with_retry_delay(Duration::ZERO),
        ] {
            assert_eq!(ok.validate(), Ok(()), "{ok:?}");
        }
    }

    #[test]
    fn parameters_compare_field_by_field() {
        let a = ConnectionParameters::new("h").with_heartbeat(Some(5));
        assert_eq!(a, a.clone());
        assert_eq!(
            a,
            ConnectionParameters::default()
                .with_host("h")
                .with_heartbeat(Some(5))
        );
        assert_ne!(a, a.clone().with_heartbeat(Some(6)));
        assert_ne!(a, a.clone().with_connection_name("x"));
        assert_ne!(
            a,
            a.clone()
                .with_ssl_options(Some(SslOptions::new().with_verify_hostname(false)))
        );
        assert_ne!(
            a.clone().with_credentials(PlainCredentials::new("u", "p1")),
            a.clone().with_credentials(PlainCredentials::new("u", "p2"))
        );
        // An explicit port is a setting of its own: it stays when ssl_options comes.
        assert_ne!(a, a.clone().with_port(5672));
    }

    #[test]
    fn credentials_are_built_with_their_constructors() {
        assert_eq!(ExternalCredentials::new(), ExternalCredentials::default());
        let external: Credentials = ExternalCredentials::new().into();
        assert_eq!(external, Credentials::External(ExternalCredentials::new()));
        let plain = PlainCredentials::new("u", "p");
        assert_eq!(plain.username(), "u");
        assert_eq!(
            PlainCredentials::default(),
            PlainCredentials::new("guest", "guest")
        );
    }

    #[test]
    fn secrets_are_not_in_debug_output() {
        let p = ConnectionParameters::new("h")
            .with_credentials(PlainCredentials::new("u", "s3cr3t"))
            .with_ssl_options(Some(
                SslOptions::new()
                    .with_client_certificate_pem("CERT", "KEY-BYTES")
                    .with_client_key_password("k3y-pass"),
            ));
        let dbg = format!("{p:?}");
        for secret in ["s3cr3t", "KEY-BYTES", "k3y-pass"] {
            assert!(!dbg.contains(secret), "{secret} in {dbg}");
        }
        assert!(dbg.contains("<redacted>"));
        let from_url = format!(
            "{:?}",
            ConnectionParameters::from_url("amqp://u:s3cr3t@h/").unwrap()
        );
        assert!(!from_url.contains("s3cr3t"), "{from_url}");
    }
}
