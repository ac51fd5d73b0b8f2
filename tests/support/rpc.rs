//! Helpers of the `RpcClient` tests (`rpc_client.rs`, `rpc_failures.rs`), included with
//! `#[path]`: echo servers (`rpc::serve`) with a `slow:<ms>:` body to delay their answer, a
//! capture of the warnings the client logs, and a proxy that can hold the client's bytes back.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, Once};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use cottontail::{rpc, CallOptions, Channel, Connection, Delivery, Error, RpcClient};

use crate::support::consuming::{named_queue, passive, Cleanup};
use crate::support::{params, unique};

/// How much later than its deadline a call may return on a loaded machine.
pub const SLACK: Duration = Duration::from_millis(1500);

/// Longest a scenario may take before it counts as hung.
pub const HANG: Duration = Duration::from_secs(60);

fn _assert_shareable() {
    fn shareable<T: Send + Sync + Clone + 'static>() {}
    shareable::<RpcClient>();
}

// ---------------------------------------------------------------------------------------------
// Servers, queues, logs
// ---------------------------------------------------------------------------------------------

/// Declares a queue named for this test, deleted when the returned guard goes.
pub fn request_queue(prefix: &str) -> (String, Cleanup) {
    let mut cleanup = Cleanup::default();
    let queue = named_queue(&mut cleanup, prefix);
    (queue, cleanup)
}

/// `rpc::serve` on a channel of its own, on a thread of its own: answers `echo:<body>`, after
/// sleeping `<ms>` for a body `slow:<ms>:...`. Stopped (and joined) when dropped.
pub struct Server {
    pub channel: Channel,
    /// The bodies of the requests it has taken, in order (recorded before answering).
    received: Arc<Mutex<Vec<Vec<u8>>>>,
    thread: Option<JoinHandle<cottontail::Result<()>>>,
}

impl Server {
    pub fn start(connection: &Connection, queue: &str, prefetch: u16) -> Server {
        let channel = connection.channel().unwrap();
        channel
            .basic_qos(cottontail::QosOptions {
                prefetch_count: prefetch,
                ..Default::default()
            })
            .unwrap();
        let serving = channel.clone();
        let queue = queue.to_string();
        let received = Arc::new(Mutex::new(Vec::new()));
        let recording = received.clone();
        let thread = thread::spawn(move || {
            rpc::serve(&serving, &queue, move |_properties, body| {
                recording.lock().unwrap().push(body.to_vec());
                if let Some(ms) = slow_ms(body) {
                    thread::sleep(Duration::from_millis(ms));
                }
                Ok([b"echo:", body].concat())
            })
        });
        Server {
            channel,
            received,
            thread: Some(thread),
        }
    }

    /// Whether it has taken a request with this body.
    pub fn has_received(&self, body: &str) -> bool {
        let received = self.received.lock().unwrap();
        received.iter().any(|b| b == body.as_bytes())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.channel.stop_consuming(None);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The `<ms>` of a body `slow:<ms>:...`.
pub fn slow_ms(body: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(body).ok()?;
    text.strip_prefix("slow:")?.split(':').next()?.parse().ok()
}

/// Starts `count` servers on `connection` and waits until the broker has all their consumers.
pub fn servers(connection: &Connection, queue: &str, count: usize, prefetch: u16) -> Vec<Server> {
    let servers = (0..count)
        .map(|_| Server::start(connection, queue, prefetch))
        .collect();
    let channel = connection.channel().unwrap();
    assert!(
        crate::support::eventually(Duration::from_secs(10), || {
            channel
                .queue_declare(queue, passive())
                .unwrap()
                .consumer_count
                == count as u32
        }),
        "the {count} servers did not start consuming `{queue}`"
    );
    channel.close().unwrap();
    servers
}

pub fn call(
    client: &RpcClient,
    queue: &str,
    body: &str,
    timeout: Duration,
) -> cottontail::Result<Delivery> {
    client.call(
        "",
        queue,
        body.as_bytes(),
        CallOptions {
            timeout: Some(timeout),
            ..Default::default()
        },
    )
}

pub fn body_of(reply: &Delivery) -> String {
    String::from_utf8_lossy(&reply.body).into_owned()
}

/// The correlation id a timed-out call names in its error.
pub fn request_id(error: &Error) -> String {
    let Error::Timeout { context, .. } = error else {
        panic!("expected a timeout, got {error:?}");
    };
    context
        .strip_prefix("waiting for the reply to request ")
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no request id in {context:?}"))
        .to_string()
}

/// Warnings logged in this process.
pub static WARNINGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

pub struct Capture;

impl log::Log for Capture {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Warn
    }
    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            let mut warnings = WARNINGS.lock().unwrap_or_else(|p| p.into_inner());
            warnings.push(record.args().to_string());
        }
    }
    fn flush(&self) {}
}

pub fn capture_warnings() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        log::set_logger(&Capture).expect("installing the test logger");
        log::set_max_level(log::LevelFilter::Warn);
    });
}

/// Whether a warning says the reply with correlation id `id` was dropped: by the pumper
/// ("dropping a reply"), or, when no call waited, on arrival ("a late RPC reply nobody waits
/// for").
pub fn dropped_with_warning(id: &str) -> bool {
    let quoted = format!("{id:?}");
    WARNINGS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .any(|w| {
            (w.contains("dropping a reply") || w.contains(LATE_REPLY_DROPPED))
                && w.contains(&quoted)
        })
}

/// What the warning of a reply dropped on arrival (no call waiting) calls it.
pub const LATE_REPLY_DROPPED: &str = "a late RPC reply nobody waits for";

/// How many of `ids` a warning says were dropped on arrival, while no call waited.
pub fn dropped_on_arrival(ids: &[String]) -> usize {
    let warnings = WARNINGS.lock().unwrap_or_else(|p| p.into_inner());
    ids.iter()
        .filter(|id| {
            let quoted = format!("{id:?}");
            warnings
                .iter()
                .any(|w| w.contains(LATE_REPLY_DROPPED) && w.contains(&quoted))
        })
        .count()
}

/// A TCP proxy between one client and the test broker that can hold the client's bytes back
/// (stop reading them) while the broker's still reach the client: the client's outbound
/// buffer then fills as with a broker that does not read. Everything goes through again when
/// it is released, and when the proxy is dropped.
pub struct Proxy {
    pub port: u16,
    held: Arc<(Mutex<bool>, Condvar)>,
}

impl Proxy {
    /// Listens on 127.0.0.1 for one client and connects it to the broker.
    pub fn start() -> Proxy {
        crate::support::ensure_broker();
        // A small receive buffer on the client's side, so that the kernel holds little of
        // what the proxy does not read: the client's own buffer fills instead.
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(64 * 1024).unwrap();
        socket
            .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        socket.listen(1).unwrap();
        let listener: TcpListener = socket.into();
        let port = listener.local_addr().unwrap().port();
        let held = Arc::new((Mutex::new(false), Condvar::new()));
        let gate = held.clone();
        thread::spawn(move || {
            let Ok((client, _)) = listener.accept() else {
                return;
            };
            let broker = TcpStream::connect((crate::support::HOST, crate::support::PORT)).unwrap();
            let (mut from_client, mut to_broker) =
                (client.try_clone().unwrap(), broker.try_clone().unwrap());
            thread::spawn(move || {
                let mut chunk = vec![0u8; 64 * 1024];
                loop {
                    {
                        let (lock, cond) = &*gate;
                        let mut held = lock.lock().unwrap();
                        while *held {
                            held = cond.wait(held).unwrap();
                        }
                    }
                    match from_client.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if to_broker.write_all(&chunk[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = to_broker.shutdown(Shutdown::Write);
            });
            let (mut from_broker, mut to_client) = (broker, client);
            let _ = std::io::copy(&mut from_broker, &mut to_client);
            let _ = to_client.shutdown(Shutdown::Both);
        });
        Proxy { port, held }
    }

    /// Connection parameters for the broker through this proxy.
    pub fn params(&self) -> cottontail::ConnectionParameters {
        params().with_port(self.port)
    }

    /// Holds the client's bytes back (`true`) or passes them on again (`false`).
    pub fn hold(&self, hold: bool) {
        let (lock, cond) = &*self.held;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = hold;
        cond.notify_all();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.hold(false);
    }
}

/// Fills the client's outbound buffer past its high-water mark (4 MiB) while `proxy` holds its
/// bytes back, with messages to a queue that does not exist (the broker drops them once it
/// gets them) on a channel of their own: 16 MiB, which the I/O thread takes out of the buffer
/// and is still writing when the proxy stops reading, then 8 MiB, which stays in the buffer.
/// Later publishes of that connection wait for room until the proxy lets the bytes through.
pub fn fill_the_outbound_buffer(proxy: &Proxy, connection: &Connection) -> Channel {
    let filler = connection.channel().unwrap();
    let nowhere = unique("rpc-nowhere");
    proxy.hold(true);
    filler
        .basic_publish("", &nowhere, &vec![b'f'; 16 * 1024 * 1024])
        .unwrap();
    thread::sleep(Duration::from_millis(200));
    filler
        .basic_publish("", &nowhere, &vec![b'f'; 8 * 1024 * 1024])
        .unwrap();
    filler
}
