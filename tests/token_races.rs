//! Races in the read token found in review, each shown with the fake broker (what a real
//! broker does not do on cue: frames in one segment with open-ok, a peer that stops reading).

use std::sync::{mpsc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{channel, connection, AMQPClass};
use cottontail::{Connection, PublishOptions};

#[path = "support/fake_broker.rs"]
mod fake_broker;

use fake_broker::{client_params, join, spawn_fake, Peer};

/// The tests here run one at a time: one of them measures the CPU of "the" cottontail-io
/// thread of this process.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if f() {
            return Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

/// A frame sent in the same segment as connection.open-ok (read by the handshake) is routed
/// at once, not when the broker's next byte arrives.
#[test]
fn a_frame_in_the_same_segment_as_open_ok_is_routed() {
    let _turn = one_at_a_time();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (port, fake) = spawn_fake(move |broker| {
        let blocked = AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Blocked(connection::Blocked {
                reason: "low on memory".into(),
            })),
        );
        let mut peer = broker.accept_and_open_with(0, 131_072, &[blocked]);
        // Any later byte makes the client route the stuck frame.
        let _ = go_rx.recv_timeout(Duration::from_secs(5));
        peer.send_frame(&AMQPFrame::Heartbeat);
        peer.drain()
    });
    let connection = Connection::open(client_params(port)).expect("open");
    let seen = eventually(Duration::from_secs(2), || connection.is_blocked());
    go_tx.send(()).unwrap();
    let after_next_byte = eventually(Duration::from_secs(2), || connection.is_blocked());
    drop(connection);
    join(fake);
    assert!(
        seen.is_some(),
        "connection.blocked (sent with open-ok) was not routed within 2 s; it was routed {:?} \
         after the broker's next byte",
        after_next_byte
    );
}

/// After the I/O thread hands the token to a waiting thread and that thread parks it, the
/// socket is still read while the broker does not read ours (no writable event to wake the
/// I/O thread, heartbeats off): a channel.close from the broker is seen within 2 s.
#[test]
fn a_token_parked_after_a_hand_over_is_taken_back() {
    let _turn = one_at_a_time();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (port, fake) = spawn_fake(move |broker| {
        let mut peer = broker.accept_and_handshake(0, 131_072);
        peer.open_channel(1);
        // Stop reading: the client's socket fills up. Then close channel 1 when told.
        let _ = go_rx.recv_timeout(Duration::from_secs(20));
        peer.send_method(
            1,
            AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                reply_code: 404,
                reply_text: "NOT_FOUND - test".into(),
                class_id: 60,
                method_id: 40,
            })),
        );
        let _ = go_rx.recv_timeout(Duration::from_secs(20));
        let frames = peer.drain();
        frames.iter().any(|f| {
            matches!(
                f,
                AMQPFrame::Method(1, AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)))
            )
        })
    });
    let params = client_params(port).with_rpc_timeout(Duration::from_secs(20));
    let connection = Connection::open(params).expect("open");
    let ch = connection.channel().expect("channel");
    // Fill the socket and the outbound buffer (the fake does not read): the publisher ends up
    // waiting for room, the I/O thread's last write hit WouldBlock.
    let published = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let publisher = {
        let ch = ch.clone();
        let published = published.clone();
        std::thread::spawn(move || {
            let body = vec![0u8; 256 * 1024];
            for _ in 0..160 {
                if ch
                    .basic_publish_with("", "q", &body, &PublishOptions::default())
                    .is_err()
                {
                    break;
                }
                published.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        })
    };
    // Until the publisher has been stuck (waiting for room) for 1.5 s.
    let mut last = usize::MAX;
    loop {
        std::thread::sleep(Duration::from_millis(1500));
        let now = published.load(std::sync::atomic::Ordering::SeqCst);
        if now == last {
            break;
        }
        last = now;
    }
    // A waiter asks the I/O thread for the token (hand_over), reads 100 ms, parks it.
    connection
        .process_data_events(Duration::from_millis(100))
        .expect("process_data_events");
    // Now the broker closes channel 1. Only a reader can notice.
    go_tx.send(()).unwrap();
    let noticed = eventually(Duration::from_secs(2), || ch.is_closed());
    go_tx.send(()).unwrap(); // the fake drains from here on
    let close_ok = join(fake);
    let _ = publisher.join();
    drop(ch);
    drop(connection);
    assert!(
        noticed.is_some(),
        "the broker's channel.close was not read within 2 s (token parked, I/O thread asleep); \
         close-ok sent eventually: {close_ok}"
    );
}

/// CPU ticks (user + system) the `cottontail-io` thread of this process has used.
fn io_thread_ticks() -> u64 {
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() == "cottontail-io" {
            let stat = std::fs::read_to_string(dir.join("stat")).unwrap();
            let rest = &stat[stat.rfind(')').unwrap() + 2..];
            let f: Vec<&str> = rest.split(' ').collect();
            // fields 14 and 15 of stat; rest starts at field 3
            return f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        }
    }
    panic!("no cottontail-io thread");
}

/// Half a frame buffered while the broker does not read (our output stuck): the I/O thread
/// neither spins nor stops reading (a connection.blocked that completes the stream is seen).
#[test]
fn half_a_frame_buffered_with_output_stuck_neither_spins_nor_stops_reading() {
    let _turn = one_at_a_time();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (port, fake) = spawn_fake(move |broker| {
        let mut peer = broker.accept_and_handshake(0, 131_072);
        peer.open_channel(1);
        // Half a heartbeat frame: a frame split across TCP segments.
        let hb = Peer::encode(&AMQPFrame::Heartbeat);
        peer.send_raw(&hb[..4]);
        // Stop reading until told (a broker under a memory alarm, or busy writing).
        let _ = rx.recv_timeout(Duration::from_secs(20));
        let mut rest = hb[4..].to_vec();
        rest.extend(Peer::encode(&AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Blocked(connection::Blocked {
                reason: "x".into(),
            })),
        )));
        peer.send_raw(&rest);
        let _ = rx.recv_timeout(Duration::from_secs(20));
        peer.close();
    });
    let connection = Connection::open(client_params(port)).expect("open");
    let channel = connection.channel().expect("channel");
    std::thread::sleep(Duration::from_millis(200)); // the I/O thread reads the half frame
                                                    // Fill the socket and the outbound buffer (the fake does not read).
    let body = vec![0u8; 64 * 1024];
    let publisher = std::thread::spawn(move || {
        for _ in 0..400 {
            if channel.basic_publish("", "q", &body).is_err() {
                break;
            }
        }
        channel
    });
    std::thread::sleep(Duration::from_millis(1500));
    // The rest of the frame and a connection.blocked arrive; nobody waits on the token.
    tx.send(()).unwrap();
    let t0 = io_thread_ticks();
    let start = Instant::now();
    let mut seen = None;
    while start.elapsed() < Duration::from_secs(3) {
        if connection.is_blocked() {
            seen = Some(start.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let wall = start.elapsed();
    let ticks = io_thread_ticks() - t0; // 100 ticks a second
    eprintln!("blocked seen: {seen:?}; I/O thread CPU {ticks} ticks in {wall:?}");
    let _ = tx.send(());
    let _ = publisher.join();
    drop(connection);
    join(fake);
    assert!(
        ticks < 30,
        "the I/O thread spun: {ticks} ticks of CPU in {wall:?}"
    );
    assert!(
        seen.is_some(),
        "connection.blocked was never read while output was stuck"
    );
}

/// A broker that goes silent in the middle of a frame is still declared dead by the heartbeat
/// (half a frame buffered is not hearing from it).
#[test]
fn a_peer_silent_after_half_a_frame_is_declared_dead() {
    let _turn = one_at_a_time();
    let (port, fake) = spawn_fake(move |broker| {
        let mut peer = broker.accept_and_handshake(1, 131_072);
        let hb = Peer::encode(&AMQPFrame::Heartbeat);
        peer.send_raw(&hb[..4]);
        // Silent from now on (keeps reading, never writes).
        let _ = peer.drain();
    });
    let connection = Connection::open(client_params(port)).expect("open");
    let start = Instant::now();
    while connection.is_open() && start.elapsed() < Duration::from_secs(6) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let open = connection.is_open();
    drop(connection);
    join(fake);
    assert!(
        !open,
        "heartbeat 1 s, broker silent for 6 s after half a frame: still open"
    );
}
