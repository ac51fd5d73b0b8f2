//! Helpers of the tutorial interop tests (`interop_tutorials.rs`, `interop_work_queues.rs`),
//! included with `#[path]` next to `support/process.rs` (as `process`): the tutorials' fixed
//! names, running the Rust and Python programs, and the broker's side (bindings, queues,
//! consumers) read with `rabbitmqctl`.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::ops::{Deref, DerefMut};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use cottontail::{Channel, Connection, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};

use crate::process::{python_script, Finished, Running, INTERRUPTED, STEP};

pub const TASK_QUEUE: &str = "task_queue";
pub const LOGS: &str = "logs";
pub const DIRECT_LOGS: &str = "direct_logs";
pub const TOPIC_LOGS: &str = "topic_logs";

pub const WAITING_FOR_MESSAGES: &str = " [*] Waiting for messages. To exit press CTRL+C";
pub const WAITING_FOR_LOGS: &str = " [*] Waiting for logs. To exit press CTRL+C";
pub const DONE: &str = " [x] Done";

/// Tests that use the same fixed name run one at a time; tests of different tutorials may
/// overlap.
pub fn serialize(name: &str) -> MutexGuard<'static, ()> {
    static TASKS: Mutex<()> = Mutex::new(());
    static FANOUT: Mutex<()> = Mutex::new(());
    static DIRECT: Mutex<()> = Mutex::new(());
    static TOPIC: Mutex<()> = Mutex::new(());
    let lock = match name {
        TASK_QUEUE => &TASKS,
        LOGS => &FANOUT,
        DIRECT_LOGS => &DIRECT,
        TOPIC_LOGS => &TOPIC,
        other => panic!("no lock for {other}"),
    };
    lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------------------------
// The programs under test
// ---------------------------------------------------------------------------------------------

/// The programs of tutorials 2 to 5: Rust examples and Python scripts of the same names.
pub const PROGRAMS: [&str; 8] = [
    "new_task",
    "worker",
    "emit_log",
    "receive_logs",
    "emit_log_direct",
    "receive_logs_direct",
    "emit_log_topic",
    "receive_logs_topic",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    Rust,
    Python,
}

pub use Lang::{Python, Rust};

/// The Rust example or the Python script `program` with `args`, talking to the test broker.
pub fn command(lang: Lang, program: &str, args: &[&str]) -> Command {
    match lang {
        Rust => {
            let mut command = crate::process::example(&PROGRAMS, program);
            command.args(args);
            command
        }
        Python => python_script(&format!("{program}.py"), args),
    }
}

pub fn label(lang: Lang, program: &str, args: &[&str]) -> String {
    match lang {
        Rust => format!("Rust {program} {args:?}"),
        Python => format!("Python {program}.py {args:?}"),
    }
}

/// Starts `program` (a consumer, usually).
pub fn spawn(lang: Lang, program: &str, args: &[&str]) -> Program {
    Program {
        running: Running::start(label(lang, program, args), command(lang, program, args)),
        lang,
    }
}

/// Runs `program` to its end.
pub fn run(lang: Lang, program: &str, args: &[&str]) -> Finished {
    spawn(lang, program, args).finish()
}

/// Runs a producer, which must print exactly `expected` and exit 0.
pub fn produce(lang: Lang, program: &str, args: &[&str], expected: &str) {
    run(lang, program, args).assert_produced(&[expected]);
}

/// Words of a command line (no quoting: the tests' arguments have no spaces).
pub fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

// ---------------------------------------------------------------------------------------------
// Running processes
// ---------------------------------------------------------------------------------------------

/// A running Rust example or Python script of these tutorials (a [`Running`] that knows its
/// language, which decides how it stops on Ctrl-C).
pub struct Program {
    running: Running,
    lang: Lang,
}

impl Deref for Program {
    type Target = Running;

    fn deref(&self) -> &Running {
        &self.running
    }
}

impl DerefMut for Program {
    fn deref_mut(&mut self) -> &mut Running {
        &mut self.running
    }
}

impl Program {
    /// Waits (at most [`STEP`]) for the process to exit and for the end of its output.
    pub fn finish(self) -> Finished {
        self.running.finish()
    }

    /// Ctrl-C, then checks the consumer's whole output: `expected`, then `Interrupted` and exit
    /// status 0 for a Rust example; a Python one (the official programs of these tutorials do
    /// not catch Ctrl-C) prints nothing more and dies of its `KeyboardInterrupt`.
    pub fn stop(self, expected: &[&str]) {
        self.running.interrupt();
        let done = self.running.finish();
        match self.lang {
            Rust => {
                let mut lines = expected.to_vec();
                lines.push(INTERRUPTED);
                assert_eq!(
                    done.stdout, lines,
                    "{} printed the wrong lines; its stderr: {}",
                    done.name, done.stderr
                );
                assert_eq!(
                    done.status.code(),
                    Some(0),
                    "{} exited with {} after Ctrl-C; its stderr: {}",
                    done.name,
                    done.status,
                    done.stderr
                );
            }
            Python => {
                assert_eq!(
                    done.stdout, expected,
                    "{} printed the wrong lines; its stderr: {}",
                    done.name, done.stderr
                );
                assert!(
                    done.stderr.contains("KeyboardInterrupt"),
                    "{} did not stop on Ctrl-C ({}); its stderr: {}",
                    done.name,
                    done.status,
                    done.stderr
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The broker's side
// ---------------------------------------------------------------------------------------------

/// Waits (at most [`STEP`]) until `condition` holds.
pub fn wait_for(what: &str, condition: impl FnMut() -> bool) {
    assert!(
        crate::support::eventually(STEP, condition),
        "timed out after {STEP:?} waiting for {what}"
    );
}

/// The rows of a `rabbitmqctl list_*` listing, split at tabs (the header row included: callers
/// pick rows by content).
pub fn listing(args: &[&str]) -> Vec<Vec<String>> {
    crate::support::rabbitmqctl(args)
        .lines()
        .map(|line| line.split('\t').map(str::to_string).collect())
        .collect()
}

/// `(queue, binding key)` of every binding from `exchange` to a queue.
pub fn bindings_from(exchange: &str) -> BTreeSet<(String, String)> {
    listing(&[
        "list_bindings",
        "source_name",
        "destination_name",
        "destination_kind",
        "routing_key",
    ])
    .into_iter()
    .filter(|row| row.len() == 4 && row[0] == exchange && row[2] == "queue")
    .map(|row| (row[1].clone(), row[3].clone()))
    .collect()
}

/// `(durable, messages ready, messages unacknowledged)` of a queue, `None` if there is none.
pub fn queue_state(queue: &str) -> Option<(bool, u64, u64)> {
    listing(&[
        "list_queues",
        "name",
        "durable",
        "messages_ready",
        "messages_unacknowledged",
    ])
    .into_iter()
    .find(|row| row.len() == 4 && row[0] == queue)
    .map(|row| {
        (
            row[1] == "true",
            row[2].parse().unwrap_or(u64::MAX),
            row[3].parse().unwrap_or(u64::MAX),
        )
    })
}

/// `(ack_required, prefetch_count)` of each consumer of a queue.
pub fn consumers_of(queue: &str) -> Vec<(bool, String)> {
    listing(&[
        "list_consumers",
        "queue_name",
        "ack_required",
        "prefetch_count",
    ])
    .into_iter()
    .filter(|row| row.len() == 3 && row[0] == queue)
    .map(|row| (row[1] == "true", row[2].clone()))
    .collect()
}

/// Waits until `task_queue` has `n` consumers, each with manual acks and a prefetch of 1, as
/// the worker asks.
pub fn wait_for_workers(n: usize) {
    let mut seen = Vec::new();
    let ready = crate::support::eventually(STEP, || {
        seen = consumers_of(TASK_QUEUE);
        seen.len() == n
    });
    assert!(
        ready,
        "`task_queue` should have {n} consumer(s), it has {seen:?}"
    );
    for (ack_required, prefetch) in &seen {
        assert!(
            *ack_required && prefetch == "1",
            "a worker should consume with manual acks and prefetch 1, `rabbitmqctl \
             list_consumers` says ack_required={ack_required} prefetch_count={prefetch}"
        );
    }
}

/// Waits until `task_queue` holds no message, ready or unacknowledged, and checks it is durable.
pub fn wait_task_queue_empty() {
    let mut state = None;
    let empty = crate::support::eventually(STEP, || {
        state = queue_state(TASK_QUEUE);
        matches!(state, Some((_, 0, 0)))
    });
    assert!(
        empty,
        "`task_queue` should be left empty, it is (durable, ready, unacked) = {state:?}"
    );
    assert!(
        matches!(state, Some((true, _, _))),
        "`task_queue` is not durable"
    );
}

/// Declares `task_queue` as the tutorial does (durable), waits until no consumer of an earlier
/// test is left on it and empties it.
pub fn prepare_task_queue() {
    let connection = crate::support::connect();
    let durable = || QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let mut channel = connection.channel().expect("opening a channel");
    if channel.queue_declare(TASK_QUEUE, durable()).is_err() {
        // Left declared otherwise (not durable, another queue type...): start afresh.
        channel = connection.channel().expect("opening a channel");
        channel
            .queue_delete(TASK_QUEUE, QueueDeleteOptions::default())
            .expect("deleting `task_queue`");
        channel
            .queue_declare(TASK_QUEUE, durable())
            .expect("declaring `task_queue`");
    }
    // A worker of an earlier test may take a moment to go once its process has exited.
    let deadline = Instant::now() + STEP;
    loop {
        let ok = channel
            .queue_declare(TASK_QUEUE, durable())
            .expect("declaring `task_queue`");
        if ok.consumer_count == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "`task_queue` has {} consumer(s) that are not this test's; stop them (a `worker` \
             left running?) and rerun",
            ok.consumer_count
        );
        thread::sleep(Duration::from_millis(100));
    }
    channel
        .queue_purge(TASK_QUEUE)
        .expect("purging `task_queue`");
    connection.close().expect("closing the connection");
}

/// Deletes `exchange`, with whatever bindings an earlier run left; the programs declare it
/// again.
pub fn prepare_exchange(exchange: &str) {
    let connection = crate::support::connect();
    let channel = connection.channel().expect("opening a channel");
    channel
        .exchange_delete(exchange, Default::default())
        .unwrap_or_else(|e| panic!("deleting the exchange `{exchange}`: {e}"));
    connection.close().expect("closing the connection");
    wait_for(&format!("no binding from `{exchange}`"), || {
        bindings_from(exchange).is_empty()
    });
}

/// Starts a log consumer with `keys` as arguments, waits for its `Waiting` line, and checks
/// that its own server-named queue is bound to `exchange` with exactly `expected_keys` (for
/// the fanout `logs`, pika binds with the queue's name, and so does cottontail). Returns the
/// consumer and its queue.
pub fn start_log_consumer(
    lang: Lang,
    program: &str,
    exchange: &str,
    keys: &[&str],
    expected_keys: Option<&[&str]>,
) -> (Program, String) {
    let before = bindings_from(exchange);
    let mut consumer = spawn(lang, program, keys);
    consumer.expect_line(WAITING_FOR_LOGS);
    let mut new = BTreeSet::new();
    let bound = crate::support::eventually(STEP, || {
        new = bindings_from(exchange)
            .difference(&before)
            .cloned()
            .collect();
        !new.is_empty()
    });
    assert!(
        bound,
        "{} printed {WAITING_FOR_LOGS:?} but `rabbitmqctl list_bindings` shows no binding of \
         its queue to `{exchange}`\n{}",
        consumer.name,
        consumer.context()
    );
    let queue = new.first().map(|(queue, _)| queue.clone()).unwrap();
    assert!(
        queue.starts_with("amq.gen-"),
        "{} should bind a server-named queue, not {queue:?}",
        consumer.name
    );
    let expected: BTreeSet<(String, String)> = match expected_keys {
        Some(keys) => keys
            .iter()
            .map(|key| (queue.clone(), key.to_string()))
            .collect(),
        None => [(queue.clone(), queue.clone())].into(),
    };
    assert_eq!(
        new, expected,
        "`rabbitmqctl list_bindings` shows the wrong bindings from `{exchange}` for {}",
        consumer.name
    );
    (consumer, queue)
}

/// Waits until a consumer's exclusive queue and its bindings are gone.
pub fn wait_queue_gone(exchange: &str, queue: &str) {
    wait_for(
        &format!("the exclusive queue {queue} and its bindings to be deleted"),
        || queue_state(queue).is_none() && !bindings_from(exchange).iter().any(|(q, _)| q == queue),
    );
}

/// A queue of the test's own, bound to `exchange` with `keys`, to catch what producers send.
pub fn capture(exchange: &str, keys: &[&str]) -> (Connection, Channel, String) {
    let connection = crate::support::connect();
    let channel = connection.channel().expect("opening a channel");
    let queue = channel
        .queue_declare(
            "",
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
        )
        .expect("declaring a capture queue")
        .queue;
    for key in keys {
        channel
            .queue_bind(
                &queue,
                exchange,
                QueueBindOptions {
                    routing_key: Some(key.to_string()),
                    ..Default::default()
                },
            )
            .unwrap_or_else(|e| panic!("binding a capture queue to `{exchange}`: {e}"));
    }
    (connection, channel, queue)
}

/// Runs the Rust and the Python producer with the same arguments: both must print `expected`,
/// and send the same message, which must be `body` with `routing_key`, and persistent for
/// `new_task` (the message is taken from `queue`).
pub fn producers_agree(
    channel: &Channel,
    queue: &str,
    program: &str,
    args: &[&str],
    expected: &str,
    routing_key: &str,
    body: &str,
) {
    let mut messages = Vec::new();
    for lang in [Rust, Python] {
        produce(lang, program, args, expected);
        let mut message = None;
        let got = crate::support::eventually(STEP, || {
            message = channel
                .basic_get(queue, true)
                .expect("basic_get on the capture queue");
            message.is_some()
        });
        assert!(
            got,
            "{} sent nothing to {queue}",
            label(lang, program, args)
        );
        let message = message.unwrap();
        assert_eq!(
            (message.method.routing_key.as_str(), message.body.as_slice()),
            (routing_key, body.as_bytes()),
            "{} sent the wrong message",
            label(lang, program, args)
        );
        if program == "new_task" {
            assert_eq!(
                message.properties.delivery_mode(),
                Some(2),
                "{} should publish persistent messages (delivery_mode 2)",
                label(lang, program, args)
            );
        }
        messages.push(message);
    }
    assert_eq!(
        messages[0].properties, messages[1].properties,
        "the Rust and the Python {program} {args:?} send messages with different properties"
    );
    assert!(
        channel
            .basic_get(queue, true)
            .expect("basic_get on the capture queue")
            .is_none(),
        "{program} {args:?} sent more than one message"
    );
}
