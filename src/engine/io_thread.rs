//! The `cottontail-io` thread: owns the socket, reads and routes frames, writes what callers
//! queued, keeps heartbeats. It never runs user code and never blocks on anything but `poll`.

use std::io::{ErrorKind, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::basic::{self, Deliver, GetOk, Return};
use amq_protocol::protocol::{channel, connection, AMQPClass, BasicProperties};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::chan::{weight, ChannelCore, Life, Reply};
use super::{Core, INBOUND_CHANNEL_LIMIT};
use crate::delivery::{Delivery, GetMessage, Returned};
use crate::error::{Error, Result, CHANNEL_ERROR, COMMAND_INVALID, FRAME_ERROR, UNEXPECTED_FRAME};
use crate::protocol::acks::ACK_FLUSH_DELAY;
use crate::protocol::codec::{self, FrameReader, Inbound};
use crate::protocol::heartbeat::{Due, Heartbeat};
use crate::transport::Stream;

pub(crate) const SOCKET: Token = Token(0);
/// The socket's output, on plain TCP (see [`register_socket`]).
const SOCKET_OUT: Token = Token(2);
pub(crate) const WAKER: Token = Token(1);

/// Largest message body accepted (RabbitMQ's own hard limit is 512 MiB).
const MAX_BODY_SIZE: u64 = 512 * 1024 * 1024;
/// Largest body buffer reserved up front from a content header's (peer-controlled) size.
const MAX_BODY_PREALLOC: u64 = 16 * 1024 * 1024;

/// Why the loop ended without an error of its own.
enum Exit {
    /// Our connection.close was answered.
    CloseOk,
    /// The broker closed the connection (close-ok is queued).
    ClosedByBroker(Error),
    /// `Core::close` gave up waiting and asked us to stop.
    Shutdown,
}

/// Stack of the I/O thread: room for parsing frames nested up to `codec`'s inline limit in a
/// debug build; deeper ones are parsed on a thread of their own (see `codec`).
const IO_STACK: usize = 8 * 1024 * 1024;

/// Starts the `cottontail-io` thread.
pub(crate) fn spawn(f: impl FnOnce() + Send + 'static) -> Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("cottontail-io".into())
        .stack_size(IO_STACK)
        .spawn(f)
        .map_err(|e| Error::io("starting the I/O thread", &e))
}

/// Runs the I/O loop for an open connection on the current (I/O) thread until it ends.
pub(crate) fn run(core: Arc<Core>, stream: Stream, reader: FrameReader, poll: Poll) {
    let tcp = stream.tcp();
    let ready = tcp
        .set_read_timeout(None)
        .and_then(|()| tcp.set_write_timeout(None))
        .and_then(|()| tcp.set_nonblocking(true))
        .and_then(|()| register_socket(&core, &poll, &stream));
    if let Err(e) = ready {
        core.fail(Error::io("preparing the socket for the I/O thread", &e));
        return;
    }
    let heartbeat = Heartbeat::new(core.tuned.heartbeat, Instant::now());
    let user_poll = consumer_poll(&core);
    let read_side = ReadSide {
        reader,
        router: Router {
            core: core.clone(),
            channels: Vec::new(),
            dirty: Vec::new(),
            paused: Vec::new(),
        },
        user_poll,
        user_events: Events::with_capacity(4),
        outcome: None,
    };
    *core.lock_read_side() = Some(read_side);
    let io = IoThread {
        core,
        stream,
        poll,
        wbuf: Vec::with_capacity(64 * 1024),
        wpos: 0,
        heartbeat,
        read_ready: true,
        ack_deadline: None,
    };
    io.main();
}

/// Registers the socket with the I/O thread's poller. On plain TCP, input is watched through
/// the second handle (`Core::direct`) under [`SOCKET`] and output through the stream under
/// [`SOCKET_OUT`], so that a waiting thread that reads can switch the I/O thread's input
/// watch off and on without touching its output watch (see [`read_while_waiting`]).
fn register_socket(core: &Core, poll: &Poll, stream: &Stream) -> std::io::Result<()> {
    let fd = stream.tcp().as_raw_fd();
    let Some(direct) = core.direct.as_ref() else {
        return poll.registry().register(
            &mut SourceFd(&fd),
            SOCKET,
            Interest::READABLE | Interest::WRITABLE,
        );
    };
    poll.registry()
        .register(&mut SourceFd(&fd), SOCKET_OUT, Interest::WRITABLE)?;
    poll.registry().register(
        &mut SourceFd(&direct.as_raw_fd()),
        SOCKET,
        Interest::READABLE,
    )?;
    match poll.registry().try_clone() {
        Ok(registry) => {
            let _ = core.io_registry.set(registry);
        }
        Err(e) => log::debug!("consumers will not read the socket themselves: {e}"),
    }
    Ok(())
}

/// The poller a waiting thread waits in while it reads (plain TCP only): the socket, and the
/// waker that tells it to stop reading (`Core::wake_reader`). `None` if it cannot be made;
/// consumers then always wait for the I/O thread.
fn consumer_poll(core: &Core) -> Option<Poll> {
    let tcp = core.direct.as_ref()?;
    core.io_registry.get()?;
    let made = Poll::new().and_then(|poll| {
        poll.registry()
            .register(&mut SourceFd(&tcp.as_raw_fd()), SOCKET, Interest::READABLE)?;
        let waker = mio::Waker::new(poll.registry(), WAKER)?;
        Ok((poll, waker))
    });
    match made {
        Ok((poll, waker)) => {
            let _ = core.reader_waker.set(waker);
            Some(poll)
        }
        Err(e) => {
            log::debug!("consumers will not read the socket themselves: {e}");
            None
        }
    }
}

/// The reading half of the connection: whoever holds it (the I/O thread, or a waiting thread
/// with nothing else to do, see [`read_while_waiting`]) reads and routes frames.
pub(crate) struct ReadSide {
    reader: FrameReader,
    router: Router,
    /// See [`consumer_poll`].
    user_poll: Option<Poll>,
    user_events: Events,
    /// How reading ended when a waiting thread met the end (an error, the broker's close):
    /// the I/O thread takes it and ends the connection as if it had read it itself.
    outcome: Option<Result<Exit>>,
}

impl std::fmt::Debug for ReadSide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadSide").finish_non_exhaustive()
    }
}

impl ReadSide {
    fn route_buffered(&mut self) -> Result<Option<Exit>> {
        while let Some(inbound) = self.reader.next_frame()? {
            let exit = match inbound {
                Inbound::Frame(frame) => self.router.on_frame(frame)?,
                Inbound::Body(channel, range) => {
                    self.router.on_body(channel, self.reader.bytes(range))?;
                    None
                }
            };
            if exit.is_some() {
                return Ok(exit);
            }
        }
        Ok(None)
    }
}

/// What a waiting thread's turn at reading ended with.
pub(crate) enum WaitRead {
    /// It read (something may have arrived for it) or was told to look again.
    Read,
    /// Someone else reads (or nobody may): wait for them as usual.
    Busy,
    /// The deadline passed.
    TimedOut,
}

/// Lets a thread that waits on `channel` (a consumer with nothing to hand out, a caller
/// waiting for a method's reply or for confirms) read the socket itself instead of sleeping
/// until the I/O thread has read and routed for it: what it waits for then reaches it without
/// a hand-over between threads (on two cores, that wake-up costs more than the rest of the
/// client's work for a message). Plain TCP only; one thread reads at a time.
///
/// Returns once something was routed to `channel`, when anything else a waiter looks at
/// happens (signalled through `Core::wake_reader`, which bumps the generation the caller
/// read as `seen` before it looked at its state), or at `deadline`.
///
/// After a read that brought something for `channel`, the I/O thread's input watch stays off
/// (lent, see `Core::input_lent`): the caller is likely back to wait soon.
pub(crate) fn read_while_waiting(
    core: &Core,
    channel: &ChannelCore,
    seen: u64,
    deadline: Option<Instant>,
) -> WaitRead {
    let Some(tcp) = core.direct.as_ref() else {
        return WaitRead::Busy;
    };
    let Ok(mut guard) = core.read_side.try_lock() else {
        return WaitRead::Busy;
    };
    let Some(rs) = guard.as_mut() else {
        return WaitRead::Busy;
    };
    let Some(registry) = core.io_registry.get() else {
        return WaitRead::Busy;
    };
    if rs.outcome.is_some() || !rs.router.paused.is_empty() || rs.user_poll.is_none() {
        return WaitRead::Busy;
    }
    if core.reader_gen.load(Ordering::SeqCst) != seen {
        // Something changed since the caller looked: let it look again first.
        return WaitRead::Read;
    }
    // While we read, the I/O thread does not watch for input: it would only wake up to find
    // the reading half taken (a wake-up per message). If our last turn lent us the watch, it
    // is off already.
    let fd = tcp.as_raw_fd();
    if !core.input_lent.swap(false, Ordering::SeqCst)
        && registry.deregister(&mut SourceFd(&fd)).is_err()
    {
        return WaitRead::Busy;
    }
    core.user_reading.store(true, Ordering::SeqCst);
    let (result, got_mine) = waiter_read_loop(core, rs, tcp, channel, seen, deadline);
    core.user_reading.store(false, Ordering::SeqCst);
    if got_mine && rs.router.paused.is_empty() && !core.read_pending.load(Ordering::SeqCst) {
        // We are likely back to read once the user's code has handled what we read: keep the
        // watch off until then (two system calls less per message). It goes back to the I/O
        // thread when someone waits for input meanwhile (see `WantInput`), writes a while
        // after this read (`Core::after_write`) or looks at what the socket feeds (`is_open`,
        // `get_waiting_message_count`...), and whenever the I/O thread wakes up (a heartbeat
        // tick at the latest).
        core.input_lent.store(true, Ordering::SeqCst);
        if core.input_wanted.load(Ordering::SeqCst) > 0 {
            core.restore_input();
        }
    } else {
        core.watch_input();
    }
    if core.queued.load(Ordering::SeqCst) {
        // Routing queued replies of its own (close-ok, cancel-ok...): the I/O thread writes.
        core.wake();
    }
    drop(guard);
    if core.read_pending.swap(false, Ordering::SeqCst) {
        core.wake();
    }
    result
}

/// The reading loop of [`read_while_waiting`].
fn waiter_read_loop(
    core: &Core,
    rs: &mut ReadSide,
    mut tcp: &std::net::TcpStream,
    channel: &ChannelCore,
    seen: u64,
    deadline: Option<Instant>,
) -> (WaitRead, bool) {
    // Checked after `user_reading` is set: a signal before that is seen here, one after it
    // wakes the poll below.
    if core.reader_gen.load(Ordering::SeqCst) != seen {
        return (WaitRead::Read, false);
    }
    let stop = |rs: &mut ReadSide, outcome: Result<Exit>| {
        rs.outcome = Some(outcome);
        core.read_outcome.store(true, Ordering::SeqCst);
        core.wake();
        (WaitRead::Read, false)
    };
    loop {
        match rs.reader.read_from(&mut tcp) {
            Ok(0) => {
                let message = if rs.reader.has_partial() {
                    "the broker closed the socket in the middle of a frame"
                } else {
                    "the broker closed the socket"
                };
                return stop(
                    rs,
                    Err(Error::StreamLost {
                        message: message.into(),
                    }),
                );
            }
            Ok(_) => {
                core.note_read();
                let routed = rs.route_buffered();
                let got_mine = rs.router.dirty.iter().any(|c| std::ptr::eq(&**c, channel));
                rs.router.notify_dirty();
                match routed {
                    Ok(None) => {}
                    Ok(Some(exit)) => return stop(rs, Ok(exit)),
                    Err(e) => return stop(rs, Err(e)),
                }
                if got_mine || !rs.router.paused.is_empty() {
                    // Whatever else waits in the socket is the I/O thread's once it watches
                    // the input again (or ours, next time round).
                    return (WaitRead::Read, got_mine);
                }
                continue;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                return stop(
                    rs,
                    Err(Error::StreamLost {
                        message: format!("reading from the socket failed: {e}"),
                    }),
                )
            }
        }
        let timeout = match deadline {
            None => None,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return (WaitRead::TimedOut, false);
                }
                Some(left)
            }
        };
        let Some(poll) = rs.user_poll.as_mut() else {
            return (WaitRead::Busy, false);
        };
        match poll.poll(&mut rs.user_events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return (WaitRead::Busy, false),
        }
        if rs.user_events.iter().any(|e| e.token() == WAKER) {
            return (WaitRead::Read, false);
        }
    }
}

struct IoThread {
    core: Arc<Core>,
    stream: Stream,
    poll: Poll,
    /// Bytes taken from the shared buffer and being written; `wpos` of them are written.
    wbuf: Vec<u8>,
    wpos: usize,
    heartbeat: Heartbeat,
    /// The socket may have bytes to read (edge-triggered: set by an event, cleared by WouldBlock).
    read_ready: bool,
    /// When held acks are written (set once the I/O thread sees `Core::acks_held`).
    ack_deadline: Option<Instant>,
}

impl IoThread {
    fn main(mut self) {
        let outcome = self.run();
        let error = match outcome {
            Ok(Exit::CloseOk) | Ok(Exit::Shutdown) => {
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
            Ok(Exit::ClosedByBroker(error)) => {
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
        self.core.fail(error);
        // The reading half holds the core (its router does): dropping it ends that cycle. A
        // waiting thread that reads was told to stop by `fail`.
        let read_side = self.core.lock_read_side().take();
        drop(read_side);
    }

    fn run(&mut self) -> Result<Exit> {
        let mut events = Events::with_capacity(16);
        loop {
            if self.core.shutdown.load(Ordering::SeqCst) {
                return Ok(Exit::Shutdown);
            }
            let now = Instant::now();
            let blocked_deadline = self.blocked_deadline();
            if blocked_deadline.is_some_and(|d| d <= now) {
                return Err(Error::ConnectionBlockedTimeout {
                    after: self
                        .core
                        .params
                        .blocked_connection_timeout
                        .unwrap_or_default(),
                });
            }
            self.acks_due(now)?;
            let mut timeout = self.timeout(now, blocked_deadline);
            // Parked: a channel that starts holding acks from now on wakes us (see
            // `Core::note_acks_held`); one that did before is seen here.
            self.core.io_parked.store(true, Ordering::SeqCst);
            if self.ack_deadline.is_none() && self.core.acks_held.load(Ordering::SeqCst) {
                self.ack_deadline = Some(now + ACK_FLUSH_DELAY);
                timeout = self.timeout(now, blocked_deadline);
            }
            let polled = self.poll.poll(&mut events, timeout);
            self.core.io_parked.store(false, Ordering::SeqCst);
            if let Err(e) = polled {
                if e.kind() == ErrorKind::Interrupted {
                    continue;
                }
                return Err(Error::io("polling the socket", &e));
            }
            for event in events.iter() {
                let socket = event.token() == SOCKET || event.token() == SOCKET_OUT;
                if socket && (event.is_readable() || event.is_read_closed() || event.is_error()) {
                    self.read_ready = true;
                }
            }
            // A waiting thread left the input watch off while it runs user code (lent), or could
            // not give it back: we are awake anyway, so take it back (what waits is read below).
            let lent = self.core.input_lent.swap(false, Ordering::SeqCst);
            if self.core.input_unwatched.swap(false, Ordering::SeqCst) || lent {
                self.core
                    .register_input()
                    .map_err(|e| Error::io("watching the socket", &e))?;
                self.read_ready = true;
            }
            if self.core.read_outcome.load(Ordering::SeqCst) {
                // A waiting thread met the end of the connection while reading.
                let outcome = self
                    .core
                    .lock_read_side()
                    .as_mut()
                    .and_then(|rs| rs.outcome.take());
                if let Some(outcome) = outcome {
                    return outcome;
                }
            }
            let (resumed, paused) = match self.core.read_side.try_lock() {
                Ok(mut guard) => match guard.as_mut() {
                    Some(rs) => (rs.router.resume_check(), !rs.router.paused.is_empty()),
                    None => (false, false),
                },
                // A waiting thread reads.
                Err(_) => (false, false),
            };
            if resumed {
                self.read_ready = true;
            }
            if self.read_ready && !paused {
                if let Some(exit) = self.read()? {
                    return Ok(exit);
                }
            }
            self.flush()?;
            let now = Instant::now();
            if paused {
                // We chose not to read: the peer's silence is ours.
                self.heartbeat.received(now);
            }
            if let Some(at) = self.core.last_waiter_read() {
                self.heartbeat.received(at);
            }
            match self.heartbeat.poll(now) {
                Due::Nothing => {}
                Due::Send => {
                    log::trace!("sending heartbeat");
                    // Through the shared buffer, like every other write, so it cannot land
                    // inside a caller's direct write.
                    let mut link = self.core.lock_link();
                    self.core.queued.store(true, Ordering::SeqCst);
                    codec::encode_heartbeat(&mut link.buf);
                    drop(link);
                    self.flush()?;
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
        }
    }

    /// How long `poll` may sleep: until the next heartbeat duty, blocked-connection deadline
    /// or held-acks deadline.
    fn timeout(&self, now: Instant, blocked_deadline: Option<Instant>) -> Option<Duration> {
        [
            self.heartbeat.next_wakeup(now),
            blocked_deadline.map(|b| b.saturating_duration_since(now)),
            self.ack_deadline.map(|d| d.saturating_duration_since(now)),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Writes held acks if their deadline has passed.
    fn acks_due(&mut self, now: Instant) -> Result<()> {
        if self.ack_deadline.is_none() && self.core.acks_held.load(Ordering::SeqCst) {
            self.ack_deadline = Some(now + ACK_FLUSH_DELAY);
        }
        if self.ack_deadline.is_some_and(|d| d <= now) {
            self.ack_deadline = None;
            self.flush_held_acks();
            self.flush()?;
        }
        Ok(())
    }

    /// Writes every channel's held acks (their deadline passed). Clears the flag first: a
    /// channel that starts holding after its check here sets it again.
    fn flush_held_acks(&mut self) {
        self.core.acks_held.store(false, Ordering::SeqCst);
        self.core.flush_all_acks();
    }

    /// When a connection blocked by the broker must be given up (`blocked_connection_timeout`).
    fn blocked_deadline(&self) -> Option<Instant> {
        let timeout = self.core.params.blocked_connection_timeout?;
        Some(self.core.lock_link().blocked_since? + timeout)
    }

    /// Reads until the socket would block (or reading pauses), routing every complete frame.
    /// If a waiting thread is reading, leaves it to that thread (which wakes us when it
    /// stops, see `Core::read_pending`).
    fn read(&mut self) -> Result<Option<Exit>> {
        let core = self.core.clone();
        let mut guard = match core.read_side.try_lock() {
            Ok(guard) => guard,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                core.read_pending.store(true, Ordering::SeqCst);
                // It may have stopped between the two: then it did not see the flag.
                match core.read_side.try_lock() {
                    Ok(guard) => guard,
                    Err(_) => return Ok(None),
                }
            }
        };
        let Some(rs) = guard.as_mut() else {
            return Ok(None);
        };
        if let Some(outcome) = rs.outcome.take() {
            return outcome.map(Some);
        }
        loop {
            if !rs.router.paused.is_empty() {
                return Ok(None);
            }
            match rs.reader.read_from(&mut self.stream) {
                Ok(0) => {
                    self.read_ready = false;
                    let message = if rs.reader.has_partial() {
                        "the broker closed the socket in the middle of a frame"
                    } else {
                        "the broker closed the socket"
                    };
                    return Err(Error::StreamLost {
                        message: message.into(),
                    });
                }
                Ok(_) => {
                    let now = Instant::now();
                    self.heartbeat.received(now);
                    // A long burst of reads must not delay held acks past their deadline.
                    self.acks_due(now)?;
                    let exit = rs.route_buffered();
                    rs.router.notify_dirty();
                    if let Some(exit) = exit? {
                        return Ok(Some(exit));
                    }
                    // Acks and replies queued meanwhile go out now, not after the inbound
                    // stream pauses.
                    self.flush()?;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.read_ready = false;
                    return Ok(None);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(Error::StreamLost {
                        message: format!("reading from the socket failed: {e}"),
                    })
                }
            }
        }
    }

    /// Writes queued bytes until everything is out or the socket is full.
    fn flush(&mut self) -> Result<()> {
        loop {
            if self.wpos == self.wbuf.len() {
                self.wbuf.clear();
                self.wpos = 0;
                // Nothing queued: no need to take the lock (a caller may hold it for a direct
                // write). Whoever queues next into the empty buffer wakes us.
                if !self.core.queued.load(Ordering::SeqCst) {
                    return Ok(());
                }
                let mut link = self.core.lock_link();
                if link.buf.is_empty() {
                    link.io_writing = false;
                    self.core.queued.store(false, Ordering::SeqCst);
                    return Ok(());
                }
                std::mem::swap(&mut link.buf, &mut self.wbuf);
                link.io_writing = true;
                let was_full = self.wbuf.len() >= super::OUTBOUND_HIGH_WATER;
                drop(link);
                if was_full {
                    self.core.link_cond.notify_all();
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
    /// blocking mode, for at most a second.
    fn flush_before_exit(&mut self) {
        let tcp = self.stream.tcp();
        let blocking = tcp
            .set_nonblocking(false)
            .and_then(|()| tcp.set_write_timeout(Some(std::time::Duration::from_secs(1))));
        if blocking.is_ok() {
            let _ = self.flush();
        }
    }

    /// Best effort: tell the peer why we are closing (protocol violation), without waiting.
    /// Skipped when a frame is half written: the close would land inside it.
    fn send_close_now(&mut self, reply_code: u16, reason: &str) {
        if self.wpos != self.wbuf.len() {
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
    }
}

/// Content being assembled on one channel: the method, then the header, then body frames.
struct Partial {
    kind: ContentKind,
    header: Option<(BasicProperties, u64)>,
    body: Vec<u8>,
}

enum ContentKind {
    Deliver(Deliver),
    Get(GetOk),
    Return(Return),
}

struct Entry {
    core: Arc<ChannelCore>,
    partial: Option<Partial>,
}

/// Routes frames to channels (the I/O thread's own cache of the channel table).
struct Router {
    core: Arc<Core>,
    /// Indexed by channel number (a lookup per frame, so no hashing); grows to the highest
    /// number in use, at most `channel_max`.
    channels: Vec<Option<Entry>>,
    /// Channels whose state changed since the last notify (one wake-up per read, not per frame).
    dirty: Vec<Arc<ChannelCore>>,
    /// Channels holding more than the inbound limit: reading is paused while any is here.
    paused: Vec<Arc<ChannelCore>>,
}

impl Router {
    fn entry(&mut self, channel: u16) -> Result<&mut Entry> {
        let index = channel as usize;
        if self.channels.get(index).is_none_or(Option::is_none) {
            let core = self.core.lock_channels().get(&channel).cloned();
            let core = core.ok_or_else(|| {
                Error::protocol(
                    CHANNEL_ERROR,
                    format!("frame on channel {channel}, which is not open"),
                )
            })?;
            if self.channels.len() <= index {
                self.channels.resize_with(index + 1, || None);
            }
            self.channels[index] = Some(Entry {
                core,
                partial: None,
            });
        }
        Ok(self.channels[index].as_mut().expect("filled above"))
    }

    fn is_known(&self, channel: u16) -> bool {
        self.channels
            .get(channel as usize)
            .is_some_and(Option::is_some)
            || self.core.lock_channels().contains_key(&channel)
    }

    fn mark_dirty(&mut self, channel: &Arc<ChannelCore>) {
        if !self.dirty.iter().any(|c| Arc::ptr_eq(c, channel)) {
            self.dirty.push(channel.clone());
        }
    }

    fn notify_dirty(&mut self) {
        if self.dirty.is_empty() {
            return;
        }
        // Before the notifications: a consumer about to read sees the change (see
        // `read_while_waiting`).
        self.core.reader_gen.fetch_add(1, Ordering::SeqCst);
        for channel in self.dirty.drain(..) {
            channel.notify();
        }
        self.core.signal_activity();
    }

    /// Drops channels from the paused list once their consumers caught up; true when reading
    /// may resume.
    fn resume_check(&mut self) -> bool {
        if self.paused.is_empty() {
            return false;
        }
        // Someone waits for a reply or confirm, which may sit behind the deliveries we are
        // not reading: read on (pausing again once nobody waits), or it would never come.
        if self.core.sync_waiters.load(Ordering::SeqCst) > 0 {
            self.paused.clear();
        }
        self.paused.retain(|c| {
            let st = c.lock();
            st.buffered > INBOUND_CHANNEL_LIMIT / 2 && matches!(st.life, Life::Open)
        });
        if self.paused.is_empty() {
            log::debug!("consumers caught up: reading the socket again");
            self.core.read_paused.store(false, Ordering::SeqCst);
            return true;
        }
        false
    }

    /// Removes a closed channel from the cache and the connection's table (its number is free).
    fn forget(&mut self, channel: u16) {
        if let Some(entry) = self
            .channels
            .get_mut(channel as usize)
            .and_then(Option::take)
        {
            let mut table = self.core.lock_channels();
            if table
                .get(&channel)
                .is_some_and(|c| Arc::ptr_eq(c, &entry.core))
            {
                table.remove(&channel);
            }
        }
    }

    fn on_frame(&mut self, frame: AMQPFrame) -> Result<Option<Exit>> {
        match frame {
            AMQPFrame::Heartbeat => {
                log::trace!("heartbeat received");
                Ok(None)
            }
            AMQPFrame::Method(0, AMQPClass::Connection(method)) => self.on_connection(method),
            AMQPFrame::Method(0, other) => Err(Error::protocol(
                COMMAND_INVALID,
                format!("method {other:?} on channel 0"),
            )),
            AMQPFrame::Method(channel, AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)))
                if !self.is_known(channel) =>
            {
                // Both sides closed the channel at once: we answered the broker's close and
                // forgot the channel; this is the answer to ours.
                log::debug!("channel {channel}: close-ok after a simultaneous close");
                Ok(None)
            }
            AMQPFrame::Method(channel, method) => {
                log::trace!("channel {channel}: {method:?}");
                self.on_method(channel, method).map(|()| None)
            }
            AMQPFrame::Header(channel, header) => {
                let entry = self.entry(channel)?;
                let partial = match entry.partial.as_mut() {
                    Some(p) if p.header.is_none() => p,
                    _ => {
                        return Err(Error::protocol(
                            UNEXPECTED_FRAME,
                            format!("content header on channel {channel} without a content method"),
                        ))
                    }
                };
                if header.body_size > MAX_BODY_SIZE {
                    return Err(Error::protocol(
                        FRAME_ERROR,
                        format!("content of {} bytes announced", header.body_size),
                    ));
                }
                partial.body = Vec::with_capacity(header.body_size.min(MAX_BODY_PREALLOC) as usize);
                partial.header = Some((header.properties, header.body_size));
                if header.body_size == 0 {
                    self.finish_content(channel);
                }
                Ok(None)
            }
            AMQPFrame::Body(channel, data) => self.on_body(channel, &data).map(|()| None),
            AMQPFrame::InvalidHeartbeat(channel) => Err(Error::protocol(
                FRAME_ERROR,
                format!("heartbeat frame on channel {channel}"),
            )),
            AMQPFrame::ProtocolHeader(_) => Err(Error::protocol(
                FRAME_ERROR,
                "protocol header in the middle of the connection",
            )),
        }
    }

    fn on_body(&mut self, channel: u16, data: &[u8]) -> Result<()> {
        let entry = self.entry(channel)?;
        let Some(Partial {
            header: Some((_, size)),
            body,
            ..
        }) = entry.partial.as_mut()
        else {
            return Err(Error::protocol(
                UNEXPECTED_FRAME,
                format!("body frame on channel {channel} without a content header"),
            ));
        };
        if (body.len() + data.len()) as u64 > *size {
            return Err(Error::protocol(
                FRAME_ERROR,
                format!(
                    "body on channel {channel} longer than the {size} bytes its header announced"
                ),
            ));
        }
        body.extend_from_slice(data);
        if body.len() as u64 == *size {
            self.finish_content(channel);
        }
        Ok(())
    }

    fn finish_content(&mut self, channel: u16) {
        let Some(entry) = self
            .channels
            .get_mut(channel as usize)
            .and_then(Option::as_mut)
        else {
            return;
        };
        let Some(partial) = entry.partial.take() else {
            return;
        };
        let core = entry.core.clone();
        let properties = partial.header.map(|(p, _)| p).unwrap_or_default();
        let body = partial.body;
        let mut st = core.lock();
        if st.closed_error().is_some() || matches!(st.life, Life::Closing) {
            return;
        }
        match partial.kind {
            ContentKind::Deliver(method) => {
                st.acks.delivered(method.delivery_tag);
                let delivery = Delivery {
                    method,
                    properties,
                    body,
                };
                st.buffered += weight(&delivery);
                st.deliveries.push_back(delivery);
                if st.buffered > INBOUND_CHANNEL_LIMIT
                    && self.core.sync_waiters.load(Ordering::SeqCst) == 0
                    && !self.paused.iter().any(|c| Arc::ptr_eq(c, &core))
                {
                    log::debug!(
                        "channel {channel} holds {} bytes of deliveries: pausing reads",
                        st.buffered
                    );
                    self.core.read_paused.store(true, Ordering::SeqCst);
                    self.paused.push(core.clone());
                }
            }
            ContentKind::Get(method) => {
                st.acks.delivered(method.delivery_tag);
                if !st.deliver_reply(Reply::Get(GetMessage {
                    method,
                    properties,
                    body,
                })) {
                    log::warn!("channel {channel}: basic.get-ok nobody asked for");
                }
            }
            ContentKind::Return(method) => st.push_return(Returned {
                method,
                properties,
                body,
            }),
        }
        drop(st);
        self.mark_dirty(&core);
    }

    fn on_connection(&mut self, method: connection::AMQPMethod) -> Result<Option<Exit>> {
        match method {
            connection::AMQPMethod::Close(close) => {
                let close_ok =
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {}));
                self.queue_reply(0, close_ok);
                Ok(Some(Exit::ClosedByBroker(Error::ConnectionClosed {
                    reply_code: close.reply_code,
                    reply_text: close.reply_text.to_string(),
                    class_id: close.class_id,
                    method_id: close.method_id,
                })))
            }
            connection::AMQPMethod::CloseOk(_) => Ok(Some(Exit::CloseOk)),
            connection::AMQPMethod::Blocked(blocked) => {
                log::warn!("the broker blocked the connection: {}", blocked.reason);
                self.core
                    .lock_link()
                    .blocked_since
                    .get_or_insert_with(Instant::now);
                let reason = blocked.reason.to_string();
                self.core
                    .lock_activity()
                    .blocked_events
                    .push_back(Some(reason));
                self.core.kick();
                Ok(None)
            }
            connection::AMQPMethod::Unblocked(_) => {
                log::info!("the broker unblocked the connection");
                self.core.lock_link().blocked_since = None;
                // Publishers waiting for the unblock.
                self.core.link_cond.notify_all();
                self.core.lock_activity().blocked_events.push_back(None);
                self.core.kick();
                Ok(None)
            }
            connection::AMQPMethod::UpdateSecretOk(_) => {
                self.core.lock_link().secret_updates += 1;
                self.core.link_cond.notify_all();
                Ok(None)
            }
            other => Err(Error::protocol(
                COMMAND_INVALID,
                format!("unexpected connection method {other:?}"),
            )),
        }
    }

    fn on_method(&mut self, channel: u16, method: AMQPClass) -> Result<()> {
        let entry = self.entry(channel)?;
        if entry.partial.is_some() {
            return Err(Error::protocol(
                UNEXPECTED_FRAME,
                format!("method on channel {channel} while content was being received"),
            ));
        }
        let core = entry.core.clone();
        match method {
            AMQPClass::Basic(basic::AMQPMethod::Deliver(m)) => {
                entry.partial = Some(Partial::new(ContentKind::Deliver(m)));
                return Ok(());
            }
            AMQPClass::Basic(basic::AMQPMethod::GetOk(m)) => {
                entry.partial = Some(Partial::new(ContentKind::Get(m)));
                return Ok(());
            }
            AMQPClass::Basic(basic::AMQPMethod::Return(m)) => {
                entry.partial = Some(Partial::new(ContentKind::Return(m)));
                return Ok(());
            }
            AMQPClass::Basic(basic::AMQPMethod::Ack(ack)) => {
                if let Some(t) = core.lock().confirms.as_mut() {
                    t.on_confirm(ack.delivery_tag, ack.multiple, false);
                }
            }
            AMQPClass::Basic(basic::AMQPMethod::Nack(nack)) => {
                if let Some(t) = core.lock().confirms.as_mut() {
                    t.on_confirm(nack.delivery_tag, nack.multiple, true);
                }
            }
            AMQPClass::Basic(basic::AMQPMethod::Cancel(cancel)) => {
                log::warn!(
                    "channel {channel}: the broker cancelled consumer {}",
                    cancel.consumer_tag
                );
                if !cancel.nowait {
                    let ok = AMQPClass::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                        consumer_tag: cancel.consumer_tag.clone(),
                    }));
                    self.queue_reply(channel, ok);
                }
                core.lock().push_cancel(cancel.consumer_tag.to_string());
            }
            AMQPClass::Channel(channel::AMQPMethod::Close(close)) => {
                let mut st = core.lock();
                let error = Error::ChannelClosed {
                    reply_code: close.reply_code,
                    reply_text: close.reply_text.to_string(),
                    class_id: close.class_id,
                    method_id: close.method_id,
                };
                log::debug!("channel {channel} closed by the broker: {error}");
                // Mark it closed before close-ok is queued, under the same lock callers take
                // to queue frames for it, so nothing of theirs follows the close-ok.
                if matches!(st.life, Life::Closing) {
                    st.life = Life::Closed(Error::ChannelClosedByClient {
                        reply_code: 200,
                        reply_text: "Normal shutdown".into(),
                    });
                } else {
                    st.life = Life::Closed(error);
                }
                st.awaiting = false;
                // The broker requeued everything unacked; nothing may follow the close-ok.
                st.acks.discard();
                let ok = AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {}));
                self.queue_reply(channel, ok);
                drop(st);
                self.forget(channel);
            }
            AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)) => {
                let mut st = core.lock();
                if !matches!(st.life, Life::Closed(_)) {
                    st.life = Life::Closed(Error::ChannelClosedByClient {
                        reply_code: 200,
                        reply_text: "Normal shutdown".into(),
                    });
                }
                st.awaiting = false;
                drop(st);
                log::debug!("channel {channel} closed");
                self.forget(channel);
            }
            AMQPClass::Channel(channel::AMQPMethod::Flow(flow)) => {
                log::info!(
                    "channel {channel}: the broker asks flow active={}",
                    flow.active
                );
                let ok = AMQPClass::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk {
                    active: flow.active,
                }));
                self.queue_reply(channel, ok);
            }
            reply => {
                if !core.lock().deliver_reply(Reply::Method(reply)) {
                    log::warn!("channel {channel}: ignoring a reply nobody waits for");
                }
            }
        }
        self.mark_dirty(&core);
        Ok(())
    }

    /// Queues a reply of the I/O thread's own behind everything callers queued before it.
    fn queue_reply(&self, channel: u16, method: AMQPClass) {
        let mut frame = Vec::new();
        if let Err(e) = codec::encode_method(&mut frame, channel, method) {
            log::error!("cannot encode a reply on channel {channel}: {e}");
            return;
        }
        // Routing may run on a waiting thread that goes on reading: the I/O thread must be
        // woken to write this (on the I/O thread itself that is a spare wake-up).
        self.core
            .enqueue(self.core.lock_link(), |buf| buf.extend_from_slice(&frame));
    }
}

impl Partial {
    fn new(kind: ContentKind) -> Self {
        Partial {
            kind,
            header: None,
            body: Vec::new(),
        }
    }
}

impl std::fmt::Debug for IoThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoThread").finish_non_exhaustive()
    }
}
