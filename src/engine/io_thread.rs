//! The `cottontail-io` thread: writes what callers queued, keeps heartbeats and timers, reads
//! whenever it holds the read token (see `token`), and ends the connection.
//!
//! # Rules
//!
//! 1. **One pass.** Each turn of the loop: stop if asked, write what is queued, take its turn
//!    at the token (`Core::io_read`: read, leaving early for output or a due timer), then the
//!    timers (blocked-connection timeout, held acks, heartbeats) with what was just read, write
//!    again; then sleep in `poll` until `io_waker`, the socket, the earliest timer, or the
//!    token's recheck. It never runs user code and blocks nowhere else.
//! 2. **Heartbeats** go out whoever holds the token, through the outbound buffer (never into
//!    the middle of a caller's direct write). The broker counts as heard from whenever any
//!    holder read bytes (`Turn::last_read`) and while reading is paused on purpose.
//! 3. **The end.** However the connection ends (our close answered, the broker's close, a
//!    socket error, a protocol violation, a heartbeat or blocked timeout, `close` giving up,
//!    a panic on this thread or on a user thread holding the token) this thread ends it once:
//!    it tells the broker why if it can do so without cutting a frame (protocol violations)
//!    or writes the queued close-ok (the broker's close; after a caller finishing its own
//!    write, if that takes less than a second), shuts the socket down, ends the token
//!    and fails the connection with one error that every waiter and later call gets.

use std::io::{ErrorKind, Write};
use std::os::fd::AsRawFd;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use amq_protocol::protocol::{connection, AMQPClass};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll};

use super::outbound::{Link, Writer, OUTBOUND_HIGH_WATER, OUTBOUND_KEPT_CAPACITY};
use super::router::Exit;
use super::token::{IoTurn, ReadSide, SOCKET};
use super::Core;
use crate::error::{Error, Result};
use crate::protocol::codec;
use crate::protocol::heartbeat::{Due, Heartbeat};
use crate::transport::Stream;

/// Stack of the I/O thread.
const IO_STACK: usize = 8 * 1024 * 1024;

/// Why the loop ended without an error of its own.
enum End {
    /// Reading ended (our close answered, or the broker closed the connection).
    Read(Exit),
    /// `Core::close` gave up waiting and asked us to stop.
    Shutdown,
}

/// Starts the `cottontail-io` thread.
pub(crate) fn spawn(f: impl FnOnce() + Send + 'static) -> Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("cottontail-io".into())
        .stack_size(IO_STACK)
        .spawn(f)
        .map_err(|e| Error::io("starting the I/O thread", &e))
}

/// Runs the I/O loop for an open connection on the current (I/O) thread until it ends.
pub(crate) fn run(core: Arc<Core>, mut stream: Stream, side: ReadSide, poll: Poll) {
    // Open: the open's deadline and the socket's timeouts no longer apply.
    stream.opened();
    let tcp = stream.tcp();
    let ready = tcp
        .set_read_timeout(None)
        .and_then(|()| tcp.set_write_timeout(None))
        .and_then(|()| tcp.set_nonblocking(true))
        .and_then(|()| {
            poll.registry().register(
                &mut SourceFd(&tcp.as_raw_fd()),
                SOCKET,
                Interest::READABLE | Interest::WRITABLE,
            )
        });
    if let Err(e) = ready {
        core.fail(Error::io("preparing the socket for the I/O thread", &e));
        drop(core.end_reading());
        return;
    }
    let io = IoThread {
        heartbeat: Heartbeat::new(core.tuned.heartbeat, Instant::now()),
        core,
        stream,
        poll,
        wbuf: Vec::with_capacity(64 * 1024),
        wpos: 0,
        turn: IoTurn::holding(side),
        watching_input: true,
    };
    io.main();
}

struct IoThread {
    core: Arc<Core>,
    stream: Stream,
    poll: Poll,
    /// Bytes taken from the shared buffer and being written; `wpos` of them are written.
    wbuf: Vec<u8>,
    wpos: usize,
    heartbeat: Heartbeat,
    /// The reading half while this thread holds the read token.
    turn: IoTurn,
    /// The socket's input is registered with `poll` (only while this thread holds the token).
    watching_input: bool,
}

impl IoThread {
    fn main(mut self) {
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| self.run()));
        let outcome = outcome.unwrap_or_else(|panic| {
            Err(Error::StreamLost {
                message: format!(
                    "the I/O thread panicked: {}",
                    crate::error::panic_message(&*panic)
                ),
            })
        });
        let error = match outcome {
            Ok(End::Read(Exit::CloseOk)) | Ok(End::Shutdown) => {
                let (reply_code, reply_text) = self
                    .core
                    .lock_link()
                    .closing
                    .clone()
                    .unwrap_or((200, "Normal shutdown".to_string()));
                log::debug!("connection closed by the client");
                Error::ConnectionClosedByClient {
                    reply_code,
                    reply_text,
                }
            }
            Ok(End::Read(Exit::ClosedByBroker(error))) => {
                log::warn!("{error}");
                self.flush_before_exit();
                error
            }
            Err(error) => {
                log::error!("connection failed: {error}");
                if let Error::Protocol { reply_code, reason } = &error {
                    self.send_close_now(*reply_code, reason);
                }
                error
            }
        };
        let _ = self.stream.tcp().shutdown(std::net::Shutdown::Both);
        let parked = self.core.end_reading();
        drop(parked);
        drop(self.turn.side.take());
        self.core.fail(error);
    }

    fn run(&mut self) -> Result<End> {
        let mut events = Events::with_capacity(16);
        loop {
            if self.core.lock_link().shutdown {
                return Ok(End::Shutdown);
            }
            self.flush()?;
            // Read first: what waits in the socket (connection.unblocked) decides the timers.
            let due = self.next_timer(Instant::now());
            let read = self
                .core
                .io_read(&mut self.turn, Some(&mut self.stream), due);
            if let Some(end) = read.end {
                return end.map(End::Read);
            }
            self.watch_input(read.holding)?;
            let now = Instant::now();
            let mut link = self.core.lock_link();
            let blocked_deadline = self.blocked_deadline(&link);
            let acks_due = link.acks_due.is_some_and(|due| due <= now);
            if acks_due {
                link.acks_due = None;
            }
            drop(link);
            if blocked_deadline.is_some_and(|d| d <= now) {
                return Err(Error::ConnectionBlockedTimeout {
                    after: self
                        .core
                        .params
                        .blocked_connection_timeout
                        .unwrap_or_default(),
                });
            }
            if acks_due {
                self.core.flush_all_acks();
            }
            self.heartbeat.received(self.core.last_read());
            match self.heartbeat.poll(now) {
                Due::Nothing => {}
                Due::Send => {
                    log::trace!("sending heartbeat");
                    self.core
                        .enqueue(self.core.lock_link(), codec::encode_heartbeat);
                    // Even if the socket is full, a heartbeat is queued: do not queue another.
                    self.heartbeat.sent(now);
                }
                Due::Dead(silent_for) => {
                    return Err(Error::HeartbeatTimeout {
                        heartbeat: self.core.tuned.heartbeat,
                        silent_for,
                    })
                }
            }
            self.flush()?;
            let timeout = [self.next_timer(now), read.recheck]
                .into_iter()
                .flatten()
                .min()
                .map(|at| at.saturating_duration_since(now));
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io("polling the socket", &e)),
            }
        }
    }

    /// The earliest of this thread's timers: heartbeat duty, blocked-connection timeout, held
    /// acks.
    fn next_timer(&self, now: Instant) -> Option<Instant> {
        let link = self.core.lock_link();
        let blocked = self.blocked_deadline(&link);
        let acks = link.acks_due;
        drop(link);
        let heartbeat = self
            .heartbeat
            .next_wakeup(now)
            .and_then(|d| now.checked_add(d));
        [heartbeat, blocked, acks].into_iter().flatten().min()
    }

    /// When a connection the broker blocks must be given up (`blocked_connection_timeout`).
    fn blocked_deadline(&self, link: &Link) -> Option<Instant> {
        let timeout = self.core.params.blocked_connection_timeout?;
        link.blocked_since?.checked_add(timeout)
    }

    /// Watches the socket's input in our poll exactly while we hold the read token (token
    /// rule 6): only this thread changes this poll's registrations.
    fn watch_input(&mut self, holding: bool) -> Result<()> {
        if holding == self.watching_input {
            return Ok(());
        }
        let interest = if holding {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::WRITABLE
        };
        self.poll
            .registry()
            .reregister(
                &mut SourceFd(&self.stream.tcp().as_raw_fd()),
                SOCKET,
                interest,
            )
            .map_err(|e| Error::io("watching the socket", &e))?;
        self.watching_input = holding;
        Ok(())
    }

    /// Writes queued bytes until everything is out or the socket is full.
    fn flush(&mut self) -> Result<()> {
        self.flush_until(None)
    }

    /// [`flush`](Self::flush); with `until`, on a blocking socket, each write may wait only
    /// until then (a peer draining a trickle cannot stretch it), and none starts after it.
    fn flush_until(&mut self, until: Option<Instant>) -> Result<()> {
        loop {
            if self.wpos == self.wbuf.len() {
                self.wbuf.clear();
                self.wpos = 0;
                if self.wbuf.capacity() > OUTBOUND_KEPT_CAPACITY {
                    // One large message must not keep its buffer for the connection's life.
                    self.wbuf = Vec::with_capacity(64 * 1024);
                }
                let mut link = self.core.lock_link();
                if link.writer == Writer::Io {
                    link.writer = Writer::Nobody;
                }
                // A caller finishing its own write wakes us when it is done (outbound rule 2).
                if link.buf.is_empty() || link.writer == Writer::Caller {
                    if link.flushing > 0 && link.writer == Writer::Nobody {
                        self.core.link_cond.notify_all();
                    }
                    return Ok(());
                }
                std::mem::swap(&mut link.buf, &mut self.wbuf);
                link.writer = Writer::Io;
                link.replies_queued = 0;
                let was_full = self.wbuf.len() >= OUTBOUND_HIGH_WATER;
                drop(link);
                if was_full {
                    self.core.link_cond.notify_all();
                }
            }
            if let Some(until) = until {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() || self.stream.tcp().set_write_timeout(Some(left)).is_err() {
                    return Ok(());
                }
            }
            match self.stream.write(&self.wbuf[self.wpos..]) {
                Ok(0) => {
                    return Err(Error::StreamLost {
                        message: "the socket accepts no more bytes".into(),
                    })
                }
                Ok(n) => {
                    self.wpos += n;
                    self.heartbeat.sent(Instant::now());
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(Error::StreamLost {
                        message: format!("writing to the socket failed: {e}"),
                    })
                }
            }
        }
    }

    /// Writes what is queued (the close-ok to the broker's close) with the socket back in
    /// blocking mode, for at most a second in all (each write waits only for what is left of
    /// it). A caller finishing its own write (outbound rule 2) is let finish first, within
    /// that second: its frames come before the close-ok, and blocking mode would make its
    /// non-blocking writes wait.
    fn flush_before_exit(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut link = self.core.lock_link();
        while link.writer == Writer::Caller {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            link = self
                .core
                .link_cond
                .wait_timeout(link, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        drop(link);
        if self.stream.tcp().set_nonblocking(false).is_ok() {
            self.stream.bound_until(deadline);
            let _ = self.flush_until(Some(deadline));
        }
    }

    /// Best effort: tell the peer why we are closing (protocol violation), without waiting.
    /// Skipped when a frame is half written, by us or by a caller's direct write (whose tail
    /// would be queued, or which the caller is finishing): the close would land inside it. The
    /// buffer's lock is held while writing, so no direct write can start meanwhile.
    fn send_close_now(&mut self, reply_code: u16, reason: &str) {
        let link = self.core.lock_link();
        if self.wpos != self.wbuf.len() || !link.buf.is_empty() || link.writer == Writer::Caller {
            return;
        }
        let text: String = reason.chars().take(200).collect();
        let method = AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code,
            reply_text: text.as_str().into(),
            class_id: 0,
            method_id: 0,
        }));
        let mut frame = Vec::new();
        if codec::encode_method(&mut frame, 0, method).is_ok() {
            let _ = self.stream.write(&frame);
            let _ = self.stream.flush();
        }
        drop(link);
    }
}

impl std::fmt::Debug for IoThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoThread").finish_non_exhaustive()
    }
}
