//! TLS (amqps) against a private RabbitMQ node with certificates made at test time: custom CA,
//! verification failures, mutual TLS with SASL EXTERNAL, `amqps://` URLs, and a TLS client
//! meeting a plain AMQP port. See `support/tls_broker.rs` for the node; TLS against peers
//! that stall or trickle is in `tests/tls_faults.rs`.

mod support;
#[path = "support/tls_broker.rs"]
mod tls_broker;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use cottontail::{
    BasicConsumeOptions, BasicProperties, Connection, ConnectionParameters, ConsumeOptions,
    Consumed, Error, ExternalCredentials, PlainCredentials, PublishOptions, QueueDeclareOptions,
    SslOptions, TlsVersion,
};
use support::unique;
use tls_broker::{broker, CLIENT_CN, CLIENT_KEY_PASSWORD, TCP_PORT, TLS_PORT};

/// Parameters for the TLS listener on 127.0.0.1, with tight timeouts so a failure is quick.
fn tls_params(ssl: SslOptions) -> ConnectionParameters {
    ConnectionParameters::new("127.0.0.1")
        .with_port(TLS_PORT)
        .with_ssl_options(Some(ssl))
        .with_socket_timeout(Duration::from_secs(5))
        .with_stack_timeout(Duration::from_secs(10))
}

/// Trusts our CA and checks the certificate against `localhost`.
fn trusting_our_ca() -> SslOptions {
    SslOptions::new()
        .with_ca_file(broker().ca_file())
        .expect("reading the CA file")
        .with_server_hostname("localhost")
}

/// Opens a connection that must succeed; on failure, shows the broker's log too.
fn open(params: ConnectionParameters) -> Connection {
    Connection::open(params)
        .unwrap_or_else(|e| panic!("connecting over TLS failed: {e:?}\n{}", broker().log_tail()))
}

fn exclusive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    }
}

fn expect_tls_error(err: Error, what: &str) -> String {
    assert!(err.is_connection_error(), "{what}: {err:?}");
    match err {
        Error::Tls { message } => message,
        other => panic!("{what}: expected Error::Tls, got {other:?}"),
    }
}

/// An `amqps://` URL logging in with EXTERNAL as a connection named `name`, with `ssl_options`
/// (a Python dict) `dict`.
fn external_url(name: &str, dict: &str) -> String {
    format!(
        "amqps://localhost:{TLS_PORT}/%2f?auth_mechanism=external&client_properties={}&ssl_options={}",
        url_encode(&format!("{{'connection_name': '{name}'}}")),
        url_encode(dict)
    )
}

/// The broker's view of the connection named `name`: the columns asked for, in order.
fn broker_connection(name: &str, columns: &[&str]) -> Vec<String> {
    let mut args = vec!["list_connections"];
    args.extend_from_slice(columns);
    args.push("client_properties");
    let listing = broker().rabbitmqctl(&args);
    let line = listing
        .lines()
        .find(|line| line.contains(name))
        .unwrap_or_else(|| panic!("no connection named {name} on the broker:\n{listing}"));
    line.split('\t')
        .take(columns.len())
        .map(str::to_string)
        .collect()
}

/// Percent-encodes everything but RFC 3986's unreserved characters (Python's `quote(s, safe='')`).
fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn publish_and_consume_over_tls_with_a_custom_ca() {
    let connection = open(tls_params(trusting_our_ca()));
    assert!(connection.is_open());
    let channel = connection.channel().unwrap();
    let queue = channel.queue_declare("", exclusive()).unwrap().queue;

    let properties = BasicProperties::default().with_content_type("text/plain");
    channel
        .basic_publish_with(
            "",
            &queue,
            b"hello over TLS",
            &PublishOptions {
                properties: properties.clone(),
                ..Default::default()
            },
        )
        .unwrap();
    let got = channel
        .basic_get(&queue, true)
        .unwrap()
        .expect("the message just published");
    assert_eq!(got.body, b"hello over TLS");
    assert_eq!(got.properties.content_type(), Some("text/plain"));
    assert_eq!(got.method.message_count, 0);

    // 1 MiB: many frames and many TLS records each way, written and read in non-blocking mode.
    let big: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(31) % 251) as u8)
        .collect();
    channel.basic_publish("", &queue, &big).unwrap();
    let got = channel
        .basic_get(&queue, true)
        .unwrap()
        .expect("the 1 MiB message");
    assert_eq!(got.body.len(), big.len());
    assert!(got.body == big, "the 1 MiB body changed on its way");
    assert!(channel.basic_get(&queue, true).unwrap().is_none());
    connection.close().unwrap();

    // Heartbeats over TLS: a consumer idle for 3 heartbeat intervals (the broker drops a
    // connection silent for 2) keeps its connection and still receives.
    let name = unique("tls-heartbeat");
    let connection = open(
        tls_params(trusting_our_ca())
            .with_heartbeat(Some(1))
            .with_connection_name(&name),
    );
    assert_eq!(connection.heartbeat(), 1);
    // The broker agreed to 1 s too, so it would drop a connection that went quiet.
    assert_eq!(broker_connection(&name, &["timeout", "ssl"]), ["1", "true"]);
    let consumer = connection.channel().unwrap();
    let queue = consumer.queue_declare("", exclusive()).unwrap().queue;
    let (got_tx, got_rx) = mpsc::channel();
    consumer
        .basic_consume(
            &queue,
            move |ch, method, _, body| {
                got_tx.send(body.to_vec()).unwrap();
                ch.basic_ack(method.delivery_tag, false)?;
                ch.stop_consuming(None)
            },
            BasicConsumeOptions::default(),
        )
        .unwrap();
    let (done_tx, done_rx) = mpsc::channel();
    let consuming = consumer.clone();
    std::thread::spawn(move || done_tx.send(consuming.start_consuming()).unwrap());
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        connection.is_open(),
        "the idle TLS connection died: {:?}",
        connection.close_reason()
    );
    let publisher = connection.channel().unwrap();
    publisher
        .basic_publish_with(
            "",
            &queue,
            b"after the silence",
            &PublishOptions {
                properties: properties.clone(),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        got_rx.recv_timeout(Duration::from_secs(5)).unwrap(),
        b"after the silence"
    );
    done_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("start_consuming returned")
        .unwrap();
    assert!(connection.is_open(), "{:?}", connection.close_reason());
    connection.close().unwrap();
}

#[test]
fn a_burst_beyond_the_inbound_limit_flows_over_tls() {
    // 20 MiB pushed at once: more than cottontail buffers per channel (16 MiB), so reading
    // pauses with decrypted bytes possibly left inside the TLS stream, and must resume.
    const COUNT: usize = 20;
    const SIZE: usize = 1024 * 1024;
    let body = |n: usize| -> Vec<u8> {
        let mut b: Vec<u8> = (0..SIZE).map(|i| ((i * 7 + n) % 253) as u8).collect();
        b[..8].copy_from_slice(&(n as u64).to_be_bytes());
        b
    };
    let publisher = open(tls_params(trusting_our_ca()));
    let channel = publisher.channel().unwrap();
    let queue = unique("tls-burst");
    channel
        .queue_declare(
            &queue,
            QueueDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
        )
        .unwrap();
    let consumer = open(tls_params(trusting_our_ca()));
    let consuming = consumer.channel().unwrap();
    for n in 0..COUNT {
        channel.basic_publish("", &queue, &body(n)).unwrap();
    }
    let options = ConsumeOptions {
        auto_ack: true,
        inactivity_timeout: Some(Duration::from_secs(10)),
        ..Default::default()
    };
    let mut messages = consuming.consume(&queue, options).unwrap();
    // Let the broker push more than the limit before anything is taken out.
    std::thread::sleep(Duration::from_secs(1));
    for n in 0..COUNT {
        match messages.next().expect("the iterator ended early").unwrap() {
            Consumed::Delivery(d) => {
                assert_eq!(d.body.len(), SIZE, "message {n}");
                assert!(d.body == body(n), "message {n} is not the one sent {n}th");
            }
            _ => panic!("message {n} of {COUNT} never came"),
        }
    }
    messages.cancel().unwrap();
    assert!(consumer.is_open(), "{:?}", consumer.close_reason());
    consumer.close().unwrap();
    publisher.close().unwrap();
}

#[test]
fn wrong_ca_is_a_tls_error() {
    broker();
    let started = Instant::now();
    let unrelated = SslOptions::new()
        .with_ca_file(broker().other_ca_file())
        .unwrap()
        .with_server_hostname("localhost");
    let err = Connection::open(tls_params(unrelated)).unwrap_err();
    let message = expect_tls_error(err, "trusting only an unrelated CA");
    assert!(
        message.contains("certificate verify failed"),
        "unexpected message: {message}"
    );
    // The system's roots do not know our CA either.
    let err = Connection::open(tls_params(
        SslOptions::new().with_server_hostname("localhost"),
    ))
    .unwrap_err();
    let message = expect_tls_error(err, "trusting only the system's roots");
    assert!(
        message.contains("certificate verify failed"),
        "unexpected message: {message}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn verify_certificate_false_accepts_an_untrusted_broker() {
    let anything = SslOptions::new()
        .with_ca_file(broker().other_ca_file())
        .unwrap()
        .with_server_hostname("wrong.example")
        .with_verify_certificate(false);
    let connection = open(tls_params(anything));
    connection
        .channel()
        .unwrap()
        .queue_declare("", exclusive())
        .unwrap();
    connection.close().unwrap();
}

#[test]
fn hostname_mismatch_is_an_error_unless_verification_is_off() {
    let err = Connection::open(tls_params(
        trusting_our_ca().with_server_hostname("wrong.example"),
    ))
    .unwrap_err();
    let message = expect_tls_error(err, "a certificate for another name");
    assert!(
        message.contains("certificate verify failed") && message.contains("mismatch"),
        "unexpected message: {message}"
    );

    let connection = open(tls_params(
        trusting_our_ca()
            .with_server_hostname("wrong.example")
            .with_verify_hostname(false),
    ));
    connection
        .channel()
        .unwrap()
        .queue_declare("", exclusive())
        .unwrap();
    connection.close().unwrap();

    // verify_hostname(false) still checks the chain.
    let unrelated = SslOptions::new()
        .with_ca_file(broker().other_ca_file())
        .unwrap()
        .with_verify_hostname(false);
    let err = Connection::open(tls_params(unrelated)).unwrap_err();
    expect_tls_error(err, "verify_hostname(false) with an unrelated CA");

    // Without server_hostname the host is checked: 127.0.0.1 is in the certificate's SAN.
    let by_address = SslOptions::new().with_ca_file(broker().ca_file()).unwrap();
    open(tls_params(by_address)).close().unwrap();
}

#[test]
fn mutual_tls_with_external_auth() {
    let b = broker();
    let with_certificate = || {
        trusting_our_ca()
            .with_client_certificate_files(b.client_cert_file(), b.client_key_file())
            .unwrap()
    };
    let name = unique("external");
    let connection = open(
        tls_params(with_certificate())
            .with_credentials(ExternalCredentials::new())
            .with_connection_name(&name),
    );
    let channel = connection.channel().unwrap();
    let queue = unique("external-queue");
    let ok = channel.queue_declare(&queue, exclusive()).unwrap();
    assert_eq!(ok.queue, queue);
    let seen = broker_connection(
        &name,
        &["user", "auth_mechanism", "ssl", "peer_cert_subject"],
    );
    assert_eq!(seen[0], CLIENT_CN, "{seen:?}");
    assert_eq!(seen[1], "EXTERNAL", "{seen:?}");
    assert_eq!(seen[2], "true", "{seen:?}");
    assert!(seen[3].contains(&format!("CN={CLIENT_CN}")), "{seen:?}");
    connection.close().unwrap();

    // A client certificate does not force EXTERNAL: PLAIN still logs in as guest.
    let name = unique("mutual-plain");
    let connection = open(
        tls_params(with_certificate())
            .with_credentials(PlainCredentials::new("guest", "guest"))
            .with_connection_name(&name),
    );
    let seen = broker_connection(&name, &["user", "auth_mechanism", "peer_cert_subject"]);
    assert_eq!(seen[0], "guest", "{seen:?}");
    assert_eq!(seen[1], "PLAIN", "{seen:?}");
    assert!(seen[2].contains(&format!("CN={CLIENT_CN}")), "{seen:?}");
    connection.close().unwrap();
}

#[test]
fn pkcs1_and_encrypted_client_keys_work_as_in_pika() {
    // pika hands certfile/keyfile/password to Python's load_cert_chain, which reads PKCS#1 and
    // encrypted keys; native-tls alone takes unencrypted PKCS#8 only.
    let b = broker();
    let external_login = |ssl: SslOptions, what: &str| {
        let name = unique("key-forms");
        let connection = Connection::open(
            tls_params(ssl)
                .with_credentials(ExternalCredentials::new())
                .with_connection_name(&name),
        )
        .unwrap_or_else(|e| panic!("{what}: {e:?}\n{}", b.log_tail()));
        let seen = broker_connection(&name, &["user", "auth_mechanism", "ssl"]);
        assert_eq!(seen, [CLIENT_CN, "EXTERNAL", "true"], "{what}");
        connection.close().unwrap();
    };
    let pkcs1 = std::fs::read_to_string(b.client_pkcs1_key_file()).unwrap();
    assert!(pkcs1.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    external_login(
        trusting_our_ca()
            .with_client_certificate_files(b.client_cert_file(), b.client_pkcs1_key_file())
            .unwrap(),
        "PKCS#1 key",
    );
    let encrypted = || {
        trusting_our_ca()
            .with_client_certificate_files(b.client_cert_file(), b.client_encrypted_key_file())
            .unwrap()
    };
    external_login(
        encrypted().with_client_key_password(CLIENT_KEY_PASSWORD),
        "encrypted PKCS#8 key with its password",
    );

    // From a URL, as pika's ssl_options dict.
    let name = unique("url-key-password");
    let dict = format!(
        "{{'cafile': '{}', 'certfile': '{}', 'keyfile': '{}', 'password': '{CLIENT_KEY_PASSWORD}'}}",
        b.ca_file().display(),
        b.client_cert_file().display(),
        b.client_encrypted_key_file().display()
    );
    let url = external_url(&name, &dict);
    let connection =
        Connection::open_url(&url).unwrap_or_else(|e| panic!("{e:?}\n{}", b.log_tail()));
    let seen = broker_connection(&name, &["user", "auth_mechanism"]);
    assert_eq!(seen, [CLIENT_CN, "EXTERNAL"]);
    connection.close().unwrap();

    // Without the password, or with a wrong one: a TLS error naming it, at once (no prompt),
    // and the password is in no error or Debug text.
    let started = Instant::now();
    let missing = Connection::open(tls_params(encrypted())).unwrap_err();
    let message = expect_tls_error(missing, "encrypted key without a password");
    assert!(message.contains("no password was given"), "{message}");
    let wrong =
        Connection::open(tls_params(encrypted().with_client_key_password("guess"))).unwrap_err();
    let message = expect_tls_error(wrong, "encrypted key with a wrong password");
    assert!(message.contains("wrong password"), "{message}");
    assert!(!message.contains("guess"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let debug = format!(
        "{:?}",
        tls_params(encrypted().with_client_key_password(CLIENT_KEY_PASSWORD))
    );
    assert!(!debug.contains(CLIENT_KEY_PASSWORD), "{debug}");
    assert!(debug.contains("<redacted>"), "{debug}");
}

/// pika's `ssl_options={'certfile': 'client.pem'}` with the key in the same file (Python's
/// `load_cert_chain(certfile)` reads both from it): the client logs in with EXTERNAL, as with
/// separate files.
#[test]
fn a_certfile_holding_the_key_too_needs_no_keyfile() {
    let b = broker();
    let combined = b.dir().join(format!("{}.pem", unique("combined")));
    let mut pem = std::fs::read(b.client_cert_file()).unwrap();
    pem.extend(std::fs::read(b.client_pkcs1_key_file()).unwrap());
    std::fs::write(&combined, &pem).unwrap();
    let name = unique("certfile-alone");
    let dict = format!(
        "{{'cafile': '{}', 'certfile': '{}'}}",
        b.ca_file().display(),
        combined.display()
    );
    let connection = Connection::open_url(&external_url(&name, &dict))
        .unwrap_or_else(|e| panic!("{e:?}\n{}", b.log_tail()));
    let seen = broker_connection(&name, &["user", "auth_mechanism"]);
    assert_eq!(seen, [CLIENT_CN, "EXTERNAL"]);
    connection.close().unwrap();
    // A certfile without a key, and no keyfile: a TLS error naming the key, not a login
    // without a certificate.
    let name = unique("certfile-without-key");
    let dict = format!(
        "{{'cafile': '{}', 'certfile': '{}'}}",
        b.ca_file().display(),
        b.client_cert_file().display()
    );
    let err = Connection::open_url(&external_url(&name, &dict)).unwrap_err();
    let message = expect_tls_error(err, "certfile without a key");
    assert!(message.contains("client key"), "{message}");
    std::fs::remove_file(&combined).unwrap();
}

#[test]
fn a_ca_directory_is_trusted_as_pika_capath() {
    let b = broker();
    // A directory as c_rehash leaves it: the CA's file, a hash-named link to it, and a file
    // that holds no certificate.
    let dir = b.dir().join(unique("capath"));
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(b.ca_file(), dir.join("our-ca.pem")).unwrap();
    std::os::unix::fs::symlink(dir.join("our-ca.pem"), dir.join("1a2b3c4d.0")).unwrap();
    std::fs::write(dir.join("README"), "not a certificate\n").unwrap();
    let by_builder = SslOptions::new().with_ca_path(&dir).unwrap();
    open(tls_params(by_builder)).close().unwrap();

    for key in ["capath", "ca_path"] {
        let dict = format!("{{'{key}': '{}'}}", dir.display());
        let url = format!(
            "amqps://guest:guest@localhost:{TLS_PORT}/%2f?ssl_options={}",
            url_encode(&dict)
        );
        Connection::open_url(&url)
            .unwrap_or_else(|e| panic!("{url}: {e:?}\n{}", b.log_tail()))
            .close()
            .unwrap();
    }

    // A directory with only an unrelated CA verifies nothing of ours.
    let other = b.dir().join(unique("capath-other"));
    std::fs::create_dir(&other).unwrap();
    std::fs::copy(b.other_ca_file(), other.join("other.pem")).unwrap();
    let err =
        Connection::open(tls_params(SslOptions::new().with_ca_path(&other).unwrap())).unwrap_err();
    let message = expect_tls_error(err, "a CA directory with an unrelated CA");
    assert!(message.contains("certificate verify failed"), "{message}");

    // No certificate at all, or no directory: an error before connecting.
    let empty = b.dir().join(unique("capath-empty"));
    std::fs::create_dir(&empty).unwrap();
    std::fs::write(empty.join("README"), "nothing here\n").unwrap();
    match SslOptions::new().with_ca_path(&empty) {
        Err(Error::InvalidArgument(message)) => {
            assert!(message.contains("no PEM certificate"), "{message}")
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    match SslOptions::new().with_ca_path(b.dir().join("no-such-directory")) {
        Err(Error::Io { .. }) => {}
        other => panic!("expected an I/O error, got {other:?}"),
    }
}

#[test]
fn ca_data_from_a_url_is_trusted_as_pika_cadata() {
    let b = broker();
    let pem = std::fs::read_to_string(b.ca_file()).unwrap();
    // As a Python literal: the PEM's newlines escaped.
    let literal = pem.replace('\n', "\\n");
    for key in ["ca_data", "cadata"] {
        let dict = format!("{{'{key}': '{literal}', 'server_hostname': 'localhost'}}");
        let url = format!(
            "amqps://guest:guest@127.0.0.1:{TLS_PORT}/%2f?ssl_options={}",
            url_encode(&dict)
        );
        Connection::open_url(&url)
            .unwrap_or_else(|e| panic!("{key}: {e:?}\n{}", b.log_tail()))
            .close()
            .unwrap();
    }
    // An unrelated CA as ca_data verifies nothing of ours.
    let other = std::fs::read_to_string(b.other_ca_file()).unwrap();
    let dict = format!("{{'ca_data': '{}'}}", other.replace('\n', "\\n"));
    let url = format!(
        "amqps://guest:guest@localhost:{TLS_PORT}/%2f?ssl_options={}",
        url_encode(&dict)
    );
    expect_tls_error(
        Connection::open_url(&url).unwrap_err(),
        "ca_data with an unrelated CA",
    );
}

#[test]
fn tls_versions_reach_the_handshake() {
    let b = broker();
    let version_seen = |params: ConnectionParameters| {
        let name = unique("tls-version");
        let connection = open(params.with_connection_name(&name));
        let seen = broker_connection(&name, &["ssl_protocol"]);
        connection.close().unwrap();
        seen[0].clone()
    };
    // pika's 'protocol': ssl.PROTOCOL_TLSv1_2 (5) pins TLS 1.2.
    let dict = format!("{{'cafile': '{}', 'protocol': 5}}", b.ca_file().display());
    let url = format!(
        "amqps://guest:guest@localhost:{TLS_PORT}/%2f?ssl_options={}",
        url_encode(&dict)
    );
    let params = ConnectionParameters::from_url(&url).unwrap();
    assert_eq!(version_seen(params), "tlsv1.2");
    let pinned = trusting_our_ca()
        .with_min_tls_version(TlsVersion::Tls12)
        .with_max_tls_version(TlsVersion::Tls12);
    assert_eq!(version_seen(tls_params(pinned)), "tlsv1.2");
    // PROTOCOL_TLS_CLIENT (16) and the defaults take the newest both sides have; a minimum
    // of TLS 1.3 gets it or fails, never less.
    let dict = format!("{{'cafile': '{}', 'protocol': 16}}", b.ca_file().display());
    let url = format!(
        "amqps://guest:guest@localhost:{TLS_PORT}/%2f?ssl_options={}",
        url_encode(&dict)
    );
    let newest = version_seen(tls_params(trusting_our_ca()));
    eprintln!("the broker's newest TLS version: {newest}");
    assert_eq!(
        version_seen(ConnectionParameters::from_url(&url).unwrap()),
        newest
    );
    let at_least_13 = tls_params(trusting_our_ca().with_min_tls_version(TlsVersion::Tls13));
    if newest == "tlsv1.3" {
        assert_eq!(version_seen(at_least_13), "tlsv1.3");
    } else {
        expect_tls_error(
            Connection::open(at_least_13).unwrap_err(),
            "TLS 1.3 against a broker without it",
        );
    }
}

#[test]
fn external_auth_without_a_client_certificate_is_refused() {
    broker();
    let started = Instant::now();
    let err = Connection::open(
        tls_params(trusting_our_ca()).with_credentials(ExternalCredentials::new()),
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::AuthenticationFailed { .. }),
        "EXTERNAL without a certificate: {err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn amqps_url_with_ssl_options() {
    let b = broker();
    let ca = b.ca_file();
    let dict = format!("{{'cafile': '{}'}}", ca.display());
    let url = format!(
        "amqps://guest:guest@localhost:{TLS_PORT}/%2f?heartbeat=5&ssl_options={}",
        url_encode(&dict)
    );
    let connection =
        Connection::open_url(&url).unwrap_or_else(|e| panic!("{url}: {e:?}\n{}", b.log_tail()));
    assert_eq!(connection.heartbeat(), 5);
    let channel = connection.channel().unwrap();
    let queue = channel.queue_declare("", exclusive()).unwrap().queue;
    channel.basic_publish("", &queue, b"via amqps url").unwrap();
    let got = channel.basic_get(&queue, true).unwrap().unwrap();
    assert_eq!(got.body, b"via amqps url");
    connection.close().unwrap();

    // The same with a client certificate and EXTERNAL, all from the URL.
    let name = unique("url-external");
    let dict = format!(
        "{{'cafile': '{}', 'certfile': '{}', 'keyfile': '{}'}}",
        ca.display(),
        b.client_cert_file().display(),
        b.client_key_file().display()
    );
    let url = external_url(&name, &dict);
    let connection =
        Connection::open_url(&url).unwrap_or_else(|e| panic!("{url}: {e:?}\n{}", b.log_tail()));
    connection
        .channel()
        .unwrap()
        .queue_declare("", exclusive())
        .unwrap();
    let seen = broker_connection(&name, &["user", "auth_mechanism"]);
    assert_eq!(seen, vec![CLIENT_CN.to_string(), "EXTERNAL".to_string()]);
    connection.close().unwrap();

    // A URL's ssl_options are checked too: an unrelated CA fails the same way.
    let dict = format!("{{'cafile': '{}'}}", b.other_ca_file().display());
    let url = format!(
        "amqps://guest:guest@localhost:{TLS_PORT}/%2f?ssl_options={}",
        url_encode(&dict)
    );
    let err = Connection::open_url(&url).unwrap_err();
    expect_tls_error(err, "URL with an unrelated CA");
}

#[test]
fn plain_port_rejects_tls_gracefully() {
    broker();
    let timeout = Duration::from_secs(3);
    let started = Instant::now();
    let err = Connection::open(
        tls_params(trusting_our_ca())
            .with_port(TCP_PORT)
            .with_socket_timeout(timeout),
    )
    .unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        matches!(
            err,
            Error::Tls { .. } | Error::Io { .. } | Error::StreamLost { .. }
        ),
        "TLS to a plain AMQP port: {err:?}"
    );
    assert!(elapsed < timeout, "took {elapsed:?}: {err:?}");
}

#[test]
fn plain_amqp_to_the_tls_port_fails_fast() {
    broker();
    let timeout = Duration::from_secs(3);
    let started = Instant::now();
    let err = Connection::open(
        ConnectionParameters::new("127.0.0.1")
            .with_port(TLS_PORT)
            .with_socket_timeout(timeout)
            .with_stack_timeout(Duration::from_secs(10)),
    )
    .unwrap_err();
    let elapsed = started.elapsed();
    assert!(err.is_connection_error(), "{err:?}");
    assert!(
        !matches!(err, Error::Timeout { .. }),
        "plain AMQP to a TLS port: {err:?}"
    );
    assert!(elapsed < timeout, "took {elapsed:?}: {err:?}");
}
