//! Shared by the long-running tests (`long_running*.rs`, which include it with
//! `#[path = "support/longrun.rs"] mod longrun;` next to their `mod support;`): measuring the
//! process (open file descriptors from `/proc/self/fd`, threads from `/proc/self/status` and
//! `cottontail-io` threads by name, `VmRSS`), what the broker lists, and running each test in
//! a child process of its own so no other test's threads or sockets are counted.
#![allow(dead_code)]

use std::process::Command;
use std::time::Duration;

use cottontail::Connection;

use crate::support::{eventually, params, rabbitmqctl};

/// Set (to the test's name) in the child process that runs one test.
pub const CHILD_ENV: &str = "COTTONTAIL_LONGRUN_CHILD";
/// A MiB in the KiB that `VmRSS` counts.
pub const MIB: i64 = 1024;

// ---------------------------------------------------------------------------------------------
// Measuring
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
pub struct Snapshot {
    pub fds: usize,
    pub threads: usize,
    pub io_threads: usize,
    pub rss_kib: i64,
}

pub fn status_field(name: &str) -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /proc/self/status"))
}

pub fn io_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| t.ok())
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .map(|c| c.trim() == "cottontail-io")
                .unwrap_or(false)
        })
        .count()
}

pub fn snapshot() -> Snapshot {
    Snapshot {
        fds: std::fs::read_dir("/proc/self/fd").unwrap().count(),
        threads: status_field("Threads:") as usize,
        io_threads: io_threads(),
        rss_kib: status_field("VmRSS:"),
    }
}

/// A snapshot once the threads that are ending have ended (at most `settle`).
pub fn settled_snapshot(expected_threads: usize, settle: Duration) -> Snapshot {
    eventually(settle, || snapshot().threads <= expected_threads);
    snapshot()
}

pub fn report(what: &str, before: Snapshot, after: Snapshot) {
    println!(
        "REPORT {what}: fds {} -> {}, threads {} -> {} (cottontail-io {} -> {}), \
         VmRSS {} KiB -> {} KiB ({:+} KiB)",
        before.fds,
        after.fds,
        before.threads,
        after.threads,
        before.io_threads,
        after.io_threads,
        before.rss_kib,
        after.rss_kib,
        after.rss_kib - before.rss_kib
    );
}

// ---------------------------------------------------------------------------------------------
// The broker's view
// ---------------------------------------------------------------------------------------------

/// Channels the broker lists on the connections named `name` (one number per connection).
pub fn broker_channels_of(name: &str) -> Vec<usize> {
    rabbitmqctl(&["list_connections", "channels", "client_properties"])
        .lines()
        .filter(|line| line.contains(name))
        .filter_map(|line| line.split('\t').next()?.trim().parse().ok())
        .collect()
}

/// (messages_ready, messages_unacknowledged, consumers) of `queue`.
pub fn queue_counts(queue: &str) -> (u64, u64, u64) {
    for line in rabbitmqctl(&[
        "list_queues",
        "name",
        "messages_ready",
        "messages_unacknowledged",
        "consumers",
    ])
    .lines()
    {
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.len() == 4 && cols[0] == queue {
            return (
                cols[1].trim().parse().unwrap(),
                cols[2].trim().parse().unwrap(),
                cols[3].trim().parse().unwrap(),
            );
        }
    }
    panic!("no queue {queue} on the broker")
}

// ---------------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------------

/// Runs `scenario` in a child process (this binary, only this test selected).
pub fn in_child(name: &str, scenario: fn()) {
    if std::env::var(CHILD_ENV).as_deref() == Ok(name) {
        crate::support::ensure_broker();
        scenario();
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, name)
        .output()
        .expect("running the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for line in stdout
        .lines()
        .filter_map(|l| l.find("REPORT").map(|at| &l[at..]))
    {
        println!("{line}");
    }
    assert!(
        out.status.success(),
        "the child for {name} failed:\n{stdout}\n{stderr}"
    );
}

/// A few cycles first: what the first connection allocates once (thread-locals, the
/// allocator's arenas) is not a leak.
pub fn warm_up() {
    for _ in 0..5 {
        let c = Connection::open(params()).unwrap();
        let ch = c.channel().unwrap();
        ch.close().unwrap();
        c.close().unwrap();
    }
}
