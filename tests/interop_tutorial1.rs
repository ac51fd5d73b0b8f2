//! Tutorial 1 ("Hello World!") across implementations: the Rust examples `send` and `receive`
//! against the official Python (pika) programs in `tests/interop/`, and against each other.
//!
//! Every test runs real processes against the broker on 127.0.0.1 and checks, line for line,
//! that they print what the Python tutorial prints, that Ctrl-C (SIGINT) makes the consumer
//! print `Interrupted` and exit 0, and that the `hello` queue is left empty.
//!
//! The Python side needs `COTTONTAIL_PYTHON`, a Python with pika, which `scripts/test.sh` sets
//! up; without it those tests fail (they never pass silently).

#[path = "support/process.rs"]
mod process;
mod support;

use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use cottontail::{Connection, QueueDeclareOptions};

use process::{python_script, Running, INTERRUPTED, STEP};

/// The tutorial's queue.
const QUEUE: &str = "hello";

const WAITING: &str = " [*] Waiting for messages. To exit press CTRL+C";
const RECEIVED: &str = " [x] Received b'Hello World!'";
const SENT: &str = " [x] Sent 'Hello World!'";

/// The tests share the queue `hello` (that is the tutorial), so they run one at a time.
fn serialize() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------------------------
// The programs under test
// ---------------------------------------------------------------------------------------------

/// The example binaries the tests run.
const EXAMPLES: [&str; 2] = ["send", "receive"];

fn rust_send() -> Command {
    process::example(&EXAMPLES, "send")
}

fn rust_receive() -> Command {
    process::example(&EXAMPLES, "receive")
}

fn python_send() -> Command {
    python_script("send.py", &[])
}

fn python_receive() -> Command {
    python_script("receive.py", &[])
}

// ---------------------------------------------------------------------------------------------
// The broker's side
// ---------------------------------------------------------------------------------------------

fn connect() -> Connection {
    support::connect()
}

/// Declares `hello` as the tutorial does and empties it; checks that nobody else consumes from
/// it (a stray consumer would take the test's message).
fn prepare_queue() {
    let connection = connect();
    let channel = connection.channel().expect("opening a channel");
    channel
        .queue_declare(QUEUE, QueueDeclareOptions::default())
        .expect("declaring the queue `hello`");
    channel
        .queue_purge(QUEUE)
        .expect("purging the queue `hello`");
    // A consumer of an earlier test may take a moment to go once its process has exited.
    let deadline = Instant::now() + STEP;
    loop {
        let ok = channel
            .queue_declare(QUEUE, QueueDeclareOptions::default())
            .expect("declaring the queue `hello`");
        if ok.consumer_count == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the queue `hello` has {} consumer(s) that are not this test's; stop them \
             (a `receive` left running?) and rerun",
            ok.consumer_count
        );
        thread::sleep(Duration::from_millis(100));
    }
    connection.close().expect("closing the connection");
}

/// Messages ready in `hello`, from a passive declare.
fn messages_in_queue() -> u32 {
    let connection = connect();
    let channel = connection.channel().expect("opening a channel");
    let ok = channel
        .queue_declare(
            QUEUE,
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
        )
        .expect("passive declare of the queue `hello`");
    connection.close().expect("closing the connection");
    ok.message_count
}

// ---------------------------------------------------------------------------------------------
// The scenario
// ---------------------------------------------------------------------------------------------

/// Tutorial 1 end to end: `receive` waits, `send` sends, `receive` prints the message, Ctrl-C
/// stops `receive`, which prints `Interrupted` and exits 0; the queue is left empty.
fn hello_world(send_name: &str, send: Command, receive_name: &str, receive: Command) {
    let _serial = serialize();
    prepare_queue();

    let mut receiver = Running::start(receive_name, receive);
    receiver.expect_line(WAITING);

    Running::start(send_name, send)
        .finish()
        .assert_produced(&[SENT]);

    receiver.expect_line(RECEIVED);
    receiver.interrupt();
    let received = receiver.finish();
    assert_eq!(
        received.stdout,
        [WAITING, RECEIVED, INTERRUPTED],
        "{receive_name} printed the wrong lines; its stderr: {}",
        received.stderr
    );
    assert_eq!(
        received.status.code(),
        Some(0),
        "{receive_name} exited with {} after Ctrl-C; its stderr: {}",
        received.status,
        received.stderr
    );

    assert_eq!(messages_in_queue(), 0, "the queue `hello` is not empty");
}

#[test]
fn rust_send_to_python_receive() {
    hello_world(
        "Rust send",
        rust_send(),
        "Python receive.py",
        python_receive(),
    );
}

#[test]
fn python_send_to_rust_receive() {
    hello_world(
        "Python send.py",
        python_send(),
        "Rust receive",
        rust_receive(),
    );
}

#[test]
fn rust_send_to_rust_receive() {
    hello_world("Rust send", rust_send(), "Rust receive", rust_receive());
}
