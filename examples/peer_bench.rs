//! cottontail's peer in the side-by-side benchmark of `../shared/bench` (see its `README.md`):
//! the same scenarios as the reference `pika_bench.py`, with the same queue names, JSON keys
//! and `ok` semantics, so `run.sh` can put cottontail next to pika, amiquip and lapin.
//!
//! Usage: `peer_bench SCENARIO [N]`, SCENARIO one of `s1 | s2a | s2b | fill3 | s3 | s3noack |
//! s4server | s4client | s5`, or `idle [SECONDS]` / `idleconsumer [SECONDS]` (not in the
//! shared harness: the memory and CPU one open, idle connection costs, without or with a
//! consumer waiting on it). It connects to `amqp://guest:guest@127.0.0.1:5672/%2f`, runs one
//! scenario and prints exactly one JSON line on stdout (`s4server` first prints `READY` on its
//! own line once it consumes). On failure it prints a JSON line with `"ok": false` and an
//! `error`, and exits 1.
//!
//! ```sh
//! cargo build --release --example peer_bench
//! target/release/examples/peer_bench s1 20000
//! target/release/examples/peer_bench fill3 20000 && target/release/examples/peer_bench s3 20000
//! target/release/examples/peer_bench s4server & target/release/examples/peer_bench s4client 2000
//! COTTONTAIL_BENCH=target/release/examples/peer_bench REPS=3 ../shared/bench/run.sh --only s1,s4
//! ```

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cottontail::{
    BasicConsumeOptions, BasicProperties, Channel, Connection, PublishOptions, QosOptions,
    QueueDeclareOptions, Result,
};

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const BODY64: [u8; 64] = [b'x'; 64];
const LARGE: usize = 1 << 20;
const S2B_WINDOW: usize = 1000;
const S4_WARMUP: usize = 200;

fn connect() -> Result<Connection> {
    Connection::open_url(URL)
}

/// Prints the one JSON line: `fields` is the inside of the object after `"peer"`.
fn emit(fields: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{{\"peer\": \"cottontail\", {fields}}}");
    let _ = out.flush();
}

/// A JSON number; `null` for what JSON cannot hold (a rate over a zero interval).
fn num(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        "null".into()
    }
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn secs(from: Instant, to: Instant) -> f64 {
    (to - from).as_secs_f64()
}

/// Declares `queue` (non-durable, as pika's defaults) and purges it.
fn declare_purge(ch: &Channel, queue: &str) -> Result<()> {
    ch.queue_declare(queue, QueueDeclareOptions::default())?;
    ch.queue_purge(queue)?;
    Ok(())
}

/// Synchronous round trip(s): passive declare every 2 ms until message_count == n (30 s at most).
fn wait_count(ch: &Channel, queue: &str, n: usize) -> Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    loop {
        let cnt = ch.queue_declare(queue, passive.clone())?.message_count as usize;
        if cnt == n || Instant::now() > deadline {
            return Ok(cnt);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Messages ready in `queue` (one passive declare).
fn ready(ch: &Channel, queue: &str) -> Result<u32> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    Ok(ch.queue_declare(queue, passive)?.message_count)
}

fn publish_plain(ch: &Channel, queue: &str, n: usize, body: &[u8]) -> Result<()> {
    for _ in 0..n {
        ch.basic_publish("", queue, body)?;
    }
    Ok(())
}

/// Publishes `n` messages each with properties of its own (a message id and a timestamp), as
/// an application publishing events does: every content header is encoded anew.
fn publish_with_ids(ch: &Channel, queue: &str, n: usize, body: &[u8]) -> Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for i in 0..n {
        let options = PublishOptions {
            properties: BasicProperties::default()
                .with_message_id(i.to_string())
                .with_timestamp(now),
            ..Default::default()
        };
        ch.basic_publish_with("", queue, body, &options)?;
    }
    Ok(())
}

/// S1, and (`ids`, not one of the harness's scenarios) S1 with a message id and a timestamp
/// of its own on every message.
fn s1(n: usize, ids: bool) -> Result<String> {
    let c = connect()?;
    let ch = c.channel()?;
    declare_purge(&ch, "bench_s1")?;
    let t0 = Instant::now();
    if ids {
        publish_with_ids(&ch, "bench_s1", n, &BODY64)?;
    } else {
        publish_plain(&ch, "bench_s1", n, &BODY64)?;
    }
    let t1 = Instant::now();
    let cnt = wait_count(&ch, "bench_s1", n)?;
    let t2 = Instant::now();
    c.close()?;
    let (l, t) = (secs(t0, t1), secs(t0, t2));
    Ok(format!(
        "\"scenario\": \"{}\", \"n\": {n}, \"ok\": {}, \"count\": {cnt}, \"loop_s\": {}, \
         \"total_s\": {}, \"rate\": {}, \"rate_e2e\": {}",
        if ids { "s1ids" } else { "s1" },
        cnt == n,
        num(l),
        num(t),
        num(n as f64 / l),
        num(n as f64 / t)
    ))
}

/// S2a (`window` 1: `basic_publish` waits for each confirm, as pika's) and S2b (windows of
/// deferred publishes, then one `wait_for_confirms`).
fn s2(n: usize, window: usize) -> Result<String> {
    let c = connect()?;
    let ch = c.channel()?;
    declare_purge(&ch, "bench_s2")?;
    ch.confirm_delivery()?;
    let options = PublishOptions::default();
    let mut nacks = 0usize;
    let t0 = Instant::now();
    if window == 1 {
        for _ in 0..n {
            // A nack or a return would be an error here.
            ch.basic_publish_with("", "bench_s2", &BODY64, &options)?;
        }
    } else {
        let mut sent = 0;
        while sent < n {
            let w = window.min(n - sent);
            for _ in 0..w {
                ch.basic_publish_deferred("", "bench_s2", &BODY64, &options)?;
            }
            let outcome = ch.wait_for_confirms(None)?;
            nacks += outcome.nacked.len() + outcome.returned.len();
            sent += w;
        }
    }
    let t1 = Instant::now();
    let cnt = wait_count(&ch, "bench_s2", n)?;
    c.close()?;
    let l = secs(t0, t1);
    let name = if window == 1 { "s2a" } else { "s2b" };
    Ok(format!(
        "\"scenario\": \"{name}\", \"n\": {n}, \"window\": {window}, \"ok\": {}, \
         \"count\": {cnt}, \"nacks\": {nacks}, \"loop_s\": {}, \"rate\": {}",
        cnt == n && nacks == 0,
        num(l),
        num(n as f64 / l)
    ))
}

/// The untimed helper that prefills a queue for S3.
fn fill(queue: &str, n: usize) -> Result<String> {
    let c = connect()?;
    let ch = c.channel()?;
    declare_purge(&ch, queue)?;
    publish_plain(&ch, queue, n, &BODY64)?;
    let cnt = wait_count(&ch, queue, n)?;
    c.close()?;
    Ok(format!(
        "\"scenario\": \"fill\", \"queue\": {}, \"n\": {n}, \"ok\": {}, \"count\": {cnt}",
        json_str(queue),
        cnt == n
    ))
}

/// S3: consume the prefilled `bench_s3`, prefetch 1000, one ack per message unless `auto_ack`.
fn s3(n: usize, auto_ack: bool) -> Result<String> {
    let c = connect()?;
    let ch = c.channel()?;
    let have = ch
        .queue_declare("bench_s3", QueueDeclareOptions::default())?
        .message_count;
    ch.basic_qos(QosOptions {
        prefetch_count: 1000,
        ..Default::default()
    })?;
    let count = Arc::new(AtomicU64::new(0));
    let seen = Arc::clone(&count);
    let target = n as u64;
    ch.basic_consume(
        "bench_s3",
        move |ch, method, _props, _body| -> cottontail::Result<()> {
            let k = seen.fetch_add(1, Ordering::Relaxed) + 1;
            if !auto_ack {
                ch.basic_ack(method.delivery_tag, false)?;
            }
            if k == target {
                ch.stop_consuming(None)?;
            }
            Ok(())
        },
        BasicConsumeOptions {
            auto_ack,
            ..Default::default()
        },
    )?;
    let t0 = Instant::now();
    ch.start_consuming()?;
    let t1 = Instant::now();
    let left = ready(&ch, "bench_s3")?;
    c.close()?;
    let count = count.load(Ordering::Relaxed) as usize;
    let l = secs(t0, t1);
    let name = if auto_ack { "s3noack" } else { "s3" };
    Ok(format!(
        "\"scenario\": \"{name}\", \"n\": {n}, \"prefilled\": {have}, \"ok\": {}, \
         \"count\": {count}, \"left\": {left}, \"loop_s\": {}, \"rate\": {}",
        count == n && have as usize == n,
        num(l),
        num(n as f64 / l)
    ))
}

/// S4 server: echo each request to its `reply_to` with its `correlation_id`; `STOP` ends it.
fn s4server() -> Result<String> {
    let c = connect()?;
    let ch = c.channel()?;
    declare_purge(&ch, "rpc_queue")?;
    ch.basic_qos(QosOptions {
        prefetch_count: 1,
        ..Default::default()
    })?;
    let served = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&served);
    ch.basic_consume(
        "rpc_queue",
        move |ch, method, props, body| {
            if body == b"STOP" {
                ch.basic_ack(method.delivery_tag, false)?;
                return ch.stop_consuming(None);
            }
            let mut reply = PublishOptions::default();
            if let Some(corr) = props.correlation_id() {
                reply.properties = reply.properties.with_correlation_id(corr);
            }
            let reply_to = props.reply_to().unwrap_or("");
            ch.basic_publish_with("", reply_to, body, &reply)?;
            ch.basic_ack(method.delivery_tag, false)?;
            counter.fetch_add(1, Ordering::Relaxed);
            Ok(())
        },
        BasicConsumeOptions::default(),
    )?;
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "READY");
        let _ = out.flush();
    }
    ch.start_consuming()?;
    c.close()?;
    Ok(format!(
        "\"scenario\": \"s4server\", \"served\": {}, \"ok\": true",
        served.load(Ordering::Relaxed)
    ))
}

/// The state of the RPC sequence that S4's reply callback drives.
struct Rpc {
    /// The correlation id of the call in flight.
    corr: String,
    /// When the call in flight started.
    started: Instant,
    /// Calls answered so far, warm-up included.
    answered: usize,
    /// Latencies of the measured calls, in nanoseconds.
    lat: Vec<u64>,
    /// Replies whose body was not the request's.
    bad: usize,
    /// Start of the first measured call, end of the last.
    t0: Option<Instant>,
    t1: Option<Instant>,
}

/// Sends one request with a fresh uuid4 correlation id; the latency clock starts before it.
fn rpc_call(ch: &Channel, st: &mut Rpc, reply_to: &str) -> Result<()> {
    st.started = Instant::now();
    st.corr = uuid::Uuid::new_v4().to_string();
    let options = PublishOptions {
        properties: BasicProperties::default()
            .with_reply_to(reply_to)
            .with_correlation_id(st.corr.as_str()),
        ..Default::default()
    };
    ch.basic_publish_with("", "rpc_queue", &BODY64, &options)
}

/// A server-named exclusive queue on `ch`.
fn exclusive_queue(ch: &Channel) -> Result<String> {
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    Ok(ch.queue_declare("", exclusive)?.queue)
}

/// S4 client: 200 warm-up calls then `n` sequential calls, each waiting for its reply on an
/// exclusive server-named queue. The reply callback (inside `start_consuming`, whose thread
/// reads the socket itself while it waits) drives the sequence: it records the call's latency
/// and sends the next request.
fn s4client(n: usize, warmup: usize) -> Result<String> {
    let c = connect()?;
    let ch = c.channel()?;
    let cbq = exclusive_queue(&ch)?;
    let reply_to = cbq.clone();
    let total = warmup + n;
    let state = Arc::new(Mutex::new(Rpc {
        corr: String::new(),
        started: Instant::now(),
        answered: 0,
        lat: Vec::with_capacity(n),
        bad: 0,
        t0: None,
        t1: None,
    }));
    let shared = Arc::clone(&state);
    let cb_reply_to = reply_to.clone();
    ch.basic_consume(
        &cbq,
        move |ch, _method, props, body| {
            let mut st = shared.lock().unwrap_or_else(|p| p.into_inner());
            let matches = props.correlation_id().is_some_and(|c| c == st.corr);
            if !matches {
                return Ok(());
            }
            let now = Instant::now();
            if st.answered >= warmup {
                let ns = (now - st.started).as_nanos() as u64;
                st.lat.push(ns);
                if body != BODY64 {
                    st.bad += 1;
                }
            }
            st.answered += 1;
            if st.answered == total {
                st.t1 = Some(now);
                drop(st);
                ch.basic_publish("", "rpc_queue", b"STOP")?;
                return ch.stop_consuming(None);
            }
            if st.answered == warmup {
                st.t0 = Some(Instant::now());
            }
            rpc_call(ch, &mut st, &cb_reply_to)
        },
        BasicConsumeOptions {
            auto_ack: true,
            ..Default::default()
        },
    )?;
    if total == 0 {
        ch.basic_publish("", "rpc_queue", b"STOP")?;
    } else {
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        if warmup == 0 {
            st.t0 = Some(Instant::now());
        }
        rpc_call(&ch, &mut st, &reply_to)?;
        drop(st);
        ch.start_consuming()?;
    }
    c.close()?;
    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
    let (t0, t1) = (st.t0, st.t1);
    let l = match (t0, t1) {
        (Some(a), Some(b)) => secs(a, b),
        _ => 0.0,
    };
    let ok = st.lat.len() == n && st.bad == 0;
    let lat = &mut st.lat;
    lat.sort_unstable();
    let us = |ns: u64| ns as f64 / 1000.0;
    let (p50, p99, mean) = if lat.is_empty() {
        (f64::NAN, f64::NAN, f64::NAN)
    } else {
        let sum: u64 = lat.iter().sum();
        (
            us(lat[lat.len() / 2]),
            us(lat[(lat.len() * 99 / 100).min(lat.len() - 1)]),
            sum as f64 / lat.len() as f64 / 1000.0,
        )
    };
    Ok(format!(
        "\"scenario\": \"s4client\", \"n\": {n}, \"ok\": {ok}, \"loop_s\": {}, \"rate\": {}, \
         \"p50_us\": {}, \"p99_us\": {}, \"mean_us\": {}",
        num(l),
        num(n as f64 / l),
        num(p50),
        num(p99),
        num(mean)
    ))
}

/// 1 MiB of pseudo-random bytes (xorshift64*), so nothing on the way can compress them.
fn random_body(len: usize) -> Vec<u8> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut x = nanos | 1;
    let mut body = Vec::with_capacity(len + 8);
    while body.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        body.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    body.truncate(len);
    body
}

/// S5: publish `n` x 1 MiB to `bench_s5`, then consume them all (prefetch 10, manual ack).
fn s5(n: usize) -> Result<String> {
    let body = random_body(LARGE);
    let c = connect()?;
    let ch = c.channel()?;
    declare_purge(&ch, "bench_s5")?;
    ch.basic_qos(QosOptions {
        prefetch_count: 10,
        ..Default::default()
    })?;
    let t0 = Instant::now();
    publish_plain(&ch, "bench_s5", n, &body)?;
    let t1 = Instant::now();
    let count = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let (seen, seen_bytes) = (Arc::clone(&count), Arc::clone(&bytes));
    let target = n as u64;
    if n > 0 {
        ch.basic_consume(
            "bench_s5",
            move |ch, method, _props, b| -> cottontail::Result<()> {
                let k = seen.fetch_add(1, Ordering::Relaxed) + 1;
                seen_bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
                ch.basic_ack(method.delivery_tag, false)?;
                if k == target {
                    ch.stop_consuming(None)?;
                }
                Ok(())
            },
            BasicConsumeOptions::default(),
        )?;
        ch.start_consuming()?;
    }
    let t2 = Instant::now();
    let left = ready(&ch, "bench_s5")?;
    c.close()?;
    let count = count.load(Ordering::Relaxed) as usize;
    let bytes = bytes.load(Ordering::Relaxed) as usize;
    let mib = (n * LARGE) as f64 / (1u64 << 20) as f64;
    let (p, co, t) = (secs(t0, t1), secs(t1, t2), secs(t0, t2));
    Ok(format!(
        "\"scenario\": \"s5\", \"n\": {n}, \"ok\": {}, \"left\": {left}, \"pub_s\": {}, \
         \"cons_s\": {}, \"total_s\": {}, \"pub_mibs\": {}, \"cons_mibs\": {}, \"rate\": {}",
        count == n && bytes == n * LARGE,
        num(p),
        num(co),
        num(t),
        num(mib / p),
        num(mib / co),
        num(mib / t)
    ))
}

/// A field of `/proc/self/status` in KiB (`VmRSS`...), 0 if unreadable.
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// CPU time (ns) and times scheduled of this process's `cottontail-io` threads, from
/// `/proc/self/task/*/schedstat`.
fn io_thread_schedstat() -> (u64, u64) {
    let mut total = (0, 0);
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let dir = task.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() != "cottontail-io" {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("schedstat")).unwrap_or_default();
        let fields: Vec<u64> = stat
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        if let [cpu_ns, _, slices, ..] = fields[..] {
            total.0 += cpu_ns;
            total.1 += slices;
        }
    }
    total
}

/// Idle cost: resident memory one open connection with one channel adds, and the CPU time and
/// wake-ups of its I/O thread over `secs` seconds of idleness (heartbeats as the broker
/// proposes them: 60 s on RabbitMQ, so one is sent every 30 s).
///
/// With `consuming`, a thread waits in a `consume()` iteration on an empty queue meanwhile
/// (it holds the read token; the I/O thread only looks at it now and then).
fn idle(secs: u64, consuming: bool) -> Result<String> {
    let before = status_kib("VmRSS:");
    let c = connect()?;
    let ch = c.channel()?;
    if consuming {
        let consumer = c.channel()?;
        let queue = exclusive_queue(&consumer)?;
        let iterator = consumer.consume(&queue, Default::default())?;
        std::thread::spawn(move || {
            for item in iterator {
                if item.is_err() {
                    break;
                }
            }
        });
    }
    std::thread::sleep(Duration::from_millis(200));
    let connected = status_kib("VmRSS:");
    let (cpu0, slices0) = io_thread_schedstat();
    std::thread::sleep(Duration::from_secs(secs));
    let (cpu1, slices1) = io_thread_schedstat();
    let after = status_kib("VmRSS:");
    let ok = ch.is_open();
    c.close()?;
    Ok(format!(
        "\"scenario\": \"idle\", \"secs\": {secs}, \"consuming\": {consuming}, \"ok\": {ok}, \
         \"heartbeat_s\": {}, \
         \"rss_before_kib\": {before}, \"rss_connected_kib\": {connected}, \
         \"rss_after_kib\": {after}, \"connection_kib\": {}, \"io_cpu_us\": {}, \
         \"io_wakeups\": {}",
        c.heartbeat(),
        connected.saturating_sub(before),
        (cpu1 - cpu0) / 1000,
        slices1 - slices0
    ))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let scenario = args.get(1).map(String::as_str).unwrap_or("");
    let n: Option<usize> = match args.get(2).map(|s| s.parse()) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => {
            eprintln!("N must be a non-negative integer, got {:?}", args[2]);
            std::process::exit(2);
        }
    };
    let result = match scenario {
        "s1" => s1(n.unwrap_or(200_000), false),
        "s1ids" => s1(n.unwrap_or(200_000), true),
        "s2a" => s2(n.unwrap_or(20_000), 1),
        "s2b" => s2(n.unwrap_or(20_000), S2B_WINDOW),
        "fill3" => fill("bench_s3", n.unwrap_or(200_000)),
        "s3" => s3(n.unwrap_or(200_000), false),
        "s3noack" => s3(n.unwrap_or(200_000), true),
        "s4server" => s4server(),
        "s4client" => s4client(n.unwrap_or(10_000), S4_WARMUP),
        "s5" => s5(n.unwrap_or(500)),
        "idle" => idle(n.unwrap_or(10) as u64, false),
        "idleconsumer" => idle(n.unwrap_or(10) as u64, true),
        _ => {
            eprintln!(
                "usage: peer_bench SCENARIO [N]; SCENARIO: s1 | s1ids | s2a | s2b | fill3 | s3 | \
                 s3noack | s4server | s4client | s5 | idle | idleconsumer (got {scenario:?})"
            );
            std::process::exit(2);
        }
    };
    match result {
        Ok(fields) => emit(&fields),
        Err(e) => {
            emit(&format!(
                "\"scenario\": {}, \"ok\": false, \"error\": {}",
                json_str(scenario),
                json_str(&e.to_string())
            ));
            std::process::exit(1);
        }
    }
}
