//! `amqp://` URLs, read as pika's `URLParameters` reads them: split as Python's `urlparse`
//! splits them, the query read as `parse_qs` reads it, each option checked as pika's setters
//! check it.

use std::time::Duration;

use super::pydict::{self, Value};
use super::{
    out_of_range, ConnectionParameters, Credentials, ExternalCredentials, PlainCredentials,
    SslOptions, TcpOptions, TlsVersion, CHANNEL_RANGE, DEFAULT_PORT, FRAME_MAX_SIZE,
    FRAME_MIN_SIZE,
};
use crate::error::{Error, Result};

impl ConnectionParameters {
    /// Parses an `amqp://user:pass@host:port/vhost?option=value&...` URL, or `amqps://` for
    /// TLS, by pika's `URLParameters` rules.
    ///
    /// - Host: as given, lower-cased (`[::1]` for IPv6); none means `localhost`.
    /// - Port: none means 5672, or 5671 for `amqps://`. An `amqp://` URL whose query turns TLS
    ///   on with `ssl_options` keeps 5672, as in pika.
    /// - User and password: percent-decoded (`%40` is `@`; `+` stays `+`). A user without a
    ///   password (`amqp://user@host`) is an error; `user:@host` is an empty password.
    /// - Virtual host: the first path segment, percent-decoded. No path or `/` means `/`, as
    ///   does `/%2F`; `/foo` and `/foo/bar` mean `foo`; `//` means the empty name. Malformed
    ///   escapes stay as written and bytes that are not UTF-8 become U+FFFD, as Python's
    ///   `unquote` does.
    ///
    /// The query is read as Python's `parse_qs` reads it: `&`-separated, `+` is a space,
    /// percent-decoded, and an option with an empty value (`heartbeat=`) or no `=` is ignored.
    /// An option given twice (`heartbeat=5&heartbeat=10`) is an error naming it. Options, with
    /// pika's names, formats and ranges (an out-of-range value is an error naming the option
    /// and the range):
    ///
    /// - `heartbeat` (0 to 65535), `frame_max` (8192 to 131072), `channel_max` (1 to 65535),
    ///   `connection_attempts` (at least 1): integers, as Python's `int()` reads them.
    /// - `socket_timeout`, `stack_timeout` (more than 0), `retry_delay`,
    ///   `blocked_connection_timeout` (0 or more; `None` for none): seconds, may be
    ///   fractional. `nan`, `inf` and values too large for a [`Duration`] are errors.
    /// - `locale`.
    /// - URL-encoded Python dicts (or `None`): `client_properties` (e.g.
    ///   `{'connection_name': 'worker-1'}`), `tcp_options` (`TCP_KEEPIDLE`, `TCP_KEEPINTVL`,
    ///   `TCP_KEEPCNT`, `TCP_USER_TIMEOUT`) and `ssl_options`. `ssl_options` takes pika's keys:
    ///   `ca_certs` / `cafile` (a PEM file), `ca_path` / `capath` (a directory of PEM files),
    ///   `ca_data` / `cadata` (PEM text), each pair read as pika reads it (the first name
    ///   wins when both are given and not empty); `certfile` with `keyfile` (or alone, a PEM
    ///   file holding the key too, as Python's `load_cert_chain` reads it) and `password`;
    ///   `server_hostname`; `protocol` (Python's `ssl.PROTOCOL_TLS_CLIENT` = 16,
    ///   `PROTOCOL_TLS` = 2 or `PROTOCOL_TLSv1_2` = 5, or those names as strings; TLS 1.0 and
    ///   1.1 are refused; unlike Python's `SSLContext(PROTOCOL_TLS)`, which verifies nothing
    ///   by default, `PROTOCOL_TLS` here still verifies the certificate and host name); and
    ///   cottontail's `verify_certificate` / `verify_hostname`
    ///   (`True` / `False`). `ciphers` is refused: native-tls cannot choose cipher suites.
    ///   `ssl_options=None` is plain TCP, and an error with `amqps://`.
    /// - amq-protocol's `connection_timeout` (milliseconds, sets `socket_timeout`) and
    ///   `auth_mechanism` (`plain` or `external`).
    ///
    /// Any other option is an error naming it, as pika raises `ValueError`; so is a value
    /// [`validate`](Self::validate) refuses. No error or `Debug` text holds the password or
    /// the `ssl_options` text.
    pub fn from_url(url: &str) -> Result<Self> {
        let parts = UrlParts::split(url)?;
        let tls = match parts.scheme.as_str() {
            "amqp" => false,
            "amqps" => true,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "unexpected URL scheme {other:?}: expected amqp or amqps"
                )))
            }
        };
        let (userinfo, hostinfo) = match parts.netloc.rsplit_once('@') {
            Some((userinfo, hostinfo)) => (Some(userinfo), hostinfo),
            None => (None, parts.netloc.as_str()),
        };
        let (host, port) = split_host_port(hostinfo)?;
        let mut params = ConnectionParameters::new(host.unwrap_or_else(|| "localhost".into()));
        if let Some(port) = port {
            params = params.with_port(port);
        }
        if tls {
            params = params.with_ssl_options(Some(SslOptions::new()));
        }
        if let Some(userinfo) = userinfo {
            let (user, password) = userinfo.split_once(':').ok_or_else(|| {
                Error::InvalidArgument(
                    "the URL has a user name but no password: write user:password@host \
                     (user:@host for an empty password)"
                        .into(),
                )
            })?;
            params.credentials =
                PlainCredentials::new(unquote(user, false), unquote(password, false)).into();
        }
        if parts.path.chars().count() > 1 {
            let segment = parts.path.split('/').nth(1).unwrap_or_default();
            params.virtual_host = unquote(segment, false);
        }
        for (key, values) in parse_qs(&parts.query) {
            if values.len() != 1 {
                return Err(Error::InvalidArgument(format!(
                    "URL option {key:?} is given {} times; give it once",
                    values.len()
                )));
            }
            params = apply_option(params, tls, &key, &values[0])?;
        }
        params.validate()?;
        Ok(params)
    }
}

/// The parts of a URL as Python's `urlparse` splits them (the path without its `;params`).
#[derive(Debug, PartialEq)]
struct UrlParts {
    scheme: String,
    netloc: String,
    path: String,
    query: String,
}

impl UrlParts {
    fn split(url: &str) -> Result<UrlParts> {
        let invalid = |why: &str| Error::InvalidArgument(format!("invalid AMQP URL: {why}"));
        // As urlsplit: leading C0 controls and spaces go, and tabs and newlines anywhere.
        let url: String = url
            .trim_start_matches(|c: char| c <= ' ')
            .chars()
            .filter(|c| !matches!(c, '\t' | '\r' | '\n'))
            .collect();
        let (scheme, rest) = url
            .split_once(':')
            .filter(|(scheme, _)| {
                scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                    && scheme
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            })
            .ok_or_else(|| invalid("it must start with amqp:// or amqps://"))?;
        let rest = rest
            .strip_prefix("//")
            .ok_or_else(|| invalid("it must start with amqp:// or amqps://"))?;
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (netloc, rest) = rest.split_at(end);
        if netloc.contains('[') != netloc.contains(']') {
            return Err(invalid("unbalanced brackets around an IPv6 address"));
        }
        let rest = rest.split_once('#').map_or(rest, |(before, _)| before);
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        // urlparse's _splitparams: `;params` after the last path segment's start.
        let segment_start = path.rfind('/').unwrap_or(0);
        let path = match path[segment_start..].find(';') {
            Some(i) => &path[..segment_start + i],
            None => path,
        };
        Ok(UrlParts {
            scheme: scheme.to_ascii_lowercase(),
            netloc: netloc.to_string(),
            path: path.to_string(),
            query: query.to_string(),
        })
    }
}

/// Host and port of `host:port` or `[ipv6]:port`, as Python's `hostname` and `port` read them:
/// the host lower-cased (`None` when empty), the port ASCII digits from 0 to 65535 (`None`
/// when empty). Neither is echoed in an error: a `/` in an unencoded password ends the host
/// part early, so they may hold part of it.
fn split_host_port(hostinfo: &str) -> Result<(Option<String>, Option<u16>)> {
    let (host, port) = match hostinfo.split_once('[') {
        Some((_, bracketed)) => {
            let (host, after) = bracketed.split_once(']').unwrap_or((bracketed, ""));
            let address = host.split_once('%').map_or(host, |(address, _)| address);
            if address.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(Error::InvalidArgument(
                    "invalid AMQP URL: the host in brackets is not an IPv6 address".into(),
                ));
            }
            (host, after.split_once(':').map_or("", |(_, port)| port))
        }
        None => hostinfo.split_once(':').unwrap_or((hostinfo, "")),
    };
    let host = (!host.is_empty()).then(|| match host.split_once('%') {
        Some((address, zone)) => format!("{}%{zone}", address.to_lowercase()),
        None => host.to_lowercase(),
    });
    if port.is_empty() {
        return Ok((host, None));
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::InvalidArgument(
            "invalid AMQP URL: the port is not a number".into(),
        ));
    }
    let n = port.bytes().fold(0u32, |n, digit| {
        n.saturating_mul(10).saturating_add(u32::from(digit - b'0'))
    });
    let port =
        u16::try_from(n).map_err(|_| out_of_range("port", "from 1 to 65535", "a larger number"))?;
    Ok((host, Some(port)))
}

/// Python's `unquote`: `%XX` escapes decoded (a malformed one stays as written), bytes that
/// are not UTF-8 replaced by U+FFFD; with `plus`, `+` is a space first (`parse_qs`).
fn unquote(text: &str, plus: bool) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |at: usize| bytes.get(at).and_then(|b| (*b as char).to_digit(16));
        match bytes[i] {
            b'%' => match (hex(i + 1), hex(i + 2)) {
                (Some(high), Some(low)) => {
                    out.push((high * 16 + low) as u8);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            b'+' if plus => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Python's `parse_qs` with its defaults: each name with its values, in the order names first
/// appear; empty pairs, pairs without `=` and pairs with an empty value are skipped.
fn parse_qs(query: &str) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for pair in query.split('&') {
        let Some((name, value)) = pair.split_once('=') else {
            continue;
        };
        if value.is_empty() {
            continue;
        }
        let (name, value) = (unquote(name, true), unquote(value, true));
        match out.iter_mut().find(|(n, _)| *n == name) {
            Some((_, values)) => values.push(value),
            None => out.push((name, vec![value])),
        }
    }
    out
}

/// Applies one query option to `params`; `tls` says whether the scheme was `amqps`.
fn apply_option(
    mut params: ConnectionParameters,
    tls: bool,
    key: &str,
    value: &str,
) -> Result<ConnectionParameters> {
    match key {
        "heartbeat" => params.heartbeat = Some(int_in(key, value, 0, 65535, "from 0 to 65535")?),
        "frame_max" => {
            let range = format!("from {FRAME_MIN_SIZE} to {FRAME_MAX_SIZE}");
            params.frame_max = int_in(key, value, FRAME_MIN_SIZE, FRAME_MAX_SIZE, &range)?
        }
        "channel_max" => params.channel_max = int_in(key, value, 1, 65535, CHANNEL_RANGE)?,
        "connection_attempts" => {
            params.connection_attempts = int_in(key, value, 1, u32::MAX, "at least 1")?
        }
        "connection_timeout" => {
            let ms = int_in(key, value, 1, u64::MAX, "at least 1 (milliseconds)")?;
            params.socket_timeout = Duration::from_millis(ms);
        }
        "socket_timeout" => params.socket_timeout = seconds(key, value, true)?,
        "stack_timeout" => params.stack_timeout = seconds(key, value, true)?,
        "retry_delay" => params.retry_delay = seconds(key, value, false)?,
        "blocked_connection_timeout" => {
            params.blocked_connection_timeout = match value {
                "None" => None,
                v => Some(seconds(key, v, false)?),
            }
        }
        "locale" => params.locale = value.to_string(),
        // cottontail's own: automatic recovery with the default policy.
        "recovery" => {
            params.recovery = match value.to_ascii_lowercase().as_str() {
                "true" | "1" | "on" | "yes" => Some(crate::recovery::RecoveryPolicy::default()),
                "false" | "0" | "off" | "no" => None,
                _ => return Err(bad_option(key, value, "true or false")),
            }
        }
        "auth_mechanism" => match value.to_ascii_lowercase().as_str() {
            "plain" => {}
            "external" => params.credentials = Credentials::External(ExternalCredentials::new()),
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "auth_mechanism {value:?} is not supported (plain or external)"
                )))
            }
        },
        "client_properties" => {
            let dict = dict_or_none(value).map_err(|e| bad_option(key, value, &e))?;
            for (k, v) in dict.unwrap_or_default() {
                params.client_properties.insert(k.as_str(), v.into_amqp());
            }
        }
        "tcp_options" => {
            let dict = dict_or_none(value).map_err(|e| bad_option(key, value, &e))?;
            params.tcp_options = tcp_options_from_dict(dict.unwrap_or_default())?;
        }
        "ssl_options" => {
            // The value is not echoed: it may hold the client key's password.
            let dict = dict_or_none(value).map_err(|e| {
                Error::InvalidArgument(format!("URL option ssl_options is not a Python dict: {e}"))
            })?;
            match dict {
                None if tls => {
                    return Err(Error::InvalidArgument(
                        "URL option ssl_options=None contradicts the amqps:// scheme".into(),
                    ))
                }
                None => params = params.with_ssl_options(None),
                Some(dict) => {
                    // pika settles the port before reading the query: amqp:// keeps 5672.
                    if !tls && !params.explicit_port {
                        params = params.with_port(DEFAULT_PORT);
                    }
                    params = params.with_ssl_options(Some(ssl_options_from_dict(dict)?));
                }
            }
        }
        other => {
            return Err(Error::InvalidArgument(format!(
                "unknown URL option {other:?}"
            )))
        }
    }
    Ok(params)
}

fn bad_option(key: &str, value: &str, expected: &str) -> Error {
    Error::InvalidArgument(format!("URL option {key}={value:?}: expected {expected}"))
}

/// A Python dict literal, or `None`.
fn dict_or_none(text: &str) -> std::result::Result<Option<Vec<(String, Value)>>, String> {
    if text.trim() == "None" {
        return Ok(None);
    }
    pydict::parse(text).map(Some)
}

/// An integer as Python's `int()` reads it (surrounding spaces, a sign, `_` between digits),
/// saturating at `i128`'s bounds so that a huge value is out of range rather than malformed.
fn py_int(text: &str) -> Option<i128> {
    let text = text.trim();
    let (negative, digits) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let digits = without_underscores(digits)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut n: i128 = 0;
    for b in digits.bytes() {
        n = n.saturating_mul(10).saturating_add(i128::from(b - b'0'));
    }
    Some(if negative { -n } else { n })
}

/// `text` without the `_` Python allows between two digits; `None` if one is elsewhere.
fn without_underscores(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'_' {
            let digit = |at: Option<usize>| {
                at.and_then(|at| bytes.get(at))
                    .is_some_and(u8::is_ascii_digit)
            };
            if !digit(i.checked_sub(1)) || !digit(Some(i + 1)) {
                return None;
            }
        }
    }
    Some(text.replace('_', ""))
}

/// An integer option within `min..=max` (`allowed` says so in words).
fn int_in<T: TryFrom<i128> + Into<i128> + Copy>(
    key: &str,
    value: &str,
    min: T,
    max: T,
    allowed: &str,
) -> Result<T> {
    let n = py_int(value).ok_or_else(|| bad_option(key, value, "a whole number"))?;
    if n < min.into() || n > max.into() {
        return Err(out_of_range(key, allowed, value.trim()));
    }
    T::try_from(n).map_err(|_| out_of_range(key, allowed, value.trim()))
}

/// Seconds as Python's `float()` reads them: finite, not negative, more than 0 if `positive`,
/// and no more than a [`Duration`] holds.
fn seconds(key: &str, value: &str, positive: bool) -> Result<Duration> {
    let secs = without_underscores(value.trim())
        .and_then(|v| v.parse::<f64>().ok())
        .ok_or_else(|| Error::InvalidArgument(format!("{key} must be seconds, got {value:?}")))?;
    let allowed = if positive {
        "more than 0 seconds"
    } else {
        "0 seconds or more"
    };
    if !secs.is_finite() {
        return Err(out_of_range(
            key,
            &format!("finite, {allowed}"),
            value.trim(),
        ));
    }
    if secs < 0.0 || (positive && secs == 0.0) {
        return Err(out_of_range(key, allowed, value.trim()));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| {
        Error::InvalidArgument(format!(
            "{key} of {value} seconds is more than a Duration holds"
        ))
    })
}

/// Every key `ssl_options` takes.
const SSL_KEYS: [&str; 14] = [
    "ca_certs",
    "cafile",
    "ca_path",
    "capath",
    "ca_data",
    "cadata",
    "certfile",
    "keyfile",
    "password",
    "server_hostname",
    "protocol",
    "ciphers",
    "verify_certificate",
    "verify_hostname",
];

/// `ssl_options` from pika's dict; no error holds a value (the password is one).
fn ssl_options_from_dict(dict: Vec<(String, Value)>) -> Result<SslOptions> {
    let key_error =
        |key: &str, what: &str| Error::InvalidArgument(format!("ssl_options key {key:?} {what}"));
    // As in a Python dict, a key given twice keeps its last value; `None` is "not given".
    let mut given: Vec<(String, Value)> = Vec::new();
    for (key, value) in dict {
        if !SSL_KEYS.contains(&key.as_str()) {
            return Err(key_error(
                &key,
                &format!("is unknown (known keys: {})", SSL_KEYS.join(", ")),
            ));
        }
        if key == "ciphers" {
            return Err(key_error(
                &key,
                "is not supported: native-tls has no way to choose cipher suites, so the TLS \
                 library's defaults are used; remove the key",
            ));
        }
        given.retain(|(k, _)| *k != key);
        given.push((key, value));
    }
    let get = |key: &str| {
        given
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
            .filter(|v| **v != Value::None)
    };
    let text = |key: &str| match get(key) {
        None => Ok(None),
        Some(value) => value
            .as_text()
            .map(Some)
            .ok_or_else(|| key_error(key, "must be a string")),
    };
    // pika's `opts.get(first) or opts.get(second)`: an empty string counts as not given.
    let either = |first: &str, second: &str| -> Result<Option<String>> {
        let first = text(first)?.filter(|s| !s.is_empty());
        let second = text(second)?.filter(|s| !s.is_empty());
        Ok(first.or(second))
    };
    let mut options = SslOptions::new();
    if let Some(file) = either("ca_certs", "cafile")? {
        options = options.with_ca_file(file)?;
    }
    if let Some(dir) = either("ca_path", "capath")? {
        options = options.with_ca_path(dir)?;
    }
    if let Some(pem) = either("ca_data", "cadata")? {
        if !pem.contains("-----BEGIN CERTIFICATE-----") {
            let which = if get("ca_data").is_some() {
                "ca_data"
            } else {
                "cadata"
            };
            return Err(key_error(
                which,
                "must hold PEM certificates (-----BEGIN CERTIFICATE-----)",
            ));
        }
        options = options.with_ca_certificate_pem(pem);
    }
    if let Some(password) = text("password")? {
        options = options.with_client_key_password(password);
    }
    if let Some(name) = text("server_hostname")? {
        options = options.with_server_hostname(name);
    }
    if let Some(protocol) = get("protocol") {
        if let Some(version) = tls_protocol(protocol)? {
            options = options
                .with_min_tls_version(version)
                .with_max_tls_version(version);
        }
    }
    for key in ["verify_certificate", "verify_hostname"] {
        if let Some(value) = get(key) {
            let verify = value
                .as_bool()
                .ok_or_else(|| key_error(key, "must be True or False"))?;
            options = if key == "verify_certificate" {
                options.with_verify_certificate(verify)
            } else {
                options.with_verify_hostname(verify)
            };
        }
    }
    match (text("certfile")?, text("keyfile")?) {
        (Some(cert), Some(key)) => options.with_client_certificate_files(cert, key),
        // As Python's `load_cert_chain(certfile)`: the key is in the certificate's own file.
        (Some(cert), None) => options.with_client_certificate_files(&cert, &cert),
        (None, None) => Ok(options),
        (None, Some(_)) => Err(Error::InvalidArgument(
            "ssl_options keyfile needs a certfile (the client certificate)".into(),
        )),
    }
}

/// The TLS version Python's `ssl.PROTOCOL_*` constant pins (`None`: the library's range), from
/// its value (what pika's `literal_eval` hands over) or its name.
fn tls_protocol(value: &Value) -> Result<Option<TlsVersion>> {
    let name = match value {
        Value::Int(n) => match n {
            0 => "PROTOCOL_SSLv2",
            1 => "PROTOCOL_SSLv3",
            2 => "PROTOCOL_TLS",
            3 => "PROTOCOL_TLSv1",
            4 => "PROTOCOL_TLSv1_1",
            5 => "PROTOCOL_TLSv1_2",
            16 => "PROTOCOL_TLS_CLIENT",
            17 => "PROTOCOL_TLS_SERVER",
            _ => "",
        },
        Value::Text(name) => name.strip_prefix("ssl.").unwrap_or(name),
        _ => "",
    };
    let refuse = |why: &str| {
        Err(Error::InvalidArgument(format!(
            "ssl_options key \"protocol\" ({name}) {why}"
        )))
    };
    match name {
        "PROTOCOL_TLS_CLIENT" | "PROTOCOL_TLS" | "PROTOCOL_SSLv23" => Ok(None),
        "PROTOCOL_TLSv1_2" => Ok(Some(TlsVersion::Tls12)),
        "PROTOCOL_SSLv2" | "PROTOCOL_SSLv3" | "PROTOCOL_TLSv1" | "PROTOCOL_TLSv1_1" => refuse(
            "is not supported: SSL, TLS 1.0 and TLS 1.1 are insecure (RFC 8996); use \
             PROTOCOL_TLS_CLIENT (16) or PROTOCOL_TLSv1_2 (5)",
        ),
        "PROTOCOL_TLS_SERVER" => refuse("is for servers; use PROTOCOL_TLS_CLIENT (16)"),
        _ => Err(Error::InvalidArgument(
            "ssl_options key \"protocol\" must be Python's ssl.PROTOCOL_TLS_CLIENT (16), \
             PROTOCOL_TLS (2) or PROTOCOL_TLSv1_2 (5), as its value or its name"
                .into(),
        )),
    }
}

fn tcp_options_from_dict(dict: Vec<(String, Value)>) -> Result<TcpOptions> {
    let mut options = TcpOptions::default();
    for (key, value) in dict {
        let n = value
            .as_u64()
            .ok_or_else(|| bad_option("tcp_options", &key, "a whole number from 0"))?;
        match key.as_str() {
            // The kernel takes these as a C int of seconds, and TCP_USER_TIMEOUT as an unsigned
            // int of milliseconds: larger values would be clamped, so they are refused.
            "TCP_KEEPIDLE" | "TCP_KEEPINTVL" if n > i32::MAX as u64 => {
                return Err(out_of_range(
                    &format!("tcp_options {key}"),
                    "at most 2147483647 (seconds)",
                    n,
                ))
            }
            "TCP_USER_TIMEOUT" if n > u64::from(u32::MAX) => {
                return Err(out_of_range(
                    "tcp_options TCP_USER_TIMEOUT",
                    "at most 4294967295 (milliseconds)",
                    n,
                ))
            }
            "TCP_KEEPIDLE" => options.keepalive_idle = Some(Duration::from_secs(n)),
            "TCP_KEEPINTVL" => options.keepalive_interval = Some(Duration::from_secs(n)),
            "TCP_KEEPCNT" => {
                options.keepalive_count = Some(u32::try_from(n).map_err(|_| {
                    out_of_range("tcp_options TCP_KEEPCNT", "at most 4294967295", n)
                })?)
            }
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

#[cfg(test)]
#[path = "url_tests.rs"]
mod tests;
