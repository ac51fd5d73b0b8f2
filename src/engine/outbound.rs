//! The writing side: the shared outbound buffer ([`Link`]) and every way a caller's frames
//! reach the socket.
//!
//! # Rules
//!
//! 1. **Whole units.** Callers encode on their own thread and append whole frames (a publish's
//!    method, header and body frames at once) under the `Link` lock, so nothing from another
//!    thread lands between them. The one unit written outside that lock, the rest of a
//!    caller's own large publish (rule 2), is kept whole by `Link::writer` instead.
//! 2. **Who writes.** On plain TCP, a caller that finds the buffer empty and nobody else
//!    writing (`Link::writer`) writes its frames itself, non-blocking, under the `Link` lock,
//!    with `MSG_NOSIGNAL` (a peer's reset never raises SIGPIPE in the host process); what the
//!    socket does not take is queued. A publish does so only if no publish was appended on
//!    the connection (by any thread) within [`QUIET`] (`last_publish`). Everything else is
//!    written by the I/O thread: the first append into an empty buffer wakes it (`io_waker`);
//!    it swaps the buffer out and writes it ([`Writer::Io`]), so whatever piles up meanwhile
//!    goes out in one write. So a lone publish or request leaves at once, on the caller's
//!    thread, and a burst (a publishing loop, or several threads publishing at once) leaves
//!    in a few large writes, which cost the broker far less than one small segment per
//!    message.
//!
//!    A publish of at least [`DIRECT_FINISH_MIN`] bytes, with a body of at most
//!    [`DIRECT_BODY_FRAMES`](super::direct::DIRECT_BODY_FRAMES) frames, whose direct write
//!    took its held acks (`prefix`) but not all the rest, finishes it itself
//!    instead of queuing it ([`Writer::Caller`], set under the lock), after releasing every
//!    lock: it writes the rest from its own body as the socket takes it (the socket writes
//!    themselves are `direct`'s, at most [`SEND_MAX`](super::direct::SEND_MAX) a send),
//!    waiting for room in its own poll
//!    ([`Direct`](super::direct::Direct), whose lock only that caller takes) at most
//!    [`STALL`](super::direct::STALL) at a time and never past its
//!    call's deadline (`RpcClient::call`'s; for every other publish, `rpc_timeout` from when it
//!    starts finishing, so a peer that takes a trickle of bytes cannot hold it). Meanwhile
//!    nobody else writes (the I/O thread leaves the buffer alone, callers queue behind), so
//!    nothing lands inside its frames; the buffer is not drained either. When the socket
//!    stalls or the deadline passes, the rest goes to the front of the buffer, ahead of what
//!    others queued, and the I/O thread writes it. So a large message reaches the kernel
//!    straight from the caller's body, as with rabbitmq-c and pika, instead of being copied
//!    into the buffer and read again by the I/O thread on another core (S5: 10-25% less CPU,
//!    BENCHMARKS.md). The caller returns once its message is written or handed over: while
//!    the socket keeps taking bytes (a large message on a slow network) that may take up to
//!    that deadline.
//! 3. **Back-pressure.** Past [`OUTBOUND_HIGH_WATER`] callers wait for room on `link_cond`
//!    (signalled when the I/O thread drains the buffer, when a caller finishes its own write,
//!    after which the I/O thread drains it, and when the connection closes), at most until
//!    their call's deadline. Content also waits while the broker blocks the
//!    connection (until connection.unblocked, or until `blocked_connection_timeout` makes the
//!    I/O thread end the connection; a publish given a deadline of its own, `RpcClient`'s,
//!    waits at most until that deadline). A caller whose channel starts closing or closes
//!    meanwhile stops with its error (`Link::channel_ends` wakes it). A thread waiting for
//!    room counts as wanting input (see `token`), so reading never pauses while the unblock
//!    it waits for is unread. A channel.close never waits ([`Core::send_close_if`]): one per
//!    channel, it is bounded, and dropping a channel must not block.
//! 4. **Lock order.** A channel's state, then `Link`. No waiting (for room or anything else)
//!    with a channel lock held.
//! 5. **Held acks.** Merged acks (see `protocol::acks`) are written before any other frame of
//!    their channel; when a channel starts holding some, `acks_due` gets a deadline and the
//!    I/O thread is woken to write them by then.

use std::collections::VecDeque;
use std::sync::MutexGuard;
use std::time::{Duration, Instant};

use amq_protocol::protocol::AMQPClass;

use super::chan::{ChanState, ChannelCore, Life};
use super::direct::{fits_direct, write_direct, Unfinished, DIRECT_FINISH_MIN};
use super::router::BLOCKED_EVENTS_KEPT;
use super::token::Wanting;
use super::{with_scratch, Core};
use crate::error::{Error, Result};
use crate::protocol::ack_frames::{AckFrames, Settle};
use crate::protocol::acks::ACK_FLUSH_DELAY;
use crate::protocol::codec;

/// Outbound bytes past which callers wait for the I/O thread to drain (back-pressure).
pub(crate) const OUTBOUND_HIGH_WATER: usize = 4 * 1024 * 1024;
/// Capacity an emptied outbound buffer keeps; a larger one (after one big message) is freed.
pub(crate) const OUTBOUND_KEPT_CAPACITY: usize = 256 * 1024;
/// Bytes of the reader's own replies waiting to be written past which reading pauses
/// ([`Link::replies_queued`]).
pub(crate) const REPLY_BACKLOG: usize = 1024 * 1024;
/// How long no publish must have been appended on the connection for a publish to be written
/// directly (rule 2): about the I/O thread's wake-up time. Publishes that follow others (of any
/// thread) more closely are queued, so a burst goes out in large writes (S2b: 20,005 `sendmsg`
/// for 20,000 messages before, 200-5,600 writes and as many wake-ups after), while a publish
/// that waits for its confirm or its reply (S2a, S4: a round trip apart) still leaves at once
/// unless another thread published just before it. Acks (merged already, see `protocol::acks`)
/// and other methods (awaited at once) do not count: they are written directly whenever nothing
/// is queued.
const QUIET: Duration = Duration::from_micros(20);
/// Who writes to the socket outside the `Link` lock (rule 2). While someone does, nobody
/// else writes to it, so bytes never land inside another writer's frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Writer {
    /// Nobody: a caller may write directly under the lock.
    Nobody,
    /// The I/O thread holds bytes it took from the buffer and has not finished writing.
    Io,
    /// A caller is finishing its own direct write ([`Core::finish_direct`]).
    Caller,
}

/// State behind [`Core::link`]: the outbound buffer and whether the connection is usable.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) buf: Vec<u8>,
    /// Set once the connection is closed or dead; every later call gets this error.
    pub(crate) closed: Option<Error>,
    /// We sent connection.close (with this code and text) and wait for close-ok.
    pub(crate) closing: Option<(u16, String)>,
    /// Since when the broker has the connection blocked (connection.blocked, resource alarm),
    /// until connection.unblocked.
    pub(crate) blocked_since: Option<Instant>,
    /// When the last connection.unblocked came (see [`Core::blocked_extension`]).
    pub(crate) unblocked_at: Option<Instant>,
    /// Bumped, under this lock, when a channel starts closing or closes (the application's
    /// channel.close queued, or the broker's routed), so that a caller waiting for room on it
    /// looks at its channel again ([`Core::wait_for_room`]).
    pub(crate) channel_ends: u64,
    /// connection.blocked (`Some(reason)`) and unblocked (`None`) not yet seen by callbacks,
    /// at most [`BLOCKED_EVENTS_KEPT`].
    pub(crate) blocked_events: VecDeque<Option<String>>,
    /// update-secret methods queued, and update-secret-ok replies received. The broker
    /// answers in order, so the call that queued the n-th method has its answer once n oks
    /// came (a late ok of a call that timed out counts for that call, not the next).
    pub(crate) secret_updates: (u64, u64),
    /// Who writes outside this lock (rule 2): callers write directly only while nobody does.
    pub(crate) writer: Writer,
    /// When a caller last appended a publish (rule 2).
    last_publish: Option<Instant>,
    /// `close` is writing the held acks before connection.close: acks are not held any more.
    pub(crate) closing_soon: bool,
    /// When the I/O thread must write held acks (rule 5); `None` when none may be held.
    pub(crate) acks_due: Option<Instant>,
    /// Tells the I/O thread to stop now (the close deadline passed).
    pub(crate) shutdown: bool,
    /// Callers in [`Core::flush`]: the I/O thread signals `link_cond` when it has written
    /// everything (only then, so a write costs no wake-up while nobody waits for one).
    pub(crate) flushing: usize,
    /// Bytes of the reader's own replies (close-ok, flow-ok, cancel-ok, rejects) queued since
    /// the I/O thread last took the buffer to write: past [`REPLY_BACKLOG`] reading pauses
    /// (token rule 9), so a peer that sends requests and reads no replies cannot grow it.
    pub(crate) replies_queued: usize,
}

impl Link {
    pub(crate) fn new() -> Link {
        Link {
            buf: Vec::with_capacity(64 * 1024),
            closed: None,
            closing: None,
            blocked_since: None,
            unblocked_at: None,
            channel_ends: 0,
            blocked_events: VecDeque::new(),
            secret_updates: (0, 0),
            writer: Writer::Nobody,
            last_publish: None,
            closing_soon: false,
            acks_due: None,
            shutdown: false,
            flushing: 0,
            replies_queued: 0,
        }
    }

    /// Whether frames may be queued now without waiting: the buffer is under its high-water
    /// mark and, for content, the broker does not block the connection.
    fn has_room(&self, content: bool) -> bool {
        !(content && self.blocked_since.is_some()) && self.buf.len() < OUTBOUND_HIGH_WATER
    }

    /// Why nothing more may be queued: the connection is closed, or closing (nothing may
    /// follow connection.close on the wire).
    fn refusal(&self) -> Option<Error> {
        if let Some(e) = &self.closed {
            return Some(e.clone());
        }
        let (reply_code, reply_text) = self.closing.as_ref()?;
        Some(Error::ConnectionClosedByClient {
            reply_code: *reply_code,
            reply_text: reply_text.clone(),
        })
    }

    /// Records a blocked (`Some(reason)`) or unblocked event for the callbacks.
    pub(crate) fn push_blocked_event(&mut self, event: Option<String>) {
        if self.blocked_events.len() >= BLOCKED_EVENTS_KEPT {
            self.blocked_events.pop_front();
        }
        self.blocked_events.push_back(event);
    }
}

impl Core {
    pub(crate) fn lock_link(&self) -> MutexGuard<'_, Link> {
        self.link.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the I/O thread has bytes to write or must stop now (`Link::shutdown`): its
    /// read loop leaves for either, however long the peer keeps sending.
    pub(crate) fn io_thread_wanted(&self) -> bool {
        let link = self.lock_link();
        !link.buf.is_empty() || link.shutdown
    }

    /// The error of a closed connection, `None` while it is open.
    pub(crate) fn closed_error(&self) -> Option<Error> {
        self.lock_link().closed.clone()
    }

    /// For a wait for the broker's answer to content (a publish's confirm) whose deadline,
    /// `timeout` after `started`, ran out: the broker reads nothing while it blocks the
    /// connection, so that time does not count, as for content waiting for room (rule 3).
    /// Blocked now: wait `timeout` more (and ask again then); unblocked since `started`:
    /// `timeout` from the unblock, if that is still ahead; else `None`, the wait is over.
    pub(crate) fn blocked_extension(
        &self,
        started: Instant,
        timeout: Duration,
    ) -> Option<Option<Instant>> {
        let link = self.lock_link();
        if link.closed.is_some() {
            return None;
        }
        if link.blocked_since.is_some() {
            return Some(super::deadline_after(timeout));
        }
        let unblocked = link.unblocked_at.filter(|at| *at > started)?;
        match unblocked.checked_add(timeout) {
            Some(deadline) if deadline > Instant::now() => Some(Some(deadline)),
            Some(_) => None,
            None => Some(None),
        }
    }

    /// Waits while the outbound buffer is over its high-water mark (at most until
    /// `deadline`), or, for content, while the broker blocks the connection (rule 3).
    /// Called without any channel lock held.
    ///
    /// `deadline` is the call's own; `None` means `rpc_timeout` from when the wait starts (so
    /// acks read no clock unless they wait), or no deadline for a timeout too large to be one.
    /// Content held by a blocked connection waits until the call's own deadline if it gave one
    /// (`RpcClient::call`), else until connection.unblocked (or the end of the connection,
    /// `blocked_connection_timeout`). The timeout error names `rpc_timeout`; a caller with a
    /// deadline of its own reports its own timeout.
    fn wait_for_room(
        &self,
        channel: Option<&ChannelCore>,
        content: bool,
        deadline: Option<Instant>,
    ) -> Result<()> {
        let own = deadline;
        let deadline = deadline.or_else(|| super::deadline_after(self.params.rpc_timeout));
        let _wanting = Wanting::new(self);
        let mut link = self.lock_link();
        let mut ends_seen = None;
        loop {
            if let Some(e) = link.refusal() {
                return Err(e);
            }
            if link.has_room(content) {
                return Ok(());
            }
            // A caller's channel that started closing or closed waits no more. Its channel is
            // looked at without this lock (lock order); a close after the look bumps
            // `channel_ends` under this lock, so it is seen here or wakes the wait below.
            if let Some(channel) = channel {
                if ends_seen != Some(link.channel_ends) {
                    ends_seen = Some(link.channel_ends);
                    drop(link);
                    if let Some(e) = channel.lock().ended_error() {
                        return Err(e);
                    }
                    link = self.lock_link();
                    continue;
                }
            }
            let blocked = content && link.blocked_since.is_some();
            let until = if blocked { own } else { deadline };
            let left = match until {
                None => Duration::MAX,
                Some(d) => d.saturating_duration_since(Instant::now()),
            };
            if left.is_zero() {
                let context = if blocked {
                    "waiting for the broker to unblock the connection (connection.blocked)"
                } else {
                    "waiting for room in the outbound buffer (the broker is not reading)"
                };
                return Err(Error::timeout(context, self.params.rpc_timeout));
            }
            link = match until {
                None => self.link_cond.wait(link).unwrap_or_else(|p| p.into_inner()),
                Some(_) => {
                    self.link_cond
                        .wait_timeout(link, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
    }

    /// Appends whole frames (and a body, split into body frames) with the buffer's lock held;
    /// `prefix` (whole frames) goes first. Writes them directly when it may (rule 2). Returns
    /// what the caller must finish writing itself once its locks are released
    /// ([`finish_direct`](Self::finish_direct)), only ever for a body.
    fn append_locked(
        &self,
        mut link: MutexGuard<'_, Link>,
        prefix: &[u8],
        frames: &[u8],
        body: Option<(u16, &[u8])>,
    ) -> Result<Option<Unfinished>> {
        if let Some(e) = link.refusal() {
            return Err(e);
        }
        // Only publishes make bursts: other frames are replies awaited now, or merged acks.
        let mut quiet = true;
        if body.is_some() && self.direct.is_some() {
            let now = Instant::now();
            quiet = link
                .last_publish
                .is_none_or(|last| now.duration_since(last) >= QUIET);
            link.last_publish = Some(now);
        }
        let frame_max = self.tuned.frame_max;
        let mut written = 0;
        let mut direct = false;
        if quiet && link.buf.is_empty() && link.writer == Writer::Nobody {
            if let Some(socket) = &self.direct {
                written = write_direct(&socket.tcp, prefix, frames, body, frame_max, 0);
                direct = true;
            }
        }
        let total = prefix.len()
            + frames.len()
            + body.map_or(0, |(_, b)| codec::body_frames_len(b.len(), frame_max));
        if written == total {
            return Ok(None);
        }
        let large = body.is_some_and(|(_, b)| fits_direct(b.len(), frame_max));
        if direct && large && written >= prefix.len() && total >= DIRECT_FINISH_MIN {
            // The caller finishes it with no lock held (rule 2); `prefix` is written already.
            link.writer = Writer::Caller;
            return Ok(Some(Unfinished {
                done: written - prefix.len(),
            }));
        }
        // The socket took the first `written` bytes already: queue the rest.
        self.enqueue(link, |buf| {
            codec::encode_tail(buf, written, prefix, frames, body, frame_max)
        });
        Ok(None)
    }

    /// Finishes a caller's own direct write (rule 2), called with no lock held: writes the
    /// rest of `frames` and `body` as the socket takes it (`Direct::write_rest`), waiting for
    /// room at most `direct::STALL` at a time and never past `deadline` (the call's own; `rpc_timeout` from now if it has
    /// none); what the socket has not taken by then goes to the front of the buffer, ahead of
    /// what others queued meanwhile, for the I/O thread. Then nobody writes: `link_cond` is signalled (the I/O
    /// thread may wait for that before its last write, see `io_thread`), and the I/O thread is
    /// woken if anything waits in the buffer.
    fn finish_direct(
        &self,
        unfinished: Unfinished,
        frames: &[u8],
        body: (u16, &[u8]),
        deadline: Option<Instant>,
    ) {
        let frame_max = self.tuned.frame_max;
        let total = frames.len() + codec::body_frames_len(body.1.len(), frame_max);
        // A peer that takes a trickle of bytes must not hold the caller for ever.
        let deadline = deadline.or_else(|| super::deadline_after(self.params.rpc_timeout));
        let done = match &self.direct {
            Some(socket) => socket.write_rest(unfinished, frames, body, frame_max, deadline),
            None => unfinished.done,
        };
        // The rest is encoded before the lock is taken: only what others queued meanwhile
        // (usually little, the writer being this thread) is copied under it.
        let mut rest = Vec::new();
        if done < total {
            rest.reserve(total - done);
            codec::encode_tail(&mut rest, done, &[], frames, Some(body), frame_max);
        }
        let mut link = self.lock_link();
        link.writer = Writer::Nobody;
        // A connection that ended writes nothing more: the rest is dropped with it.
        if !rest.is_empty() && link.closed.is_none() {
            rest.extend_from_slice(&link.buf);
            link.buf = rest;
        }
        let queued = !link.buf.is_empty();
        drop(link);
        self.link_cond.notify_all();
        if queued {
            self.wake();
        }
    }

    /// Queues frames for the I/O thread: `encode` appends them to the outbound buffer (locked
    /// by the caller); the I/O thread is woken, once the lock is released, if the buffer was
    /// empty (it writes a non-empty one on its own).
    pub(crate) fn enqueue(
        &self,
        mut link: MutexGuard<'_, Link>,
        encode: impl FnOnce(&mut Vec<u8>),
    ) {
        let was_empty = link.buf.is_empty();
        encode(&mut link.buf);
        drop(link);
        if was_empty {
            self.wake();
        }
    }

    /// Queues `frames` (whole encoded frames for `channel`) and, for content, `body` split into
    /// body frames, waiting for room at most until `deadline`. `check` runs under the
    /// channel's lock right before the frames are queued: it refuses a closed channel and may
    /// take a confirm sequence number, so that numbers and wire order agree and nothing is
    /// queued behind the close-ok of a channel the broker closed. It may return `Ok(None)` to
    /// send nothing.
    pub(crate) fn send_on_if<T>(
        &self,
        channel: &ChannelCore,
        frames: &[u8],
        body: Option<&[u8]>,
        deadline: Option<Instant>,
        check: impl FnOnce(&mut ChanState) -> Result<Option<T>>,
    ) -> Result<Option<T>> {
        codec::check_frames_fit(frames, self.tuned.frame_max)?;
        let body = body.map(|b| (channel.id, b));
        let mut unfinished = None;
        let sent = self.with_room(channel, body.is_some(), deadline, |st, link| {
            let value = check(st)?;
            if value.is_some() {
                // Held acks go first: the broker sees the channel's frames in the order they
                // were asked for.
                let held = AckFrames::held(channel.id, &mut st.acks)?;
                unfinished = self.append_locked(link, held.as_slice(), frames, body)?;
            }
            Ok(value)
        });
        if let (Some(unfinished), Some(body)) = (unfinished, body) {
            self.finish_direct(unfinished, frames, body, deadline);
        }
        sent
    }

    /// Queues `frames` (a channel.close) on `channel` when `check` says so, without waiting
    /// for room (rule 3): a channel is closed once, so what this adds past the high-water
    /// mark is bounded by `channel_max` small frames, and dropping a `Channel` never blocks.
    /// Once queued, callers waiting for room on the channel stop (`Link::channel_ends`).
    pub(crate) fn send_close_if<T>(
        &self,
        channel: &ChannelCore,
        frames: &[u8],
        check: impl FnOnce(&mut ChanState) -> Result<Option<T>>,
    ) -> Result<Option<T>> {
        let mut st = channel.lock();
        let mut link = self.lock_link();
        if let Some(e) = link.refusal() {
            return Err(e);
        }
        let value = check(&mut st)?;
        if value.is_some() {
            let held = AckFrames::held(channel.id, &mut st.acks)?;
            link.channel_ends += 1;
            self.append_locked(link, held.as_slice(), frames, None)?;
            // Callers waiting for room on this channel look at it again.
            self.link_cond.notify_all();
        }
        Ok(value)
    }

    /// [`send_on_if`](Self::send_on_if) for a `check` that always sends.
    pub(crate) fn send_on<T>(
        &self,
        channel: &ChannelCore,
        frames: &[u8],
        body: Option<&[u8]>,
        deadline: Option<Instant>,
        check: impl FnOnce(&mut ChanState) -> Result<T>,
    ) -> Result<T> {
        let sent = self.send_on_if(channel, frames, body, deadline, |st| check(st).map(Some))?;
        Ok(sent.expect("check always asks to send"))
    }

    /// Runs `f` with the channel's state and the outbound buffer locked (in that order) once
    /// the connection is usable and the buffer has room (rule 3; the wait runs without the
    /// channel's lock).
    fn with_room<T>(
        &self,
        channel: &ChannelCore,
        content: bool,
        deadline: Option<Instant>,
        f: impl FnOnce(&mut ChanState, MutexGuard<'_, Link>) -> Result<T>,
    ) -> Result<T> {
        loop {
            // The common case takes each lock once: the channel's, then the buffer's.
            let mut st = channel.lock();
            let link = self.lock_link();
            if let Some(e) = link.refusal() {
                return Err(e);
            }
            if link.has_room(content) {
                return f(&mut st, link);
            }
            drop(link);
            drop(st);
            self.wait_for_room(Some(channel), content, deadline)?;
        }
    }

    /// Settles deliveries on `channel` (basic.ack, nack, reject): merges consecutive acks
    /// where that settles exactly the same messages (see `protocol::acks`), writes the rest
    /// at once.
    pub(crate) fn settle_on(
        &self,
        channel: &ChannelCore,
        settle: Settle,
        delivery_tag: u64,
        deadline: Option<Instant>,
        check: impl FnOnce(&ChanState) -> Result<()>,
    ) -> Result<()> {
        let wake = self.with_room(channel, false, deadline, |st, mut link| {
            // The application's tags run ahead of the broker's after a recovery.
            let delivery_tag = st.broker_tag(delivery_tag)?;
            check(st)?;
            // Nothing is held once the connection is about to close.
            let more_queued = !st.deliveries.is_empty() && !link.closing_soon;
            let plan = st.acks.settle(settle, delivery_tag, more_queued);
            let wake = plan.started && link.acks_due.is_none();
            if wake {
                link.acks_due = Some(Instant::now() + ACK_FLUSH_DELAY);
            }
            let mut frames = AckFrames::new();
            for (settle, tag) in [plan.flush, plan.send].into_iter().flatten() {
                frames.push(channel.id, settle, tag)?;
            }
            if !frames.as_slice().is_empty() {
                self.append_locked(link, &[], frames.as_slice(), None)?;
            }
            Ok(wake)
        })?;
        if wake {
            self.wake();
        }
        Ok(())
    }

    /// Writes `channel`'s held acks, if any (its state is locked by the caller). Acks of a
    /// channel or connection that is closed or closing are dropped: the broker requeues
    /// those messages anyway, and nothing may follow a close on the wire.
    pub(crate) fn flush_acks(&self, channel_id: u16, st: &mut ChanState) -> Result<()> {
        let link = self.lock_link();
        if !matches!(st.life, Life::Open) || link.refusal().is_some() {
            st.acks.discard();
            return Ok(());
        }
        let frames = AckFrames::held(channel_id, &mut st.acks)?;
        if frames.as_slice().is_empty() {
            return Ok(());
        }
        self.append_locked(link, &[], frames.as_slice(), None)
            .map(|_| ())
    }

    /// Writes every channel's held acks (their deadline passed, or the connection closes).
    pub(crate) fn flush_all_acks(&self) {
        let channels: Vec<_> = self.lock_channels().live.values().cloned().collect();
        for channel in channels {
            let mut st = channel.lock();
            if st.acks.holding() {
                if let Err(e) = self.flush_acks(channel.id, &mut st) {
                    log::debug!("channel {}: held acks not written: {e}", channel.id);
                }
            }
        }
    }

    /// Writes every held ack, then waits until everything queued so far is handed to the
    /// socket (the buffer empty and nobody writing), at most until `deadline` (`timeout`, for
    /// the error): `Connection::flush`. Woken by the I/O thread when it has written
    /// everything (`flushing`), by a caller finishing its own write, and by the end of the
    /// connection. Called without any channel lock held.
    pub(crate) fn flush(&self, deadline: Option<Instant>, timeout: Duration) -> Result<()> {
        self.flush_all_acks();
        let mut link = self.lock_link();
        link.flushing += 1;
        let flushed = loop {
            if let Some(e) = link.refusal() {
                break Err(e);
            }
            if link.buf.is_empty() && link.writer == Writer::Nobody {
                break Ok(());
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|left| left.is_zero()) {
                break Err(Error::timeout(
                    "waiting for what was queued to be written (the broker is not reading)",
                    timeout,
                ));
            }
            link = match left {
                None => self.link_cond.wait(link).unwrap_or_else(|p| p.into_inner()),
                Some(left) => {
                    self.link_cond
                        .wait_timeout(link, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        };
        link.flushing -= 1;
        flushed
    }

    /// Queues a method on channel 0; `on_queue` runs under the link's lock as it is queued
    /// (so what it counts is in the order the methods go out).
    pub(crate) fn send_connection_method<T>(
        &self,
        method: AMQPClass,
        deadline: Option<Instant>,
        on_queue: impl FnOnce(&mut Link) -> T,
    ) -> Result<T> {
        with_scratch(|buf| {
            codec::encode_method(buf, 0, method)?;
            codec::check_frames_fit(buf, self.tuned.frame_max)?;
            self.wait_for_room(None, false, deadline)?;
            let mut link = self.lock_link();
            if let Some(e) = link.refusal() {
                return Err(e);
            }
            let queued = on_queue(&mut link);
            self.append_locked(link, &[], buf, None).map(|_| queued)
        })
    }
}
