//! Shared by the interop tests (`interop_*.rs`, which include it with
//! `#[path = "support/process.rs"] mod process;` next to their `mod support;`): building the
//! Rust examples, running the Python programs of `tests/interop/`, and watching the processes
//! they start line by line.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// How long any one step (a line to appear, a process to exit, the broker to agree) may take.
pub const STEP: Duration = Duration::from_secs(15);

/// What a Rust example (and `compute.py`) prints last when stopped with Ctrl-C.
pub const INTERRUPTED: &str = "Interrupted";

// ---------------------------------------------------------------------------------------------
// The programs under test
// ---------------------------------------------------------------------------------------------

/// Paths of the example binaries `names`, built once per test run (and set of names).
pub fn examples(names: &[&str]) -> &'static BTreeMap<String, PathBuf> {
    type Built = Vec<(Vec<String>, &'static BTreeMap<String, PathBuf>)>;
    static BUILT: Mutex<Built> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, paths)) = built.iter().find(|(built_names, _)| built_names == names) {
        return paths;
    }
    let paths: &'static BTreeMap<String, PathBuf> = Box::leak(Box::new(build_examples(names)));
    built.push((names.iter().map(|name| name.to_string()).collect(), paths));
    paths
}

/// Runs `cargo build --example ...` for `names` and takes the binaries' paths from cargo's
/// JSON messages, so `CARGO_TARGET_DIR`, `--target` and the like are all respected.
pub fn build_examples(names: &[&str]) -> BTreeMap<String, PathBuf> {
    let mut command = Command::new(env!("CARGO"));
    command.arg("build");
    for name in names {
        command.args(["--example", name]);
    }
    let output = command
        .args(["--message-format", "json-render-diagnostics"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(Stdio::piped())
        .output()
        .expect("running `cargo build` for the examples");
    assert!(
        output.status.success(),
        "`cargo build` of the examples {names:?} failed ({}):\n{}",
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
    names
        .iter()
        .map(|&name| {
            let path = executables
                .iter()
                .find(|path| path.file_stem().is_some_and(|stem| stem == name))
                .cloned()
                .unwrap_or_else(|| {
                    panic!("cargo built no executable for the example `{name}`: {executables:?}")
                });
            (name.to_string(), path)
        })
        .collect()
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

/// The example `name`, one of `names` (built as [`examples`] does), talking to the test broker.
pub fn example(names: &[&str], name: &str) -> Command {
    let path = examples(names)
        .get(name)
        .unwrap_or_else(|| panic!("no example `{name}` was built"));
    let mut command = Command::new(path);
    command.env("AMQP_HOST", crate::support::HOST);
    command
}

/// The Python with pika named by `COTTONTAIL_PYTHON`; fails the test if there is none.
pub fn python() -> &'static str {
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

/// Path of the Python script `tests/interop/<file>`.
pub fn script(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/interop")
        .join(file)
}

/// `python -u tests/interop/<file> <args>`, talking to the test broker; unbuffered so its
/// lines arrive as they are printed.
pub fn python_script(file: &str, args: &[&str]) -> Command {
    let mut command = Command::new(python());
    command.arg("-u");
    if sigint_ignored() {
        // A process started with SIGINT ignored (a background job of a non-interactive shell,
        // `nohup`...) hands that on to its children, and Python then leaves SIGINT ignored, so
        // Ctrl-C would never raise KeyboardInterrupt. Restore Python's own handler first, then
        // run the script exactly as `python <script> <args>` would.
        command.args([
            "-c",
            "import runpy, signal, sys\n\
             signal.signal(signal.SIGINT, signal.default_int_handler)\n\
             sys.argv = sys.argv[1:]\n\
             runpy.run_path(sys.argv[0], run_name='__main__')",
        ]);
    }
    command.arg(script(file)).args(args);
    command.env("AMQP_HOST", crate::support::HOST);
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
pub struct Running {
    pub name: String,
    child: Child,
    lines: Receiver<String>,
    /// Its stdout so far, line by line.
    pub stdout: Vec<String>,
    stderr: Arc<Mutex<String>>,
    stderr_reader: Option<thread::JoinHandle<()>>,
}

/// What an exited program printed.
pub struct Finished {
    pub name: String,
    pub status: ExitStatus,
    /// Its stdout, line by line.
    pub stdout: Vec<String>,
    pub stderr: String,
}

impl Running {
    pub fn start(name: impl Into<String>, mut command: Command) -> Running {
        let name = name.into();
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
            name,
            child,
            lines,
            stdout: Vec::new(),
            stderr,
            stderr_reader: Some(stderr_reader),
        }
    }

    /// What it printed so far, for failure messages.
    pub fn context(&self) -> String {
        format!(
            "{} printed so far: {:#?}\nits stderr: {}",
            self.name,
            self.stdout,
            self.stderr.lock().unwrap_or_else(|p| p.into_inner())
        )
    }

    /// Waits (at most [`STEP`]) for the next line of stdout, which must be exactly `expected`.
    pub fn expect_line(&mut self, expected: &str) {
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

    /// The next line of stdout if one comes within `wait` (kept in `stdout` too).
    pub fn poll_line(&mut self, wait: Duration) -> Option<String> {
        let line = self.lines.recv_timeout(wait).ok()?;
        self.stdout.push(line.clone());
        Some(line)
    }

    /// Sends SIGINT, as Ctrl-C in a terminal would.
    pub fn interrupt(&self) {
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

    /// Sends SIGKILL: the process dies at once, without closing anything.
    pub fn kill(&mut self) {
        self.child
            .kill()
            .unwrap_or_else(|e| panic!("SIGKILL to {}: {e}", self.name));
    }

    /// Waits (at most [`STEP`]) for the process to exit and for the end of its output.
    pub fn finish(self) -> Finished {
        self.finish_within(STEP)
    }

    /// Waits (at most `limit`) for the process to exit and for the end of its output.
    pub fn finish_within(mut self, limit: Duration) -> Finished {
        let deadline = Instant::now() + limit;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => self.stdout.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!(
                    "{} did not exit within {limit:?}\n{}",
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
                    "{} closed its stdout but did not exit within {limit:?}\n{}",
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
            name: std::mem::take(&mut self.name),
            status,
            stdout: std::mem::take(&mut self.stdout),
            stderr,
        }
    }

    /// Ctrl-C, then the process must print `Interrupted` and exit 0; returns all it printed.
    pub fn interrupt_and_finish(self) -> Finished {
        self.interrupt();
        let finished = self.finish();
        assert_eq!(
            finished.stdout.last().map(String::as_str),
            Some(INTERRUPTED),
            "{} did not print {INTERRUPTED:?} last after Ctrl-C: {:#?}\nits stderr: {}",
            finished.name,
            finished.stdout,
            finished.stderr
        );
        finished.assert_exit_0("after Ctrl-C");
        finished
    }
}

impl Finished {
    pub fn assert_exit_0(&self, when: &str) {
        assert_eq!(
            self.status.code(),
            Some(0),
            "{} exited with {} {when}; it printed {:#?}\nits stderr: {}",
            self.name,
            self.status,
            self.stdout,
            self.stderr
        );
    }

    /// Printed exactly `expected` and exited successfully (a producer).
    pub fn assert_produced(&self, expected: &[&str]) {
        assert_eq!(
            self.stdout, expected,
            "{} printed the wrong lines; its stderr: {}",
            self.name, self.stderr
        );
        assert!(
            self.status.success(),
            "{} failed ({}); its stderr: {}",
            self.name,
            self.status,
            self.stderr
        );
    }

    /// Exited 0 and printed exactly `expected`.
    pub fn assert_printed(&self, expected: &[&str]) {
        assert_eq!(
            self.stdout, expected,
            "{} printed the wrong lines; its stderr: {}",
            self.name, self.stderr
        );
        self.assert_exit_0("");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
