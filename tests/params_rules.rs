//! pika's connection-parameter rules where they meet the network: the vhost of `amqp://host/`,
//! the TLS port, and out-of-range values refused before any socket is opened.

mod support;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use cottontail::{Connection, ConnectionParameters, Error, SslOptions};
use support::{rabbitmqctl, unique, HOST, PORT};

/// `text` percent-encoded for a URL's query.
fn encoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The vhost the broker shows for the connection named `name`.
fn broker_vhost_of(name: &str) -> String {
    let listing = rabbitmqctl(&["list_connections", "vhost", "client_properties"]);
    let line = listing
        .lines()
        .find(|line| line.contains(name))
        .unwrap_or_else(|| panic!("no connection named {name} on the broker:\n{listing}"));
    line.split('\t').next().unwrap_or_default().to_string()
}

#[test]
fn a_url_without_a_vhost_or_with_a_bare_slash_opens_vhost_slash() {
    support::ensure_broker();
    for path in ["", "/", "/%2F", "/%2f"] {
        let name = unique("vhost-slash");
        let properties = encoded(&format!("{{'connection_name': '{name}'}}"));
        let url = format!("amqp://guest:guest@{HOST}:{PORT}{path}?client_properties={properties}");
        let params = ConnectionParameters::from_url(&url).unwrap();
        assert_eq!(params.virtual_host(), "/", "{url}");
        let connection = Connection::open(params).unwrap_or_else(|e| panic!("{url}: {e:?}"));
        connection.channel().unwrap();
        assert_eq!(broker_vhost_of(&name), "/", "{url}");
        connection.close().unwrap();
    }
    // Without credentials or a query at all, as pika's examples write it.
    Connection::open_url(&format!("amqp://{HOST}/"))
        .unwrap()
        .close()
        .unwrap();
}

/// A listener that records whether anyone connected to it.
struct Witness {
    listener: TcpListener,
}

impl Witness {
    fn new() -> Witness {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        Witness { listener }
    }

    fn params(&self) -> ConnectionParameters {
        let port = self.listener.local_addr().unwrap().port();
        ConnectionParameters::new("127.0.0.1")
            .with_port(port)
            .with_socket_timeout(Duration::from_millis(500))
            .with_stack_timeout(Duration::from_secs(1))
    }

    fn was_connected_to(&self) -> bool {
        match self.listener.accept() {
            Ok(_) => true,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
            Err(e) => panic!("accept: {e}"),
        }
    }
}

fn message_of(err: Error) -> String {
    match err {
        Error::InvalidArgument(message) => message,
        other => panic!("expected Error::InvalidArgument, got {other:?}"),
    }
}

#[test]
fn out_of_range_values_are_refused_before_any_socket_is_opened() {
    let witness = Witness::new();
    let cases = [
        (
            witness.params().with_frame_max(100),
            "frame_max must be from 8192 to 131072, got 100",
        ),
        (
            witness.params().with_channel_max(0),
            "channel_max must be from 1 to 65535, got 0",
        ),
        (
            witness.params().with_connection_attempts(0),
            "connection_attempts must be at least 1, got 0",
        ),
        (
            witness.params().with_socket_timeout(Duration::ZERO),
            "socket_timeout must be more than 0 seconds, got 0",
        ),
        (
            witness
                .params()
                .with_client_properties(cottontail::FieldTable::new().with("k".repeat(256), 1)),
            "client_properties: field table name of 256 bytes (at most 255): kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk...",
        ),
    ];
    for (params, message) in cases {
        let started = Instant::now();
        // A valid first set does not get tried when a later one is invalid.
        let err = Connection::open(vec![witness.params(), params]).unwrap_err();
        assert_eq!(message_of(err), message);
        assert!(started.elapsed() < Duration::from_millis(200));
        assert!(
            !witness.was_connected_to(),
            "{message}: a socket was opened"
        );
    }
    // The same from URLs.
    let port = witness.listener.local_addr().unwrap().port();
    for (query, message) in [
        (
            "frame_max=100",
            "frame_max must be from 8192 to 131072, got 100",
        ),
        (
            "channel_max=0",
            "channel_max must be from 1 to 65535, got 0",
        ),
        (
            "connection_attempts=0",
            "connection_attempts must be at least 1, got 0",
        ),
        (
            "heartbeat=5&heartbeat=10",
            "URL option \"heartbeat\" is given 2 times; give it once",
        ),
    ] {
        let url = format!("amqp://127.0.0.1:{port}/?{query}");
        assert_eq!(message_of(Connection::open_url(&url).unwrap_err()), message);
        assert!(!witness.was_connected_to(), "{url}: a socket was opened");
    }
}

#[test]
fn ssl_options_without_a_port_connect_to_5671() {
    // Stand in for a TLS listener on 5671 to see where the client goes; skip if the port is
    // taken (a real amqps listener there would prove nothing about who connected).
    let listener = match TcpListener::bind("127.0.0.1:5671") {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("skipped: cannot listen on 127.0.0.1:5671 ({e})");
            return;
        }
    };
    let params = ConnectionParameters::new("127.0.0.1")
        .with_ssl_options(Some(SslOptions::new()))
        .with_socket_timeout(Duration::from_millis(500))
        .with_stack_timeout(Duration::from_secs(2));
    assert_eq!(params.port(), 5671);
    listener.set_nonblocking(true).unwrap();
    let server = std::thread::spawn(move || {
        // Accept, then hang up without a TLS handshake.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok((stream, _)) = listener.accept() {
                drop(stream);
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    });
    let err = Connection::open(params).unwrap_err();
    assert!(err.is_connection_error(), "{err:?}");
    assert!(server.join().unwrap(), "nobody connected to 5671");
}

/// A CA file that is a device (or a pipe) is refused at once, not read for ever.
#[test]
fn a_ca_file_that_is_not_a_regular_file_is_refused() {
    let started = Instant::now();
    match SslOptions::new().with_ca_file("/dev/zero") {
        Err(Error::InvalidArgument(why)) => {
            assert!(why.contains("not a regular file"), "{why}")
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}
