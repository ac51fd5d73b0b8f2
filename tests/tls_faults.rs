//! TLS against fake peers on 127.0.0.1 that misbehave while the client opens: silent after the
//! ClientHello, or trickling one byte at a time a TLS record that announces 16 KiB, during the
//! TLS handshake or (after a real TLS handshake with a self-signed certificate) during the AMQP
//! handshake. `socket_timeout` bounds each wait and `stack_timeout` the whole of `open()`,
//! however the bytes arrive. And once open, a peer that never stops sending cannot hold
//! `close()` past its `rpc_timeout`. No broker needed; the TLS tests against RabbitMQ are in
//! `tests/tls.rs`.
#![cfg(all(
    feature = "tls",
    not(any(target_os = "windows", target_vendor = "apple"))
))]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use amq_protocol::frame::{parse_frame, AMQPFrame};
use amq_protocol::protocol::{connection, AMQPClass};
use cottontail::{Connection, ConnectionParameters, Error, SslOptions};

#[path = "support/fake_broker.rs"]
mod fake_broker;
use fake_broker::Peer;

/// The gap between two trickled bytes: well inside every `socket_timeout` below.
const TRICKLE_GAP: Duration = Duration::from_millis(250);
/// How long a fake peer keeps trickling (or waits for the client) at most, so that a client
/// that never gives up fails its test instead of keeping a thread busy for ever.
const PEER_PATIENCE: Duration = Duration::from_secs(60);
/// How long a test waits for `open()` to return before failing: far more than any bound below.
const OPEN_LIMIT: Duration = Duration::from_secs(15);

/// A TLS record header announcing a 16 KiB record: the client's OpenSSL reads all of it
/// before it looks at any.
fn record_header(content_type: u8) -> [u8; 5] {
    [content_type, 0x03, 0x03, 0x40, 0x00]
}
const HANDSHAKE: u8 = 0x16;
const APPLICATION_DATA: u8 = 0x17;

/// Parameters for a TLS connection to a fake peer on `port` (its certificate is not checked).
fn params(port: u16, socket_timeout: Duration, stack_timeout: Duration) -> ConnectionParameters {
    ConnectionParameters::new("127.0.0.1")
        .with_port(port)
        .with_ssl_options(Some(
            SslOptions::new()
                .with_server_hostname("localhost")
                .with_verify_certificate(false),
        ))
        .with_socket_timeout(socket_timeout)
        .with_stack_timeout(stack_timeout)
}

/// Runs `Connection::open` on a thread of its own: its error and how long it took. Fails the
/// test if the open succeeds, or is still blocked after [`OPEN_LIMIT`].
fn failed_open(params: ConnectionParameters) -> (Error, Duration) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let started = Instant::now();
        let result = Connection::open(params);
        let _ = tx.send((result.map(drop), started.elapsed()));
    });
    match rx.recv_timeout(OPEN_LIMIT) {
        Ok((Err(e), took)) => (e, took),
        Ok((Ok(()), _)) => panic!("open() succeeded against a fake peer"),
        Err(_) => panic!("open() was still blocked after {OPEN_LIMIT:?}"),
    }
}

/// Asserts that `err` is the timeout of the bound that ran out, `after`, and that open() took
/// less than `limit`.
fn assert_timed_out(err: &Error, took: Duration, after: Duration, limit: Duration) {
    assert!(
        matches!(err, Error::Timeout { after: a, .. } if *a == after),
        "expected a timeout after {after:?}, got {err:?}"
    );
    assert!(took < limit, "open() took {took:?}: {err:?}");
}

/// Sends `header`, then one byte every [`TRICKLE_GAP`], until the client goes away (a write
/// fails) or [`PEER_PATIENCE`] passes.
fn trickle(mut stream: &TcpStream, header: &[u8]) {
    let started = Instant::now();
    let mut sent = stream.write_all(header);
    while sent.is_ok() && started.elapsed() < PEER_PATIENCE {
        std::thread::sleep(TRICKLE_GAP);
        sent = stream.write_all(&[0]);
    }
}

/// A fake peer on 127.0.0.1: a thread that accepts one client and runs `serve` with it.
fn fake_peer(serve: impl FnOnce(TcpStream) + Send + 'static) -> (u16, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding the fake peer");
    let port = listener.local_addr().expect("local address").port();
    let peer = std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("fake peer: accept");
        stream
            .set_read_timeout(Some(PEER_PATIENCE))
            .expect("read timeout");
        stream.set_nodelay(true).expect("nodelay");
        serve(stream);
    });
    (port, peer)
}

/// Waits for the fake peer to notice that the client closed its socket.
fn client_hung_up(peer: JoinHandle<()>) {
    let by = Instant::now() + Duration::from_secs(5);
    while !peer.is_finished() {
        assert!(
            Instant::now() < by,
            "the client kept its socket open after open() failed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    peer.join().expect("the fake peer panicked");
}

/// Reads one TLS record (the ClientHello) from the client.
fn read_record(stream: &mut TcpStream) {
    let mut header = [0; 5];
    stream.read_exact(&mut header).expect("fake peer: a record");
    assert_eq!(
        header[0], HANDSHAKE,
        "the client starts with a handshake record"
    );
    let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
    stream
        .read_exact(&mut vec![0; len])
        .expect("fake peer: the ClientHello");
}

/// A self-signed certificate for `localhost` and its key (EC P-256), made in memory.
fn self_signed_identity() -> native_tls::Identity {
    use openssl::asn1::{Asn1Integer, Asn1Time};
    use openssl::bn::BigNum;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::x509::{X509Builder, X509NameBuilder};

    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "localhost").unwrap();
    let name = name.build();
    let mut cert = X509Builder::new().unwrap();
    cert.set_version(2).unwrap();
    let serial = Asn1Integer::from_bn(&BigNum::from_u32(1).unwrap()).unwrap();
    cert.set_serial_number(&serial).unwrap();
    cert.set_subject_name(&name).unwrap();
    cert.set_issuer_name(&name).unwrap();
    cert.set_pubkey(&key).unwrap();
    cert.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    cert.set_not_after(&Asn1Time::days_from_now(1).unwrap())
        .unwrap();
    cert.sign(&key, MessageDigest::sha256()).unwrap();
    let cert = cert.build().to_pem().unwrap();
    let key = key.private_key_to_pem_pkcs8().unwrap();
    native_tls::Identity::from_pkcs8(&cert, &key).expect("the self-signed identity")
}

#[test]
fn a_silent_peer_fails_the_tls_handshake_within_the_timeouts() {
    // A listener that never accepts: the kernel completes the TCP handshake, then nothing
    // answers the ClientHello.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let attempt = |socket_timeout: u64, stack_timeout: u64| {
        let started = Instant::now();
        let err = Connection::open(
            ConnectionParameters::new("127.0.0.1")
                .with_port(port)
                .with_ssl_options(Some(SslOptions::new().with_server_hostname("localhost")))
                .with_socket_timeout(Duration::from_secs(socket_timeout))
                .with_stack_timeout(Duration::from_secs(stack_timeout)),
        )
        .unwrap_err();
        let elapsed = started.elapsed();
        // Whichever bound ran out is the one reported: here always the 1 s one.
        assert!(
            matches!(&err, Error::Timeout { after, .. } if *after == Duration::from_secs(1)),
            "socket_timeout {socket_timeout} s, stack_timeout {stack_timeout} s: {err:?}"
        );
        (elapsed, err)
    };
    // socket_timeout bounds each wait of the TLS handshake...
    let (elapsed, err) = attempt(1, 10);
    assert!(
        elapsed < Duration::from_secs(3),
        "took {elapsed:?}: {err:?}"
    );
    // ...and stack_timeout bounds the whole of open(), the TLS handshake included (as it does
    // the AMQP handshake on a plain connection).
    let (elapsed, err) = attempt(5, 1);
    assert!(
        elapsed < Duration::from_secs(3),
        "stack_timeout 1 s, but open() took {elapsed:?}: {err:?}"
    );
    drop(silent);
}

#[test]
fn a_trickled_record_fails_the_tls_handshake_within_stack_timeout() {
    // Every byte comes well within socket_timeout, so only stack_timeout can end the wait for
    // the rest of the record; with either bound the smaller, it is the one reported.
    for (socket_timeout, stack_timeout) in [(5_000, 1_000), (1_000, 2_000)] {
        let (socket_timeout, stack_timeout) = (
            Duration::from_millis(socket_timeout),
            Duration::from_millis(stack_timeout),
        );
        let (port, peer) = fake_peer(|mut stream| {
            read_record(&mut stream);
            trickle(&stream, &record_header(HANDSHAKE));
        });
        let (err, took) = failed_open(params(port, socket_timeout, stack_timeout));
        assert_timed_out(&err, took, stack_timeout, stack_timeout * 3);
        client_hung_up(peer);
    }
}

#[test]
fn a_trickled_record_fails_the_amqp_handshake_over_tls_within_stack_timeout() {
    // socket_timeout is the smaller bound, but each byte comes within it: the open's deadline
    // ends the wait for connection.start, inside the TLS record the client is reading.
    let (socket_timeout, stack_timeout) = (Duration::from_secs(1), Duration::from_secs(2));
    let acceptor = native_tls::TlsAcceptor::new(self_signed_identity()).unwrap();
    let (port, peer) = fake_peer(move |stream| {
        let mut tls = acceptor
            .accept(stream)
            .expect("fake peer: the TLS handshake");
        let mut header = [0; 8];
        tls.read_exact(&mut header)
            .expect("fake peer: the protocol header");
        assert_eq!(&header, b"AMQP\x00\x00\x09\x01");
        trickle(tls.get_ref(), &record_header(APPLICATION_DATA));
    });
    let (err, took) = failed_open(params(port, socket_timeout, stack_timeout));
    assert_timed_out(&err, took, stack_timeout, stack_timeout * 3);
    assert!(
        err.to_string().contains("connection.start"),
        "the timeout names what the client waited for: {err}"
    );
    client_hung_up(peer);
}

/// Reads one AMQP frame from `stream` (after what `buf` holds), whatever it is.
fn skip_frame(stream: &mut impl Read, buf: &mut Vec<u8>) {
    loop {
        if let Ok((rest, _)) = parse_frame(&buf[..]) {
            let used = buf.len() - rest.len();
            buf.drain(..used);
            return;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).expect("fake peer: reading a frame");
        assert!(n > 0, "fake peer: the client hung up mid-handshake");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A TLS peer that, once the connection is open, ignores our connection.close and sends
/// heartbeat frames without pause: `close()` returns within about its `rpc_timeout` (2 s).
/// Over TLS the I/O thread is the only reader, and its read loop left only for a waiter,
/// output or a timer: told to stop at the close's deadline, it went on reading until the
/// peer stopped (8 s and more, here the whole flood).
#[test]
fn close_over_tls_returns_at_its_deadline_while_the_peer_keeps_sending() {
    let acceptor = native_tls::TlsAcceptor::new(self_signed_identity()).unwrap();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let method = |m| Peer::encode(&AMQPFrame::Method(0, AMQPClass::Connection(m)));
    let (port, peer) = fake_peer(move |stream| {
        let mut tls = acceptor
            .accept(stream)
            .expect("fake peer: the TLS handshake");
        let mut header = [0; 8];
        tls.read_exact(&mut header)
            .expect("fake peer: the protocol header");
        tls.write_all(&method(connection::AMQPMethod::Start(connection::Start {
            version_major: 0,
            version_minor: 9,
            server_properties: Default::default(),
            mechanisms: "PLAIN".into(),
            locales: "en_US".into(),
        })))
        .unwrap();
        let mut buf = Vec::new();
        skip_frame(&mut tls, &mut buf); // start-ok
        tls.write_all(&method(connection::AMQPMethod::Tune(connection::Tune {
            channel_max: 2047,
            frame_max: 131_072,
            heartbeat: 0,
        })))
        .unwrap();
        skip_frame(&mut tls, &mut buf); // tune-ok
        skip_frame(&mut tls, &mut buf); // open
        tls.write_all(&method(connection::AMQPMethod::OpenOk(
            connection::OpenOk {},
        )))
        .unwrap();
        let heartbeats = Peer::encode(&AMQPFrame::Heartbeat).repeat(8 * 1024);
        tls.get_ref()
            .set_write_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        let started = Instant::now();
        while stop_rx.try_recv().is_err() && started.elapsed() < PEER_PATIENCE {
            if tls.write_all(&heartbeats).is_err() {
                break;
            }
        }
    });
    let params = params(port, Duration::from_secs(5), Duration::from_secs(5))
        .with_rpc_timeout(Duration::from_secs(2));
    let connection = Connection::open(params).expect("open");
    let (closed_tx, closed_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let started = Instant::now();
        let closed = connection.close();
        let _ = closed_tx.send((started.elapsed(), closed));
    });
    let outcome = closed_rx.recv_timeout(Duration::from_secs(8));
    let _ = stop_tx.send(());
    peer.join().expect("fake peer");
    let (took, closed) = outcome.expect("close() (rpc_timeout 2 s) still blocked after 8 s");
    assert!(took < Duration::from_secs(5), "close() took {took:?}");
    assert!(
        closed.is_err(),
        "the peer never answered the close: {closed:?}"
    );
}
