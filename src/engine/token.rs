//! The read token: who reads the socket, and how every other thread waits for what reading
//! brings.
//!
//! # Rules
//!
//! 1. **One reader.** The reading half ([`ReadSide`]: frame reader, router, on plain TCP the
//!    socket's read half and a poll of its own) is owned by whoever holds the token. Holding
//!    it means having the `ReadSide` moved out of [`Turn`]; nothing else reaches the socket's
//!    read half, so there is one reader by construction.
//! 2. **Who may hold it.** The I/O thread, or (plain TCP only) a user thread that waits for
//!    something reading brings: a method's reply, a confirm, a delivery, a close-ok
//!    ([`Core::wait_until`]). Under TLS the token never leaves the I/O thread (a native-tls
//!    stream cannot be split); waiters then only sleep.
//! 3. **The one read loop** ([`read_loop`]) serves every holder: route what is buffered,
//!    read once, route every complete frame, then report under the [`Turn`] lock (bump
//!    `generation` if anything was routed, wake the sleepers) and ask the holder whether to
//!    leave. A user holder leaves after every batch that routed something, at its deadline,
//!    or when it is nudged. The I/O thread leaves when a user thread waits (`waiting > 0`)
//!    and hands the token over, or, keeping it, when outbound bytes wait or one of its timers
//!    is due (a flood of input never holds up writes and heartbeats). A holder never runs
//!    user code and never waits for outbound room: it leaves the loop first.
//! 4. **Parked.** A user holder that leaves puts the `ReadSide` back as
//!    [`Holder::Parked`]: any waiter takes it at once, with no hand-over. This is how a
//!    consumer "keeps" the token across its callback: nobody reads while the callback runs,
//!    so the consumer is back to read its next message with no wake-up of any other thread.
//!    That lasts only while no one else asks for it (a waiter takes a parked token at once)
//!    and not much longer than [`PARK_GRACE`]: the I/O thread takes a token that has lain
//!    parked that long. While it does not hold the token it looks at it by itself: every
//!    [`IO_RECHECK`] at first, twice as long each time it finds a user thread still holding it,
//!    up to [`IO_RECHECK_MAX`] (an idle consumer costs it one wake-up a second, not a hundred).
//!    So a parked token lies unread at most `IO_RECHECK_MAX + PARK_GRACE`, usually about
//!    `IO_RECHECK`; nobody has to wake the I/O thread for that, and a busy consumer costs it
//!    no wake-up per message.
//! 5. **Reading before polling.** Socket readiness is edge-triggered; a new holder reads
//!    before it polls, since the last one may have left bytes unread, unless the last read
//!    took all there was (`ReadSide::drained`: it would block, or it took less than the room
//!    it offered) and nothing is buffered: every byte that came since has marked the
//!    `ReadSide`'s poll ready, whose registration never changes. A poll that reports the
//!    socket clears `drained` (its event is used up), so the next turn reads. A read stops
//!    short of an end of stream or a socket error that came with the data, and nothing marks
//!    the poll ready after those: once a poll has reported either (`ReadSide::hung_up`), every
//!    holder reads first. (Under TLS `drained` means nothing, but only the I/O thread reads.)
//! 6. **Polls.** The `ReadSide`'s own poll watches the socket's input and `read_waker`; its
//!    registrations never change. The I/O thread's poll watches its `io_waker`, the socket's
//!    output, and the socket's input only while the I/O thread holds the token; only the I/O
//!    thread changes its registrations.
//! 7. **Waking.** Every change a waiter may wait for bumps `generation` under the `Turn`
//!    lock before sleepers are notified: routed frames (by the reader), and changes from
//!    outside the socket (a channel or the connection closed, a consumer cancelled,
//!    connection-level work) through [`Core::nudge`], which also wakes a user holder's poll.
//!    A waiter sleeps only if `generation` is unchanged since it looked.
//! 8. **The end.** When a holder meets the end of the connection (EOF, an error, the
//!    broker's close, the close-ok to ours) it records it in `Turn::end`, marks the token
//!    [`Holder::Ended`] and wakes the I/O thread, which ends the connection (one error for
//!    everyone, see `io_thread`). A panic while holding is such an end. Nobody reads after.
//! 9. **Inbound back-pressure.** The [`InboundMeter`] counts the bytes of messages held for
//!    callers. Over [`INBOUND_SOFT_LIMIT`] reading pauses unless some thread waits for
//!    something reading brings (`wanting > 0`: what it waits for may sit behind those
//!    messages); over [`INBOUND_HARD_LIMIT`] it pauses regardless, and such a waiter's own
//!    deadline ends its wait. A paused holder looks again every [`PAUSE_RECHECK`]. While
//!    reading is paused the broker's silence is ours: heartbeat deadlines do not run. (The
//!    blocked-connection timeout does: a connection.unblocked behind the held messages is
//!    not read either, so a connection nobody consumes from may be given up as blocked.)
//!    Reading also pauses while more than `outbound::REPLY_BACKLOG` bytes of the router's
//!    own replies (close-ok, flow-ok, cancel-ok, rejects) wait for the I/O thread to take
//!    them: they are queued without waiting for room, so a peer that sends requests and
//!    reads nothing would grow the buffer for ever otherwise. Taking them to write lifts it.
//!
//! Locks: `Turn` is taken with no other engine lock held, except that the I/O thread's leave
//! check looks at the outbound buffer under it (order: `Turn`, then `Link`); it is held for a
//! few instructions, never across a read, a poll or user code. `look` closures passed to
//! [`Core::wait_until`] run with no engine lock held.

use std::io::ErrorKind;
use std::sync::atomic::Ordering;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{basic, AMQPClass};
use mio::{Events, Poll, Token};

use super::chan::InboundMeter;
use super::router::{Exit, Router};
use super::Core;
use crate::error::{Error, Result};
use crate::protocol::codec::{FrameReader, Inbound};
use crate::transport::Stream;

/// How long a parked token may lie unused before the I/O thread takes it back (rule 4): about
/// the time a consumer's code takes between two messages, so a busy consumer keeps reading
/// for itself, while the broker's answer to what the user writes meanwhile (a channel closed
/// for a bad publish) is still read within a millisecond.
pub(crate) const PARK_GRACE: Duration = Duration::from_millis(1);
/// How soon the I/O thread looks again at a token it does not hold (rule 4).
pub(crate) const IO_RECHECK: Duration = Duration::from_millis(10);
/// The longest it waits to look again while a user thread keeps holding the token (rule 4).
pub(crate) const IO_RECHECK_MAX: Duration = Duration::from_secs(1);
/// How often a holder whose reading is paused looks again (rule 9).
pub(crate) const PAUSE_RECHECK: Duration = Duration::from_millis(10);
/// Bytes of held messages past which reading pauses while nobody waits for input (rule 9).
pub(crate) const INBOUND_SOFT_LIMIT: usize = 16 * 1024 * 1024;
/// Bytes of held messages past which reading pauses whoever waits (rule 9).
pub(crate) const INBOUND_HARD_LIMIT: usize = 64 * 1024 * 1024;

/// Poll token of the socket's input (in both polls) and output (I/O thread's).
pub(crate) const SOCKET: Token = Token(0);
/// Poll token of the waker of each poll.
pub(crate) const WAKER: Token = Token(1);

/// Who holds the read token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Holder {
    /// The I/O thread has the `ReadSide`.
    Io,
    /// A user thread waiting in [`Core::wait_until`] has it.
    User,
    /// It lies in [`Turn::side`], put there at this instant (rule 4).
    Parked(Instant),
    /// The connection is over; nobody reads.
    Ended,
}

/// The token's state, behind [`ReadToken::turn`].
#[derive(Debug)]
pub(crate) struct Turn {
    /// The reading half, while [`Holder::Parked`].
    side: Option<ReadSide>,
    pub(crate) holder: Holder,
    /// Bumped by every change a waiter may wait for (rule 7).
    pub(crate) generation: u64,
    /// User threads asleep on [`ReadToken::cond`].
    waiting: usize,
    /// Threads waiting for something only reading brings (asleep here or on the outbound
    /// buffer, or reading): while any, the soft inbound limit does not pause reading.
    wanting: usize,
    /// Reading is paused at the hard inbound limit (logged once per pause).
    hard_paused: bool,
    /// When a holder last read bytes (heartbeat bookkeeping).
    pub(crate) last_read: Instant,
    /// How reading ended, for the I/O thread to act on (rule 8).
    end: Option<Result<Exit>>,
}

/// The read token of one connection.
#[derive(Debug)]
pub(crate) struct ReadToken {
    turn: Mutex<Turn>,
    cond: Condvar,
    /// Wakes a user holder's poll (`None` under TLS, where users never hold the token).
    read_waker: Option<mio::Waker>,
}

/// The reading half of the connection.
pub(crate) struct ReadSide {
    reader: FrameReader,
    router: Router,
    /// Plain TCP: the socket's read half and the poll a user holder waits in.
    user: Option<UserPoll>,
    /// The last read took all the socket had, and no poll has reported it since (rule 5).
    drained: bool,
    /// A poll reported the peer's end of stream or a socket error (rule 5).
    hung_up: bool,
}

struct UserPoll {
    tcp: std::net::TcpStream,
    poll: Poll,
    events: Events,
}

impl std::fmt::Debug for ReadSide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadSide").finish_non_exhaustive()
    }
}

impl ReadToken {
    /// A token held by the I/O thread from the start, and its reading half. On plain TCP
    /// (`read_half` given) user threads may take it; if the poll for them cannot be made,
    /// they never do (a log line says so) and everything else works as under TLS.
    pub(crate) fn new(
        reader: FrameReader,
        read_half: Option<std::net::TcpStream>,
        now: Instant,
    ) -> (ReadToken, ReadSide) {
        let (user, read_waker) = match read_half.map(user_poll) {
            Some(Ok((user, waker))) => (Some(user), Some(waker)),
            Some(Err(e)) => {
                log::debug!("waiting threads will not read the socket themselves: {e}");
                (None, None)
            }
            None => (None, None),
        };
        let token = ReadToken {
            turn: Mutex::new(Turn {
                side: None,
                holder: Holder::Io,
                generation: 0,
                waiting: 0,
                wanting: 0,
                hard_paused: false,
                last_read: now,
                end: None,
            }),
            cond: Condvar::new(),
            read_waker,
        };
        let side = ReadSide {
            reader,
            router: Router::default(),
            user,
            drained: false,
            hung_up: false,
        };
        (token, side)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Turn> {
        self.turn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether user threads may hold the token (plain TCP).
    fn shared(&self) -> bool {
        self.read_waker.is_some()
    }
}

fn user_poll(tcp: std::net::TcpStream) -> std::io::Result<(UserPoll, mio::Waker)> {
    use std::os::fd::AsRawFd;
    let poll = Poll::new()?;
    poll.registry().register(
        &mut mio::unix::SourceFd(&tcp.as_raw_fd()),
        SOCKET,
        mio::Interest::READABLE,
    )?;
    let waker = mio::Waker::new(poll.registry(), WAKER)?;
    Ok((
        UserPoll {
            tcp,
            poll,
            events: Events::with_capacity(4),
        },
        waker,
    ))
}

/// What the read loop stopped for.
pub(crate) enum Step {
    /// Nothing more to read now: poll.
    WouldBlock,
    /// The holder asked to leave.
    Leave,
    /// Reading is paused (rule 9): look again within [`PAUSE_RECHECK`].
    Paused,
    /// The connection ended (rule 8).
    End(Result<Exit>),
}

/// Whether reading must pause now (rule 9). While it is, the broker's silence is ours: the
/// heartbeat deadline counts from now.
fn paused(inbound: &InboundMeter, turn: &mut Turn) -> bool {
    let held = inbound.load(Ordering::SeqCst);
    let hard = held >= INBOUND_HARD_LIMIT;
    if hard && !turn.hard_paused {
        log::warn!(
            "{held} bytes of messages wait for consumers that do not take them (a consume() \
             iterator nobody iterates, a callback consumer nobody runs start_consuming for?): \
             reading pauses until they do; use basic_qos to bound what the broker pushes"
        );
    }
    turn.hard_paused = hard;
    let paused = hard || (held >= INBOUND_SOFT_LIMIT && turn.wanting == 0);
    if paused {
        turn.last_read = Instant::now();
    }
    paused
}

/// The one read loop (rule 3): routes what is buffered (the handshake may have left frames
/// behind), then reads from `src` if given (the I/O thread's own stream), else from the side's
/// read half, and routes every complete frame; after each batch it reports under the `Turn`
/// lock and asks `leave(turn, routed)` whether to stop.
pub(crate) fn read_loop(
    core: &Core,
    side: &mut ReadSide,
    mut src: Option<&mut Stream>,
    mut leave: impl FnMut(&Turn, bool) -> bool,
) -> Step {
    let mut fresh = side.reader.has_partial();
    let mut have_read = false;
    loop {
        if fresh {
            let routed = route_buffered(core, side);
            let changed = side.router.take_changed();
            let mut turn = core.token.lock();
            if have_read {
                turn.last_read = Instant::now();
            }
            if changed {
                turn.generation += 1;
                if turn.waiting > 0 {
                    core.token.cond.notify_all();
                }
            }
            match routed {
                Ok(None) => {}
                Ok(Some(exit)) => return Step::End(Ok(exit)),
                Err(e) => return Step::End(Err(e)),
            }
            // Before the first read, leave only if the buffered bytes routed something: a
            // partial frame alone must be completed by reading, not left (a spin otherwise).
            if (have_read || changed) && leave(&turn, changed) {
                return Step::Leave;
            }
        }
        if paused(&core.inbound, &mut core.token.lock()) {
            return Step::Paused;
        }
        if side.router.backlogged(core) {
            // As in `paused`: while reading is paused the broker's silence is ours.
            core.token.lock().last_read = Instant::now();
            return Step::Paused;
        }
        let read = match (src.as_deref_mut(), side.user.as_ref()) {
            (Some(stream), _) => side.reader.read_from(stream),
            (None, Some(user)) => side.reader.read_from(&mut &user.tcp),
            (None, None) => return Step::WouldBlock,
        };
        match read {
            Ok(0) => {
                let message = if side.reader.has_partial() {
                    "the broker closed the socket in the middle of a frame"
                } else {
                    "the broker closed the socket"
                };
                return Step::End(Err(Error::StreamLost {
                    message: message.into(),
                }));
            }
            Ok(_) => {
                fresh = true;
                have_read = true;
                side.drained = side.reader.last_read_short();
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                side.drained = true;
                return Step::WouldBlock;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => fresh = false,
            Err(e) => {
                return Step::End(Err(Error::StreamLost {
                    message: format!("reading from the socket failed: {e}"),
                }))
            }
        }
    }
}

/// Routes every complete frame buffered in the side's reader.
fn route_buffered(core: &Core, side: &mut ReadSide) -> Result<Option<Exit>> {
    while let Some(inbound) = side.reader.next_frame()? {
        let exit = match inbound {
            Inbound::Frame(frame) => side.router.on_frame(core, *frame)?,
            Inbound::Ack(channel, ack) => {
                let method = AMQPClass::Basic(basic::AMQPMethod::Ack(ack));
                side.router
                    .on_frame(core, AMQPFrame::Method(channel, method))?
            }
            Inbound::Deliver(channel, deliver) => {
                side.router.on_deliver(core, channel, deliver)?;
                None
            }
            Inbound::Header(channel, header) => {
                side.router.on_header(core, channel, header)?;
                None
            }
            Inbound::Body(channel, range, rest) => {
                side.router
                    .on_body(core, channel, side.reader.bytes(range), rest)?;
                None
            }
        };
        if exit.is_some() {
            return Ok(exit);
        }
    }
    Ok(None)
}

/// The I/O thread's side of the token.
pub(crate) struct IoTurn {
    /// The reading half while the I/O thread holds the token.
    pub(crate) side: Option<ReadSide>,
    /// How long it waits before looking again while a user thread holds the token: doubles
    /// from [`IO_RECHECK`] to [`IO_RECHECK_MAX`] each time it finds it held (rule 4).
    pub(crate) user_recheck: Duration,
}

impl IoTurn {
    /// The I/O thread's side of a token it holds from the start.
    pub(crate) fn holding(side: ReadSide) -> IoTurn {
        IoTurn {
            side: Some(side),
            user_recheck: IO_RECHECK,
        }
    }
}

/// What the I/O thread should do after its turn at the token.
pub(crate) struct IoRead {
    /// The connection ended.
    pub(crate) end: Option<Result<Exit>>,
    /// It now holds the token (watch the socket's input), or not.
    pub(crate) holding: bool,
    /// When to look at the token again at the latest, besides its wakers.
    pub(crate) recheck: Option<Instant>,
}

impl Core {
    /// The I/O thread's turn (rules 2-4, 8): takes the token back if it lies parked long
    /// enough and nobody waits, reads until the socket would block, and hands the token to
    /// waiting user threads. `src` is the I/O thread's own stream.
    ///
    /// It leaves the read loop when a user thread asks for the token, and also (keeping the
    /// token) when outbound bytes wait or `due` (its next timer) has come, so that a flood of
    /// input never holds up its writes, heartbeats or timers.
    pub(crate) fn io_read(
        &self,
        io: &mut IoTurn,
        src: Option<&mut Stream>,
        due: Option<Instant>,
    ) -> IoRead {
        let now = Instant::now();
        let mut turn = self.token.lock();
        if let Some(end) = turn.end.take() {
            return IoRead {
                end: Some(end),
                holding: false,
                recheck: None,
            };
        }
        let shared = self.token.shared();
        if turn.holder != Holder::User {
            io.user_recheck = IO_RECHECK;
        }
        match turn.holder {
            Holder::Io if shared && turn.waiting > 0 => {
                // A user thread asked for the token: hand it over before reading.
                return self.hand_over(io, turn);
            }
            Holder::Io => {}
            Holder::Parked(since) if turn.waiting == 0 && since + PARK_GRACE <= now => {
                io.side = turn.side.take();
                turn.holder = Holder::Io;
            }
            Holder::Parked(since) => {
                // Waiters were told it lies here and will take it; else its grace ends then.
                let recheck = if turn.waiting > 0 {
                    now + IO_RECHECK
                } else {
                    since + PARK_GRACE
                };
                return IoRead {
                    end: None,
                    holding: false,
                    recheck: Some(recheck),
                };
            }
            Holder::User => {
                let recheck = io.user_recheck;
                io.user_recheck = (recheck * 2).min(IO_RECHECK_MAX);
                return IoRead {
                    end: None,
                    holding: false,
                    recheck: Some(now + recheck),
                };
            }
            Holder::Ended => {
                return IoRead {
                    end: None,
                    holding: false,
                    recheck: None,
                }
            }
        }
        drop(turn);
        let Some(side) = io.side.as_mut() else {
            return IoRead {
                end: Some(Err(Error::StreamLost {
                    message: "the reading half was lost".into(),
                })),
                holding: false,
                recheck: None,
            };
        };
        let step = read_loop(self, side, src, |turn, _| {
            (shared && turn.waiting > 0)
                || due.is_some_and(|d| Instant::now() >= d)
                || self.io_thread_wanted()
        });
        match step {
            Step::WouldBlock => IoRead {
                end: None,
                holding: true,
                recheck: None,
            },
            Step::Paused => IoRead {
                end: None,
                holding: true,
                recheck: Some(Instant::now() + PAUSE_RECHECK),
            },
            Step::Leave => {
                let turn = self.token.lock();
                if shared && turn.waiting > 0 {
                    return self.hand_over(io, turn);
                }
                // More may wait in the socket (edge-triggered): look again at once.
                IoRead {
                    end: None,
                    holding: true,
                    recheck: Some(Instant::now()),
                }
            }
            Step::End(end) => IoRead {
                end: Some(end),
                holding: true,
                recheck: None,
            },
        }
    }

    /// The I/O thread gives the token to the user threads waiting for it (rule 3).
    fn hand_over(&self, io: &mut IoTurn, mut turn: MutexGuard<'_, Turn>) -> IoRead {
        turn.side = io.side.take();
        let now = Instant::now();
        turn.holder = Holder::Parked(now);
        drop(turn);
        self.token.cond.notify_all();
        IoRead {
            end: None,
            holding: false,
            recheck: Some(now + IO_RECHECK),
        }
    }

    /// Ends the token for good (rule 8): nobody reads any more. Returns the reading half if
    /// it lay parked (the caller drops it); a user holder drops its own when it leaves.
    pub(crate) fn end_reading(&self) -> Option<ReadSide> {
        let mut turn = self.token.lock();
        turn.holder = Holder::Ended;
        turn.end = None;
        let side = turn.side.take();
        drop(turn);
        self.token.cond.notify_all();
        side
    }

    /// When a holder last read bytes.
    pub(crate) fn last_read(&self) -> Instant {
        self.token.lock().last_read
    }

    /// Tells waiters that something outside the socket changed (rule 7): bumps the
    /// generation, wakes the sleepers and a user holder's poll.
    pub(crate) fn nudge(&self) {
        let mut turn = self.token.lock();
        turn.generation += 1;
        let waiting = turn.waiting > 0;
        let holder = turn.holder;
        drop(turn);
        if waiting {
            self.token.cond.notify_all();
        }
        if holder == Holder::User {
            if let Some(waker) = &self.token.read_waker {
                if let Err(e) = waker.wake() {
                    log::warn!("could not wake the reading thread: {e}");
                }
            }
        }
    }

    /// The current generation (rule 7).
    pub(crate) fn generation(&self) -> u64 {
        self.token.lock().generation
    }

    /// Waits until `look` gives a value (it runs first at once, then after every change, with
    /// no engine lock held), or until `deadline` (`None`: no deadline), reading the socket
    /// on this thread when the token is free (rules 2-5). Returns `None` at the deadline.
    pub(crate) fn wait_until<T>(
        &self,
        deadline: Option<Instant>,
        mut look: impl FnMut() -> Option<T>,
    ) -> Option<T> {
        // The common case (it is there already) takes no lock of the token's.
        if let Some(value) = look() {
            return Some(value);
        }
        let _wanting = Wanting::new(self);
        let shared = self.token.shared();
        loop {
            let seen = self.generation();
            if let Some(value) = look() {
                return Some(value);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return None;
            }
            let mut turn = self.token.lock();
            if turn.generation != seen {
                continue;
            }
            if shared && matches!(turn.holder, Holder::Parked(_)) {
                let side = turn.side.take();
                turn.holder = Holder::User;
                drop(turn);
                let mut taken = Taken {
                    core: self,
                    side,
                    unwinding: std::thread::panicking(),
                };
                self.read_as_user(&mut taken, deadline);
                continue;
            }
            turn.waiting += 1;
            if shared && turn.holder == Holder::Io {
                // Asks for a hand-over (counted first, so the I/O thread sees it).
                drop(turn);
                self.wake();
                turn = self.token.lock();
            }
            let handed = shared && matches!(turn.holder, Holder::Parked(_));
            if turn.generation != seen || handed {
                turn.waiting -= 1;
                continue;
            }
            turn = match deadline {
                None => self
                    .token
                    .cond
                    .wait(turn)
                    .unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    self.token
                        .cond
                        .wait_timeout(turn, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
            turn.waiting -= 1;
        }
    }

    /// A user holder's reading (rules 3, 5): until a batch routed something, the deadline, a
    /// nudge, or the end.
    fn read_as_user(&self, taken: &mut Taken<'_>, deadline: Option<Instant>) {
        let Some(side) = taken.side.as_mut() else {
            return;
        };
        // Rule 5: nothing to read yet if the last read took all there was.
        let mut poll_first = side.drained && !side.hung_up && !side.reader.has_partial();
        loop {
            let step = match std::mem::take(&mut poll_first) {
                true => Step::WouldBlock,
                false => read_loop(self, side, None, |_, routed| {
                    routed || deadline.is_some_and(|d| Instant::now() >= d)
                }),
            };
            let recheck = match step {
                Step::Leave => return,
                Step::End(end) => {
                    taken.end(end);
                    return;
                }
                Step::WouldBlock => None,
                Step::Paused => Some(Instant::now() + PAUSE_RECHECK),
            };
            let wake = match (deadline, recheck) {
                (Some(d), Some(r)) => Some(d.min(r)),
                (d, r) => d.or(r),
            };
            let timeout = match wake {
                None => None,
                Some(at) => {
                    let left = at.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return;
                    }
                    Some(left)
                }
            };
            let Some(user) = side.user.as_mut() else {
                return;
            };
            match user.poll.poll(&mut user.events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    taken.end(Err(Error::io("polling the socket", &e)));
                    return;
                }
            }
            for event in user.events.iter().filter(|e| e.token() == SOCKET) {
                // That readiness is used up: whoever reads next must read first (rule 5).
                side.drained = false;
                side.hung_up |= event.is_read_closed() || event.is_error();
            }
            if user.events.is_empty() || user.events.iter().any(|e| e.token() == WAKER) {
                // The deadline, a pause recheck or a nudge: the caller looks again.
                return;
            }
        }
    }
}

/// A user thread's hold of the token; puts it back (parked) when dropped, also on a panic,
/// which ends the connection (rule 8).
struct Taken<'a> {
    core: &'a Core,
    side: Option<ReadSide>,
    /// The thread was already unwinding a panic when it took the token (a cottontail call
    /// from a `Drop` during unwinding): only a panic that starts while it holds the token
    /// ends the connection.
    unwinding: bool,
}

impl Taken<'_> {
    /// Records how the connection ended and leaves the token ended (rule 8).
    fn end(&mut self, end: Result<Exit>) {
        let mut turn = self.core.token.lock();
        if turn.holder != Holder::Ended {
            turn.holder = Holder::Ended;
            turn.end = Some(end);
        }
        drop(turn);
        self.side = None;
        self.core.wake();
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if self.side.is_none() {
            return;
        }
        if std::thread::panicking() && !self.unwinding {
            self.end(Err(Error::StreamLost {
                message: "a panic while reading the socket".into(),
            }));
            return;
        }
        let mut turn = self.core.token.lock();
        if turn.holder == Holder::Ended {
            drop(turn);
            self.side = None;
            return;
        }
        turn.side = self.side.take();
        turn.holder = Holder::Parked(Instant::now());
        let waiting = turn.waiting > 0;
        drop(turn);
        if waiting {
            self.core.token.cond.notify_all();
        }
    }
}

/// Counted in `Turn::wanting` while alive (rule 9). A thread that starts wanting while the
/// I/O thread reads wakes it, in case its reading is paused for the soft limit.
pub(crate) struct Wanting<'a>(&'a Core);

impl<'a> Wanting<'a> {
    pub(crate) fn new(core: &'a Core) -> Self {
        let mut turn = core.token.lock();
        turn.wanting += 1;
        let io_reads = turn.holder == Holder::Io;
        drop(turn);
        if io_reads && core.inbound.load(Ordering::SeqCst) >= INBOUND_SOFT_LIMIT {
            core.wake();
        }
        Wanting(core)
    }
}

impl Drop for Wanting<'_> {
    fn drop(&mut self) {
        self.0.token.lock().wanting -= 1;
    }
}
