//! Request/reply across implementations: tutorial 6 (RPC), its direct reply-to variant, the
//! compute/center programs (one callback queue shared by threads, replies matched by
//! correlation id) and tutorial 7 (publisher confirms), the Rust examples against the Python
//! (pika) programs in `tests/interop/` and against each other.
//!
//! Every test runs real processes against the broker on 127.0.0.1 and checks what they print,
//! line for line; consumers are stopped with Ctrl-C (SIGINT), after which the Rust ones (and
//! `compute.py`) print `Interrupted` and exit 0.
//!
//! The Python side needs `COTTONTAIL_PYTHON`, a Python with pika, which `scripts/test.sh` sets
//! up; without it those tests fail (they never pass silently).

#[path = "support/process.rs"]
mod process;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use cottontail::{Connection, QueueDeclareOptions, QueueDeleteOptions};

use process::{python_script, Finished, Running, INTERRUPTED, STEP};

/// How long a consumer left by someone else may keep a tutorial queue before the test gives up.
const FOREIGN_CONSUMER_WAIT: Duration = Duration::from_secs(30);

const RPC_QUEUE: &str = "rpc_queue";
const COMPUTE_QUEUE: &str = "compute_queue";

const AWAITING: &str = " [x] Awaiting RPC requests";
const SERVED: &str = " [.] fib(30)";
const REQUESTING: &str = " [x] Requesting fib(30)";
const GOT: &str = " [.] Got 832040";
const WAITING_FOR_N: &str = " [*] Waiting for n";

/// The tests share the queues `rpc_queue` and `compute_queue` (those are the programs'), so
/// they run one at a time.
fn serialize() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------------------------
// The programs under test
// ---------------------------------------------------------------------------------------------

const EXAMPLES: [&str; 7] = [
    "rpc_server",
    "rpc_client",
    "rpc_direct_reply_to",
    "rpc_threads",
    "compute",
    "center",
    "publisher_confirms",
];

/// The example `name` (one of [`EXAMPLES`]), talking to the test broker.
fn example(name: &str) -> Command {
    process::example(&EXAMPLES, name)
}

// ---------------------------------------------------------------------------------------------
// The broker's side
// ---------------------------------------------------------------------------------------------

fn connect() -> Connection {
    support::connect()
}

/// Declares `queue` as the programs do and empties it of an earlier run's leftovers; waits for
/// consumers that are not this test's to go (a stray server would answer the test's requests).
fn prepare_queue(queue: &str) {
    let connection = connect();
    let channel = connection.channel().expect("opening a channel");
    channel
        .queue_declare(queue, QueueDeclareOptions::default())
        .unwrap_or_else(|e| panic!("declaring the queue `{queue}`: {e}"));
    channel
        .queue_purge(queue)
        .unwrap_or_else(|e| panic!("purging the queue `{queue}`: {e}"));
    // A consumer of an earlier test may take a moment to go once its process has exited.
    let deadline = Instant::now() + FOREIGN_CONSUMER_WAIT;
    loop {
        let ok = channel
            .queue_declare(queue, QueueDeclareOptions::default())
            .unwrap_or_else(|e| panic!("declaring the queue `{queue}`: {e}"));
        if ok.consumer_count == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the queue `{queue}` has {} consumer(s) that are not this test's (a server left \
             running, or another program using the tutorial's queue name on this broker); stop \
             them and rerun",
            ok.consumer_count
        );
        thread::sleep(Duration::from_millis(100));
    }
    connection.close().expect("closing the connection");
}

/// Messages ready in `queue`, from a passive declare.
fn messages_in_queue(queue: &str) -> u32 {
    let connection = connect();
    let channel = connection.channel().expect("opening a channel");
    let ok = channel
        .queue_declare(
            queue,
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("passive declare of the queue `{queue}`: {e}"));
    connection.close().expect("closing the connection");
    ok.message_count
}

// ---------------------------------------------------------------------------------------------
// Tutorial 6: RPC
// ---------------------------------------------------------------------------------------------

/// The server waits, the client asks for fib(30) and prints the answer; the server printed the
/// request. Returns the server, still running.
fn rpc(server_name: &str, server: Command, client_name: &str, client: Command) -> Running {
    prepare_queue(RPC_QUEUE);

    let mut server = Running::start(server_name, server);
    server.expect_line(AWAITING);

    Running::start(client_name, client)
        .finish()
        .assert_printed(&[REQUESTING, GOT]);

    server.expect_line(SERVED);
    assert_eq!(messages_in_queue(RPC_QUEUE), 0, "`rpc_queue` is not empty");
    server
}

#[test]
fn rust_rpc_client_with_python_rpc_server() {
    let _serial = serialize();
    // The official rpc_server.py has no Ctrl-C handling: it is simply stopped.
    drop(rpc(
        "Python rpc_server.py",
        python_script("rpc_server.py", &[]),
        "Rust rpc_client",
        example("rpc_client"),
    ));
}

#[test]
fn python_rpc_client_with_rust_rpc_server() {
    let _serial = serialize();
    let server = rpc(
        "Rust rpc_server",
        example("rpc_server"),
        "Python rpc_client.py",
        python_script("rpc_client.py", &[]),
    );
    assert_eq!(
        server.interrupt_and_finish().stdout,
        [AWAITING, SERVED, INTERRUPTED]
    );
}

#[test]
fn rust_rpc_client_with_rust_rpc_server() {
    let _serial = serialize();
    let server = rpc(
        "Rust rpc_server",
        example("rpc_server"),
        "Rust rpc_client",
        example("rpc_client"),
    );
    assert_eq!(
        server.interrupt_and_finish().stdout,
        [AWAITING, SERVED, INTERRUPTED]
    );
}

#[test]
fn rust_rpc_direct_reply_to_with_rust_rpc_server() {
    let _serial = serialize();
    let server = rpc(
        "Rust rpc_server",
        example("rpc_server"),
        "Rust rpc_direct_reply_to",
        example("rpc_direct_reply_to"),
    );
    assert_eq!(
        server.interrupt_and_finish().stdout,
        [AWAITING, SERVED, INTERRUPTED]
    );
}

#[test]
fn rust_rpc_direct_reply_to_with_python_rpc_server() {
    let _serial = serialize();
    drop(rpc(
        "Python rpc_server.py",
        python_script("rpc_server.py", &[]),
        "Rust rpc_direct_reply_to",
        example("rpc_direct_reply_to"),
    ));
}

/// `rpc::serve` as the server of the official `rpc_client.py` (pika, an exclusive callback
/// queue): the Python client gets fib(30) with its correlation id, the request is acked, and
/// `serve` returns `Ok` once its consumer is stopped.
#[test]
fn python_rpc_client_with_rpc_serve() {
    let _serial = serialize();
    prepare_queue(RPC_QUEUE);
    let connection = connect();
    let channel = connection.channel().expect("opening a channel");
    let server = channel.clone();
    let serving = thread::spawn(move || {
        cottontail::rpc::serve(&server, RPC_QUEUE, |_properties, body| {
            let n: u64 = std::str::from_utf8(body)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| cottontail::Error::InvalidArgument("not a number".into()))?;
            let (mut a, mut b) = (0u64, 1u64);
            for _ in 0..n {
                (a, b) = (b, a + b);
            }
            Ok(a.to_string().into_bytes())
        })
    });
    Running::start("Python rpc_client.py", python_script("rpc_client.py", &[]))
        .finish()
        .assert_printed(&[REQUESTING, GOT]);
    assert_eq!(messages_in_queue(RPC_QUEUE), 0, "`rpc_queue` is not empty");
    channel.stop_consuming(None).expect("stopping serve");
    serving
        .join()
        .expect("the serving thread panicked")
        .expect("serve ends with Ok once stopped");
}

/// 8 threads of `rpc_threads` share one `RpcClient` against the Python server: each thread's
/// 3 requests get answers (the example checks each is its own fib(n) and fails otherwise),
/// every request is answered once, and the queue is left empty.
#[test]
fn rust_rpc_threads_with_python_rpc_server() {
    let _serial = serialize();
    prepare_queue(RPC_QUEUE);
    let mut server = Running::start("Python rpc_server.py", python_script("rpc_server.py", &[]));
    server.expect_line(AWAITING);
    let threads = Running::start("Rust rpc_threads", example("rpc_threads")).finish();
    threads.assert_exit_0("with 8 threads sharing one RpcClient");
    let mut asked: Vec<u64> = Vec::new();
    let mut answered: Vec<u64> = Vec::new();
    for line in &threads.stdout {
        if let Some(n) = line
            .strip_prefix(" [x] Requesting fib(")
            .and_then(|rest| rest.strip_suffix(')'))
        {
            asked.push(n.parse().expect("a number"));
        } else if let Some((n, _)) = line
            .strip_prefix(" [.] fib(")
            .and_then(|rest| rest.split_once(")="))
        {
            answered.push(n.parse().expect("a number"));
        } else {
            panic!("unexpected line from rpc_threads: {line:?}");
        }
    }
    asked.sort_unstable();
    answered.sort_unstable();
    let all: Vec<u64> = (2..26).collect();
    assert_eq!(asked, all, "every thread asks its own 3 numbers");
    assert_eq!(answered, all, "and gets each answered once");
    for _ in 0..24 {
        let line = server.poll_line(Duration::from_secs(10));
        assert!(
            line.as_deref().is_some_and(|l| l.starts_with(" [.] fib(")),
            "the server printed {line:?} for a request"
        );
    }
    assert_eq!(messages_in_queue(RPC_QUEUE), 0, "`rpc_queue` is not empty");
}

// ---------------------------------------------------------------------------------------------
// compute / center: one callback queue shared by threads, replies matched by correlation id
// ---------------------------------------------------------------------------------------------

/// The numbers thread `i` of `threads` sends, in order, as both center programs compute them.
fn numbers_of_thread(i: usize, threads: usize, requests: usize) -> Vec<u64> {
    (0..requests)
        .map(|k| 10 * (1 + i + k * threads) as u64)
        .collect()
}

/// Checks a center's output: every thread printed ` [x] Requesting increase(n)` then
/// ` [.] increase(n)=n+1` for each of its numbers, in its order, and nothing else was printed.
/// A reply handed to the wrong thread would show as a wrong sum.
fn check_center_output(center: &Finished, threads: usize, requests: usize) {
    let context = || {
        format!(
            "{} printed {} lines: {:#?}\nits stderr: {}",
            center.name,
            center.stdout.len(),
            center.stdout,
            center.stderr
        )
    };
    center.assert_exit_0("");
    // Position of each line; each must appear exactly once.
    let mut position = BTreeMap::new();
    for (index, line) in center.stdout.iter().enumerate() {
        assert!(
            position.insert(line.as_str(), index).is_none(),
            "{line:?} printed twice\n{}",
            context()
        );
    }
    assert_eq!(
        center.stdout.len(),
        2 * threads * requests,
        "wrong number of lines\n{}",
        context()
    );
    for i in 0..threads {
        let mut previous: Option<(u64, usize)> = None;
        for n in numbers_of_thread(i, threads, requests) {
            let request = format!(" [x] Requesting increase({n})");
            let result = format!(" [.] increase({n})={}", n + 1);
            let requested_at = *position
                .get(request.as_str())
                .unwrap_or_else(|| panic!("thread {i} did not print {request:?}\n{}", context()));
            let answered_at = *position.get(result.as_str()).unwrap_or_else(|| {
                panic!(
                    "thread {i} did not print {result:?} (its own result)\n{}",
                    context()
                )
            });
            assert!(
                requested_at < answered_at,
                "{result:?} printed before {request:?}\n{}",
                context()
            );
            if let Some((before, before_answered_at)) = previous {
                assert!(
                    before_answered_at < requested_at,
                    "thread {i} requested {n} before it had the result of {before}\n{}",
                    context()
                );
            }
            previous = Some((n, answered_at));
        }
    }
}

/// Checks what compute nodes printed once interrupted: ` [*] Waiting for n`, one
/// ` [.] increase(n)` per request, all of them together exactly the center's numbers, then
/// `Interrupted`.
fn check_compute_output(computes: &[Finished], threads: usize, requests: usize) {
    let mut served = Vec::new();
    for compute in computes {
        let lines = &compute.stdout;
        assert!(
            lines.len() >= 2 && lines[0] == WAITING_FOR_N && lines[lines.len() - 1] == INTERRUPTED,
            "{} printed {lines:#?}\nits stderr: {}",
            compute.name,
            compute.stderr
        );
        for line in &lines[1..lines.len() - 1] {
            let n = line
                .strip_prefix(" [.] increase(")
                .and_then(|rest| rest.strip_suffix(')'))
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or_else(|| {
                    panic!("unexpected line {line:?} from {}: {lines:#?}", compute.name)
                });
            served.push(n);
        }
    }
    served.sort_unstable();
    let mut expected: Vec<u64> = (0..threads)
        .flat_map(|i| numbers_of_thread(i, threads, requests))
        .collect();
    expected.sort_unstable();
    assert_eq!(
        served, expected,
        "the compute nodes did not serve each request exactly once"
    );
}

/// Compute nodes wait, the center sends its requests from `threads` threads and prints the
/// results; Ctrl-C stops the compute nodes.
fn center_and_compute(
    center_name: &str,
    center: Command,
    computes: Vec<(&str, Command)>,
    threads: usize,
    requests: usize,
) {
    let _serial = serialize();
    prepare_queue(COMPUTE_QUEUE);

    let computes: Vec<Running> = computes
        .into_iter()
        .map(|(name, command)| {
            let mut compute = Running::start(name, command);
            compute.expect_line(WAITING_FOR_N);
            compute
        })
        .collect();

    let center = Running::start(center_name, center).finish_within(4 * STEP);
    check_center_output(&center, threads, requests);

    let computes: Vec<Finished> = computes
        .into_iter()
        .map(Running::interrupt_and_finish)
        .collect();
    check_compute_output(&computes, threads, requests);
    assert_eq!(
        messages_in_queue(COMPUTE_QUEUE),
        0,
        "`compute_queue` is not empty"
    );
}

/// The original's run: 5 threads sending 10, 20, 30, 40, 50.
#[test]
fn rust_center_with_python_compute() {
    center_and_compute(
        "Rust center",
        example("center"),
        vec![("Python compute.py", python_script("compute.py", &[]))],
        5,
        1,
    );
}

#[test]
fn python_center_with_rust_compute() {
    center_and_compute(
        "Python center.py",
        python_script("center.py", &[]),
        vec![("Rust compute", example("compute"))],
        5,
        1,
    );
}

/// 8 threads x 50 requests on one callback queue, served by a Rust and a Python compute node
/// together: every thread must get exactly its own 50 results.
#[test]
fn rust_center_8_threads_50_requests_with_rust_and_python_compute() {
    let mut center = example("center");
    center.args(["8", "50"]);
    center_and_compute(
        "Rust center 8 50",
        center,
        vec![
            ("Rust compute", example("compute")),
            ("Python compute.py", python_script("compute.py", &[])),
        ],
        8,
        50,
    );
}

#[test]
fn python_center_8_threads_50_requests_with_rust_compute() {
    center_and_compute(
        "Python center.py 8 50",
        python_script("center.py", &["8", "50"]),
        vec![("Rust compute", example("compute"))],
        8,
        50,
    );
}

// ---------------------------------------------------------------------------------------------
// Tutorial 7: publisher confirms
// ---------------------------------------------------------------------------------------------

/// Deletes the queues a test was told about, whatever happens to the test.
struct DeleteQueues(Vec<String>);

impl Drop for DeleteQueues {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let connection = connect();
        for queue in &self.0 {
            if let Ok(channel) = connection.channel() {
                let _ = channel.queue_delete(queue, QueueDeleteOptions::default());
            }
        }
        let _ = connection.close();
    }
}

/// True when `text` is a number as Java's `%,d` prints it (`5`, `5,549`, `1,234,567`).
fn is_java_grouped_number(text: &str) -> bool {
    let groups: Vec<&str> = text.split(',').collect();
    let all_digits = |g: &str| !g.is_empty() && g.bytes().all(|b| b.is_ascii_digit());
    groups.iter().all(|g| all_digits(g))
        && groups[0].len() <= 3
        && !(groups[0].starts_with('0') && text.len() > 1)
        && groups[1..].iter().all(|g| g.len() == 3)
}

/// All three strategies publish 50,000 messages and have every one confirmed: the program
/// prints the three result lines of the Java tutorial, and each (kept) queue holds exactly
/// 50,000 messages on the broker afterwards.
#[test]
fn publisher_confirms_confirms_every_message_with_every_strategy() {
    const STRATEGIES: [&str; 3] = [
        "individually",
        "in batch",
        "and handled confirms asynchronously",
    ];
    let mut command = example("publisher_confirms");
    command.arg("--keep-queues");
    let finished =
        Running::start("Rust publisher_confirms", command).finish_within(Duration::from_secs(90));

    // The queues it names are removed whatever happens next.
    let queues: Vec<String> = finished
        .stdout
        .iter()
        .filter_map(|line| line.strip_prefix(" [i] queue "))
        .filter_map(|rest| rest.strip_suffix(" kept"))
        .map(str::to_string)
        .collect();
    let _cleanup = DeleteQueues(queues.clone());

    finished.assert_exit_0("");
    assert_eq!(
        finished.stdout.len(),
        6,
        "expected 3 result lines, each followed by the queue it kept: {:#?}\nits stderr: {}",
        finished.stdout,
        finished.stderr
    );
    let unique: BTreeSet<&String> = queues.iter().collect();
    assert_eq!(unique.len(), 3, "expected 3 distinct queues: {queues:?}");
    for (i, strategy) in STRATEGIES.iter().enumerate() {
        let line = &finished.stdout[2 * i];
        let millis = line
            .strip_prefix(&format!("Published 50,000 messages {strategy} in "))
            .and_then(|rest| rest.strip_suffix(" ms"));
        assert!(
            millis.is_some_and(is_java_grouped_number),
            "line {} should read `Published 50,000 messages {strategy} in <n> ms`: {line:?}",
            2 * i + 1
        );
        assert_eq!(
            finished.stdout[2 * i + 1],
            format!(" [i] queue {} kept", queues[i])
        );
        assert_eq!(
            messages_in_queue(&queues[i]),
            50_000,
            "the queue of the strategy `{strategy}` does not hold every message"
        );
    }
    assert!(
        finished.stderr.is_empty(),
        "publisher_confirms reported problems: {}",
        finished.stderr
    );
}

#[test]
fn java_grouped_numbers() {
    for good in ["0", "5", "999", "5,549", "50,000", "1,234,567"] {
        assert!(is_java_grouped_number(good), "{good}");
    }
    for bad in ["", "5549", "5,54", ",549", "05", "1,2345", "x"] {
        assert!(!is_java_grouped_number(bad), "{bad}");
    }
}
