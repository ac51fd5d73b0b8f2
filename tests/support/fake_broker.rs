//! A scripted fake broker for what a real RabbitMQ will not do: a `TcpListener` on 127.0.0.1
//! (port 0) driven by a thread of the test, speaking just enough AMQP 0-9-1 (frames encoded and
//! parsed with amq-protocol) to get a client through the handshake and channel.open, then doing
//! whatever the test scripts. Used by tests/faults.rs and benches/hot_paths.rs.
#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use amq_protocol::frame::{gen_frame, parse_frame, AMQPFrame, WriteContext};
use amq_protocol::protocol::{basic, channel, connection, queue, AMQPClass};
use amq_protocol::types::FieldTable;

// ---------------------------------------------------------------------------------------------
// The fake broker
// ---------------------------------------------------------------------------------------------

/// How long the fake waits for the client (to connect, or to send a frame) before giving up, so
/// that a client bug fails the test instead of hanging it.
pub const FAKE_PATIENCE: Duration = Duration::from_secs(8);

/// Client parameters for a fake broker on `port`: short timeouts, so that a bug fails the
/// test instead of hanging it.
pub fn client_params(port: u16) -> cottontail::ConnectionParameters {
    cottontail::ConnectionParameters::new("127.0.0.1")
        .with_port(port)
        .with_socket_timeout(Duration::from_secs(1))
        .with_stack_timeout(Duration::from_secs(2))
        .with_rpc_timeout(Duration::from_secs(2))
}

/// A listening fake broker.
pub struct FakeBroker {
    listener: TcpListener,
}

impl FakeBroker {
    pub fn bind() -> FakeBroker {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the fake broker");
        FakeBroker { listener }
    }

    /// A fake whose sockets offer the client a receive window of about `bytes` (set on the
    /// listener before it listens, so accepted sockets start with it): a client writing more
    /// than that fills its socket until the fake reads.
    pub fn bind_with_receive_buffer(bytes: usize) -> FakeBroker {
        let addr: std::net::SocketAddr = "127.0.0.1:0".parse().expect("address");
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("a socket for the fake broker");
        socket
            .set_recv_buffer_size(bytes)
            .expect("the fake broker's receive buffer");
        socket.bind(&addr.into()).expect("binding the fake broker");
        socket.listen(8).expect("listening");
        FakeBroker {
            listener: socket.into(),
        }
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().expect("local address").port()
    }

    /// Accepts one client (within [`FAKE_PATIENCE`]).
    pub fn accept(&self) -> Peer {
        self.accept_within(FAKE_PATIENCE)
            .expect("fake broker: no client connected")
    }

    /// Accepts one client if one connects within `timeout`.
    pub fn accept_within(&self, timeout: Duration) -> Option<Peer> {
        self.listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let deadline = Instant::now() + timeout;
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(false).expect("blocking stream");
                    stream
                        .set_read_timeout(Some(FAKE_PATIENCE))
                        .expect("read timeout");
                    stream.set_nodelay(true).expect("nodelay");
                    return Some(Peer {
                        stream: Some(stream),
                        buf: Vec::new(),
                    });
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return None;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("fake broker: accept failed: {e}"),
            }
        }
    }

    /// Accepts one client and runs the whole opening handshake with it (start, tune with
    /// `heartbeat` and `frame_max`, open).
    pub fn accept_and_handshake(&self, heartbeat: u16, frame_max: u32) -> Peer {
        self.accept_and_open_with(heartbeat, frame_max, &[])
    }

    /// Like [`accept_and_handshake`](Self::accept_and_handshake), and sends `after_open_ok`
    /// in the same write as connection.open-ok (one segment).
    pub fn accept_and_open_with(
        &self,
        heartbeat: u16,
        frame_max: u32,
        after_open_ok: &[AMQPFrame],
    ) -> Peer {
        let mut peer = self.accept();
        peer.handshake(heartbeat, frame_max, after_open_ok);
        peer
    }
}

pub struct Peer {
    /// `None` once the fake closed the socket.
    stream: Option<TcpStream>,
    /// Bytes read from the client and not yet parsed.
    buf: Vec<u8>,
}

impl Peer {
    pub fn stream(&mut self) -> &mut TcpStream {
        self.stream.as_mut().expect("the fake closed this socket")
    }

    /// Encodes one frame with amq-protocol.
    pub fn encode(frame: &AMQPFrame) -> Vec<u8> {
        gen_frame(frame)(WriteContext::from(Vec::new()))
            .expect("encoding a frame")
            .into_inner()
            .0
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        let stream = self.stream();
        stream.write_all(bytes).expect("fake broker: write");
        stream.flush().expect("fake broker: flush");
    }

    pub fn send_frame(&mut self, frame: &AMQPFrame) {
        self.send_raw(&Self::encode(frame));
    }

    pub fn send_method(&mut self, channel: u16, method: AMQPClass) {
        self.send_frame(&AMQPFrame::Method(channel, method));
    }

    /// Reads the protocol header, sends connection.start, reads start-ok and sends
    /// connection.tune with `heartbeat` and `frame_max`.
    pub fn start_and_tune(&mut self, heartbeat: u16, frame_max: u32) {
        self.read_protocol_header();
        self.send_start();
        self.expect_start_ok();
        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Tune(connection::Tune {
                channel_max: 2047,
                frame_max,
                heartbeat,
            })),
        );
    }

    /// Runs the whole opening handshake with a client just accepted (start, tune with
    /// `heartbeat` and `frame_max`, open), sending `after_open_ok` in the same write as
    /// connection.open-ok.
    pub fn handshake(&mut self, heartbeat: u16, frame_max: u32, after_open_ok: &[AMQPFrame]) {
        self.start_and_tune(heartbeat, frame_max);
        match self.expect_method() {
            (0, AMQPClass::Connection(connection::AMQPMethod::TuneOk(ok))) => {
                assert_eq!(ok.heartbeat, heartbeat, "client's tune-ok heartbeat");
                assert!(ok.frame_max <= frame_max, "client's tune-ok frame_max");
            }
            other => panic!("fake broker: expected connection.tune-ok, got {other:?}"),
        }
        match self.expect_method() {
            (0, AMQPClass::Connection(connection::AMQPMethod::Open(_))) => {}
            other => panic!("fake broker: expected connection.open, got {other:?}"),
        }
        let mut bytes = Peer::encode(&AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {})),
        ));
        for frame in after_open_ok {
            bytes.extend(Peer::encode(frame));
        }
        self.send_raw(&bytes);
    }

    /// basic.get-ok for `delivery_tag` (exchange "", routing key "q") and a content header
    /// announcing `body_size` bytes without properties, encoded, on `channel`.
    pub fn get_ok_and_header(channel: u16, delivery_tag: u64, body_size: u64) -> Vec<u8> {
        let mut bytes = Self::encode(&AMQPFrame::Method(
            channel,
            AMQPClass::Basic(basic::AMQPMethod::GetOk(basic::GetOk {
                delivery_tag,
                redelivered: false,
                exchange: "".into(),
                routing_key: "q".into(),
                message_count: 0,
            })),
        ));
        bytes.extend(Self::encode(&AMQPFrame::Header(
            channel,
            amq_protocol::frame::AMQPContentHeader {
                class_id: 60,
                body_size,
                properties: amq_protocol::protocol::BasicProperties::default(),
            },
        )));
        bytes
    }

    /// The broker's connection.close with `reply_code` and `reply_text`.
    pub fn send_connection_close(&mut self, reply_code: u16, reply_text: &str) {
        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code,
                reply_text: reply_text.into(),
                class_id: 0,
                method_id: 0,
            })),
        );
    }

    pub fn send_start(&mut self) {
        self.send_start_announcing(&[]);
    }

    /// connection.start whose server properties list `capabilities` as true (RabbitMQ
    /// announces `authentication_failure_close`, among others).
    pub fn send_start_announcing(&mut self, capabilities: &[&str]) {
        let mut caps = FieldTable::default();
        for cap in capabilities {
            caps.insert((*cap).into(), amq_protocol::types::AMQPValue::Boolean(true));
        }
        let mut server_properties = FieldTable::default();
        if !capabilities.is_empty() {
            server_properties.insert(
                "capabilities".into(),
                amq_protocol::types::AMQPValue::FieldTable(caps),
            );
        }
        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
                version_major: 0,
                version_minor: 9,
                server_properties,
                mechanisms: "PLAIN".into(),
                locales: "en_US".into(),
            })),
        );
    }

    /// The next frame from the client; `None` at EOF, on a reset or after [`FAKE_PATIENCE`] of
    /// silence. Streaming: an incomplete frame means "read more".
    pub fn read_frame(&mut self) -> Option<AMQPFrame> {
        loop {
            if !self.buf.is_empty() {
                match parse_frame(&self.buf[..]) {
                    Ok((rest, frame)) => {
                        let used = self.buf.len() - rest.len();
                        self.buf.drain(..used);
                        return Some(frame);
                    }
                    Err(e) if e.is_incomplete() => {}
                    Err(e) => panic!("fake broker: the client sent an unparsable frame: {e}"),
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.as_mut()?.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
    }

    /// Reads at most `max` bytes from the client into the buffer [`read_frame`](Self::read_frame)
    /// parses (a peer that reads slowly); how many it read, 0 at EOF or on an error.
    pub fn read_some(&mut self, max: usize) -> usize {
        let mut chunk = vec![0u8; max];
        match self.stream.as_mut().map(|s| s.read(&mut chunk)) {
            Some(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                n
            }
            _ => 0,
        }
    }

    /// The next method frame, skipping heartbeats; panics on anything else.
    pub fn expect_method(&mut self) -> (u16, AMQPClass) {
        loop {
            match self.read_frame() {
                Some(AMQPFrame::Heartbeat) => {}
                Some(AMQPFrame::Method(channel, method)) => return (channel, method),
                other => panic!("fake broker: expected a method frame, got {other:?}"),
            }
        }
    }

    pub fn read_protocol_header(&mut self) {
        match self.read_frame() {
            Some(AMQPFrame::ProtocolHeader(_)) => {}
            other => panic!("fake broker: expected the protocol header, got {other:?}"),
        }
    }

    pub fn expect_start_ok(&mut self) {
        match self.expect_method() {
            (0, AMQPClass::Connection(connection::AMQPMethod::StartOk(ok))) => {
                assert_eq!(ok.mechanism.as_str(), "PLAIN");
            }
            other => panic!("fake broker: expected connection.start-ok, got {other:?}"),
        }
    }

    /// Reads channel.open on `channel` and answers open-ok.
    pub fn open_channel(&mut self, channel: u16) {
        match self.expect_method() {
            (ch, AMQPClass::Channel(channel::AMQPMethod::Open(_))) if ch == channel => {}
            other => panic!("fake broker: expected channel.open on {channel}, got {other:?}"),
        }
        self.send_method(
            channel,
            AMQPClass::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {})),
        );
    }

    /// Reads the client's basic.get on `channel`.
    pub fn expect_get(&mut self, channel: u16) {
        match self.expect_method() {
            (ch, AMQPClass::Basic(basic::AMQPMethod::Get(_))) if ch == channel => {}
            other => panic!("fake broker: expected basic.get on {channel}, got {other:?}"),
        }
    }

    /// Reads the client's queue.declare on `channel`.
    pub fn expect_queue_declare(&mut self, channel: u16) {
        match self.expect_method() {
            (ch, AMQPClass::Queue(queue::AMQPMethod::Declare(_))) if ch == channel => {}
            other => panic!("fake broker: expected queue.declare on {channel}, got {other:?}"),
        }
    }

    /// Reads the client's basic.qos on `channel`.
    pub fn expect_qos(&mut self, channel: u16) {
        match self.expect_method() {
            (ch, AMQPClass::Basic(basic::AMQPMethod::Qos(_))) if ch == channel => {}
            other => panic!("fake broker: expected basic.qos on {channel}, got {other:?}"),
        }
    }

    /// Everything the client sends until it closes the socket (or goes silent).
    pub fn drain(&mut self) -> Vec<AMQPFrame> {
        let mut frames = Vec::new();
        while let Some(frame) = self.read_frame() {
            frames.push(frame);
        }
        frames
    }

    /// Closes the socket (FIN).
    pub fn close(&mut self) {
        if let Some(stream) = self.stream.take() {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// The reply code of the first connection.close among `frames`, if any.
pub fn connection_close_code(frames: &[AMQPFrame]) -> Option<u16> {
    frames.iter().find_map(|f| match f {
        AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(c))) => {
            Some(c.reply_code)
        }
        _ => None,
    })
}

/// Starts a fake broker running `script` on its own thread; returns its port and the thread.
pub fn spawn_fake<T: Send + 'static>(
    script: impl FnOnce(FakeBroker) -> T + Send + 'static,
) -> (u16, JoinHandle<T>) {
    let broker = FakeBroker::bind();
    let port = broker.port();
    (port, std::thread::spawn(move || script(broker)))
}

pub fn join<T>(fake: JoinHandle<T>) -> T {
    match fake.join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Checks that `err` is [`cottontail::Error::Protocol`] with `reply_code`; returns its reason.
pub fn protocol_reason(
    result: cottontail::Result<impl std::fmt::Debug>,
    reply_code: u16,
) -> String {
    match result {
        Err(cottontail::Error::Protocol {
            reply_code: code,
            reason,
        }) if code == reply_code => reason,
        other => {
            panic!("expected cottontail::Error::Protocol {{ reply_code: {reply_code}, .. }}, got {other:?}")
        }
    }
}
