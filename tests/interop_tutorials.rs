//! Tutorials 2 to 5 ("Work Queues", "Publish/Subscribe", "Routing", "Topics") across
//! implementations: the Rust examples against the official Python (pika) programs in
//! `tests/interop/`, in both directions, and against each other.
//!
//! Every test runs real processes against the broker on 127.0.0.1 and checks, line for line,
//! that they print what the Python tutorial prints, and what the broker holds meanwhile and
//! afterwards (bindings, consumers and their prefetch, queues left empty or gone). A Rust
//! consumer stopped with Ctrl-C (SIGINT) prints `Interrupted` and exits 0; the official Python
//! programs of these tutorials do not catch Ctrl-C, so theirs end with a `KeyboardInterrupt`
//! traceback on stderr.
//!
//! The tutorials use fixed names (`task_queue`, `logs`, `direct_logs`, `topic_logs`): tests
//! sharing one run one at a time; each starts by clearing what an earlier run may have left.
//!
//! The Python side needs `COTTONTAIL_PYTHON`, a Python with pika, which `scripts/test.sh` sets
//! up; without it those tests fail (they never pass silently).

#[path = "support/process.rs"]
mod process;
mod support;

use std::collections::BTreeSet;
use std::ops::{Deref, DerefMut};
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use cottontail::{Channel, Connection, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};

use process::{python_script, script, Finished, Running, INTERRUPTED, STEP};

const TASK_QUEUE: &str = "task_queue";
const LOGS: &str = "logs";
const DIRECT_LOGS: &str = "direct_logs";
const TOPIC_LOGS: &str = "topic_logs";

const WAITING_FOR_MESSAGES: &str = " [*] Waiting for messages. To exit press CTRL+C";
const WAITING_FOR_LOGS: &str = " [*] Waiting for logs. To exit press CTRL+C";
const DONE: &str = " [x] Done";

/// Tests that use the same fixed name run one at a time; tests of different tutorials may
/// overlap.
fn serialize(name: &str) -> MutexGuard<'static, ()> {
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
const PROGRAMS: [&str; 8] = [
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
enum Lang {
    Rust,
    Python,
}

use Lang::{Python, Rust};

/// The Rust example or the Python script `program` with `args`, talking to the test broker.
fn command(lang: Lang, program: &str, args: &[&str]) -> Command {
    match lang {
        Rust => {
            let mut command = process::example(&PROGRAMS, program);
            command.args(args);
            command
        }
        Python => python_script(&format!("{program}.py"), args),
    }
}

fn label(lang: Lang, program: &str, args: &[&str]) -> String {
    match lang {
        Rust => format!("Rust {program} {args:?}"),
        Python => format!("Python {program}.py {args:?}"),
    }
}

/// Starts `program` (a consumer, usually).
fn spawn(lang: Lang, program: &str, args: &[&str]) -> Program {
    Program {
        running: Running::start(label(lang, program, args), command(lang, program, args)),
        lang,
    }
}

/// Runs `program` to its end.
fn run(lang: Lang, program: &str, args: &[&str]) -> Finished {
    spawn(lang, program, args).finish()
}

/// Runs a producer, which must print exactly `expected` and exit 0.
fn produce(lang: Lang, program: &str, args: &[&str], expected: &str) {
    run(lang, program, args).assert_produced(&[expected]);
}

/// Words of a command line (no quoting: the tests' arguments have no spaces).
fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

// ---------------------------------------------------------------------------------------------
// Running processes
// ---------------------------------------------------------------------------------------------

/// A running Rust example or Python script of these tutorials (a [`Running`] that knows its
/// language, which decides how it stops on Ctrl-C).
struct Program {
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
    fn finish(self) -> Finished {
        self.running.finish()
    }

    /// Ctrl-C, then checks the consumer's whole output: `expected`, then `Interrupted` and exit
    /// status 0 for a Rust example; a Python one (the official programs of these tutorials do
    /// not catch Ctrl-C) prints nothing more and dies of its `KeyboardInterrupt`.
    fn stop(self, expected: &[&str]) {
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
fn wait_for(what: &str, condition: impl FnMut() -> bool) {
    assert!(
        support::eventually(STEP, condition),
        "timed out after {STEP:?} waiting for {what}"
    );
}

/// The rows of a `rabbitmqctl list_*` listing, split at tabs (the header row included: callers
/// pick rows by content).
fn listing(args: &[&str]) -> Vec<Vec<String>> {
    support::rabbitmqctl(args)
        .lines()
        .map(|line| line.split('\t').map(str::to_string).collect())
        .collect()
}

/// `(queue, binding key)` of every binding from `exchange` to a queue.
fn bindings_from(exchange: &str) -> BTreeSet<(String, String)> {
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
fn queue_state(queue: &str) -> Option<(bool, u64, u64)> {
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
fn consumers_of(queue: &str) -> Vec<(bool, String)> {
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
fn wait_for_workers(n: usize) {
    let mut seen = Vec::new();
    let ready = support::eventually(STEP, || {
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
fn wait_task_queue_empty() {
    let mut state = None;
    let empty = support::eventually(STEP, || {
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
fn prepare_task_queue() {
    let connection = support::connect();
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
fn prepare_exchange(exchange: &str) {
    let connection = support::connect();
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
fn start_log_consumer(
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
    let bound = support::eventually(STEP, || {
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
fn wait_queue_gone(exchange: &str, queue: &str) {
    wait_for(
        &format!("the exclusive queue {queue} and its bindings to be deleted"),
        || queue_state(queue).is_none() && !bindings_from(exchange).iter().any(|(q, _)| q == queue),
    );
}

/// A queue of the test's own, bound to `exchange` with `keys`, to catch what producers send.
fn capture(exchange: &str, keys: &[&str]) -> (Connection, Channel, String) {
    let connection = support::connect();
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
fn producers_agree(
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
        let got = support::eventually(STEP, || {
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

// ---------------------------------------------------------------------------------------------
// Tutorial 2: Work Queues (new_task / worker)
// ---------------------------------------------------------------------------------------------

/// One producer, one worker: each task is received, worked on and acknowledged; `task_queue`
/// (durable) is left empty.
fn work_queue(producer: Lang, worker_lang: Lang) {
    let _serial = serialize(TASK_QUEUE);
    prepare_task_queue();

    let mut worker = spawn(worker_lang, "worker", &[]);
    worker.expect_line(WAITING_FOR_MESSAGES);
    wait_for_workers(1);

    produce(
        producer,
        "new_task",
        &["First", "message."],
        " [x] Sent First message.",
    );
    produce(producer, "new_task", &[], " [x] Sent Hello World!");

    worker.expect_line(" [x] Received First message.");
    worker.expect_line(DONE);
    worker.expect_line(" [x] Received Hello World!");
    worker.expect_line(DONE);
    wait_task_queue_empty();

    worker.stop(&[
        WAITING_FOR_MESSAGES,
        " [x] Received First message.",
        DONE,
        " [x] Received Hello World!",
        DONE,
    ]);
    wait_task_queue_empty();
}

#[test]
fn work_queue_rust_new_task_to_python_worker() {
    work_queue(Rust, Python);
}

#[test]
fn work_queue_python_new_task_to_rust_worker() {
    work_queue(Python, Rust);
}

/// `new_task` prints and sends what `new_task.py` does for the same arguments: the message
/// (arguments joined by spaces, or `Hello World!`) to `task_queue`, persistent.
#[test]
fn work_queue_new_task_sends_what_python_sends() {
    let _serial = serialize(TASK_QUEUE);
    prepare_task_queue();
    let connection = support::connect();
    let channel = connection.channel().expect("opening a channel");
    for (args, message) in [
        (&[][..], "Hello World!"),
        (&["Third", "message..."][..], "Third message..."),
        (&[""][..], "Hello World!"),
        (&["it's", "café"][..], "it's café"),
    ] {
        producers_agree(
            &channel,
            TASK_QUEUE,
            "new_task",
            args,
            &format!(" [x] Sent {message}"),
            TASK_QUEUE,
            message,
        );
    }
    connection.close().expect("closing the connection");
    wait_task_queue_empty();
}

/// Two Rust workers with prefetch 1 share six tasks: the first takes 4 seconds, the others 1.
/// The worker busy with the long one gets no other task meanwhile (with plain round-robin it
/// would get every other task), so the other worker does at least four.
#[test]
fn work_queue_two_rust_workers_share_tasks_fairly() {
    let _serial = serialize(TASK_QUEUE);
    prepare_task_queue();

    let mut workers = [spawn(Rust, "worker", &[]), spawn(Rust, "worker", &[])];
    for worker in &mut workers {
        worker.expect_line(WAITING_FOR_MESSAGES);
    }
    wait_for_workers(2);

    let tasks = [
        "Task 1....",
        "Task 2.",
        "Task 3.",
        "Task 4.",
        "Task 5.",
        "Task 6.",
    ];
    for task in tasks {
        produce(Rust, "new_task", &words(task), &format!(" [x] Sent {task}"));
    }

    // Six `Received` and six `Done` lines, from either worker.
    let deadline = Instant::now() + 2 * STEP;
    while workers.iter().map(|w| w.stdout.len() - 1).sum::<usize>() < 2 * tasks.len() {
        assert!(
            Instant::now() < deadline,
            "the workers did not do the {} tasks in time\n{}\n{}",
            tasks.len(),
            workers[0].context(),
            workers[1].context()
        );
        for worker in &mut workers {
            worker.poll_line(Duration::from_millis(20));
        }
    }

    // Each worker prints `Received`, then `Done`, one task at a time.
    let mut handled: Vec<Vec<String>> = Vec::new();
    for worker in &workers {
        let mut mine = Vec::new();
        for pair in worker.stdout[1..].chunks(2) {
            let task = pair[0].strip_prefix(" [x] Received ");
            assert!(
                task.is_some() && pair.get(1).map(String::as_str) == Some(DONE),
                "a worker should print ` [x] Received <task>` then ` [x] Done` for each task\n{}",
                worker.context()
            );
            mine.push(task.unwrap().to_string());
        }
        handled.push(mine);
    }
    let mut all: Vec<&str> = handled.iter().flatten().map(String::as_str).collect();
    all.sort_unstable();
    assert_eq!(all, tasks, "each task should be done exactly once");
    let heavy = usize::from(!handled[0].iter().any(|t| t == tasks[0]));
    let light = 1 - heavy;
    assert!(
        handled[heavy].len() <= 2 && handled[light].len() >= 4,
        "with prefetch 1 the worker busy with {:?} should get at most one more task while the \
         other does the rest; they did {:?} and {:?}",
        tasks[0],
        handled[heavy],
        handled[light]
    );

    wait_task_queue_empty();
    for worker in workers {
        let lines = worker.stdout.clone();
        worker.stop(&lines.iter().map(String::as_str).collect::<Vec<_>>());
    }
    wait_task_queue_empty();
}

/// A worker killed (SIGKILL) in the middle of a task never acknowledges it: the broker gives
/// the task to the other worker, which does it; nothing is lost.
#[test]
fn work_queue_killed_worker_loses_nothing() {
    let _serial = serialize(TASK_QUEUE);
    prepare_task_queue();
    const TASK: &str = "Long task....";
    let received = format!(" [x] Received {TASK}");

    let mut first = spawn(Rust, "worker", &[]);
    first.expect_line(WAITING_FOR_MESSAGES);
    wait_for_workers(1);
    produce(Rust, "new_task", &words(TASK), &format!(" [x] Sent {TASK}"));
    first.expect_line(&received);

    let mut second = spawn(Rust, "worker", &[]);
    second.expect_line(WAITING_FOR_MESSAGES);
    wait_for_workers(2);
    assert!(
        matches!(queue_state(TASK_QUEUE), Some((true, 0, 1))),
        "the task should be unacknowledged, in the first worker's hands: `task_queue` is \
         (durable, ready, unacked) = {:?}",
        queue_state(TASK_QUEUE)
    );

    first.kill();
    let killed = first.finish();
    assert_eq!(
        killed.stdout,
        [WAITING_FOR_MESSAGES, received.as_str()],
        "the first worker should be killed before it finished the task; its stderr: {}",
        killed.stderr
    );
    assert_eq!(
        killed.status.signal(),
        Some(9),
        "the first worker was not killed"
    );

    second.expect_line(&received);
    second.expect_line(DONE);
    wait_task_queue_empty();
    second.stop(&[WAITING_FOR_MESSAGES, received.as_str(), DONE]);
}

/// Ctrl-C in the middle of a task lets the Rust worker finish it gracefully (` [x] Done`, the
/// ack, then `Interrupted`): nothing is left in `task_queue`. A second Ctrl-C stops it at once
/// (as Ctrl-C interrupts Python's `time.sleep`), without ` [x] Done` or an ack: the task goes
/// back to `task_queue`, and the Python worker does it.
#[test]
fn work_queue_ctrl_c_mid_task_finishes_it_and_a_second_gives_it_back() {
    let _serial = serialize(TASK_QUEUE);
    prepare_task_queue();
    const TASK: &str = "Slow task...";
    let received = format!(" [x] Received {TASK}");

    // One Ctrl-C: the task is finished and acked.
    let mut rust = spawn(Rust, "worker", &[]);
    rust.expect_line(WAITING_FOR_MESSAGES);
    wait_for_workers(1);
    produce(Rust, "new_task", &words(TASK), &format!(" [x] Sent {TASK}"));
    rust.expect_line(&received);
    rust.stop(&[WAITING_FOR_MESSAGES, received.as_str(), DONE]);
    wait_for("the finished task to be acked, `task_queue` empty", || {
        matches!(queue_state(TASK_QUEUE), Some((true, 0, 0)))
    });

    // Two: it stops at once and gives the task back.
    let mut rust = spawn(Rust, "worker", &[]);
    rust.expect_line(WAITING_FOR_MESSAGES);
    wait_for_workers(1);
    produce(Rust, "new_task", &words(TASK), &format!(" [x] Sent {TASK}"));
    rust.expect_line(&received);
    let interrupted = Instant::now();
    rust.interrupt();
    std::thread::sleep(Duration::from_millis(200));
    rust.stop(&[WAITING_FOR_MESSAGES, received.as_str()]);
    assert!(
        interrupted.elapsed() < Duration::from_secs(2),
        "the worker took {:?} to stop on a second Ctrl-C: it should not finish its 3-second task",
        interrupted.elapsed()
    );
    wait_for(
        "the interrupted task to be back in `task_queue`, ready",
        || matches!(queue_state(TASK_QUEUE), Some((true, 1, 0))),
    );

    let mut python = spawn(Python, "worker", &[]);
    python.expect_line(WAITING_FOR_MESSAGES);
    python.expect_line(&received);
    python.expect_line(DONE);
    wait_task_queue_empty();
    python.stop(&[WAITING_FOR_MESSAGES, received.as_str(), DONE]);
}

// ---------------------------------------------------------------------------------------------
// Tutorial 3: Publish/Subscribe (emit_log / receive_logs)
// ---------------------------------------------------------------------------------------------

/// Messages sent by `publish_subscribe` and what `receive_logs` prints for each.
const LOG_MESSAGES: [(&[&str], &str, &str); 3] = [
    (
        &[],
        " [x] Sent info: Hello World!",
        " [x] b'info: Hello World!'",
    ),
    (
        &["warning:", "it's", "café"],
        " [x] Sent warning: it's café",
        r#" [x] b"warning: it's caf\xc3\xa9""#,
    ),
    (
        &["error:", "'single'", "and", "\"double\"", "quotes,", "a\\b"],
        r#" [x] Sent error: 'single' and "double" quotes, a\b"#,
        r#" [x] b'error: \'single\' and "double" quotes, a\\b'"#,
    ),
];

/// The fanout: one consumer's server-named exclusive queue bound to `logs`, every message
/// printed as Python prints bytes, the queue gone once the consumer stops.
fn publish_subscribe(producer: Lang, consumer: Lang) {
    let _serial = serialize(LOGS);
    prepare_exchange(LOGS);

    let (mut receiver, queue) = start_log_consumer(consumer, "receive_logs", LOGS, &[], None);
    let mut expected = vec![WAITING_FOR_LOGS];
    for (args, sent, printed) in LOG_MESSAGES {
        produce(producer, "emit_log", args, sent);
        receiver.expect_line(printed);
        expected.push(printed);
    }
    receiver.stop(&expected);
    wait_queue_gone(LOGS, &queue);
}

#[test]
fn publish_subscribe_rust_emit_log_to_python_receive_logs() {
    publish_subscribe(Rust, Python);
}

#[test]
fn publish_subscribe_python_emit_log_to_rust_receive_logs() {
    publish_subscribe(Python, Rust);
}

/// The tutorial's "two receive_logs running": a Rust and a Python receiver at once, each with
/// its own queue bound to `logs`, each get every message of both producers.
#[test]
fn publish_subscribe_rust_and_python_receivers_both_get_everything() {
    let _serial = serialize(LOGS);
    prepare_exchange(LOGS);

    let (mut rust, rust_queue) = start_log_consumer(Rust, "receive_logs", LOGS, &[], None);
    let (mut python, python_queue) = start_log_consumer(Python, "receive_logs", LOGS, &[], None);
    assert_eq!(
        bindings_from(LOGS),
        [
            (rust_queue.clone(), rust_queue.clone()),
            (python_queue.clone(), python_queue.clone())
        ]
        .into(),
        "`rabbitmqctl list_bindings` should show the two receivers' queues bound to `logs`"
    );

    let mut expected = vec![WAITING_FOR_LOGS];
    for producer in [Rust, Python] {
        for (args, sent, printed) in LOG_MESSAGES {
            produce(producer, "emit_log", args, sent);
            rust.expect_line(printed);
            python.expect_line(printed);
            expected.push(printed);
        }
    }
    rust.stop(&expected);
    python.stop(&expected);
    wait_queue_gone(LOGS, &rust_queue);
    wait_queue_gone(LOGS, &python_queue);
}

/// `emit_log` prints and sends what `emit_log.py` does for the same arguments.
#[test]
fn publish_subscribe_emit_log_sends_what_python_sends() {
    let _serial = serialize(LOGS);
    prepare_exchange(LOGS);
    // The producers declare `logs`; the capture queue needs it first.
    produce(Rust, "emit_log", &[], " [x] Sent info: Hello World!");
    let (connection, channel, queue) = capture(LOGS, &[""]);
    for (args, message) in [
        (&[][..], "info: Hello World!"),
        (&["error:", "disk", "full"][..], "error: disk full"),
        (&[""][..], "info: Hello World!"),
    ] {
        producers_agree(
            &channel,
            &queue,
            "emit_log",
            args,
            &format!(" [x] Sent {message}"),
            "",
            message,
        );
    }
    connection.close().expect("closing the connection");
}

// ---------------------------------------------------------------------------------------------
// Tutorial 4: Routing (emit_log_direct / receive_logs_direct)
// ---------------------------------------------------------------------------------------------

/// A consumer bound to `direct_logs` with two severities gets exactly the messages published
/// with those routing keys.
fn routing(producer: Lang, consumer: Lang, severities: [&str; 2]) {
    let _serial = serialize(DIRECT_LOGS);
    prepare_exchange(DIRECT_LOGS);

    let (mut receiver, queue) = start_log_consumer(
        consumer,
        "receive_logs_direct",
        DIRECT_LOGS,
        &severities,
        Some(&severities),
    );
    let sends: [(&[&str], &str, &str); 5] = [
        (
            &["error", "Run.", "Run.", "Or", "it", "will", "explode."],
            " [x] Sent error:Run. Run. Or it will explode.",
            " [x] error:b'Run. Run. Or it will explode.'",
        ),
        (
            &["warning"],
            " [x] Sent warning:Hello World!",
            " [x] warning:b'Hello World!'",
        ),
        (
            &[],
            " [x] Sent info:Hello World!",
            " [x] info:b'Hello World!'",
        ),
        (
            &["debug", "not", "for", "anyone"],
            " [x] Sent debug:not for anyone",
            " [x] debug:b'not for anyone'",
        ),
        (
            &["info", "disk", "95%", "full"],
            " [x] Sent info:disk 95% full",
            " [x] info:b'disk 95% full'",
        ),
    ];
    let mut expected = vec![WAITING_FOR_LOGS];
    for (args, sent, printed) in sends {
        produce(producer, "emit_log_direct", args, sent);
        let severity = args.first().copied().unwrap_or("info");
        if severities.contains(&severity) {
            expected.push(printed);
        }
    }
    // Last, a message for the consumer: anything it should not have got would come before.
    let last = format!(" [x] {}:b'The end'", severities[0]);
    produce(
        producer,
        "emit_log_direct",
        &[severities[0], "The", "end"],
        &format!(" [x] Sent {}:The end", severities[0]),
    );
    expected.push(&last);
    for line in &expected[1..] {
        receiver.expect_line(line);
    }
    receiver.stop(&expected);
    wait_queue_gone(DIRECT_LOGS, &queue);
}

#[test]
fn routing_rust_emit_log_direct_to_python_receive_logs_direct() {
    routing(Rust, Python, ["warning", "error"]);
}

#[test]
fn routing_python_emit_log_direct_to_rust_receive_logs_direct() {
    routing(Python, Rust, ["info", "error"]);
}

/// Without a severity, `receive_logs_direct` writes its usage line to stderr and exits 1,
/// as `receive_logs_direct.py` does.
#[test]
fn routing_receive_logs_direct_without_severity_prints_usage() {
    let _serial = serialize(DIRECT_LOGS);
    for lang in [Rust, Python] {
        let done = run(lang, "receive_logs_direct", &[]);
        let program = match lang {
            Rust => process::examples(&PROGRAMS)["receive_logs_direct"]
                .display()
                .to_string(),
            Python => script("receive_logs_direct.py").display().to_string(),
        };
        assert_eq!(
            (
                done.status.code(),
                done.stdout.as_slice(),
                done.stderr.as_str()
            ),
            (
                Some(1),
                &[][..],
                format!("Usage: {program} [info] [warning] [error]\n").as_str()
            ),
            "{} without arguments",
            done.name
        );
    }
}

/// `emit_log_direct` prints and sends what `emit_log_direct.py` does for the same arguments.
#[test]
fn routing_emit_log_direct_sends_what_python_sends() {
    let _serial = serialize(DIRECT_LOGS);
    prepare_exchange(DIRECT_LOGS);
    produce(Rust, "emit_log_direct", &[], " [x] Sent info:Hello World!");
    let (connection, channel, queue) = capture(DIRECT_LOGS, &["info", "error", ""]);
    for (args, severity, message) in [
        (&[][..], "info", "Hello World!"),
        (&["error"][..], "error", "Hello World!"),
        (&["error", "Run.", "Run."][..], "error", "Run. Run."),
        (&["", "no", "severity"][..], "", "no severity"),
    ] {
        producers_agree(
            &channel,
            &queue,
            "emit_log_direct",
            args,
            &format!(" [x] Sent {severity}:{message}"),
            severity,
            message,
        );
    }
    connection.close().expect("closing the connection");
}

// ---------------------------------------------------------------------------------------------
// Tutorial 5: Topics (emit_log_topic / receive_logs_topic)
// ---------------------------------------------------------------------------------------------

/// Messages for the topic tests: emit_log_topic's arguments, the routing key it uses (the
/// first argument only when a message follows: `anonymous.info` otherwise) and the body.
const TOPIC_MESSAGES: [(&[&str], &str, &str); 6] = [
    (
        &["kern.critical", "A", "critical", "kernel", "error"],
        "kern.critical",
        "A critical kernel error",
    ),
    (&["kern.info", "booted"], "kern.info", "booted"),
    (
        &["auth.critical", "root", "login"],
        "auth.critical",
        "root login",
    ),
    (&[], "anonymous.info", "Hello World!"),
    (&["kern.critical"], "anonymous.info", "Hello World!"),
    (&["cron.info.daily", "ran"], "cron.info.daily", "ran"),
];

/// Whether a topic binding key matches a routing key (`*` one word, `#` zero or more).
fn topic_matches(key: &[&str], routing: &[&str]) -> bool {
    match (key.first(), routing.first()) {
        (None, None) => true,
        (Some(&"#"), _) => {
            topic_matches(&key[1..], routing)
                || (!routing.is_empty() && topic_matches(key, &routing[1..]))
        }
        (Some(&k), Some(&r)) if k == "*" || k == r => topic_matches(&key[1..], &routing[1..]),
        _ => false,
    }
}

/// What a receiver bound with `keys` prints for the messages sent, in order.
fn topic_lines(keys: &[&str], sent: &[(String, String)]) -> Vec<String> {
    sent.iter()
        .filter(|(routing_key, _)| {
            let routing: Vec<&str> = routing_key.split('.').collect();
            keys.iter()
                .any(|key| topic_matches(&key.split('.').collect::<Vec<_>>(), &routing))
        })
        .map(|(routing_key, body)| format!(" [x] {routing_key}:b'{body}'"))
        .collect()
}

/// Receivers bound to `topic_logs` with `bindings` (one process each) get exactly the messages
/// whose routing keys match, whoever sends them (`producers` take turns).
fn topics(producers: &[Lang], receivers: &[(Lang, &[&str])]) {
    let _serial = serialize(TOPIC_LOGS);
    prepare_exchange(TOPIC_LOGS);

    let mut running = Vec::new();
    for &(lang, keys) in receivers {
        let (receiver, queue) =
            start_log_consumer(lang, "receive_logs_topic", TOPIC_LOGS, keys, Some(keys));
        running.push((receiver, queue, keys));
    }

    let mut sent = Vec::new();
    // Last, a message every receiver of these tests gets: anything a receiver should not have
    // got would come before it.
    let last: (&[&str], &str, &str) =
        (&["kern.critical", "The", "end"], "kern.critical", "The end");
    for (i, &(args, routing_key, body)) in TOPIC_MESSAGES.iter().chain([&last]).enumerate() {
        produce(
            producers[i % producers.len()],
            "emit_log_topic",
            args,
            &format!(" [x] Sent {routing_key}:{body}"),
        );
        sent.push((routing_key.to_string(), body.to_string()));
    }

    for (mut receiver, queue, keys) in running {
        let lines = topic_lines(keys, &sent);
        assert_eq!(
            lines.last().map(String::as_str),
            Some(" [x] kern.critical:b'The end'"),
            "the test's last message should match {keys:?}"
        );
        for line in &lines {
            receiver.expect_line(line);
        }
        let mut expected = vec![WAITING_FOR_LOGS];
        expected.extend(lines.iter().map(String::as_str));
        receiver.stop(&expected);
        wait_queue_gone(TOPIC_LOGS, &queue);
    }
}

#[test]
fn topics_rust_emit_log_topic_to_python_receive_logs_topic() {
    topics(&[Rust], &[(Python, &["kern.*", "*.critical"])]);
}

#[test]
fn topics_python_emit_log_topic_to_rust_receive_logs_topic() {
    topics(&[Python], &[(Rust, &["#"])]);
}

/// The tutorial's bindings, one Rust receiver each: `kern.*` gets all of facility `kern`,
/// `*.critical` every critical log, `#` everything, `kern.critical` just that; the producers
/// (Rust and Python in turn) send `kern.critical`, `kern.info`, `auth.critical`,
/// `anonymous.info`...
#[test]
fn topics_four_receivers_get_what_the_tutorial_says() {
    let receivers: [(Lang, &[&str]); 4] = [
        (Rust, &["kern.*"]),
        (Rust, &["*.critical"]),
        (Rust, &["#"]),
        (Rust, &["kern.critical"]),
    ];
    // The tutorial's expectations, spelled out, for the first four messages.
    let first_four: Vec<(String, String)> = TOPIC_MESSAGES[..4]
        .iter()
        .map(|&(_, key, body)| (key.to_string(), body.to_string()))
        .collect();
    let keys_received = |keys: &[&str]| -> Vec<String> {
        topic_lines(keys, &first_four)
            .iter()
            .map(|line| line[5..line.find(':').unwrap()].to_string())
            .collect()
    };
    assert_eq!(keys_received(&["kern.*"]), ["kern.critical", "kern.info"]);
    assert_eq!(
        keys_received(&["*.critical"]),
        ["kern.critical", "auth.critical"]
    );
    assert_eq!(
        keys_received(&["#"]),
        [
            "kern.critical",
            "kern.info",
            "auth.critical",
            "anonymous.info"
        ]
    );
    assert_eq!(keys_received(&["kern.critical"]), ["kern.critical"]);

    topics(&[Rust, Python], &receivers);
}

/// Without a binding key, `receive_logs_topic` writes its usage line to stderr and exits 1,
/// as `receive_logs_topic.py` does.
#[test]
fn topics_receive_logs_topic_without_binding_key_prints_usage() {
    let _serial = serialize(TOPIC_LOGS);
    for lang in [Rust, Python] {
        let done = run(lang, "receive_logs_topic", &[]);
        let program = match lang {
            Rust => process::examples(&PROGRAMS)["receive_logs_topic"]
                .display()
                .to_string(),
            Python => script("receive_logs_topic.py").display().to_string(),
        };
        assert_eq!(
            (
                done.status.code(),
                done.stdout.as_slice(),
                done.stderr.as_str()
            ),
            (
                Some(1),
                &[][..],
                format!("Usage: {program} [binding_key]...\n").as_str()
            ),
            "{} without arguments",
            done.name
        );
    }
}

/// `emit_log_topic` prints and sends what `emit_log_topic.py` does for the same arguments,
/// including its quirk: a lone argument is not taken as the routing key.
#[test]
fn topics_emit_log_topic_sends_what_python_sends() {
    let _serial = serialize(TOPIC_LOGS);
    prepare_exchange(TOPIC_LOGS);
    produce(
        Rust,
        "emit_log_topic",
        &[],
        " [x] Sent anonymous.info:Hello World!",
    );
    let (connection, channel, queue) = capture(TOPIC_LOGS, &["#"]);
    for (args, routing_key, body) in TOPIC_MESSAGES {
        producers_agree(
            &channel,
            &queue,
            "emit_log_topic",
            args,
            &format!(" [x] Sent {routing_key}:{body}"),
            routing_key,
            body,
        );
    }
    connection.close().expect("closing the connection");
}
