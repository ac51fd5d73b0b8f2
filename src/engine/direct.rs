//! A caller's own writes to a plain TCP socket (outbound rule 2, see `outbound`, which decides
//! who writes and when): one vectored, non-blocking send of a publish's frames and body frames
//! straight from the caller's buffers, allocating nothing, and the poll in which a caller
//! finishing its own large write waits for room.

use std::io::IoSlice;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use crate::protocol::codec;

/// A caller finishes its own direct write of a publish at least this large (rule 2), however
/// little the socket left of it: queued, even a small rest would leave the buffer non-empty,
/// so the caller's next publishes (1 MiB each in S5) would be copied into it and written by
/// the I/O thread too (S5: 10-15% more CPU, BENCHMARKS.md). A smaller publish queues what the
/// socket did not take: copying it costs less than waiting for the socket.
pub(crate) const DIRECT_FINISH_MIN: usize = 64 * 1024;
/// The most one direct send hands the kernel: two body frames at RabbitMQ's `frame_max` (one
/// frame's piece, at most `FRAME_MAX_SIZE`, always fits). While a send runs, the kernel holds
/// the socket, and the acknowledgements that free room in it wait: sends of the whole of a
/// 1 MiB message published 3-4% slower in S5 than sends of this size (BENCHMARKS.md), which
/// are also what rabbitmq-c's one send per 128 KiB frame gets.
pub(crate) const SEND_MAX: usize = 256 * 1024;
/// The longest a caller finishing its own direct write waits for the socket to take more
/// (rule 2) before it queues the rest for the I/O thread: the socket stalls (the broker is not
/// reading, or the network is slow), and the caller should not wait for it.
pub(crate) const STALL: Duration = Duration::from_millis(10);

/// A plain TCP socket's handle for callers' direct writes (rule 2), and the poll in which a
/// caller finishing its own direct write waits for room (used by that caller only, one at a
/// time: `outbound::Writer::Caller`).
#[derive(Debug)]
pub(crate) struct Direct {
    pub(crate) tcp: TcpStream,
    room: Mutex<(Poll, Events)>,
}

impl Direct {
    pub(crate) fn new(tcp: TcpStream) -> std::io::Result<Direct> {
        let poll = Poll::new()?;
        poll.registry().register(
            &mut SourceFd(&tcp.as_raw_fd()),
            Token(0),
            Interest::WRITABLE,
        )?;
        Ok(Direct {
            tcp,
            room: Mutex::new((poll, Events::with_capacity(4))),
        })
    }

    /// Writes the rest of a caller's direct write (`unfinished`, of `frames` and `body`) as
    /// the socket takes it, waiting for room in this poll at most [`STALL`] at a time and
    /// never past `deadline`; returns how much of it is written by then (`Core::finish_direct`
    /// queues the rest).
    pub(super) fn write_rest(
        &self,
        unfinished: Unfinished,
        frames: &[u8],
        body: (u16, &[u8]),
        frame_max: u32,
        deadline: Option<Instant>,
    ) -> usize {
        let total = frames.len() + codec::body_frames_len(body.1.len(), frame_max);
        let mut done = unfinished.done;
        let mut room = self.room.lock().unwrap_or_else(|p| p.into_inner());
        let (poll, events) = &mut *room;
        let mut give_up = give_up_at(Instant::now(), deadline);
        while done < total {
            let n = write_direct(&self.tcp, &[], frames, Some(body), frame_max, done);
            if n > 0 {
                done += n;
                give_up = give_up_at(Instant::now(), deadline);
                continue;
            }
            // Full (or failed: the I/O thread meets the error on its next write).
            let left = give_up.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match poll.poll(events, Some(left)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        done
    }
}

/// The part of a caller's direct write still to write (`Core::finish_direct`'s job): `done`
/// bytes of its frames and body frames are written.
#[derive(Debug)]
#[must_use]
pub(crate) struct Unfinished {
    pub(super) done: usize,
}

/// Body frames a caller writes directly at most (8 MiB at RabbitMQ's 128 KiB `frame_max`; the
/// I/O slices, ~3 KiB, fit on the stack); larger bodies go through the I/O thread.
pub(crate) const DIRECT_BODY_FRAMES: usize = 64;

/// `MSG_NOSIGNAL`: a write to a socket the peer reset fails with EPIPE instead of raising
/// SIGPIPE, which kills a host process that did not ignore it. `MSG_DONTWAIT`: a direct write
/// never blocks, even once the I/O thread has put the shared socket in blocking mode for its
/// last write (`io_thread::flush_before_exit`).
#[cfg(target_os = "linux")]
const SEND_FLAGS: i32 = libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT;
#[cfg(not(target_os = "linux"))]
const SEND_FLAGS: i32 = 0;

/// When a caller finishing its own write stops waiting for room (rule 2): [`STALL`] after
/// `now` (its last progress), or its deadline if that comes first.
fn give_up_at(now: Instant, deadline: Option<Instant>) -> Instant {
    let stall = now + STALL;
    deadline.map_or(stall, |d| d.min(stall))
}

/// Whether a body of `len` bytes is split into at most [`DIRECT_BODY_FRAMES`] frames, so that
/// [`write_direct`] writes it.
pub(super) fn fits_direct(len: usize, frame_max: u32) -> bool {
    len.div_ceil(codec::body_chunk(frame_max)) <= DIRECT_BODY_FRAMES
}

/// Writes `prefix`, `frames` and `body` (as body frames of at most `frame_max - 8` payload
/// bytes each), but their first `skip` bytes, to a non-blocking socket with one vectored send,
/// allocating nothing; returns how many bytes it took (0 when it would block, on error, or for
/// a body that does not [`fits_direct`]: the caller queues the rest). `skip` is less than
/// their length.
pub(crate) fn write_direct(
    tcp: &TcpStream,
    prefix: &[u8],
    frames: &[u8],
    body: Option<(u16, &[u8])>,
    frame_max: u32,
    skip: usize,
) -> usize {
    let chunk = codec::body_chunk(frame_max);
    let (channel, body) = body.unwrap_or((0, &[]));
    let socket = socket2::SockRef::from(tcp);
    let end = [amq_protocol::protocol::constants::FRAME_END];
    if body.len() <= chunk {
        // At most one body frame, the common case: five slices, not the large arrays below
        // (whose initialisation alone cost more than the rest of a publish).
        let header = codec::body_frame_header(channel, body.len());
        let mut slices = [
            IoSlice::new(prefix),
            IoSlice::new(frames),
            IoSlice::new(&header),
            IoSlice::new(body),
            IoSlice::new(&end),
        ];
        let used = if body.is_empty() { 2 } else { 5 };
        let mut slices = &mut slices[..used];
        IoSlice::advance_slices(&mut slices, skip);
        return send_some(&socket, slices);
    }
    if !fits_direct(body.len(), frame_max) {
        return 0;
    }
    let mut headers = [[0u8; 7]; DIRECT_BODY_FRAMES];
    for (header, piece) in headers.iter_mut().zip(body.chunks(chunk)) {
        *header = codec::body_frame_header(channel, piece.len());
    }
    let mut slices = [IoSlice::new(&[]); 2 + 3 * DIRECT_BODY_FRAMES];
    slices[0] = IoSlice::new(prefix);
    slices[1] = IoSlice::new(frames);
    let mut used = 2;
    for (header, piece) in headers.iter().zip(body.chunks(chunk)) {
        slices[used] = IoSlice::new(header);
        slices[used + 1] = IoSlice::new(piece);
        slices[used + 2] = IoSlice::new(&end);
        used += 3;
    }
    let mut slices = &mut slices[..used];
    IoSlice::advance_slices(&mut slices, skip);
    send_some(&socket, at_most(slices, SEND_MAX))
}

/// The first of `slices` that add up to at most `max` bytes (at least one).
fn at_most<'a, 'b>(slices: &'a [IoSlice<'b>], max: usize) -> &'a [IoSlice<'b>] {
    let mut total = 0;
    let taken = slices
        .iter()
        .take_while(|slice| {
            total += slice.len();
            total <= max
        })
        .count();
    &slices[..taken.max(1).min(slices.len())]
}

/// One vectored send of `slices`: the bytes it took (0 when it would block or on error).
fn send_some(socket: &socket2::SockRef<'_>, slices: &[IoSlice<'_>]) -> usize {
    loop {
        match socket.send_vectored_with_flags(slices, SEND_FLAGS) {
            Ok(n) => return n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // WouldBlock, or an error the I/O thread will meet and report on its next write.
            Err(_) => return 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client socket and the server's end of it, on loopback.
    fn connected_pair() -> (TcpStream, TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    #[test]
    fn direct_writes_send_the_same_bytes_as_the_queue() {
        use std::io::Read;
        let (client, mut server) = connected_pair();
        let frames = b"method and header frames";
        let chunk = 8192 - codec::FRAME_OVERHEAD;
        // 20000 bytes at frame_max 8192: 3 body frames; then exactly one full frame, one
        // short frame, and no body frame at all (the one-frame path).
        for len in [20_000, chunk, chunk + 1, 100, 0] {
            let body: Vec<u8> = (0..len as u32).map(|i| i as u8).collect();
            let written = write_direct(&client, b"prefix", frames, Some((5, &body)), 8192, 0);
            let mut expected = Vec::new();
            codec::encode_tail(&mut expected, 0, b"prefix", frames, Some((5, &body)), 8192);
            assert_eq!(written, expected.len(), "body of {len} bytes");
            let mut got = vec![0; expected.len()];
            server.read_exact(&mut got).unwrap();
            assert_eq!(got, expected, "body of {len} bytes");
        }
        // Too many body frames for a direct write: nothing is written, the caller queues.
        let too_many = vec![0; (8192 - codec::FRAME_OVERHEAD) * DIRECT_BODY_FRAMES + 1];
        assert_eq!(
            write_direct(&client, &[], frames, Some((5, &too_many)), 8192, 0),
            0
        );
    }

    #[test]
    fn a_large_body_goes_in_sends_of_at_most_send_max_that_add_up_to_the_queued_bytes() {
        use std::io::Read;
        let (client, mut server) = connected_pair();
        let frames = b"method and header frames";
        let body: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
        let mut expected = Vec::new();
        codec::encode_tail(&mut expected, 0, &[], frames, Some((3, &body)), 131_072);
        let (mut done, mut got) = (0, Vec::new());
        while done < expected.len() {
            let sent = write_direct(&client, &[], frames, Some((3, &body)), 131_072, done);
            assert!(sent <= SEND_MAX, "one send of {sent} bytes");
            let mut piece = vec![0; sent];
            server.read_exact(&mut piece).unwrap();
            got.extend_from_slice(&piece);
            done += sent;
        }
        assert_eq!(got, expected);
        // `at_most` itself: whole slices within the bound, never none.
        let slices = [IoSlice::new(&[0; 100]), IoSlice::new(&[0; 200])];
        assert_eq!(at_most(&slices, 150).len(), 1);
        assert_eq!(at_most(&slices, 300).len(), 2);
        assert_eq!(at_most(&slices, 50).len(), 1, "never an empty send");
    }

    #[test]
    fn a_finishing_caller_gives_up_at_a_stall_or_at_its_deadline_whichever_comes_first() {
        let now = Instant::now();
        assert_eq!(give_up_at(now, None), now + STALL);
        assert_eq!(give_up_at(now, Some(now + STALL * 100)), now + STALL);
        let soon = now + STALL / 2;
        assert_eq!(give_up_at(now, Some(soon)), soon);
        // A deadline already past: no wait at all.
        assert_eq!(give_up_at(now, Some(now)), now);
    }

    #[test]
    fn a_direct_write_resumes_where_the_last_one_stopped() {
        use std::io::Read;
        let (client, mut server) = connected_pair();
        let frames = b"method and header frames";
        let body: Vec<u8> = (0..20_000u32).map(|i| (i * 7) as u8).collect();
        let mut expected = Vec::new();
        codec::encode_tail(&mut expected, 0, b"ack", frames, Some((5, &body)), 8192);
        // Cut inside the prefix, the frames, a frame header, a body piece and a frame end.
        let cuts = [
            0,
            2,
            10,
            3 + frames.len() + 3,
            3 + frames.len() + 7 + 100,
            8219,
            20_050,
        ];
        for from in cuts {
            let sent = write_direct(&client, b"ack", frames, Some((5, &body)), 8192, from);
            assert_eq!(sent, expected.len() - from, "from {from}");
            let mut got = vec![0; sent];
            server.read_exact(&mut got).unwrap();
            assert_eq!(got, expected[from..], "from {from}");
        }
    }
}
