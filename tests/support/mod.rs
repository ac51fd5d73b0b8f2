//! Shared by the integration tests: finds the broker on 127.0.0.1:5672 (starting one with
//! `scripts/broker.sh` if none answers) and makes unique names.
#![allow(dead_code)]

use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use cottontail::{Connection, ConnectionParameters, PublishOptions};

pub mod cluster;
pub mod consuming;
pub mod methods;
pub mod recovery;

pub const HOST: &str = "127.0.0.1";
pub const PORT: u16 = 5672;

static STARTED: Mutex<bool> = Mutex::new(false);

fn broker_answers() -> bool {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], PORT));
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

/// Makes sure a broker answers, starting one if needed; panics with instructions otherwise.
pub fn ensure_broker() {
    let mut tried = STARTED.lock().unwrap_or_else(|p| p.into_inner());
    if broker_answers() {
        return;
    }
    if !*tried {
        *tried = true;
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/broker.sh");
        let status = Command::new("bash").arg(script).status();
        eprintln!("started a broker with {script}: {status:?}");
        if broker_answers() {
            return;
        }
    }
    panic!(
        "these tests need RabbitMQ on {HOST}:{PORT} (guest/guest) and none answers; \
         start one with `scripts/broker.sh` (installs Debian's rabbitmq-server if missing)"
    );
}

/// Parameters for the test broker.
pub fn params() -> ConnectionParameters {
    ensure_broker();
    ConnectionParameters::new(HOST).with_port(PORT)
}

/// Opens a connection to the test broker.
pub fn connect() -> Connection {
    Connection::open(params()).expect("connecting to the test broker")
}

/// A queue or exchange name no other test uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "cottontail-test-{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// Runs `rabbitmqctl` against the test node and returns its stdout.
pub fn rabbitmqctl(args: &[&str]) -> String {
    let out = Command::new("rabbitmqctl")
        .env("ERL_EPMD_ADDRESS", "127.0.0.1")
        .env(
            "PATH",
            format!("{}:/usr/sbin", std::env::var("PATH").unwrap_or_default()),
        )
        .args(["-n", "rabbit@localhost", "-q"])
        .args(args)
        .output()
        .expect("running rabbitmqctl");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// rabbitmqctl's pids of the connections whose client properties mention `connection_name`
/// (what `rabbitmqctl close_connection` takes).
pub fn broker_connections_named(connection_name: &str) -> Vec<String> {
    rabbitmqctl(&["list_connections", "-s", "pid", "client_properties"])
        .lines()
        .filter(|line| line.contains(connection_name))
        .filter_map(|line| line.split('\t').next().map(str::to_string))
        .collect()
}

/// Waits up to `timeout` for `f` to hold, polling every 50 ms.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// Publishes messages `numbers` to `queue` through the default exchange, each body the
/// number's 4 big-endian bytes.
pub fn publish_numbered(channel: &cottontail::Channel, queue: &str, numbers: std::ops::Range<u32>) {
    for i in numbers {
        channel
            .basic_publish_with(
                "",
                queue,
                &i.to_be_bytes(),
                &PublishOptions {
                    properties: cottontail::BasicProperties::default().clone(),
                    ..Default::default()
                },
            )
            .expect("publishing");
    }
}

/// A server-named exclusive queue that holds one message and refuses more
/// (`x-max-length` 1, `x-overflow: reject-publish`): in confirm mode the broker nacks every
/// publish once it is full.
pub fn one_message_queue(channel: &cottontail::Channel) -> String {
    channel
        .queue_declare(
            "",
            cottontail::QueueDeclareOptions {
                exclusive: true,
                arguments: cottontail::FieldTable::new()
                    .with("x-max-length", 1)
                    .with("x-overflow", "reject-publish"),
                ..Default::default()
            },
        )
        .unwrap()
        .queue
}

/// Declares a plain queue named `prefix` plus a unique suffix on `channel` (not exclusive, not
/// auto-delete: it outlives the connection) and returns its name.
pub fn named_queue(channel: &cottontail::Channel, prefix: &str) -> String {
    let queue = unique(prefix);
    channel
        .queue_declare(&queue, cottontail::QueueDeclareOptions::default())
        .expect("declaring a queue");
    queue
}

/// Declares a broker-named exclusive queue on `channel` and returns its name.
pub fn exclusive_queue(channel: &cottontail::Channel) -> String {
    channel
        .queue_declare(
            "",
            cottontail::QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
        )
        .expect("declaring an exclusive queue")
        .queue
}

/// Runs `scenario` on its own thread and returns its result; fails the test with `what` if it
/// panics or does not finish within `limit` (a hang).
pub fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    scenario: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(scenario))
            .map_err(|p| panic_text(&*p));
        let _ = tx.send(outcome);
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(value)) => value,
        Ok(Err(message)) => panic!("{what}: panicked: {message}"),
        Err(_) => panic!("{what}: did not finish within {limit:?} (hung)"),
    }
}

/// The message of a caught panic.
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(a non-string panic payload)".into())
}

/// How many messages the broker holds in `queue`, asked on a channel of its own.
pub fn message_count(connection: &Connection, queue: &str) -> u32 {
    let channel = connection.channel().unwrap();
    let ok = channel.queue_declare(queue, consuming::passive()).unwrap();
    channel.close().unwrap();
    ok.message_count
}

/// The ready and unacknowledged counts of `queue` as the broker lists them.
pub fn broker_counts(queue: &str) -> Option<(usize, usize)> {
    let out = rabbitmqctl(&[
        "list_queues",
        "name",
        "messages_ready",
        "messages_unacknowledged",
    ]);
    let line = out
        .lines()
        .find(|line| line.split('\t').next() == Some(queue))?;
    let mut counts = line.split('\t').skip(1).map(|n| n.trim().parse().ok());
    Some((counts.next()??, counts.next()??))
}
