//! Automatic recovery (issue 14) through storms of forced closes, on one node of the private
//! cluster of `tests/support/cluster.rs`:
//!
//! - a connection whose broker side is closed over and over while 4 threads use it (every
//!   200 ms; and every millisecond, which also cuts recovery attempts short),
//! - channels restored by an attempt that is then cut short are restored by the next one
//!   (the minimal form of the fast storm's first failure).
//!
//! The tests share the cluster, so they run one at a time (a static mutex).

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use cottontail::{Channel, Connection, Consumed, Error, QosOptions, RecoveryEvent};
use support::cluster::Cluster;
use support::recovery::*;
use support::{eventually, unique};

// ---------------------------------------------------------------------------------------
// 4. A flaky network: the broker side closed every 200 ms for 10 s.
// ---------------------------------------------------------------------------------------

#[test]
fn a_storm_of_forced_closes_leaks_nothing_deadlocks_nothing_and_loses_nothing() {
    storm_test(
        "storm",
        Duration::from_millis(200),
        Duration::from_secs(10),
        10,
        0,
    );
}

/// The storm again, with closes every millisecond for 5 s: many hit the connection while it is
/// still being opened or restored, so recovery attempts fail and are made again.
#[test]
fn a_storm_faster_than_recovery_leaks_nothing_deadlocks_nothing_and_loses_nothing() {
    // Few recoveries complete while it lasts: most attempts are cut off.
    storm_test(
        "fast storm",
        Duration::from_millis(1),
        Duration::from_secs(5),
        1,
        5,
    );
}

/// Runs [`storm_scenario`] and checks that the process has no more threads and file
/// descriptors after it than before.
fn storm_test(
    what: &'static str,
    every: Duration,
    length: Duration,
    min_recoveries: u64,
    min_failed_attempts: usize,
) {
    let _serial = one_at_a_time();
    let cluster = Cluster::start();
    assert!(cluster.wait_running(3, Duration::from_secs(30)));
    // Let threads of earlier tests (their `within` threads) end first.
    thread::sleep(Duration::from_millis(200));
    let (threads_before, fds_before) = (proc_entries("task"), proc_entries("fd"));
    let counts = support::within(Duration::from_secs(120), what, move || {
        storm_scenario(cluster, every, length, min_recoveries, min_failed_attempts)
    });
    let settled = eventually(Duration::from_secs(10), || {
        proc_entries("task") <= threads_before && proc_entries("fd") <= fds_before
    });
    let (threads_after, fds_after) = (proc_entries("task"), proc_entries("fd"));
    println!(
        "{what}: {counts}; threads {threads_before} -> {threads_after}, fds {fds_before} -> \
         {fds_after}"
    );
    assert!(
        settled,
        "threads {threads_before} -> {threads_after}, file descriptors {fds_before} -> {fds_after}"
    );
}

/// Closes the connections named `name` on node `node` from inside the broker, every `every`
/// for `length`, each connection once, as `rabbitmqctl close_connection` does (320
/// CONNECTION_FORCED); returns how many it closed. A `rabbitmqctl close_connection` per close
/// would take about half a second (plus one to list the pids), so one `rabbitmqctl eval` does
/// it all. A connection is caught as soon as its client properties are known (its
/// connection.start-ok), so a fast storm also hits connections still being opened or restored.
fn close_storm(
    cluster: &Cluster,
    node: usize,
    name: &str,
    every: Duration,
    length: Duration,
) -> usize {
    let script = format!(
        "{ours} \
         Until = erlang:monotonic_time(millisecond) + {length}, \
         Loop = fun L(Closed) -> \
             case erlang:monotonic_time(millisecond) >= Until of \
                 true -> length(Closed); \
                 false -> \
                     Pids = [P || P <- rabbit_networking:connections_local(), \
                                  not lists:member(P, Closed), Ours(P)], \
                     [rabbit_networking:close_connection(P, \"test: flaky network\") \
                      || P <- Pids], \
                     timer:sleep({every}), \
                     L(Pids ++ Closed) \
             end \
         end, \
         Loop([]).",
        ours = erlang_ours(name),
        every = every.as_millis(),
        length = length.as_millis()
    );
    cluster
        .rabbitmqctl(node, &["eval", &script])
        .trim()
        .parse::<usize>()
        .expect("the number of closes")
}

/// Sets the flags and closes the connection when dropped.
struct StopOnDrop(Vec<Arc<AtomicBool>>, Connection);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        for flag in &self.0 {
            flag.store(true, Ordering::SeqCst);
        }
        let _ = self.1.close();
    }
}

#[derive(Default)]
struct StormPublished {
    confirmed: Vec<String>,
    unknown: usize,
    unexpected: Vec<String>,
}

#[derive(Default)]
struct StormConsumed {
    seen: Vec<(String, bool)>,
    stale_acks: usize,
    ack_errors: usize,
    problems: Vec<String>,
}

fn storm_scenario(
    cluster: Cluster,
    every: Duration,
    length: Duration,
    min_recoveries: u64,
    min_failed_attempts: usize,
) -> String {
    const NODE: usize = 2;
    let name = unique("cr-storm");
    let queue = unique("cr-storm-q");
    let _tidy = Tidy {
        cluster,
        node: NODE,
        queues: vec![queue.clone()],
        exchanges: Vec::new(),
    };
    let connection = Connection::open(recovering_params(&cluster, &[NODE], &name)).unwrap();
    let events = events(&connection);
    connection
        .channel()
        .unwrap()
        .queue_declare(&queue, durable())
        .unwrap();
    let stop_publishing = Arc::new(AtomicBool::new(false));
    let stop_consuming = Arc::new(AtomicBool::new(false));
    // On a failure, the workers stop and the connection closes before the queue is deleted
    // (else they hold the connection, whose recovery declares the queue again).
    let _stop = StopOnDrop(
        vec![stop_publishing.clone(), stop_consuming.clone()],
        connection.clone(),
    );
    let published = Arc::new(Mutex::new(StormPublished::default()));
    let consumed = Arc::new(Mutex::new(StormConsumed::default()));
    let mut workers = Vec::new();
    for k in 0..2 {
        let channel = connection.channel().unwrap();
        channel.confirm_delivery().unwrap();
        let (queue, stop, published) = (queue.clone(), stop_publishing.clone(), published.clone());
        workers.push(thread::spawn(move || {
            let mut i = 0u32;
            while !stop.load(Ordering::SeqCst) {
                let body = format!("p{k}-{i}");
                let result = channel.basic_publish_with("", &queue, body.as_bytes(), &persistent());
                let mut p = published.lock().unwrap();
                match result {
                    Ok(()) => p.confirmed.push(body),
                    Err(Error::ConfirmUnknown { .. }) => p.unknown += 1,
                    Err(e) if e.is_connection_error() || matches!(e, Error::Timeout { .. }) => {
                        p.unknown += 1
                    }
                    Err(e) => p.unexpected.push(format!("{body}: {e}")),
                }
                drop(p);
                i += 1;
                // Leave the 2 or so CPUs of a test machine to rabbitmqctl too.
                thread::sleep(Duration::from_millis(2));
            }
        }));
    }
    for k in 0..2 {
        let channel = connection.channel().unwrap();
        channel
            .basic_qos(QosOptions {
                prefetch_count: 20,
                ..Default::default()
            })
            .unwrap();
        let mut consumer = channel
            .consume(
                &queue,
                consume_options(&format!("storm-{k}"), Duration::from_millis(300)),
            )
            .unwrap();
        let (stop, consumed) = (stop_consuming.clone(), consumed.clone());
        workers.push(thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let item = consumer.next();
                let mut c = consumed.lock().unwrap();
                match item {
                    Some(Ok(Consumed::Delivery(d))) => {
                        c.seen.push((text(&d), d.redelivered()));
                        match channel.basic_ack(d.delivery_tag(), false) {
                            Ok(()) => {}
                            Err(Error::StaleDeliveryTag { .. }) => c.stale_acks += 1,
                            Err(e) if e.is_connection_error() => c.ack_errors += 1,
                            Err(e) => c.problems.push(format!("ack: {e}")),
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => c.problems.push(format!("consumer storm-{k}: {e}")),
                    None => {
                        c.problems.push(format!("consumer storm-{k} ended"));
                        return;
                    }
                }
            }
            if let Err(e) = consumer.cancel() {
                consumed
                    .lock()
                    .unwrap()
                    .problems
                    .push(format!("cancelling storm-{k}: {e}"));
            }
        }));
    }

    let storm = {
        let name = name.clone();
        thread::spawn(move || close_storm(&cluster, NODE, &name, every, length))
    };
    let closes = storm.join().unwrap();
    let storm_over = Instant::now();
    connection
        .wait_for_recovery(Duration::from_secs(30))
        .expect("the connection recovers after the storm");
    let recovered_after = storm_over.elapsed();
    // Some calm traffic, then stop the publishers and drain.
    let confirmed_then = published.lock().unwrap().confirmed.len();
    assert!(
        eventually(Duration::from_secs(20), || {
            published.lock().unwrap().confirmed.len() >= confirmed_then + 50
        }),
        "publishing does not go on after the storm: {}",
        {
            let p = published.lock().unwrap();
            let c = consumed.lock().unwrap();
            format!(
                "{closes} closes, generation {}, recovering {}, {} confirmed ({confirmed_then} \
                 at the end of the storm), {} unknown, unexpected {:?}, consumer problems {:?}, \
                 the broker's connections: {:?}",
                connection.recovery_generation(),
                connection.is_recovering(),
                p.confirmed.len(),
                p.unknown,
                p.unexpected.iter().rev().take(5).collect::<Vec<_>>(),
                c.problems.iter().rev().take(5).collect::<Vec<_>>(),
                cluster
                    .try_rabbitmqctl(
                        NODE,
                        &[
                            "list_connections",
                            "-s",
                            "pid",
                            "state",
                            "channels",
                            "client_properties"
                        ]
                    )
                    .map(|out| out
                        .lines()
                        .filter(|l| l.contains(&name))
                        .map(|l| l.split('\t').take(3).collect::<Vec<_>>().join(" "))
                        .collect::<Vec<_>>())
            )
        }
    );
    stop_publishing.store(true, Ordering::SeqCst);
    let confirmed: Vec<String> = {
        // The publishers stop within one publish.
        thread::sleep(Duration::from_millis(500));
        published.lock().unwrap().confirmed.clone()
    };
    let drained = eventually(Duration::from_secs(30), || {
        let c = consumed.lock().unwrap();
        let seen: HashSet<&str> = c.seen.iter().map(|(b, _)| b.as_str()).collect();
        confirmed.iter().all(|b| seen.contains(b.as_str()))
    });
    stop_consuming.store(true, Ordering::SeqCst);
    let joining = Instant::now();
    for worker in workers {
        worker.join().expect("a worker thread");
    }
    let joined_in = joining.elapsed();

    // A final round trip on the recovered connection.
    let final_channel = connection.channel().unwrap();
    final_channel.confirm_delivery().unwrap();
    final_channel
        .basic_publish("", &queue, b"final")
        .expect("the final publish");
    let mut last = final_channel
        .consume(&queue, consume_options("final", Duration::from_secs(10)))
        .unwrap();
    let mut final_seen = false;
    while let Some(Ok(Consumed::Delivery(d))) = last.next() {
        final_channel.basic_ack(d.delivery_tag(), false).unwrap();
        if d.body == b"final" {
            final_seen = true;
            break;
        }
    }
    last.cancel().unwrap();
    let generation = connection.recovery_generation();
    connection.process_data_events(Duration::ZERO).unwrap();
    connection.close().unwrap();
    let events: Vec<RecoveryEvent> = events.try_iter().collect();
    let lost_events = events
        .iter()
        .filter(|e| matches!(e, RecoveryEvent::ConnectionLost { .. }))
        .count();
    let recovered_events = reports(&events).len();
    let slowest = reports(&events).iter().map(|r| r.took).max();

    let p = published.lock().unwrap();
    let c = consumed.lock().unwrap();
    let seen: HashSet<&str> = c.seen.iter().map(|(b, _)| b.as_str()).collect();
    let lost: Vec<&String> = confirmed
        .iter()
        .filter(|b| !seen.contains(b.as_str()))
        .collect();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    let mut not_flagged = 0;
    for (body, redelivered) in &c.seen {
        let n = counts.entry(body.as_str()).or_default();
        *n += 1;
        if *n > 1 && !redelivered {
            not_flagged += 1;
        }
    }
    let summary = format!(
        "{closes} forced closes, {generation} recoveries, recovered {recovered_after:?} after the \
         storm, workers joined in {joined_in:?}; events: {lost_events} lost, {} attempts \
         failed, {recovered_events} recovered, the slowest in {slowest:?}; {} confirmed, {} unknown, {} deliveries \
         ({} duplicated, {not_flagged} of the copies without redelivered), {} stale acks, {} \
         acks lost with the connection; confirmed lost: {}",
        failed_attempts(&events),
        confirmed.len(),
        p.unknown,
        c.seen.len(),
        c.seen.len() - seen.len(),
        c.stale_acks,
        c.ack_errors,
        lost.len()
    );
    // A close may hit a connection the recovery is still opening or restoring: one more
    // attempt, not one more recovery.
    assert!(
        generation >= min_recoveries && generation <= closes as u64,
        "recoveries: {summary}"
    );
    assert!(
        failed_attempts(&events) >= min_failed_attempts,
        "failed attempts: {summary}"
    );
    assert_eq!(recovered_events as u64, generation, "{summary}");
    assert_eq!(lost_events as u64, generation, "{summary}");
    assert!(
        events
            .iter()
            .all(|e| !matches!(e, RecoveryEvent::Failed { .. })),
        "{events:?}"
    );
    assert!(
        p.unexpected.is_empty(),
        "publish errors: {:?}",
        p.unexpected
    );
    assert!(c.problems.is_empty(), "consumer problems: {:?}", c.problems);
    assert!(drained, "not drained: {summary}");
    assert!(lost.is_empty(), "confirmed but never consumed: {lost:?}");
    assert_eq!(
        not_flagged, 0,
        "copies without the redelivered flag: {summary}"
    );
    assert!(final_seen, "the final round trip failed");
    summary
}

// ---------------------------------------------------------------------------------------
// 5. A loss during a recovery attempt (the fast storm's failure, made small).
// ---------------------------------------------------------------------------------------

#[test]
fn channels_survive_a_loss_in_the_middle_of_a_recovery_attempt() {
    let _serial = one_at_a_time();
    let cluster = Cluster::start();
    let name = unique("cr-mid-restore");
    let connection = Connection::open(recovering_params(&cluster, &[2], &name)).unwrap();
    let events = events(&connection);
    // Many channels make each restore take a while, so closes land in it.
    let channels: Vec<Channel> = (0..20)
        .map(|_| {
            let channel = connection.channel().unwrap();
            channel.confirm_delivery().unwrap();
            channel
        })
        .collect();
    let closes = close_storm(
        &cluster,
        2,
        &name,
        Duration::from_millis(1),
        Duration::from_secs(3),
    );
    connection
        .wait_for_recovery(Duration::from_secs(30))
        .expect("recovered after the storm");
    let processed = connection.process_data_events(Duration::ZERO);
    let events: Vec<RecoveryEvent> = events.try_iter().collect();
    let closed: Vec<String> = channels
        .iter()
        .filter(|c| c.is_closed())
        .map(|c| {
            format!(
                "{} ({:?})",
                c.channel_number(),
                c.basic_publish("", "", b"x").err()
            )
        })
        .collect();
    let broker_channels = cluster
        .rabbitmqctl(
            2,
            &["list_connections", "-s", "channels", "client_properties"],
        )
        .lines()
        .filter(|line| line.contains(&name))
        .map(|line| line.split('\t').next().unwrap_or("").to_string())
        .collect::<Vec<_>>();
    let summary = format!(
        "{closes} closes, {} recoveries, {} failed attempts; the broker's channels on our \
         connection: {broker_channels:?}; process_data_events: {processed:?}",
        connection.recovery_generation(),
        failed_attempts(&events)
    );
    println!("mid-restore: {summary}; closed channels: {}", closed.len());
    assert!(
        closed.is_empty(),
        "{summary}: channels closed for good: {closed:?}"
    );
    processed.expect("process_data_events after the recovery");
    for channel in &channels {
        channel.basic_publish("", "", b"still here").unwrap();
    }
    connection.close().unwrap();
}
