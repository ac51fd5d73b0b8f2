//! The URL rules, each against what pika 1.3 (`pika.URLParameters`, Python's `urlparse` and
//! `parse_qs`) gives for the same URL.

use crate::protocol::table::FieldValue;

use super::*;

fn parse(url: &str) -> ConnectionParameters {
    ConnectionParameters::from_url(url).unwrap_or_else(|e| panic!("{url}: {e:?}"))
}

/// The message of the `Error::InvalidArgument` `url` gives.
fn refused(url: &str) -> String {
    match ConnectionParameters::from_url(url) {
        Err(Error::InvalidArgument(message)) => message,
        other => panic!("{url}: expected Error::InvalidArgument, got {other:?}"),
    }
}

/// `text` percent-encoded for a query value.
fn encoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn with_ssl(scheme: &str, dict: &str) -> String {
    format!("{scheme}://h/?ssl_options={}", encoded(dict))
}

#[test]
fn vhost_is_the_first_path_segment_as_pika_reads_it() {
    // Each pair checked against pika.URLParameters(url).virtual_host.
    for (url, vhost) in [
        ("amqp://host", "/"),
        ("amqp://host/", "/"),
        ("amqp://host/%2F", "/"),
        ("amqp://host/%2f", "/"),
        ("amqp://host/foo", "foo"),
        ("amqp://host/foo/bar", "foo"),
        ("amqp://host//", ""),
        ("amqp://host///x", ""),
        ("amqp://host/a+b", "a+b"),
        ("amqp://host/a%20b", "a b"),
        ("amqp://host/%2Fx%2Fy", "/x/y"),
        ("amqp://host/%zz", "%zz"),
        ("amqp://host/%", "%"),
        ("amqp://host/%4", "%4"),
        ("amqp://host/%C3%A9", "é"),
        ("amqp://host/%e2%82%ac", "€"),
        ("amqp://host/%ff", "\u{fffd}"),
        ("amqp://host/%e2%82", "\u{fffd}"),
        ("amqp://host/%E2%82x", "\u{fffd}x"),
        ("amqp://host/v#frag", "v"),
        ("amqp://host/v;x", "v"),
        ("amqp://host/a;b/c", "a;b"),
        ("amqp://host/;x?heartbeat=5", "/"),
        ("amqp://host?heartbeat=5", "/"),
        ("amqp:///vh", "vh"),
    ] {
        assert_eq!(parse(url).virtual_host(), vhost, "{url}");
    }
}

#[test]
fn host_port_and_credentials_as_pika_reads_them() {
    let guest = || PlainCredentials::new("guest", "guest").into();
    let plain = |u: &str, p: &str| -> Credentials { PlainCredentials::new(u, p).into() };
    for (url, host, port, credentials) in [
        ("amqp://HOST.Example/", "host.example", 5672, guest()),
        ("amqp://host:", "host", 5672, guest()),
        ("amqp://host:05672/", "host", 5672, guest()),
        ("amqps://host", "host", 5671, guest()),
        ("amqps://host:5672", "host", 5672, guest()),
        ("AMQP://host", "host", 5672, guest()),
        ("amqp://", "localhost", 5672, guest()),
        ("amqp://[::1]:5673/", "::1", 5673, guest()),
        ("amqp://[FE80::1%25Eth0]:5/", "fe80::1%25Eth0", 5, guest()),
        ("amqp://ho\tst/v", "host", 5672, guest()),
        ("amqp://user:@host", "host", 5672, plain("user", "")),
        ("amqp://:pw@host", "host", 5672, plain("", "pw")),
        ("amqp://u%40x:p%3A@host", "host", 5672, plain("u@x", "p:")),
        ("amqp://u+x:p+y@host", "host", 5672, plain("u+x", "p+y")),
        ("amqp://a:b@c@host/", "host", 5672, plain("a", "b@c")),
    ] {
        let p = parse(url);
        assert_eq!(
            (p.host(), p.port(), p.credentials()),
            (host, port, &credentials),
            "{url}"
        );
    }
}

#[test]
fn malformed_urls_are_errors_that_do_not_echo_the_password() {
    for (url, says) in [
        ("amqp://host:99999", "port must be from 1 to 65535"),
        ("amqp://host:65536", "port must be from 1 to 65535"),
        ("amqp://host:0/", "port must be from 1 to 65535, got 0"),
        ("amqp://host:x", "port is not a number"),
        ("amqp://host: 5/", "port is not a number"),
        ("amqp://[::1/", "unbalanced brackets"),
        ("amqp://[127.0.0.1]/", "not an IPv6 address"),
        ("http://host", "unexpected URL scheme \"http\""),
        ("amqpx://host", "unexpected URL scheme \"amqpx\""),
        ("host:5672", "must start with amqp://"),
        ("amqp:host", "must start with amqp://"),
        ("amqp://user@host", "user name but no password"),
        ("amqp://a@b@host/", "user name but no password"),
    ] {
        let message = refused(url);
        assert!(message.contains(says), "{url}: {message}");
    }
    // An unencoded `/` in a password ends the host part: the rest is not echoed as a port.
    let message = refused("amqp://user:s3cr/et@host/");
    assert!(!message.contains("s3cr"), "{message}");
}

#[test]
fn a_repeated_query_option_is_an_error_naming_it() {
    assert_eq!(
        refused("amqp://h/?heartbeat=5&heartbeat=10"),
        "URL option \"heartbeat\" is given 2 times; give it once"
    );
    // Names are compared once decoded, as parse_qs decodes them.
    assert!(refused("amqp://h/?heartbeat=5&heart%62eat=6").contains("\"heartbeat\""));
    assert!(refused("amqp://h/?locale=a&frame_max=8192&locale=b").contains("\"locale\""));
    // An empty value is dropped before counting (pika accepts this one).
    assert_eq!(
        parse("amqp://h/?heartbeat=5&heartbeat=").heartbeat(),
        Some(5)
    );
}

#[test]
fn the_query_is_read_as_parse_qs_reads_it() {
    // Empty values and names without `=` are ignored, unknown ones included (as in pika).
    for url in [
        "amqp://h/?heartbeat=",
        "amqp://h/?heartbeat",
        "amqp://h/?bogus=",
        "amqp://h/?&&",
    ] {
        assert_eq!(parse(url), ConnectionParameters::new("h"), "{url}");
    }
    assert_eq!(parse("amqp://h/?&&heartbeat=3&").heartbeat(), Some(3));
    assert_eq!(parse("amqp://h/?locale=a+b%2Bc").locale(), "a b+c");
    // Integers and floats as Python's int() and float() read them.
    for (query, heartbeat) in [
        ("+5", 5),
        ("%205", 5),
        ("%2B5", 5),
        ("5_0", 50),
        ("%205%20", 5),
    ] {
        let url = format!("amqp://h/?heartbeat={query}");
        assert_eq!(parse(&url).heartbeat(), Some(heartbeat), "{url}");
    }
    for bad in ["5__0", "_5", "5_", "0x10", "5.0", "five"] {
        let message = refused(&format!("amqp://h/?heartbeat={bad}"));
        assert!(message.contains("heartbeat"), "{bad}: {message}");
    }
    assert_eq!(
        parse("amqp://h/?socket_timeout=1_0.5").socket_timeout(),
        Duration::from_millis(10_500)
    );
    assert_eq!(
        parse("amqp://h/?socket_timeout=.5").socket_timeout(),
        Duration::from_millis(500)
    );
}

#[test]
fn url_values_outside_pikas_ranges_are_errors_naming_the_option_and_range() {
    for (query, message) in [
        ("heartbeat=-1", "heartbeat must be from 0 to 65535, got -1"),
        ("heartbeat=70000", "heartbeat must be from 0 to 65535, got 70000"),
        ("channel_max=0", "channel_max must be from 1 to 65535, got 0"),
        ("channel_max=65536", "channel_max must be from 1 to 65535, got 65536"),
        ("frame_max=100", "frame_max must be from 8192 to 131072, got 100"),
        ("frame_max=4096", "frame_max must be from 8192 to 131072, got 4096"),
        ("frame_max=131073", "frame_max must be from 8192 to 131072, got 131073"),
        (
            "frame_max=99999999999999999999999999999999999999999999",
            "frame_max must be from 8192 to 131072, got 99999999999999999999999999999999999999999999",
        ),
        ("connection_attempts=0", "connection_attempts must be at least 1, got 0"),
        ("connection_attempts=-3", "connection_attempts must be at least 1, got -3"),
        ("socket_timeout=0", "socket_timeout must be more than 0 seconds, got 0"),
        ("socket_timeout=-1", "socket_timeout must be more than 0 seconds, got -1"),
        ("stack_timeout=0.0", "stack_timeout must be more than 0 seconds, got 0.0"),
        ("retry_delay=-0.5", "retry_delay must be 0 seconds or more, got -0.5"),
        (
            "blocked_connection_timeout=-1",
            "blocked_connection_timeout must be 0 seconds or more, got -1",
        ),
        (
            "socket_timeout=nan",
            "socket_timeout must be finite, more than 0 seconds, got nan",
        ),
        (
            "socket_timeout=inf",
            "socket_timeout must be finite, more than 0 seconds, got inf",
        ),
        (
            "retry_delay=-inf",
            "retry_delay must be finite, 0 seconds or more, got -inf",
        ),
        (
            "socket_timeout=1e20",
            "socket_timeout of 1e20 seconds is more than a Duration holds",
        ),
        ("connection_timeout=0", "connection_timeout must be at least 1 (milliseconds), got 0"),
    ] {
        let url = format!("amqp://h/?{query}");
        assert_eq!(refused(&url), message, "{url}");
    }
    // The bounds are allowed, and 0 where pika allows it.
    let p = parse(
        "amqp://h/?heartbeat=0&channel_max=1&frame_max=8192&retry_delay=0\
         &blocked_connection_timeout=0&connection_attempts=1",
    );
    assert_eq!(
        (
            p.heartbeat(),
            p.channel_max(),
            p.frame_max(),
            p.retry_delay()
        ),
        (Some(0), 1, 8192, Duration::ZERO)
    );
    assert_eq!(p.blocked_connection_timeout(), Some(Duration::ZERO));
    let p = parse("amqp://h/?heartbeat=65535&channel_max=65535&frame_max=131072");
    assert_eq!(
        (p.heartbeat(), p.channel_max(), p.frame_max()),
        (Some(65535), 65535, 131_072)
    );
    assert_eq!(
        parse("amqp://h/?blocked_connection_timeout=None").blocked_connection_timeout(),
        None
    );
}

#[test]
fn a_url_means_what_the_same_builder_calls_mean() {
    assert_eq!(parse("amqp://h"), ConnectionParameters::new("h"));
    assert_eq!(parse("amqp://h/%2f"), ConnectionParameters::new("h"));
    assert_eq!(
        parse("amqps://h"),
        ConnectionParameters::new("h").with_ssl_options(Some(SslOptions::new()))
    );
    assert_eq!(
        parse("amqps://h:5671"),
        ConnectionParameters::new("h")
            .with_port(5671)
            .with_ssl_options(Some(SslOptions::new()))
    );
}

#[test]
fn url_is_percent_decoded() {
    let p = parse("amqp://us%40er:p%3Ass@h.example:5673/my%2fvhost?heartbeat=7&frame_max=10000&channel_max=12&socket_timeout=2.5");
    assert_eq!(
        p.credentials(),
        &PlainCredentials::new("us@er", "p:ss").into()
    );
    assert_eq!(p.host(), "h.example");
    assert_eq!(p.port(), 5673);
    assert_eq!(p.virtual_host(), "my/vhost");
    assert_eq!(p.heartbeat(), Some(7));
    assert_eq!(p.frame_max(), 10_000);
    assert_eq!(p.channel_max(), 12);
    assert_eq!(p.socket_timeout(), Duration::from_millis(2500));
}

#[test]
fn url_unknown_option_is_an_error_naming_it() {
    assert_eq!(
        refused("amqp://localhost/?bogus=1"),
        "unknown URL option \"bogus\""
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
    let p = parse(url);
    assert_eq!(
        (p.host(), p.port(), p.virtual_host()),
        ("broker", 5671, "v")
    );
    assert_eq!(p.heartbeat(), Some(9));
    assert_eq!(p.channel_max(), 7);
    assert_eq!(p.frame_max(), 16_384);
    assert_eq!(p.connection_attempts(), 3);
    assert_eq!(p.retry_delay(), Duration::from_millis(500));
    assert_eq!(p.socket_timeout(), Duration::from_secs(4));
    assert_eq!(p.stack_timeout(), Duration::from_secs(6));
    assert_eq!(
        p.blocked_connection_timeout(),
        Some(Duration::from_secs(30))
    );
    assert_eq!(p.locale(), "de_DE");
    assert_eq!(
        p.client_properties().get("connection_name"),
        Some(&FieldValue::String("worker-1".into()))
    );
    assert_eq!(
        p.tcp_options(),
        &TcpOptions {
            keepalive_idle: Some(Duration::from_secs(60)),
            keepalive_interval: Some(Duration::from_secs(10)),
            keepalive_count: Some(3),
            user_timeout: Some(Duration::from_secs(20)),
        }
    );
    assert_eq!(
        p.ssl_options(),
        Some(
            &SslOptions::new()
                .with_server_hostname("rabbit.example")
                .with_verify_hostname(false)
        )
    );
}

#[test]
fn url_option_values_are_checked() {
    for (bad, says) in [
        ("amqp://h/?retry_delay=soon", "retry_delay"),
        ("amqp://h/?ssl_options=%7B%27bogus%27%3A+1%7D", "\"bogus\""),
        (
            "amqp://h/?ssl_options=%7B%27keyfile%27%3A+%27k.pem%27%7D",
            "keyfile needs a certfile",
        ),
        (
            "amqp://h/?tcp_options=%7B%27TCP_NODELAY%27%3A+1%7D",
            "TCP_NODELAY",
        ),
        (
            "amqp://h/?tcp_options=%7B%27TCP_KEEPCNT%27%3A+4294967296%7D",
            "TCP_KEEPCNT",
        ),
        (
            "amqp://h/?tcp_options=%7B%27TCP_KEEPIDLE%27%3A+2147483648%7D",
            "TCP_KEEPIDLE must be at most 2147483647",
        ),
        (
            "amqp://h/?tcp_options=%7B%27TCP_KEEPINTVL%27%3A+2147483648%7D",
            "TCP_KEEPINTVL must be at most 2147483647",
        ),
        (
            "amqp://h/?tcp_options=%7B%27TCP_USER_TIMEOUT%27%3A+4294967296%7D",
            "TCP_USER_TIMEOUT must be at most 4294967295",
        ),
        (
            "amqp://h/?client_properties=not-a-dict",
            "client_properties",
        ),
        ("amqp://h/?auth_mechanism=amqplain", "auth_mechanism"),
    ] {
        let message = refused(bad);
        assert!(message.contains(says), "{bad}: {message}");
    }
    let p = parse("amqp://h/?auth_mechanism=EXTERNAL");
    assert_eq!(p.credentials(), &ExternalCredentials::new().into());
    // pika's None for the dict options.
    let p = parse("amqp://h/?client_properties=None&tcp_options=None");
    assert_eq!(p, ConnectionParameters::new("h"));
}

#[test]
fn ssl_options_none_is_plain_tcp_and_contradicts_amqps() {
    let p = parse("amqp://h/?ssl_options=None");
    assert!(!p.is_tls());
    assert_eq!(p.port(), 5672);
    assert_eq!(
        refused("amqps://h/?ssl_options=None"),
        "URL option ssl_options=None contradicts the amqps:// scheme"
    );
}

#[test]
fn tls_from_an_amqp_url_query_keeps_port_5672_as_in_pika() {
    let p = parse(&with_ssl("amqp", "{'server_hostname': 'x'}"));
    assert!(p.is_tls());
    assert_eq!(p.port(), 5672);
    let p = parse(&with_ssl("amqps", "{'server_hostname': 'x'}"));
    assert_eq!(p.port(), 5671);
    let p = parse("amqp://h:1234/?ssl_options=%7B%7D");
    assert_eq!((p.port(), p.is_tls()), (1234, true));
}

const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

#[test]
fn ssl_options_ca_data_and_cadata_take_pem_text() {
    for key in ["ca_data", "cadata"] {
        let p = parse(&with_ssl("amqps", &format!("{{'{key}': '{PEM}'}}")));
        assert_eq!(
            p.ssl_options().unwrap().ca_pem,
            vec![PEM.as_bytes().to_vec()]
        );
        let message = refused(&with_ssl("amqps", &format!("{{'{key}': 'not pem'}}")));
        assert_eq!(
            message,
            format!(
                "ssl_options key \"{key}\" must hold PEM certificates (-----BEGIN CERTIFICATE-----)"
            )
        );
    }
    // pika's `opts.get('ca_data') or opts.get('cadata')`: the first wins unless empty.
    let other = PEM.replace("MIIB", "MIIC");
    let p = parse(&with_ssl(
        "amqps",
        &format!("{{'cadata': '{other}', 'ca_data': '{PEM}'}}"),
    ));
    assert_eq!(
        p.ssl_options().unwrap().ca_pem,
        vec![PEM.as_bytes().to_vec()]
    );
    let p = parse(&with_ssl(
        "amqps",
        &format!("{{'ca_data': '', 'cadata': '{other}'}}"),
    ));
    assert_eq!(p.ssl_options().unwrap().ca_pem, vec![other.into_bytes()]);
}

#[test]
fn ssl_options_ca_path_and_capath_load_every_pem_of_the_directory() {
    let dir = std::env::temp_dir().join(format!("cottontail-ca-path-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let second = PEM.replace("MIIB", "MIIC");
    std::fs::write(dir.join("a.pem"), PEM).unwrap();
    std::fs::write(dir.join("b.pem"), &second).unwrap();
    std::fs::write(dir.join("README"), "no certificate here").unwrap();
    for key in ["ca_path", "capath"] {
        let dict = format!("{{'{key}': '{}'}}", dir.display());
        let p = parse(&with_ssl("amqps", &dict));
        assert_eq!(
            p.ssl_options().unwrap().ca_pem,
            vec![PEM.as_bytes().to_vec(), second.as_bytes().to_vec()],
            "{key}"
        );
    }
    let missing = dir.join("missing");
    let url = with_ssl("amqps", &format!("{{'ca_path': '{}'}}", missing.display()));
    assert!(matches!(
        ConnectionParameters::from_url(&url),
        Err(Error::Io { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ssl_options_protocol_maps_pythons_constants_to_tls_versions() {
    let versions = |protocol: &str| {
        let p = parse(&with_ssl("amqps", &format!("{{'protocol': {protocol}}}")));
        let ssl = p.ssl_options().unwrap();
        (ssl.min_tls, ssl.max_tls)
    };
    let pinned = (Some(TlsVersion::Tls12), Some(TlsVersion::Tls12));
    // ssl.PROTOCOL_TLSv1_2 == 5 pins TLS 1.2, as Python's SSLContext(PROTOCOL_TLSv1_2) does.
    assert_eq!(versions("5"), pinned);
    assert_eq!(versions("'PROTOCOL_TLSv1_2'"), pinned);
    assert_eq!(versions("'ssl.PROTOCOL_TLSv1_2'"), pinned);
    // PROTOCOL_TLS_CLIENT (16), PROTOCOL_TLS (2): whatever both sides have.
    for any in [
        "16",
        "2",
        "'PROTOCOL_TLS_CLIENT'",
        "'PROTOCOL_TLS'",
        "'PROTOCOL_SSLv23'",
    ] {
        assert_eq!(versions(any), (None, None), "{any}");
    }
    for (protocol, says) in [
        ("3", "(PROTOCOL_TLSv1) is not supported"),
        ("4", "(PROTOCOL_TLSv1_1) is not supported"),
        ("'PROTOCOL_SSLv3'", "(PROTOCOL_SSLv3) is not supported"),
        ("17", "(PROTOCOL_TLS_SERVER) is for servers"),
        ("99", "must be Python's ssl.PROTOCOL_TLS_CLIENT (16)"),
        ("'TLSv1.2'", "must be Python's ssl.PROTOCOL_TLS_CLIENT (16)"),
    ] {
        let message = refused(&with_ssl("amqps", &format!("{{'protocol': {protocol}}}")));
        assert!(
            message.starts_with("ssl_options key \"protocol\"") && message.contains(says),
            "{protocol}: {message}"
        );
    }
}

#[test]
fn ssl_options_ciphers_is_refused_with_the_reason() {
    let message = refused(&with_ssl("amqps", "{'ciphers': 'ECDHE+AESGCM'}"));
    assert!(
        message.starts_with("ssl_options key \"ciphers\" is not supported")
            && message.contains("native-tls"),
        "{message}"
    );
    // pika hands any value, None included, to set_ciphers; so any value is refused.
    assert!(refused(&with_ssl("amqps", "{'ciphers': None}")).contains("ciphers"));
}

#[test]
fn ssl_options_errors_do_not_echo_the_password() {
    for dict in [
        "{'password': s3cr3t}",
        "{'password': 's3cr3t', 'bogus': 1}",
        "{'password': 's3cr3t', 'keyfile': 'k.pem'}",
        "{'password': 's3cr3t'",
    ] {
        let message = refused(&with_ssl("amqps", dict));
        assert!(!message.contains("s3cr3t"), "{dict}: {message}");
    }
}

#[test]
fn seconds_too_large_for_a_duration_are_an_error_not_a_panic() {
    let err = seconds("socket_timeout", "1e20", true).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidArgument(m) if m.contains("socket_timeout")),
        "{err:?}"
    );
    assert_eq!(
        seconds("socket_timeout", "1.5", true).unwrap(),
        Duration::from_millis(1500)
    );
    // The largest finite float is an error too, and a tiny one is a tiny Duration.
    assert!(seconds("retry_delay", "1.7976931348623157e308", false).is_err());
    assert_eq!(
        seconds("retry_delay", "1e-9", false).unwrap(),
        Duration::from_nanos(1)
    );
}

#[test]
fn amqp_url_has_no_tls_and_amqps_defaults_to_5671() {
    assert!(!parse("amqp://h").is_tls());
    let p = parse("amqps://h");
    assert!(p.is_tls());
    assert_eq!(p.port(), 5671);
    // Verification stays on for amqps:// without ssl_options.
    let ssl = p.ssl_options().unwrap();
    assert!(!ssl.skip_verify && !ssl.skip_hostname);
}

#[test]
fn recovery_is_off_unless_the_url_turns_it_on() {
    assert_eq!(parse("amqp://localhost/").recovery(), None);
    for on in ["true", "1", "on", "yes", "True"] {
        let params = parse(&format!("amqp://localhost/?recovery={on}"));
        assert_eq!(
            params.recovery(),
            Some(&crate::recovery::RecoveryPolicy::default()),
            "{on}"
        );
    }
    assert_eq!(parse("amqp://localhost/?recovery=false").recovery(), None);
    let message = refused("amqp://localhost/?recovery=sometimes");
    assert!(message.contains("recovery"), "{message}");
}
