//! An idle connection costs nothing between heartbeats: its I/O thread sleeps in `poll` and is
//! not woken periodically. Its own test binary, so no other test's I/O thread is in the process.

mod support;

use std::time::Duration;

/// The `cottontail-io` threads of this process and their context-switch counts.
fn io_threads() -> Vec<(String, u64)> {
    let mut found = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() != "cottontail-io" {
            continue;
        }
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        let switches: u64 = status
            .lines()
            .filter(|l| {
                l.starts_with("voluntary_ctxt_switches")
                    || l.starts_with("nonvoluntary_ctxt_switches")
            })
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
        found.push((dir.display().to_string(), switches));
    }
    found
}

#[test]
fn idle_connection_io_thread_sleeps_between_heartbeats() {
    // Heartbeat 60 s: a heartbeat is due every 30 s, so 3 s of idleness needs no wake-up.
    let connection =
        cottontail::Connection::open(support::params().with_heartbeat(Some(60))).unwrap();
    let channel = connection.channel().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let before = io_threads();
    assert_eq!(before.len(), 1, "{before:?}");
    std::thread::sleep(Duration::from_secs(3));
    let after = io_threads();
    assert_eq!(after.len(), 1);
    let woke = after[0].1 - before[0].1;
    assert!(
        woke <= 1,
        "the idle I/O thread was scheduled {woke} times in 3 s"
    );
    assert!(channel.is_open());
}
