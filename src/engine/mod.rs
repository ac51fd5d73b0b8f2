//! The connection's engine: the threads, the socket, and every wait.
//!
//! # Who does what
//!
//! - The **`cottontail-io` thread** (`io_thread`) owns the socket's writing side for the
//!   outbound buffer, keeps heartbeats and timers (held acks, blocked-connection timeout), and
//!   reads whenever it holds the read token. It never runs user code and blocks only in its
//!   own `poll`, woken by `io_waker` (outbound bytes queued into an empty buffer, a hand-over
//!   asked for, a parked token to take back, shutdown), by the socket, or by its next timer.
//! - **User threads** encode and queue their frames (`outbound`, writing them directly when
//!   nothing is queued, except a publish right behind another; a large publish is written to
//!   the end by its own thread while the socket takes it), and wait for replies,
//!   confirms, deliveries and close-oks in [`Core::wait_until`] (`token`), where they read the
//!   socket themselves when the token is free. They wait for outbound room on `link_cond`
//!   (`outbound`, rule 3).
//! - The **router** (`router`) runs on whichever thread holds the token and fills the
//!   channels' state (`chan`, with the returned messages kept in `returns`).
//!
//! # Can this thread block here, and until when?
//!
//! | wait | woken by | at the latest |
//! |---|---|---|
//! | a reply, confirm, delivery, close-ok ([`Core::wait_until`]) | the reader's generation bump, [`Core::nudge`] (also by the application's channel.close, which ends every wait on that channel but the close-ok's), its own reading | the caller's deadline (`rpc_timeout` for methods; none for `start_consuming`) |
//! | a channel number a crossed close shadowed (`router`; `channel_with_number`, or `channel()` when no other is free), in [`Core::wait_until`] | the reader routing the late close-ok (on plain TCP maybe this thread), the connection's end ([`Core::nudge`]) | the shadow's end (`router::LATE_CLOSE_OK`, nobody wakes it: the wait's own deadline) or `rpc_timeout` |
//! | room in the socket for the rest of a caller's own large publish (`outbound::finish_direct`, plain TCP) | the socket draining (its own poll) | [`direct::STALL`] without progress, or the call's deadline (`RpcClient::call`'s, else `rpc_timeout` from when it starts finishing), whichever comes first; then the rest is queued for the I/O thread |
//! | outbound room (`outbound::wait_for_room`) | the I/O thread draining, a caller finishing its own write, connection.unblocked, a close of the connection or of the caller's channel | the call's deadline (blocked: until unblocked or `blocked_connection_timeout`, or the publish's own deadline if it has one: `RpcClient::call`) |
//! | everything queued written (`outbound::flush`, [`Connection::flush`](crate::Connection::flush)) | the I/O thread having written it all (`Link::flushing`), a caller finishing its own write, the connection's end | the call's timeout |
//! | the I/O thread's `poll` | `io_waker`, the socket | its next heartbeat, held-acks, blocked or parked-token deadline |
//! | a lock (`Link`, `Turn`, a channel's state) | its holder, which never waits while holding one | a few microseconds |
//! | the I/O thread's last write after the broker's close (`io_thread::flush_before_exit`) | a caller finishing its own write (`link_cond`) | one second |
//! | the connection's recovery (`recovery`: `Owner::ready_core`, `wait_recovered`), recovery on only | the recovery thread at each event, when the new engine is in place or it gives up; a close; for a consuming thread, a timer, threadsafe callback or recovery event added (`Owner::work_added`) | the call's deadline (`rpc_timeout` for methods, publishes and acks; the inactivity timeout of a `consume()` iterator; none for `start_consuming`); for a consuming thread, also its next timer |
//!
//! Each wait's rules are written once, in the file that owns it: `token` (reading, waiting,
//! inbound back-pressure), `outbound` (writing, outbound back-pressure, held acks),
//! `io_thread` (timers, the end of the connection), `router` (channel numbers), and, outside
//! the engine, `recovery` (replacing a lost engine with a new one, and waiting for that).
//!
//! One engine serves one TCP connection. With recovery on, the connection's handles reach
//! the engine through `Owner::current`, which the recovery replaces after a loss; the
//! channels' state (`chan::ChannelCore`) outlives engines and moves to the new one.
//!
//! Every deadline is computed with [`deadline_after`], so a huge timeout means "no deadline",
//! never an overflow.

pub(crate) mod chan;
pub(crate) mod direct;
mod io_thread;
pub(crate) mod outbound;
pub(crate) mod returns;
mod router;
mod token;

use std::io::Write;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::protocol::content::SpareBody;
use crate::protocol::table::FieldTable;
use amq_protocol::frame::{AMQPFrame, ProtocolVersion};
use amq_protocol::protocol::{connection, AMQPClass};

use self::chan::{ChanState, ChannelCore, ChannelTable, InboundMeter};
use self::outbound::Link;
use self::token::ReadToken;
use crate::error::{Error, Result};
use crate::params::ConnectionParameters;
use crate::protocol::codec::{self, short, FrameReader, Inbound};
use crate::protocol::handshake::{Handshake, Login, Settings, Step, Tuned};
use crate::transport::Stream;

/// Everything the connection handles and the I/O thread share.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) params: ConnectionParameters,
    pub(crate) tuned: Tuned,
    link: Mutex<Link>,
    /// Signalled when the outbound buffer drains, when the broker unblocks the connection
    /// and when the connection closes (see `outbound`).
    pub(crate) link_cond: Condvar,
    /// Wakes the I/O thread.
    io_waker: mio::Waker,
    /// A second handle on a plain TCP socket, for callers to write to directly when nothing is
    /// queued (see `outbound`); `None` for TLS, whose state only the I/O thread touches.
    direct: Option<direct::Direct>,
    pub(crate) channels: Mutex<ChannelTable>,
    /// Who reads, and how everyone else waits (see `token`).
    token: ReadToken,
    /// Bytes of messages held for callers (see `token`, rule 9).
    pub(crate) inbound: InboundMeter,
    /// Bytes of the returned messages kept for the return callbacks on all its channels
    /// (see `returns`).
    pub(crate) returns_kept: InboundMeter,
    /// A large body's buffer, handed back by the consumer callback that borrowed it, for
    /// the next large body read (see `protocol::content`).
    pub(crate) spare_body: SpareBody,
    /// Bumped when connection-level work appears for the consuming threads (a threadsafe
    /// callback, a timer, a blocked/unblocked event); see [`Core::kick`].
    pub(crate) conn_work: AtomicU64,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Recoveries of the connection before this engine was opened (0 for the first one); every
    /// delivery it routes carries it.
    pub(crate) generation: u64,
    /// Told when the connection ends for a reason other than the application's close (see
    /// [`Core::fail`]); set by the recovery, if it is on.
    on_lost: Mutex<Option<OnLost>>,
}

/// What [`Core::fail`] calls when the connection ends (see `recovery`), with the error and
/// whether recovery handles it.
pub(crate) struct OnLost(pub(crate) Box<OnLostFn>);

/// The function behind [`OnLost`].
pub(crate) type OnLostFn = dyn Fn(&Core, &Error, bool) + Send + Sync;

impl std::fmt::Debug for OnLost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnLost(..)")
    }
}

/// `timeout` from now, or `None` (no deadline) when that is beyond what `Instant` can hold.
pub(crate) fn deadline_after(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

/// `timeout` from now, saturated to a century for a timeout too large for an `Instant`: for
/// waits that need an instant (connecting, timers).
pub(crate) fn saturating_deadline(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(now)
}

impl Core {
    /// Connects on the caller's thread, then runs the handshake and the I/O loop on the
    /// `cottontail-io` thread; returns once the handshake is done.
    pub(crate) fn open(params: ConnectionParameters, generation: u64) -> Result<Arc<Core>> {
        let deadline = saturating_deadline(params.stack_timeout);
        let stream = Stream::connect(&params, deadline)?;
        let read_half = match &stream {
            Stream::Tcp(tcp) => tcp.try_clone().ok(),
            #[cfg(feature = "tls")]
            Stream::Tls(_) => None,
        };
        // Without its poll, callers do not write directly (the I/O thread writes everything).
        let direct = match &read_half {
            Some(tcp) => match tcp.try_clone().and_then(direct::Direct::new) {
                Ok(direct) => Some(direct),
                Err(e) => {
                    log::warn!("callers will not write to the socket directly: {e}");
                    None
                }
            },
            None => None,
        };
        let poll = mio::Poll::new().map_err(|e| Error::io("creating the poller", &e))?;
        let io_waker = mio::Waker::new(poll.registry(), token::WAKER)
            .map_err(|e| Error::io("creating the waker", &e))?;
        // The handshake runs on the I/O thread, so what parsing a peer's frames needs does
        // not depend on the caller's thread.
        let (tuned_tx, tuned_rx) = std::sync::mpsc::channel();
        let (core_tx, core_rx) = std::sync::mpsc::channel::<(Arc<Core>, token::ReadSide)>();
        let handshake_params = params.clone();
        let handle = io_thread::spawn(move || {
            let mut stream = stream;
            let mut reader = FrameReader::new(crate::params::FRAME_MAX_SIZE);
            match handshake(&handshake_params, &mut stream, &mut reader, deadline) {
                Ok(tuned) => {
                    reader.set_frame_max(tuned.frame_max);
                    if tuned_tx.send(Ok((tuned, reader))).is_ok() {
                        if let Ok((core, side)) = core_rx.recv() {
                            io_thread::run(core, stream, side, poll);
                        }
                    }
                }
                Err(e) => {
                    let _ = tuned_tx.send(Err(e));
                }
            }
        })?;
        let (tuned, reader) = match tuned_rx.recv() {
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
        let (token, side) = ReadToken::new(reader, read_half, Instant::now());
        let core = Arc::new(Core {
            params,
            tuned,
            link: Mutex::new(Link::new()),
            link_cond: Condvar::new(),
            io_waker,
            direct,
            channels: Mutex::new(ChannelTable::default()),
            token,
            inbound: InboundMeter::default(),
            returns_kept: InboundMeter::default(),
            spare_body: SpareBody::default(),
            conn_work: AtomicU64::new(0),
            thread: Mutex::new(Some(handle)),
            generation,
            on_lost: Mutex::new(None),
        });
        core_tx
            .send((core.clone(), side))
            .map_err(|_| Error::StreamLost {
                message: "the I/O thread ended after the handshake".into(),
            })?;
        Ok(core)
    }

    pub(crate) fn lock_channels(&self) -> MutexGuard<'_, ChannelTable> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes the I/O thread (to write, to hand the token over or take it back, to resume
    /// reading, or to shut down).
    pub(crate) fn wake(&self) {
        if let Err(e) = self.io_waker.wake() {
            log::warn!("could not wake the I/O thread: {e}");
        }
    }

    /// Waits until `ready` gives a value (it runs under `channel`'s lock, first at once, then
    /// on every change), the channel closes or the application's close of it begins (the
    /// error, [`ChanState::ended_error`]; at our close `on_expiry` runs too, as below, so
    /// that a reply still on its way is dealt with when it comes), or `deadline` passes: then
    /// `on_expiry` runs under the lock (to undo what the waiter set up) and its error is
    /// returned. For what the broker sends: a method's reply, confirms.
    pub(crate) fn wait_on<T>(
        &self,
        channel: &ChannelCore,
        deadline: Option<Instant>,
        mut ready: impl FnMut(&mut ChanState) -> Option<T>,
        on_expiry: impl FnOnce(&mut ChanState) -> Error,
    ) -> Result<T> {
        let got = self.wait_until(deadline, || {
            let mut st = channel.lock();
            if let Some(value) = ready(&mut st) {
                return Some(Ok(value));
            }
            st.ended_error().map(Err)
        });
        match got {
            Some(Ok(value)) => Ok(value),
            Some(Err(e)) => {
                let mut st = channel.lock();
                if let Some(value) = ready(&mut st) {
                    return Ok(value);
                }
                if matches!(st.life, chan::Life::Closing(_)) {
                    // Our close: what the waiter set up is undone as at its deadline (a reply
                    // that still comes is dealt with by the router, not left in the slot).
                    let _ = on_expiry(&mut st);
                }
                Err(e)
            }
            None => {
                // What arrived between the last look and now is still the caller's: once
                // `on_expiry` has run, a reply left in the slot would be taken for the next
                // one's.
                let mut st = channel.lock();
                if let Some(value) = ready(&mut st) {
                    return Ok(value);
                }
                let mut e = on_expiry(&mut st);
                drop(st);
                // What it waited for may sit unread behind messages nobody takes, or behind
                // our own replies the broker does not read (token rule 9).
                if let Error::Timeout { context, .. } = &mut e {
                    let held = self.inbound.load(std::sync::atomic::Ordering::SeqCst);
                    let replies = self.lock_link().replies_queued;
                    if held >= token::INBOUND_HARD_LIMIT {
                        context.push_str(&format!(
                            " (reading was paused: {} MiB of messages wait for consumers that \
                             do not take them)",
                            held >> 20
                        ));
                    } else if replies > outbound::REPLY_BACKLOG {
                        context.push_str(&format!(
                            " (reading was paused: the broker does not read; {} KiB of replies \
                             to it wait unwritten)",
                            replies >> 10
                        ));
                    }
                }
                Err(e)
            }
        }
    }

    /// Announces connection-level work to every consuming thread: bumps `conn_work`, then
    /// wakes every waiter.
    pub(crate) fn kick(&self) {
        self.conn_work
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.nudge();
    }

    /// Waits until the broker answered the `ticket`-th update-secret (see
    /// `Link::secret_updates`), at most until `deadline` (`timeout` from the call's start,
    /// for the error).
    pub(crate) fn wait_secret_update(
        &self,
        ticket: u64,
        deadline: Option<Instant>,
        timeout: Duration,
    ) -> Result<()> {
        let answered = || self.lock_link().secret_updates.1 >= ticket;
        let got = self.wait_until(deadline, || {
            if answered() {
                return Some(Ok(()));
            }
            self.lock_link().closed.clone().map(Err)
        });
        got.unwrap_or_else(|| match answered() {
            true => Ok(()),
            false => Err(Error::timeout(
                "waiting for connection.update-secret-ok",
                timeout,
            )),
        })
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
            } else {
                drop(link);
            }
            let closed = self.wait_until(deadline_after(timeout), || {
                self.lock_link().closed.is_some().then_some(())
            });
            if closed.is_none() {
                result = Err(Error::timeout("waiting for connection.close-ok", timeout));
            }
        } else {
            drop(link);
        }
        self.stop_thread(Error::ConnectionClosedByClient {
            reply_code,
            reply_text: reply_text.to_string(),
        });
        result
    }

    /// Makes the I/O thread exit (if it has not) and waits for it.
    fn stop_thread(&self, reason: Error) {
        self.lock_link().shutdown = true;
        self.wake();
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle {
            if handle.thread().id() != std::thread::current().id() {
                let _ = handle.join();
            }
        }
        self.fail(reason);
    }

    /// Marks the connection and every channel closed with `error` (first reason wins) and
    /// wakes every waiter. When recovery is on ([`set_on_lost`](Self::set_on_lost)) it is
    /// told, once; if the first reason is one it handles, the channels are marked lost
    /// instead (see `ChannelCore::lose`).
    pub(crate) fn fail(&self, error: Error) {
        let mut link = self.lock_link();
        let first = link.closed.is_none();
        let error = link.closed.get_or_insert(error).clone();
        drop(link);
        self.link_cond.notify_all();
        let on_lost = match first {
            true => self
                .on_lost
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
            false => None,
        };
        let recover = on_lost.is_some() && crate::recovery::recoverable(&error);
        let channels: Vec<_> = self.lock_channels().live.drain().map(|(_, c)| c).collect();
        for channel in channels {
            match recover {
                true => channel.lose(&error),
                false => channel.fail(&error),
            }
        }
        // The recovery starts before the waiters wake, so they find it under way.
        if let Some(on_lost) = on_lost {
            (on_lost.0)(self, &error, recover);
        }
        self.nudge();
    }

    /// Has [`fail`](Self::fail) call `on_lost` when the connection ends. Returns false (and
    /// drops it) when the connection has ended already.
    pub(crate) fn set_on_lost(&self, on_lost: OnLost) -> bool {
        *self.on_lost.lock().unwrap_or_else(|p| p.into_inner()) = Some(on_lost);
        if self.closed_error().is_some() {
            self.on_lost
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            return false;
        }
        true
    }

    /// The broker's server properties from connection.start.
    pub(crate) fn server_properties(&self) -> &FieldTable {
        &self.tuned.server_properties
    }
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}
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

/// Runs the AMQP handshake on `stream`: each wait bounded by `socket_timeout`, the whole by
/// `deadline` (here between reads; inside a TLS record's reads by the stream itself, see
/// `transport`).
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
    let settings = Settings::from(params);
    let mut hs = Handshake::new(&settings);
    loop {
        while let Some(inbound) = reader.next_frame()? {
            let frame = match inbound {
                Inbound::Frame(frame) => *frame,
                Inbound::Body(..)
                | Inbound::Deliver(..)
                | Inbound::Header(..)
                | Inbound::Ack(..) => {
                    return Err(Error::protocol(
                        crate::error::UNEXPECTED_FRAME,
                        "content frame during the handshake",
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
                // Over TLS the stream itself gives up once the deadline has passed, inside
                // a read that began with more than socket_timeout left (see `transport`).
                let after = if wait < params.socket_timeout || Instant::now() >= deadline {
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

impl From<&ConnectionParameters> for Settings {
    fn from(params: &ConnectionParameters) -> Settings {
        Settings {
            login: match &params.credentials {
                crate::params::Credentials::Plain(plain) => Login::Plain {
                    username: plain.username().into(),
                    password: plain.password().into(),
                },
                crate::params::Credentials::External(_) => Login::External,
            },
            virtual_host: params.virtual_host.clone(),
            locale: params.locale.clone(),
            client_properties: params.client_properties.clone(),
            channel_max: params.channel_max,
            frame_max: params.frame_max,
            heartbeat: params.heartbeat,
        }
    }
}
