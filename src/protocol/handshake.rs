//! The opening handshake as a plain state machine: frames in, frames out, no socket.
//!
//! `protocol header -> start / start-ok -> tune / tune-ok -> open / open-ok`, negotiating
//! channel_max, frame_max and heartbeat by pika's rules, and turning the broker's refusals into
//! typed errors (403 at login: authentication; 530 at open: access to the vhost refused).

use amq_protocol::auth::Credentials;
use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{connection, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use amq_protocol::uri::SASLMechanism;

use super::table;

use crate::error::{Error, Result, ACCESS_REFUSED};

/// What the handshake needs to know (taken from the connection parameters by the engine).
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) login: Login,
    pub(crate) virtual_host: String,
    pub(crate) locale: String,
    pub(crate) client_properties: table::FieldTable,
    pub(crate) channel_max: u16,
    pub(crate) frame_max: u32,
    /// `None` takes the broker's value.
    pub(crate) heartbeat: Option<u16>,
}

/// How to log in.
#[derive(Clone)]
pub(crate) enum Login {
    /// SASL PLAIN.
    Plain { username: String, password: String },
    /// SASL EXTERNAL (the TLS client certificate).
    External,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let login = match &self.login {
            Login::Plain { username, .. } => format!("PLAIN {username:?} (password redacted)"),
            Login::External => "EXTERNAL".into(),
        };
        f.debug_struct("Settings")
            .field("login", &login)
            .field("virtual_host", &self.virtual_host)
            .field("channel_max", &self.channel_max)
            .field("frame_max", &self.frame_max)
            .field("heartbeat", &self.heartbeat)
            .finish_non_exhaustive()
    }
}

/// What the handshake settled on.
#[derive(Clone, Debug)]
pub(crate) struct Tuned {
    pub(crate) channel_max: u16,
    pub(crate) frame_max: u32,
    pub(crate) heartbeat: u16,
    pub(crate) server_properties: table::FieldTable,
}

#[derive(Debug, PartialEq, Eq)]
enum Stage {
    AwaitStart,
    AwaitTune,
    AwaitOpenOk,
    Done,
}

/// What to do after a frame.
#[derive(Debug)]
pub(crate) enum Step {
    /// Send these methods (on channel 0), then go on reading.
    Send(Vec<AMQPClass>),
    /// The connection is open.
    Done(Tuned),
}

/// The client side of the opening handshake.
#[derive(Debug)]
pub(crate) struct Handshake<'a> {
    params: &'a Settings,
    stage: Stage,
    tuned: Option<Tuned>,
    server_properties: FieldTable,
}

impl<'a> Handshake<'a> {
    pub(crate) fn new(params: &'a Settings) -> Self {
        Handshake {
            params,
            stage: Stage::AwaitStart,
            tuned: None,
            server_properties: FieldTable::default(),
        }
    }

    /// A short description of where the handshake is, for timeout errors.
    pub(crate) fn waiting_for(&self) -> &'static str {
        match self.stage {
            Stage::AwaitStart => "waiting for connection.start",
            Stage::AwaitTune => "waiting for connection.tune (authentication)",
            Stage::AwaitOpenOk => "waiting for connection.open-ok",
            Stage::Done => "done",
        }
    }

    /// The error for a socket that closed (EOF) during the handshake. When both sides announced
    /// `authentication_failure_close` (RabbitMQ does; so does cottontail unless the
    /// application's client properties replace its `capabilities`), the broker refuses a login
    /// or a virtual host with a connection.close, so an EOF is a lost stream (retried by
    /// `connection_attempts`); otherwise an EOF after start-ok or open is pika's "probable"
    /// refusal.
    pub(crate) fn eof_error(&self) -> Error {
        const CAPABILITY: &str = "authentication_failure_close";
        let ours = client_properties(&self.params.client_properties)
            .is_ok_and(|props| announces(&props, CAPABILITY));
        let closes_on_refusal = ours && announces(&self.server_properties, CAPABILITY);
        match self.stage {
            Stage::AwaitTune if !closes_on_refusal => Error::AuthenticationFailed {
                reason:
                    "the broker closed the socket after start-ok (probable authentication failure)"
                        .into(),
            },
            Stage::AwaitOpenOk if !closes_on_refusal => Error::AccessRefused {
                vhost: self.params.virtual_host.clone(),
                reply_text: "the broker closed the socket after connection.open".into(),
            },
            _ => Error::StreamLost {
                message: format!("the broker closed the socket while {}", self.waiting_for()),
            },
        }
    }

    /// Feeds one frame from the broker.
    pub(crate) fn on_frame(&mut self, frame: AMQPFrame) -> Result<Step> {
        let method = match frame {
            AMQPFrame::Heartbeat => return Ok(Step::Send(Vec::new())),
            AMQPFrame::Method(0, AMQPClass::Connection(m)) => m,
            other => {
                return Err(Error::protocol(
                    crate::error::UNEXPECTED_FRAME,
                    format!("unexpected frame during the handshake: {other}"),
                ))
            }
        };
        match (&self.stage, method) {
            (_, connection::AMQPMethod::Close(close)) => Err(self.refusal(close)),
            (Stage::AwaitStart, connection::AMQPMethod::Start(start)) => self.on_start(start),
            (Stage::AwaitTune, connection::AMQPMethod::Tune(tune)) => self.on_tune(tune),
            (Stage::AwaitTune, connection::AMQPMethod::Secure(_)) => {
                Err(Error::AuthenticationFailed {
                    reason: "the broker sent a SASL challenge, which PLAIN does not answer".into(),
                })
            }
            (Stage::AwaitOpenOk, connection::AMQPMethod::OpenOk(_)) => {
                self.stage = Stage::Done;
                let mut tuned = self.tuned.take().expect("tuned before open-ok");
                tuned.server_properties =
                    table::from_wire(&std::mem::take(&mut self.server_properties));
                Ok(Step::Done(tuned))
            }
            (_, other) => Err(Error::protocol(
                crate::error::UNEXPECTED_FRAME,
                format!("unexpected method while {}: {other:?}", self.waiting_for()),
            )),
        }
    }

    fn refusal(&self, close: connection::Close) -> Error {
        let reply_text = close.reply_text.to_string();
        match (&self.stage, close.reply_code) {
            (Stage::AwaitStart | Stage::AwaitTune, ACCESS_REFUSED) => {
                Error::AuthenticationFailed { reason: reply_text }
            }
            (Stage::AwaitOpenOk, ACCESS_REFUSED | 530) => Error::AccessRefused {
                vhost: self.params.virtual_host.clone(),
                reply_text,
            },
            _ => Error::ConnectionClosed {
                reply_code: close.reply_code,
                reply_text,
                class_id: close.class_id,
                method_id: close.method_id,
            },
        }
    }

    fn on_start(&mut self, start: connection::Start) -> Result<Step> {
        if (start.version_major, start.version_minor) != (0, 9) {
            return Err(Error::protocol(
                crate::error::FRAME_ERROR,
                format!(
                    "broker speaks AMQP {}.{}, not 0-9-1",
                    start.version_major, start.version_minor
                ),
            ));
        }
        let start_ok = start_ok(self.params)?;
        let offered = String::from_utf8_lossy(start.mechanisms.as_bytes()).to_string();
        let mechanism = start_ok.mechanism.as_str();
        if !offered.split_whitespace().any(|m| m == mechanism) {
            return Err(Error::AuthenticationFailed {
                reason: format!("the broker does not offer {mechanism} (offers: {offered})"),
            });
        }
        self.server_properties = start.server_properties;
        self.stage = Stage::AwaitTune;
        Ok(Step::Send(vec![AMQPClass::Connection(
            connection::AMQPMethod::StartOk(start_ok),
        )]))
    }

    fn on_tune(&mut self, tune: connection::Tune) -> Result<Step> {
        if (1..FRAME_MIN_SIZE).contains(&tune.frame_max) {
            // The spec's floor: every method frame we send must fit, heartbeats included.
            return Err(Error::protocol(
                crate::error::SYNTAX_ERROR,
                format!(
                    "the broker's connection.tune offers frame_max {}, below the protocol's \
                     minimum of {FRAME_MIN_SIZE}",
                    tune.frame_max
                ),
            ));
        }
        let tuned = negotiate(self.params, &tune);
        let tune_ok = connection::TuneOk {
            channel_max: tuned.channel_max,
            frame_max: tuned.frame_max,
            heartbeat: tuned.heartbeat,
        };
        let open = connection::Open {
            virtual_host: self.params.virtual_host.as_str().into(),
        };
        self.tuned = Some(tuned);
        self.stage = Stage::AwaitOpenOk;
        Ok(Step::Send(vec![
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(tune_ok)),
            AMQPClass::Connection(connection::AMQPMethod::Open(open)),
        ]))
    }
}

/// AMQP 0-9-1's smallest `frame_max` (its `frame-min-size`), also the largest frame a peer
/// must take before connection.tune.
const FRAME_MIN_SIZE: u32 = 4096;

/// The connection.start-ok that logs in with `settings`. Refused as [`Error::InvalidArgument`]
/// when its frame is over the [`FRAME_MIN_SIZE`] bytes AMQP allows before connection.tune
/// (client properties, connection name and credentials together): RabbitMQ 3.10 takes 8 bytes
/// more, then drops such a frame without a word and resets the socket seconds later.
pub(crate) fn start_ok(settings: &Settings) -> Result<connection::StartOk> {
    let (mechanism, credentials) = match &settings.login {
        Login::Plain { username, password } => (
            SASLMechanism::Plain,
            Credentials::new(username.as_str().into(), password.as_str().into()),
        ),
        Login::External => (SASLMechanism::External, Credentials::default()),
    };
    let start_ok = connection::StartOk {
        client_properties: client_properties(&settings.client_properties)?,
        mechanism: mechanism.name().into(),
        response: credentials.sasl_auth_string(mechanism),
        locale: crate::protocol::codec::short(&settings.locale)?,
    };
    let mut frame = Vec::new();
    let method = AMQPClass::Connection(connection::AMQPMethod::StartOk(start_ok.clone()));
    crate::protocol::codec::encode_method(&mut frame, 0, method)?;
    if frame.len() > FRAME_MIN_SIZE as usize {
        return Err(Error::InvalidArgument(format!(
            "the login (connection.start-ok: client properties, connection name and \
             credentials) would be a frame of {} bytes, over the {FRAME_MIN_SIZE} bytes AMQP \
             allows before connection.tune",
            frame.len()
        )));
    }
    Ok(start_ok)
}

/// pika's `_negotiate_integer_value`: 0 means "no limit", so the other side's value wins; else
/// the smaller one.
fn negotiate_limit(client: u64, server: u64) -> u64 {
    if client == 0 || server == 0 {
        client.max(server)
    } else {
        client.min(server)
    }
}

/// Settles channel_max, frame_max and heartbeat from our parameters and the broker's tune.
pub(crate) fn negotiate(params: &Settings, tune: &connection::Tune) -> Tuned {
    let channel_max =
        negotiate_limit(params.channel_max as u64, tune.channel_max as u64).min(65535) as u16;
    let channel_max = if channel_max == 0 { 65535 } else { channel_max };
    // Never more than the broker's limit, even below our own 8192 floor (the spec allows
    // brokers down to 4096): a tune-ok above it would be refused.
    let frame_max =
        negotiate_limit(params.frame_max as u64, tune.frame_max as u64).min(u32::MAX as u64) as u32;
    // pika: None takes the broker's value; any number (0 included) is the client's choice.
    let heartbeat = params.heartbeat.unwrap_or(tune.heartbeat);
    Tuned {
        channel_max,
        frame_max,
        heartbeat,
        server_properties: table::FieldTable::default(),
    }
}

/// Whether `properties` (a connection.start's or start-ok's) list `capability` as true.
fn announces(properties: &FieldTable, capability: &str) -> bool {
    match properties.inner().get("capabilities") {
        Some(AMQPValue::FieldTable(caps)) => {
            matches!(caps.inner().get(capability), Some(AMQPValue::Boolean(true)))
        }
        _ => false,
    }
}

/// The client properties pika sends, with the user's merged over them.
fn client_properties(user: &table::FieldTable) -> Result<FieldTable> {
    let mut capabilities = FieldTable::default();
    for cap in [
        "authentication_failure_close",
        "basic.nack",
        "connection.blocked",
        "consumer_cancel_notify",
        "publisher_confirms",
    ] {
        capabilities.insert(cap.into(), AMQPValue::Boolean(true));
    }
    let long = |s: &str| AMQPValue::LongString(LongString::from(s));
    let mut props = FieldTable::default();
    props.insert("product".into(), long("cottontail"));
    props.insert("platform".into(), long("Rust"));
    props.insert("version".into(), long(env!("CARGO_PKG_VERSION")));
    props.insert(
        "information".into(),
        long("A blocking RabbitMQ client for Rust with pika's API"),
    );
    props.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
    for (k, v) in &table::to_wire(user)? {
        props.insert(k.clone(), v.clone());
    }
    Ok(props)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::ConnectionParameters;

    fn tune(channel_max: u16, frame_max: u32, heartbeat: u16) -> connection::Tune {
        connection::Tune {
            channel_max,
            frame_max,
            heartbeat,
        }
    }

    fn method(m: connection::AMQPMethod) -> AMQPFrame {
        AMQPFrame::Method(0, AMQPClass::Connection(m))
    }

    fn start() -> connection::Start {
        connection::Start {
            version_major: 0,
            version_minor: 9,
            server_properties: FieldTable::default(),
            mechanisms: "AMQPLAIN PLAIN".into(),
            locales: "en_US".into(),
        }
    }

    #[test]
    fn heartbeat_none_takes_the_brokers_value() {
        let p = ConnectionParameters::default();
        assert_eq!(
            negotiate(&Settings::from(&p), &tune(2047, 131_072, 60)).heartbeat,
            60
        );
    }

    #[test]
    fn heartbeat_number_wins_even_zero() {
        let p = ConnectionParameters::default().with_heartbeat(Some(5));
        assert_eq!(negotiate(&Settings::from(&p), &tune(0, 0, 60)).heartbeat, 5);
        let p = ConnectionParameters::default().with_heartbeat(Some(0));
        assert_eq!(negotiate(&Settings::from(&p), &tune(0, 0, 60)).heartbeat, 0);
    }

    #[test]
    fn limits_take_the_smaller_non_zero_value() {
        let p = ConnectionParameters::default();
        let t = negotiate(&Settings::from(&p), &tune(2047, 131_072, 60));
        assert_eq!((t.channel_max, t.frame_max), (2047, 131_072));
        let t = negotiate(&Settings::from(&p), &tune(0, 0, 0));
        assert_eq!((t.channel_max, t.frame_max), (65535, 131_072));
        let p = ConnectionParameters::default().with_frame_max(10_000);
        assert_eq!(
            negotiate(&Settings::from(&p), &tune(0, 4096, 0)).frame_max,
            4096
        );
        assert_eq!(
            negotiate(&Settings::from(&p), &tune(0, 0, 0)).frame_max,
            10_000
        );
    }

    #[test]
    fn full_handshake_sends_start_ok_tune_ok_open() {
        let p = ConnectionParameters::default().with_virtual_host("v");
        let settings = Settings::from(&p);
        let mut hs = Handshake::new(&settings);
        match hs
            .on_frame(method(connection::AMQPMethod::Start(start())))
            .unwrap()
        {
            Step::Send(m) => match &m[..] {
                [AMQPClass::Connection(connection::AMQPMethod::StartOk(ok))] => {
                    assert_eq!(ok.mechanism.as_str(), "PLAIN");
                    assert_eq!(ok.response.as_bytes(), b"\0guest\0guest");
                    let caps = match ok.client_properties.inner().get("capabilities") {
                        Some(AMQPValue::FieldTable(t)) => t.clone(),
                        other => panic!("{other:?}"),
                    };
                    assert!(caps.contains_key("authentication_failure_close"));
                }
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
        match hs
            .on_frame(method(connection::AMQPMethod::Tune(tune(
                2047, 131_072, 60,
            ))))
            .unwrap()
        {
            Step::Send(m) => assert_eq!(m.len(), 2),
            other => panic!("{other:?}"),
        }
        match hs
            .on_frame(method(connection::AMQPMethod::OpenOk(
                connection::OpenOk {},
            )))
            .unwrap()
        {
            Step::Done(t) => assert_eq!(t.heartbeat, 60),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_tune_below_the_protocols_minimum_frame_max_is_refused() {
        let p = ConnectionParameters::default();
        let settings = Settings::from(&p);
        for (frame_max, refused) in [(1, true), (4095, true), (4096, false), (0, false)] {
            let mut hs = Handshake::new(&settings);
            hs.on_frame(method(connection::AMQPMethod::Start(start())))
                .unwrap();
            let step = hs.on_frame(method(connection::AMQPMethod::Tune(tune(0, frame_max, 0))));
            match step {
                Err(Error::Protocol { reply_code, reason }) if refused => {
                    assert_eq!(reply_code, 502);
                    assert!(
                        reason.contains(&format!("frame_max {frame_max}")),
                        "{reason}"
                    );
                }
                Ok(Step::Send(_)) if !refused => {}
                other => panic!("frame_max {frame_max}: {other:?}"),
            }
        }
    }

    #[test]
    fn close_403_after_start_ok_is_authentication_failure() {
        let p = ConnectionParameters::default();
        let settings = Settings::from(&p);
        let mut hs = Handshake::new(&settings);
        hs.on_frame(method(connection::AMQPMethod::Start(start())))
            .unwrap();
        let err = hs
            .on_frame(method(connection::AMQPMethod::Close(connection::Close {
                reply_code: 403,
                reply_text: "ACCESS_REFUSED - Login was refused".into(),
                class_id: 0,
                method_id: 0,
            })))
            .unwrap_err();
        assert!(matches!(err, Error::AuthenticationFailed { .. }), "{err:?}");
    }

    #[test]
    fn close_530_after_open_is_access_refused() {
        let p = ConnectionParameters::default().with_virtual_host("nope");
        let settings = Settings::from(&p);
        let mut hs = Handshake::new(&settings);
        hs.on_frame(method(connection::AMQPMethod::Start(start())))
            .unwrap();
        hs.on_frame(method(connection::AMQPMethod::Tune(tune(0, 0, 0))))
            .unwrap();
        let err = hs
            .on_frame(method(connection::AMQPMethod::Close(connection::Close {
                reply_code: 530,
                reply_text: "NOT_ALLOWED - vhost nope not found".into(),
                class_id: 10,
                method_id: 40,
            })))
            .unwrap_err();
        assert_eq!(
            err,
            Error::AccessRefused {
                vhost: "nope".into(),
                reply_text: "NOT_ALLOWED - vhost nope not found".into()
            }
        );
    }

    #[test]
    fn external_credentials_send_an_empty_external_response() {
        let p = ConnectionParameters::default()
            .with_credentials(crate::params::ExternalCredentials::new());
        let settings = Settings::from(&p);
        let mut hs = Handshake::new(&settings);
        let mut s = start();
        s.mechanisms = "EXTERNAL PLAIN".into();
        match hs
            .on_frame(method(connection::AMQPMethod::Start(s)))
            .unwrap()
        {
            Step::Send(m) => match &m[..] {
                [AMQPClass::Connection(connection::AMQPMethod::StartOk(ok))] => {
                    assert_eq!(ok.mechanism.as_str(), "EXTERNAL");
                    assert!(ok.response.as_bytes().is_empty());
                }
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn broker_without_plain_is_rejected() {
        let p = ConnectionParameters::default();
        let settings = Settings::from(&p);
        let mut hs = Handshake::new(&settings);
        let mut s = start();
        s.mechanisms = "EXTERNAL".into();
        assert!(matches!(
            hs.on_frame(method(connection::AMQPMethod::Start(s))),
            Err(Error::AuthenticationFailed { .. })
        ));
    }

    #[test]
    fn an_eof_is_a_refusal_unless_both_sides_announced_authentication_failure_close() {
        let p = ConnectionParameters::default().with_virtual_host("v");
        // The application's `capabilities` replace cottontail's: it no longer announces it.
        let silent = p.clone().with_client_properties(
            crate::FieldTable::new().with("capabilities", crate::FieldTable::new()),
        );
        let (settings, silent) = (Settings::from(&p), Settings::from(&silent));
        let mut announcing = FieldTable::default();
        let mut caps = FieldTable::default();
        caps.insert(
            "authentication_failure_close".into(),
            AMQPValue::Boolean(true),
        );
        announcing.insert("capabilities".into(), AMQPValue::FieldTable(caps));
        for (settings, server_properties, refusal) in [
            (&settings, FieldTable::default(), true),
            (&settings, announcing.clone(), false),
            (&silent, announcing, true),
        ] {
            let mut hs = Handshake::new(settings);
            assert!(
                matches!(hs.eof_error(), Error::StreamLost { .. }),
                "before start"
            );
            hs.on_frame(method(connection::AMQPMethod::Start(connection::Start {
                server_properties: server_properties.clone(),
                ..start()
            })))
            .unwrap();
            match hs.eof_error() {
                Error::AuthenticationFailed { reason } if refusal => {
                    assert!(reason.contains("probable"), "{reason}")
                }
                Error::StreamLost { message } if !refusal => {
                    assert!(message.contains("connection.tune"), "{message}")
                }
                other => panic!("after start-ok (refusal {refusal}): {other:?}"),
            }
            hs.on_frame(method(connection::AMQPMethod::Tune(tune(0, 0, 0))))
                .unwrap();
            match hs.eof_error() {
                Error::AccessRefused { vhost, .. } if refusal => assert_eq!(vhost, "v"),
                Error::StreamLost { message } if !refusal => {
                    assert!(message.contains("open-ok"), "{message}")
                }
                other => panic!("after open (refusal {refusal}): {other:?}"),
            }
        }
    }

    #[test]
    fn a_login_over_the_frame_size_allowed_before_tuning_is_refused_before_it_is_sent() {
        let frame_len = |name_len: usize| {
            let p = ConnectionParameters::default().with_connection_name("n".repeat(name_len));
            let ok = start_ok(&Settings::from(&p))?;
            let mut frame = Vec::new();
            let method = AMQPClass::Connection(connection::AMQPMethod::StartOk(ok));
            crate::protocol::codec::encode_method(&mut frame, 0, method).unwrap();
            Ok::<_, Error>(frame.len())
        };
        // The longest name that fits makes a frame of exactly 4096 bytes.
        let fits = 4096 - frame_len(0).unwrap();
        assert_eq!(frame_len(fits).unwrap(), 4096);
        match frame_len(fits + 1) {
            Err(Error::InvalidArgument(why)) => {
                assert!(why.contains("4097 bytes"), "{why}");
                assert!(why.contains("before connection.tune"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        // The handshake refuses it at connection.start, before sending anything.
        let p = ConnectionParameters::default().with_connection_name("n".repeat(fits + 1));
        let settings = Settings::from(&p);
        let mut hs = Handshake::new(&settings);
        assert!(matches!(
            hs.on_frame(method(connection::AMQPMethod::Start(start()))),
            Err(Error::InvalidArgument(_))
        ));
        // And so do the parameters' checks, with a password as long.
        let p = ConnectionParameters::default().with_credentials(
            crate::params::PlainCredentials::new("guest", "p".repeat(5000)),
        );
        assert!(matches!(p.validate(), Err(Error::InvalidArgument(_))));
    }
}
