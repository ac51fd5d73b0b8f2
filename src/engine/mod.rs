//! The connection's engine: the handshake, the shared outbound buffer, the channel table and
//! the `cottontail-io` thread that owns the socket.
//!
//! Callers encode frames on their own thread and append them, one whole unit at a time, to the
//! outbound buffer; the first append into an empty buffer wakes the I/O thread through a
//! `mio::Waker`. The I/O thread swaps the buffer out and writes it, so whatever piled up while it
//! was writing goes out in one `write` (coalescing). On plain TCP, a caller that finds the
//! buffer empty and nothing half-written writes its frames itself ([`Core::append`]). The I/O
//! thread also reads and parses frames, assembles content, routes everything by channel id,
//! and keeps heartbeats.

pub(crate) mod chan;
mod io_thread;

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use amq_protocol::frame::{AMQPFrame, ProtocolVersion};
use amq_protocol::protocol::{connection, AMQPClass};
use amq_protocol::types::FieldTable;

use self::chan::{ChanState, ChannelCore, Life};
use crate::error::{Error, Result};
use crate::params::ConnectionParameters;
use crate::protocol::ack_frames::{AckFrames, Settle};
use crate::protocol::codec::{self, short, FrameReader, Inbound};
use crate::protocol::handshake::{Handshake, Step, Tuned};
use crate::transport::Stream;

/// Outbound bytes past which callers wait for the I/O thread to drain (back-pressure).
pub(crate) const OUTBOUND_HIGH_WATER: usize = 4 * 1024 * 1024;
/// Delivered-but-unconsumed body bytes on one channel past which the I/O thread stops reading
/// the socket until the consumer catches up (TCP back-pressure instead of memory growth).
pub(crate) const INBOUND_CHANNEL_LIMIT: usize = 16 * 1024 * 1024;
/// How long after reading a waiting thread may keep the I/O thread's input watch off while
/// it runs user code that writes (see `Core::input_lent`): about one broker round trip, so a
/// broker's answer to what it writes is read no later than the I/O thread would read it.
pub(crate) const LEND_GRACE: Duration = Duration::from_micros(100);

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
    /// update-secret-ok replies received (a counter, so a waiter can tell a new one).
    pub(crate) secret_updates: u64,
    /// The I/O thread holds bytes it has taken from `buf` and not finished writing: callers
    /// must not write directly to the socket (their bytes would land inside those).
    pub(crate) io_writing: bool,
    /// `close` is writing the held acks before connection.close: acks are not held any more.
    pub(crate) closing_soon: bool,
}

impl Link {
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
}

/// Activity the user-side dispatcher (`process_data_events`) waits for.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    /// Bumped whenever something arrived that a waiter may act on.
    pub(crate) generation: u64,
    /// Threads waiting in [`Core::wait_activity`]; nobody is signalled when it is 0.
    pub(crate) waiters: usize,
    /// connection.blocked (`Some(reason)`) and unblocked (`None`) not yet seen by callbacks.
    pub(crate) blocked_events: std::collections::VecDeque<Option<String>>,
}

/// Everything the connection handles and the I/O thread share.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) params: ConnectionParameters,
    pub(crate) tuned: Tuned,
    link: Mutex<Link>,
    /// Signalled when the outbound buffer drains and when the connection closes.
    pub(crate) link_cond: Condvar,
    waker: mio::Waker,
    /// A second handle on a plain TCP socket, for callers to write to directly when nothing is
    /// queued (see [`Core::append`]); `None` for TLS, whose state only the I/O thread touches.
    direct: Option<std::net::TcpStream>,
    pub(crate) channels: Mutex<HashMap<u16, Arc<ChannelCore>>>,
    pub(crate) activity: Mutex<Activity>,
    pub(crate) activity_cond: Condvar,
    /// Bumped when connection-level work appears for the consuming threads (a threadsafe
    /// callback, a timer, a blocked/unblocked event); see [`Core::kick`].
    pub(crate) conn_work: std::sync::atomic::AtomicU64,
    /// The I/O thread stopped reading because a channel holds too many deliveries.
    pub(crate) read_paused: AtomicBool,
    /// Threads waiting for a reply, a confirm or a close-ok: reading must not stay paused
    /// while there are any (see [`SyncWait`]).
    pub(crate) sync_waiters: std::sync::atomic::AtomicUsize,
    /// Tells the I/O thread to stop now (close deadline passed).
    shutdown: AtomicBool,
    /// The reading half (frame reader and router): the I/O thread's, lent to a waiting thread
    /// with nothing to do (plain TCP; see `io_thread::read_while_waiting`). `None` once the I/O
    /// thread has ended.
    read_side: Mutex<Option<io_thread::ReadSide>>,
    /// The I/O thread's poller registry (plain TCP), for a waiting thread that reads to
    /// switch the I/O thread's input watch off meanwhile.
    io_registry: std::sync::OnceLock<mio::Registry>,
    /// A waiting thread failed to give the input watch back: the I/O thread takes it.
    input_unwatched: AtomicBool,
    /// A waiting thread read something for itself (a delivery, a reply, a confirm) and left
    /// the I/O thread's input watch off (lent) while it runs the user's code, so that reading
    /// again costs it no switch.
    /// Whoever swaps it back to false owns the watch: it reads itself, or gives it back to the
    /// I/O thread (see [`restore_input`](Self::restore_input)).
    input_lent: AtomicBool,
    /// Threads about to wait for something only reading brings (see [`WantInput`]): a
    /// waiting thread that stops reading while there are any gives the input watch back.
    input_wanted: std::sync::atomic::AtomicUsize,
    /// Wakes a waiting thread that reads (see [`wake_reader`](Self::wake_reader)).
    reader_waker: std::sync::OnceLock<mio::Waker>,
    /// A waiting thread holds the reading half and may sleep in its poll.
    user_reading: AtomicBool,
    /// Bumped by everything a waiting consumer must look at (deliveries routed, a channel or
    /// the connection failing, connection work, a consumer cancelled).
    pub(crate) reader_gen: std::sync::atomic::AtomicU64,
    /// The I/O thread found the socket readable while a waiting thread read: that thread
    /// wakes the I/O thread when it stops.
    read_pending: AtomicBool,
    /// A waiting thread left how the connection ended in the reading half.
    read_outcome: AtomicBool,
    /// When a waiting thread last read bytes (ns since `epoch`, 0 for never): traffic for
    /// the heartbeat check.
    last_read_ns: std::sync::atomic::AtomicU64,
    epoch: Instant,
    /// The outbound buffer may hold bytes: set under the buffer's lock whenever bytes are
    /// queued, cleared by the I/O thread under it when it finds the buffer empty. The I/O
    /// thread reads it without the lock, so it does not contend with a caller's direct write
    /// when there is nothing for it to write.
    pub(crate) queued: AtomicBool,
    /// Some channel may hold merged acks (see [`acks`]): the I/O thread writes them within
    /// [`acks::ACK_FLUSH_DELAY`].
    pub(crate) acks_held: AtomicBool,
    /// The I/O thread is (about to be) asleep in `poll` without a deadline for held acks.
    pub(crate) io_parked: AtomicBool,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Core {
    /// Connects on the caller's thread, then runs the handshake and the I/O loop on the
    /// `cottontail-io` thread; returns once the handshake is done.
    pub(crate) fn open(params: ConnectionParameters) -> Result<Arc<Core>> {
        let deadline = Instant::now() + params.stack_timeout;
        let stream = Stream::connect(&params, deadline)?;
        let direct = match &stream {
            Stream::Tcp(tcp) => tcp.try_clone().ok(),
            #[cfg(feature = "tls")]
            Stream::Tls(_) => None,
        };
        let poll = mio::Poll::new().map_err(|e| Error::io("creating the poller", &e))?;
        let waker = mio::Waker::new(poll.registry(), io_thread::WAKER)
            .map_err(|e| Error::io("creating the waker", &e))?;
        // The handshake runs on the I/O thread too, so what parsing a peer's frames needs
        // does not depend on the caller's thread.
        let (tuned_tx, tuned_rx) = std::sync::mpsc::channel();
        let (core_tx, core_rx) = std::sync::mpsc::channel::<Arc<Core>>();
        let handshake_params = params.clone();
        let handle = io_thread::spawn(move || {
            let mut stream = stream;
            let mut reader = FrameReader::new(crate::params::FRAME_MAX_SIZE);
            match handshake(&handshake_params, &mut stream, &mut reader, deadline) {
                Ok(tuned) => {
                    reader.set_frame_max(tuned.frame_max);
                    if tuned_tx.send(Ok(tuned)).is_ok() {
                        if let Ok(core) = core_rx.recv() {
                            io_thread::run(core, stream, reader, poll);
                        }
                    }
                }
                Err(e) => {
                    let _ = tuned_tx.send(Err(e));
                }
            }
        })?;
        let tuned = match tuned_rx.recv() {
            Ok(Ok(tuned)) => tuned,
            Ok(Err(e)) => {
                let _ = handle.join();
                return Err(e);
            }
            Err(_) => {
                return Err(Error::StreamLost {
                    message: "the I/O thread ended during the handshake".into(),
                })
            }
        };
        log::debug!(
            "connected to {}:{} vhost {:?}: channel_max {}, frame_max {}, heartbeat {}s",
            params.host,
            params.port,
            params.virtual_host,
            tuned.channel_max,
            tuned.frame_max,
            tuned.heartbeat
        );
        let core = Arc::new(Core {
            params,
            tuned,
            link: Mutex::new(Link {
                buf: Vec::with_capacity(64 * 1024),
                closed: None,
                closing: None,
                blocked_since: None,
                secret_updates: 0,
                io_writing: false,
                closing_soon: false,
            }),
            link_cond: Condvar::new(),
            activity: Mutex::new(Activity::default()),
            activity_cond: Condvar::new(),
            waker,
            direct,
            channels: Mutex::new(HashMap::new()),
            conn_work: std::sync::atomic::AtomicU64::new(0),
            read_paused: AtomicBool::new(false),
            sync_waiters: std::sync::atomic::AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            queued: AtomicBool::new(false),
            read_side: Mutex::new(None),
            io_registry: std::sync::OnceLock::new(),
            input_unwatched: AtomicBool::new(false),
            input_lent: AtomicBool::new(false),
            input_wanted: std::sync::atomic::AtomicUsize::new(0),
            reader_waker: std::sync::OnceLock::new(),
            user_reading: AtomicBool::new(false),
            reader_gen: std::sync::atomic::AtomicU64::new(0),
            read_pending: AtomicBool::new(false),
            read_outcome: AtomicBool::new(false),
            last_read_ns: std::sync::atomic::AtomicU64::new(0),
            epoch: Instant::now(),
            acks_held: AtomicBool::new(false),
            io_parked: AtomicBool::new(false),
            thread: Mutex::new(Some(handle)),
        });
        core_tx.send(core.clone()).map_err(|_| Error::StreamLost {
            message: "the I/O thread ended after the handshake".into(),
        })?;
        Ok(core)
    }

    pub(crate) fn lock_link(&self) -> MutexGuard<'_, Link> {
        self.link.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_read_side(&self) -> MutexGuard<'_, Option<io_thread::ReadSide>> {
        self.read_side.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells a waiting thread that reads to stop and look at its state again (and every
    /// consumer about to start reading, through the generation).
    pub(crate) fn wake_reader(&self) {
        self.reader_gen.fetch_add(1, Ordering::SeqCst);
        if self.user_reading.load(Ordering::SeqCst) {
            if let Some(waker) = self.reader_waker.get() {
                if let Err(e) = waker.wake() {
                    log::warn!("could not wake the reading consumer: {e}");
                }
            }
        }
    }

    /// Gives the socket's input watch back to the I/O thread if a waiting thread lent it
    /// (see `input_lent`). If that fails, the I/O thread is asked to take it itself.
    pub(crate) fn restore_input(&self) {
        if self.input_lent.load(Ordering::SeqCst) && self.input_lent.swap(false, Ordering::SeqCst) {
            self.watch_input();
        }
    }

    /// Called after every write: gives a lent input watch back once it has been lent for
    /// longer than [`LEND_GRACE`]. What the broker says about what we write (a channel closed
    /// for a bad publish) is then read at most about that long after the write, as if the I/O
    /// thread watched all along; a waiting thread that writes its reply right after reading
    /// (the common case) keeps the watch.
    fn after_write(&self) {
        if !self.input_lent.load(Ordering::SeqCst) {
            return;
        }
        let now = self.epoch.elapsed().as_nanos() as u64;
        let read = self.last_read_ns.load(Ordering::Relaxed);
        if now.saturating_sub(read) > LEND_GRACE.as_nanos() as u64 {
            self.restore_input();
        }
    }

    /// Puts the I/O thread's input watch back (plain TCP). Input already waiting shows up for
    /// the I/O thread at once. If that fails, the I/O thread is asked to try itself (and ends
    /// the connection if it fails too).
    fn watch_input(&self) {
        if let Err(e) = self.register_input() {
            log::warn!("giving the socket's input back to the I/O thread: {e}");
            self.input_unwatched.store(true, Ordering::SeqCst);
            self.wake();
        }
    }

    /// Registers the socket's input with the I/O thread's poller (plain TCP; nothing to do
    /// otherwise). Only the holder of a watch that is off may call it.
    fn register_input(&self) -> std::io::Result<()> {
        let (Some(direct), Some(registry)) = (self.direct.as_ref(), self.io_registry.get()) else {
            return Ok(());
        };
        let fd = std::os::fd::AsRawFd::as_raw_fd(direct);
        registry.register(
            &mut mio::unix::SourceFd(&fd),
            io_thread::SOCKET,
            mio::Interest::READABLE,
        )
    }

    /// A waiting thread read bytes now.
    fn note_read(&self) {
        let ns = self.epoch.elapsed().as_nanos().max(1) as u64;
        self.last_read_ns.store(ns, Ordering::Relaxed);
    }

    /// When a waiting thread last read bytes, if ever.
    fn last_waiter_read(&self) -> Option<Instant> {
        match self.last_read_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(self.epoch + Duration::from_nanos(ns)),
        }
    }

    pub(crate) fn lock_channels(&self) -> MutexGuard<'_, HashMap<u16, Arc<ChannelCore>>> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The error of a closed connection, `None` while it is open.
    pub(crate) fn closed_error(&self) -> Option<Error> {
        self.lock_link().closed.clone()
    }

    /// Waits while the outbound buffer is over its high-water mark (at most the RPC timeout).
    /// Called without any channel lock held: the I/O thread needs those to make progress.
    ///
    /// Content (`publish`) also waits while the broker has the connection blocked: until it
    /// unblocks, or until `blocked_connection_timeout` makes the I/O thread close the
    /// connection (without that timeout, as long as the broker blocks, as in pika).
    fn wait_for_room(&self, content: bool) -> Result<()> {
        let mut link = self.lock_link();
        // Set when a wait for the I/O thread starts: the common case never reads the clock.
        let mut deadline = None;
        // What ends the wait (unblocked, a close) is read from the socket.
        let mut want_input = None;
        loop {
            if let Some(e) = link.refusal() {
                return Err(e);
            }
            if link.has_room(content) {
                return Ok(());
            }
            want_input.get_or_insert_with(|| WantInput::new(self));
            if content && link.blocked_since.is_some() {
                link = self.link_cond.wait(link).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            let deadline =
                *deadline.get_or_insert_with(|| Instant::now() + self.params.rpc_timeout);
            link = wait_until(&self.link_cond, link, deadline).map_err(|_| {
                Error::timeout(
                    "waiting for room in the outbound buffer (the broker is not reading)",
                    self.params.rpc_timeout,
                )
            })?;
        }
    }

    /// Appends whole frames (and a body, split into body frames) to the outbound buffer.
    ///
    /// On a plain TCP connection with nothing queued and nothing half-written by the I/O
    /// thread, the caller writes the frames to the socket itself (non-blocking, under the
    /// buffer's lock, so nothing can come between): a request then costs no wake-up of the
    /// I/O thread. Whatever the socket does not take is queued for the I/O thread as usual.
    fn append(&self, frames: &[u8], body: Option<(u16, &[u8])>) -> Result<()> {
        self.append_locked(self.lock_link(), &[], frames, body)
    }

    /// [`append`](Self::append) with the buffer's lock already held; `prefix` (whole frames)
    /// goes first.
    fn append_locked(
        &self,
        link: MutexGuard<'_, Link>,
        prefix: &[u8],
        frames: &[u8],
        body: Option<(u16, &[u8])>,
    ) -> Result<()> {
        if let Some(e) = link.refusal() {
            return Err(e);
        }
        let mut written = 0;
        if link.buf.is_empty() && !link.io_writing {
            if let Some(tcp) = &self.direct {
                written = codec::write_direct(tcp, prefix, frames, body, self.tuned.frame_max);
            }
        }
        let total = prefix.len()
            + frames.len()
            + body.map_or(0, |(_, b)| {
                codec::body_frames_len(b.len(), self.tuned.frame_max)
            });
        if written == total {
            drop(link);
            self.after_write();
            return Ok(());
        }
        // The socket took the first `written` bytes already: queue the rest.
        self.enqueue(link, |buf| {
            codec::encode_tail(buf, written, prefix, frames, body, self.tuned.frame_max)
        });
        self.after_write();
        Ok(())
    }

    /// Queues frames for the I/O thread: `encode` appends them to the outbound buffer (locked
    /// by the caller), `queued` tells the I/O thread there is something, and it is woken, once
    /// the lock is released, if the buffer was empty (it writes a non-empty one on its own).
    fn enqueue(&self, mut link: MutexGuard<'_, Link>, encode: impl FnOnce(&mut Vec<u8>)) {
        let was_empty = link.buf.is_empty();
        self.queued.store(true, Ordering::SeqCst);
        encode(&mut link.buf);
        drop(link);
        if was_empty {
            self.wake();
        }
    }

    /// Queues `frames` (whole encoded frames for `channel`) and, for content, `body` split into
    /// body frames. `check` runs under the channel's lock right before the frames are queued:
    /// it refuses a closed channel and may take a confirm sequence number, so that numbers and
    /// wire order agree and nothing is queued behind the close-ok of a channel the broker closed.
    pub(crate) fn send_on<T>(
        &self,
        channel: &ChannelCore,
        frames: &[u8],
        body: Option<&[u8]>,
        check: impl FnOnce(&mut ChanState) -> Result<T>,
    ) -> Result<T> {
        let sent = self.send_on_if(channel, frames, body, |st| check(st).map(Some))?;
        Ok(sent.expect("check always asks to send"))
    }

    /// Like [`send_on`](Self::send_on), but `check` may return `Ok(None)` to send nothing.
    pub(crate) fn send_on_if<T>(
        &self,
        channel: &ChannelCore,
        frames: &[u8],
        body: Option<&[u8]>,
        check: impl FnOnce(&mut ChanState) -> Result<Option<T>>,
    ) -> Result<Option<T>> {
        self.with_room(channel, body.is_some(), |st, link| {
            let value = check(st)?;
            if value.is_some() {
                // Acks held for merging go first: the broker sees the channel's frames in the
                // order they were asked for.
                let held = AckFrames::held(channel.id, &mut st.acks)?;
                self.append_locked(link, held.as_slice(), frames, body.map(|b| (channel.id, b)))?;
            }
            Ok(value)
        })
    }

    /// Runs `f` with the channel's state and the outbound buffer locked (in that order) once
    /// the connection is usable and the buffer has room (see [`wait_for_room`](Self::wait_for_room),
    /// which runs without the channel's lock: the I/O thread needs it to make progress).
    fn with_room<T>(
        &self,
        channel: &ChannelCore,
        content: bool,
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
            self.wait_for_room(content)?;
        }
    }

    /// Settles deliveries on `channel` (basic.ack, nack, reject): merges consecutive acks
    /// where that settles exactly the same messages (see [`acks`]), writes the rest at once.
    pub(crate) fn settle_on(
        &self,
        channel: &ChannelCore,
        settle: Settle,
        delivery_tag: u64,
        check: impl FnOnce(&ChanState) -> Result<()>,
    ) -> Result<()> {
        let started = self.with_room(channel, false, |st, link| {
            check(st)?;
            // Nothing is held once the connection is about to close.
            let more_queued = !st.deliveries.is_empty() && !link.closing_soon;
            let plan = st.acks.settle(settle, delivery_tag, more_queued);
            let mut frames = AckFrames::new();
            for (settle, tag) in [plan.flush, plan.send].into_iter().flatten() {
                frames.push(channel.id, settle, tag)?;
            }
            if !frames.as_slice().is_empty() {
                self.append_locked(link, &[], frames.as_slice(), None)?;
            }
            Ok(plan.started)
        })?;
        if started {
            self.note_acks_held();
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
    }

    /// Writes every channel's held acks (their deadline passed, or the connection closes).
    pub(crate) fn flush_all_acks(&self) {
        let channels: Vec<_> = self.lock_channels().values().cloned().collect();
        for channel in channels {
            let mut st = channel.lock();
            if st.acks.holding() {
                if let Err(e) = self.flush_acks(channel.id, &mut st) {
                    log::debug!("channel {}: held acks not written: {e}", channel.id);
                }
            }
        }
    }

    /// A channel started holding acks: make sure the I/O thread writes them in time. It is
    /// woken only if it sleeps without that deadline (once per quiet spell, not per run).
    fn note_acks_held(&self) {
        if !self.acks_held.swap(true, Ordering::SeqCst) && self.io_parked.load(Ordering::SeqCst) {
            self.wake();
        }
    }

    pub(crate) fn lock_activity(&self) -> MutexGuard<'_, Activity> {
        self.activity.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells threads in [`wait_activity`](Self::wait_activity) that something happened.
    pub(crate) fn signal_activity(&self) {
        let mut activity = self.lock_activity();
        // Always bumped, so a waiter that read the generation before this sees the change;
        // the (costly) notify only when someone waits.
        activity.generation += 1;
        let waiters = activity.waiters;
        drop(activity);
        if waiters > 0 {
            self.activity_cond.notify_all();
        }
    }

    /// Waits until `ready` gives a value (it runs under `channel`'s lock, first at once, then on
    /// every change), the channel closes (its error), or `deadline` passes: then `on_expiry`
    /// runs under the lock (to undo what the waiter set up) and its error is returned. For
    /// what the broker sends: a method's reply, confirms, a close-ok. While it waits, the
    /// caller reads the socket itself when it can (see `io_thread::read_while_waiting`), else it
    /// sleeps until whoever reads routes something to the channel.
    pub(crate) fn wait_on<T>(
        &self,
        channel: &ChannelCore,
        deadline: Instant,
        mut ready: impl FnMut(&mut ChanState) -> Option<T>,
        on_expiry: impl FnOnce(&mut ChanState) -> Error,
    ) -> Result<T> {
        let _waiting = SyncWait::new(self);
        let mut st = channel.lock();
        // Whether this wait may still read the socket itself.
        let mut may_read = true;
        loop {
            // Read before looking at the state: anything that changes it after this bumps it.
            let generation = self.reader_gen.load(Ordering::SeqCst);
            if let Some(value) = ready(&mut st) {
                return Ok(value);
            }
            if let Some(e) = st.closed_error() {
                return Err(e);
            }
            let timed_out;
            (st, timed_out) =
                self.wait_turn(channel, st, generation, Some(deadline), &mut may_read);
            if timed_out {
                return Err(on_expiry(&mut st));
            }
        }
    }

    /// One turn of a wait on `channel`, whose state the caller looked at (under `st`) after
    /// reading the reader generation `generation`: reads the socket on this thread while it
    /// waits if it `may_read` (see `io_thread::read_while_waiting`) and `deadline` has not passed,
    /// else sleeps on the channel's condition variable until whoever reads routes something
    /// to it. Returns the state locked again and whether `deadline` passed; the caller looks
    /// again either way. `may_read` is cleared when someone else reads (look once more, then
    /// sleep) and set again after a sleep (whoever read for us may have stopped).
    pub(crate) fn wait_turn<'a>(
        &self,
        channel: &'a ChannelCore,
        st: MutexGuard<'a, ChanState>,
        generation: u64,
        deadline: Option<Instant>,
        may_read: &mut bool,
    ) -> (MutexGuard<'a, ChanState>, bool) {
        if *may_read && deadline.is_none_or(|d| d > Instant::now()) {
            drop(st);
            let read = io_thread::read_while_waiting(self, channel, generation, deadline);
            let st = channel.lock();
            return match read {
                io_thread::WaitRead::Read => (st, false),
                io_thread::WaitRead::TimedOut => (st, true),
                io_thread::WaitRead::Busy => {
                    *may_read = false;
                    (st, false)
                }
            };
        }
        let _want_input = WantInput::new(self);
        let (st, timed_out) = match channel.wait(st, deadline) {
            Ok(guard) => (guard, false),
            Err(guard) => (guard, true),
        };
        *may_read = true;
        (st, timed_out)
    }

    /// Waits until [`signal_activity`](Self::signal_activity) is called after `generation` was
    /// read, or until `deadline`.
    pub(crate) fn wait_activity(&self, generation: u64, deadline: Instant) {
        let _want_input = WantInput::new(self);
        let mut activity = self.lock_activity();
        activity.waiters += 1;
        while activity.generation == generation && self.closed_error().is_none() {
            match wait_until(&self.activity_cond, activity, deadline) {
                Ok(guard) => activity = guard,
                Err(guard) => {
                    activity = guard;
                    break;
                }
            }
        }
        activity.waiters -= 1;
    }

    /// The current activity generation: read it before looking for work, then pass it to
    /// [`wait_activity`](Self::wait_activity) so nothing that arrives in between is missed.
    pub(crate) fn activity_generation(&self) -> u64 {
        self.lock_activity().generation
    }

    /// Announces connection-level work to every consuming thread: bumps `conn_work`, then
    /// wakes each channel's waiters under its lock (so none misses it) and the activity waiters.
    pub(crate) fn kick(&self) {
        self.conn_work.fetch_add(1, Ordering::SeqCst);
        self.wake_reader();
        let channels: Vec<_> = self.lock_channels().values().cloned().collect();
        for channel in channels {
            let _st = channel.lock();
            channel.notify();
        }
        self.signal_activity();
    }

    /// Queues a method on channel 0.
    pub(crate) fn send_connection_method(&self, method: AMQPClass) -> Result<()> {
        with_scratch(|buf| {
            codec::encode_method(buf, 0, method)?;
            self.wait_for_room(false)?;
            self.append(buf, None)
        })
    }

    /// Waits until the update-secret-ok counter passes `seen`, at most `timeout`.
    pub(crate) fn wait_secret_update(&self, seen: u64, timeout: Duration) -> Result<()> {
        let _waiting = SyncWait::new(self);
        let _input = WantInput::new(self);
        let deadline = Instant::now() + timeout;
        let mut link = self.lock_link();
        loop {
            if link.secret_updates > seen {
                return Ok(());
            }
            if let Some(e) = &link.closed {
                return Err(e.clone());
            }
            link = wait_until(&self.link_cond, link, deadline)
                .map_err(|_| Error::timeout("waiting for connection.update-secret-ok", timeout))?;
        }
    }

    /// Wakes the I/O thread (to flush, to resume reading, or to shut down).
    pub(crate) fn wake(&self) {
        if let Err(e) = self.waker.wake() {
            log::warn!("could not wake the I/O thread: {e}");
        }
    }

    /// Closes the connection: sends connection.close, waits for close-ok (at most `timeout`),
    /// then stops the I/O thread. Queued frames are written before the close.
    pub(crate) fn close(&self, reply_code: u16, reply_text: &str, timeout: Duration) -> Result<()> {
        let method = AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code,
            reply_text: short(reply_text)?,
            class_id: 0,
            method_id: 0,
        }));
        let mut frame = Vec::new();
        codec::encode_method(&mut frame, 0, method)?;
        // First no new acks are held, then the held ones are written: an ack made before
        // this call reaches the broker ahead of the close.
        self.lock_link().closing_soon = true;
        self.flush_all_acks();
        let mut link = self.lock_link();
        let mut result = Ok(());
        if link.closed.is_none() {
            if link.closing.is_none() {
                link.closing = Some((reply_code, reply_text.to_string()));
                self.enqueue(link, |buf| buf.extend_from_slice(&frame));
                // Publishers waiting on a blocked connection give up now.
                self.link_cond.notify_all();
                link = self.lock_link();
            }
            let _waiting = SyncWait::new(self);
            let _input = WantInput::new(self);
            let deadline = Instant::now() + timeout;
            while link.closed.is_none() {
                match wait_until(&self.link_cond, link, deadline) {
                    Ok(guard) => link = guard,
                    Err(guard) => {
                        link = guard;
                        result = Err(Error::timeout("waiting for connection.close-ok", timeout));
                        break;
                    }
                }
            }
        }
        drop(link);
        self.stop_thread(Error::ConnectionClosedByClient {
            reply_code,
            reply_text: reply_text.to_string(),
        });
        result
    }

    /// Makes the I/O thread exit (if it has not) and waits for it.
    fn stop_thread(&self, reason: Error) {
        self.shutdown.store(true, Ordering::SeqCst);
        self.wake();
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle {
            if handle.thread().id() != std::thread::current().id() {
                let _ = handle.join();
            }
        }
        self.fail(reason);
    }

    /// Marks the connection and every channel closed with `error` (first reason wins).
    pub(crate) fn fail(&self, error: Error) {
        let mut link = self.lock_link();
        let error = link.closed.get_or_insert(error).clone();
        drop(link);
        self.link_cond.notify_all();
        self.lock_activity().generation += 1;
        self.activity_cond.notify_all();
        let channels: Vec<_> = self.lock_channels().drain().map(|(_, c)| c).collect();
        for channel in channels {
            channel.fail(&error);
        }
        self.wake_reader();
    }

    /// The broker's server properties from connection.start.
    pub(crate) fn server_properties(&self) -> &FieldTable {
        &self.tuned.server_properties
    }
}

/// Held by a thread while it waits for something the broker sends (a method reply, a confirm,
/// a close-ok). Inbound back-pressure pauses reading only while no such thread waits, since
/// what it waits for may sit behind the deliveries that caused the pause: a consumer callback
/// that makes an RPC or publishes with confirms must not deadlock.
#[derive(Debug)]
pub(crate) struct SyncWait<'a>(&'a Core);

impl<'a> SyncWait<'a> {
    pub(crate) fn new(core: &'a Core) -> Self {
        core.sync_waiters.fetch_add(1, Ordering::SeqCst);
        if core.read_paused.load(Ordering::SeqCst) {
            core.wake();
        }
        SyncWait(core)
    }
}

/// Held by a thread while it waits for something that only reading the socket brings: no
/// waiting thread keeps the input watch lent meanwhile (see `Core::input_lent`). Counted
/// before it looks, so that either it sees the watch lent and gives it back, or the consuming
/// thread that lends it afterwards sees it counted and gives it back itself.
#[derive(Debug)]
pub(crate) struct WantInput<'a>(&'a Core);

impl<'a> WantInput<'a> {
    pub(crate) fn new(core: &'a Core) -> Self {
        core.input_wanted.fetch_add(1, Ordering::SeqCst);
        core.restore_input();
        WantInput(core)
    }
}

impl Drop for WantInput<'_> {
    fn drop(&mut self) {
        self.0.input_wanted.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for SyncWait<'_> {
    fn drop(&mut self) {
        self.0.sync_waiters.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Waits on `cond` until notified or `deadline`. `Err` (with the guard back) once the
/// deadline has passed; callers loop on `Ok`, which may be a spurious wake-up.
pub(crate) fn wait_until<'a, T>(
    cond: &Condvar,
    guard: MutexGuard<'a, T>,
    deadline: Instant,
) -> std::result::Result<MutexGuard<'a, T>, MutexGuard<'a, T>> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(guard);
    }
    Ok(cond
        .wait_timeout(guard, left)
        .unwrap_or_else(|p| p.into_inner())
        .0)
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's scratch buffer for encoding (empty on entry).
pub(crate) fn with_scratch<T>(f: impl FnOnce(&mut Vec<u8>) -> Result<T>) -> Result<T> {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            buf.clear();
            let out = f(&mut buf);
            if buf.capacity() > 256 * 1024 {
                *buf = Vec::new();
            }
            out
        }
        // Re-entered (cannot happen today): use a fresh buffer.
        Err(_) => f(&mut Vec::new()),
    })
}

/// Runs the blocking handshake on a fresh stream, bounded by `socket_timeout` per wait and by
/// `deadline` overall.
fn handshake(
    params: &ConnectionParameters,
    stream: &mut Stream,
    reader: &mut FrameReader,
    deadline: Instant,
) -> Result<Tuned> {
    let mut out = Vec::new();
    codec::encode_frame(
        &mut out,
        &AMQPFrame::ProtocolHeader(ProtocolVersion::amqp_0_9_1()),
    )?;
    stream
        .write_all(&out)
        .map_err(|e| Error::io("sending the protocol header", &e))?;
    let mut hs = Handshake::new(params);
    loop {
        while let Some(inbound) = reader.next_frame()? {
            let frame = match inbound {
                Inbound::Frame(frame) => frame,
                Inbound::Body(..) => {
                    return Err(Error::protocol(
                        crate::error::UNEXPECTED_FRAME,
                        "body frame during the handshake",
                    ))
                }
            };
            match hs.on_frame(frame)? {
                Step::Send(methods) => {
                    out.clear();
                    for m in methods {
                        codec::encode_method(&mut out, 0, m)?;
                    }
                    stream
                        .write_all(&out)
                        .map_err(|e| Error::io("sending the handshake", &e))?;
                }
                Step::Done(tuned) => return Ok(tuned),
            }
        }
        let now = Instant::now();
        let left = deadline.saturating_duration_since(now);
        if left.is_zero() {
            return Err(Error::timeout(hs.waiting_for(), params.stack_timeout));
        }
        let wait = params
            .socket_timeout
            .min(left)
            .max(Duration::from_millis(1));
        stream
            .tcp()
            .set_read_timeout(Some(wait))
            .map_err(|e| Error::io("setting the socket timeout", &e))?;
        match reader.read_from(stream) {
            Ok(0) => return Err(hs.eof_error()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                let after = if wait < params.socket_timeout {
                    params.stack_timeout
                } else {
                    params.socket_timeout
                };
                return Err(Error::timeout(hs.waiting_for(), after));
            }
            Err(e) => return Err(Error::io(hs.waiting_for(), &e)),
        }
    }
}
