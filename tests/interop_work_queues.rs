//! Tutorial 2 ("Work Queues"; 3 to 5 are in `interop_tutorials.rs`, the helpers in
//! `support/tutorials.rs`) across
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
#[path = "support/tutorials.rs"]
mod tutorials;

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use process::STEP;
use tutorials::*;

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
    // The first through `new_task`; the others from here, milliseconds apart, so that they all
    // wait in the queue while the first keeps its worker busy (five `new_task` processes could
    // take seconds to start on a loaded machine).
    produce(
        Rust,
        "new_task",
        &words(tasks[0]),
        &format!(" [x] Sent {}", tasks[0]),
    );
    let connection = support::connect();
    let channel = connection.channel().expect("opening a channel");
    for task in &tasks[1..] {
        channel
            .basic_publish("", TASK_QUEUE, task.as_bytes())
            .expect("publishing a task");
    }
    connection.close().expect("closing the connection");

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
///
/// The first worker sleeps 4 s on the task: between its ` [x] Received` and the kill, the test
/// only starts the second worker and watches the queue through a passive declare (milliseconds),
/// never `rabbitmqctl` (seconds on a loaded machine, which once let the task finish first).
#[test]
fn work_queue_killed_worker_loses_nothing() {
    let _serial = serialize(TASK_QUEUE);
    prepare_task_queue();
    const TASK: &str = "Long task....";
    let received = format!(" [x] Received {TASK}");
    let connection = support::connect();
    let channel = connection.channel().expect("opening a channel");
    let declared = || {
        let ok = channel
            .queue_declare(TASK_QUEUE, support::consuming::passive())
            .expect("passive declare of `task_queue`");
        (ok.message_count, ok.consumer_count)
    };

    let mut first = spawn(Rust, "worker", &[]);
    first.expect_line(WAITING_FOR_MESSAGES);
    wait_for_workers(1);
    produce(Rust, "new_task", &words(TASK), &format!(" [x] Sent {TASK}"));
    first.expect_line(&received);
    assert_eq!(
        declared(),
        (0, 1),
        "the task should be in the first worker's hands: (ready, consumers) of `task_queue`"
    );

    let mut second = spawn(Rust, "worker", &[]);
    second.expect_line(WAITING_FOR_MESSAGES);
    let mut seen = declared();
    assert!(
        support::eventually(STEP, || {
            seen = declared();
            seen == (0, 2)
        }),
        "the second worker should consume and the task stay with the first: (ready, consumers) \
         of `task_queue` is {seen:?}"
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
    wait_for_workers(1);
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
