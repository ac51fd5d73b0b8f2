//! Tutorial 1 ("Hello World!") across implementations: the Rust examples `send` and `receive`
//! against the official Python (pika) programs in `tests/interop/`, and against each other.
//!
//! Every test runs real processes against the broker on 127.0.0.1 and checks, line for line,
//! that they print what the Python tutorial prints, that Ctrl-C (SIGINT) makes the consumer
//! print `Interrupted` and exit 0, and that the `hello` queue is left empty.
//!
//! The Python side needs `COTTONTAIL_PYTHON`, a Python with pika, which `scripts/test.sh` sets
//! up; without it those tests fail (they never pass silently).

mod support;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use cottontail::{Connection, QueueDeclareOptions};

/// The tutorial's queue.
const QUEUE: &str = "hello";
/// How long any one step (a line to appear, a process to exit) may take.
const STEP: Duration = Duration::from_secs(15);

const WAITING: &str = " [*] Waiting for messages. To exit press CTRL+C";
const RECEIVED: &str = " [x] Received b'Hello World!'";
const SENT: &str = " [x] Sent 'Hello World!'";
const INTERRUPTED: &str = "Interrupted";

/// The tests share the queue `hello` (that is the tutorial), so they run one at a time.
fn serialize() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------------------------
// The programs under test
// ---------------------------------------------------------------------------------------------

/// Paths of the example binaries `send` and `receive`, built once per test run.
struct Examples {
    send: PathBuf,
    receive: PathBuf,
}

fn examples() -> &'static Examples {
    static EXAMPLES: OnceLock<Examples> = OnceLock::new();
    EXAMPLES.get_or_init(build_examples)
}

/// Runs `cargo build --example send --example receive` and takes the binaries' paths from
/// cargo's JSON messages, so `CARGO_TARGET_DIR`, `--target` and the like are all respected.
fn build_examples() -> Examples {
    let output = Command::new(env!("CARGO"))
        .args(["build", "--example", "send", "--example", "receive"])
        .args(["--message-format", "json-render-diagnostics"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(Stdio::piped())
        .output()
        .expect("running `cargo build` for the examples");
    assert!(
        output.status.success(),
        "`cargo build --example send --example receive` failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let executables: Vec<PathBuf> = stdout
        .lines()
        .filter(|line| line.contains(r#""reason":"compiler-artifact""#))
        .filter_map(|line| json_string_field(line, "executable"))
        .map(PathBuf::from)
        .collect();
    let find = |name: &str| {
        executables
            .iter()
            .find(|path| path.file_stem().is_some_and(|stem| stem == name))
            .cloned()
            .unwrap_or_else(|| {
                panic!("cargo built no executable for the example `{name}`: {executables:?}")
            })
    };
    Examples {
        send: find("send"),
        receive: find("receive"),
    }
}

/// The string value of `"field":"..."` in one line of cargo's JSON output (just enough JSON
/// for a path: `\\`, `\"`, `\/`, no `\u` escapes).
fn json_string_field(line: &str, field: &str) -> Option<String> {
    let start = line.find(&format!(r#""{field}":""#))? + field.len() + 4;
    let mut value = String::new();
    let mut chars = line[start..].chars();
    loop {
        match chars.next()? {
            '"' => return Some(value),
            '\\' => value.push(chars.next()?),
            c => value.push(c),
        }
    }
}

fn rust_send() -> Command {
    program(&examples().send)
}

fn rust_receive() -> Command {
    program(&examples().receive)
}

fn python_send() -> Command {
    python_script("send.py")
}

fn python_receive() -> Command {
    python_script("receive.py")
}

fn program(path: &Path) -> Command {
    let mut command = Command::new(path);
    command.env("AMQP_HOST", support::HOST);
    command
}

/// The Python with pika named by `COTTONTAIL_PYTHON`; fails the test if there is none.
fn python() -> &'static str {
    static PYTHON: OnceLock<String> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let python = std::env::var("COTTONTAIL_PYTHON").unwrap_or_default();
        assert!(
            !python.is_empty(),
            "COTTONTAIL_PYTHON is not set: the interop tests need a Python with pika. Run \
             `scripts/test.sh`, which creates a virtualenv with pika and sets it (or set \
             COTTONTAIL_PYTHON=/path/to/python yourself)"
        );
        let check = Command::new(&python)
            .args(["-c", "import pika"])
            .output()
            .unwrap_or_else(|e| panic!("COTTONTAIL_PYTHON={python} does not run: {e}"));
        assert!(
            check.status.success(),
            "COTTONTAIL_PYTHON={python} cannot `import pika`; run `scripts/test.sh`, which \
             creates a virtualenv with pika:\n{}",
            String::from_utf8_lossy(&check.stderr)
        );
        python
    })
}

/// `python -u tests/interop/<script>`, unbuffered so its lines arrive as they are printed.
fn python_script(script: &str) -> Command {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/interop")
        .join(script);
    let mut command = Command::new(python());
    command.arg("-u");
    if sigint_ignored() {
        // A process started with SIGINT ignored (a background job of a non-interactive shell,
        // `nohup`...) hands that on to its children, and Python then leaves SIGINT ignored, so
        // Ctrl-C would never raise KeyboardInterrupt. Restore Python's own handler first, then
        // run the script exactly as `python receive.py` would.
        command.args([
            "-c",
            "import runpy, signal, sys\n\
             signal.signal(signal.SIGINT, signal.default_int_handler)\n\
             sys.argv = sys.argv[1:]\n\
             runpy.run_path(sys.argv[0], run_name='__main__')",
        ]);
    }
    command.arg(path);
    command.env("AMQP_HOST", support::HOST);
    command
}

/// Whether this process ignores SIGINT (Linux: from `/proc/self/status`; elsewhere assumed not).
fn sigint_ignored() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("SigIgn:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (2 - 1)) != 0)
}

// ---------------------------------------------------------------------------------------------
// Running processes
// ---------------------------------------------------------------------------------------------

/// A running program whose stdout is read line by line. Dropping it kills the process, so a
/// failing test leaves nothing behind.
struct Running {
    name: String,
    child: Child,
    lines: Receiver<String>,
    stdout: Vec<String>,
    stderr: Arc<Mutex<String>>,
    stderr_reader: Option<thread::JoinHandle<()>>,
}

impl Running {
    fn start(name: &str, mut command: Command) -> Running {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({command:?}): {e}"));
        let (sender, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("piped stderr");
        let sink = stderr.clone();
        let stderr_reader = thread::spawn(move || {
            let mut buf = [0; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buf) {
                sink.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Running {
            name: name.to_string(),
            child,
            lines,
            stdout: Vec::new(),
            stderr,
            stderr_reader: Some(stderr_reader),
        }
    }

    fn context(&self) -> String {
        format!(
            "{} printed so far: {:#?}\nits stderr: {}",
            self.name,
            self.stdout,
            self.stderr.lock().unwrap_or_else(|p| p.into_inner())
        )
    }

    /// Waits (at most [`STEP`]) for the next line of stdout, which must be exactly `expected`.
    fn expect_line(&mut self, expected: &str) {
        match self.lines.recv_timeout(STEP) {
            Ok(line) => {
                self.stdout.push(line.clone());
                assert_eq!(
                    line,
                    expected,
                    "unexpected line from {}\n{}",
                    self.name,
                    self.context()
                );
            }
            Err(RecvTimeoutError::Timeout) => panic!(
                "{} did not print {expected:?} within {STEP:?}\n{}",
                self.name,
                self.context()
            ),
            Err(RecvTimeoutError::Disconnected) => panic!(
                "{} closed its stdout (exited: {:?}) before printing {expected:?}\n{}",
                self.name,
                self.child.try_wait(),
                self.context()
            ),
        }
    }

    /// Sends SIGINT, as Ctrl-C in a terminal would.
    fn interrupt(&self) {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .expect("running `kill -INT`");
        assert!(
            status.success(),
            "`kill -INT` on {} failed: {status}",
            self.name
        );
    }

    /// Waits (at most [`STEP`]) for the process to exit and for the end of its output.
    fn finish(mut self) -> Finished {
        let deadline = Instant::now() + STEP;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => self.stdout.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!(
                    "{} did not exit within {STEP:?}\n{}",
                    self.name,
                    self.context()
                ),
            }
        }
        let status = loop {
            match self.child.try_wait().expect("waiting for a child") {
                Some(status) => break status,
                None if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                None => panic!(
                    "{} closed its stdout but did not exit within {STEP:?}\n{}",
                    self.name,
                    self.context()
                ),
            }
        };
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
        let stderr = std::mem::take(&mut *self.stderr.lock().unwrap_or_else(|p| p.into_inner()));
        Finished {
            status,
            stdout: std::mem::take(&mut self.stdout),
            stderr,
        }
    }
}

/// What an exited program printed.
struct Finished {
    status: ExitStatus,
    /// Its stdout, line by line.
    stdout: Vec<String>,
    stderr: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
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

    let sent = Running::start(send_name, send).finish();
    assert_eq!(
        sent.stdout,
        [SENT],
        "{send_name} printed the wrong lines; its stderr: {}",
        sent.stderr
    );
    assert!(
        sent.status.success(),
        "{send_name} failed ({}); its stderr: {}",
        sent.status,
        sent.stderr
    );

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
