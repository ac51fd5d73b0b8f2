//! Automatic recovery: when a connection with a [`RecoveryPolicy`] is lost, a
//! `cottontail-recovery` thread opens a new engine (`engine::Core`), opens every channel again
//! with its number, declares the recorded topology again, registers the consumers again and
//! makes the new engine the connection's current one.
//!
//! # The parts
//!
//! - [`topology`] and [`backoff`] are sans-IO: what to declare again and in which order, how
//!   long to wait between attempts and when to give up.
//! - This file: the connection's recovery state ([`Recovery`]) and how calls wait for it.
//! - `driver`: the recovery thread.
//!
//! # Who waits, who wakes them, by when
//!
//! The connection's handles share one `Owner` (see `connection`), which holds the current
//! engine and, with recovery on, a [`Recovery`]: its [`Phase`] behind a mutex, and a condvar.
//!
//! - **The loss.** The engine that meets a recoverable error (see [`recoverable`]) marks its
//!   channels lost (`Life::Lost`: calls in flight fail with the error, see
//!   `ChannelCore::lose`) and tells the owner ([`Owner::connection_lost`]); if that engine is
//!   the current one and the phase is `Connected`, the phase becomes `Recovering` and the
//!   recovery thread starts. Only one runs at a time: it is started only from `Connected`.
//! - **Calls made while recovering** ([`Owner::ready_core`]) wait on the condvar until the
//!   phase leaves `Recovering` (or, `Connected` on an engine already closed, until that
//!   engine's `connection_lost` has moved it), at the latest until their own deadline (methods
//!   and acks: the `rpc_timeout`; publishes: their deadline or the `rpc_timeout`; consuming:
//!   the iterator's inactivity timeout, or none for `start_consuming`). An ack of a delivery
//!   from before the loss does not wait: it is `Error::StaleDeliveryTag` at once. The recovery
//!   thread notifies at every change (an event, the new engine in place, giving up).
//! - **A consuming thread** (inside `process_data_events`, `sleep`, `start_consuming` or a
//!   `consume()` iteration) waits the same way, and runs the connection's callbacks (recovery
//!   events, timers, threadsafe callbacks) at first and at every wake-up, as it does while
//!   connected. Besides the above, `Owner::work_added` wakes it (a timer, a threadsafe
//!   callback or a recovery event added, from any thread), and it sleeps at most until the
//!   earliest timer falls due: timers and threadsafe callbacks run on time while recovering.
//!   Its own deadline passing is [`Waited::TimedOut`], never an error, so a callback's error
//!   (an `Error::Timeout` included) ends its call as it is.
//! - **The recovery thread** sleeps between attempts on the same condvar, woken early by a
//!   close of the connection; it holds the owner only weakly, so dropping every handle ends
//!   it too (at its next wake-up, at most the policy's `max_delay`). An attempt looks for a
//!   close before each step (each channel, declare and consumer) and stops there, giving
//!   back and closing what it had opened; the application's close waits for that
//!   ([`Recovery::wait_thread_ended`], at most its `rpc_timeout`), woken by the thread's end.
//! - **The swap.** The new engine becomes current under the phase lock, in the same step
//!   that sets the phase to `Connected`: a call that gets the new engine finds the channels
//!   open on it. Nothing else changes the current engine.
//!
//! Lock order: the phase lock, then the engine slot (`Owner::current`). Neither is held across
//! a wait on the network or a callback.

pub(crate) mod backoff;
mod driver;
pub(crate) mod policy;
pub(crate) mod topology;

use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Instant;

pub use policy::{Entity, RecoveryEvent, RecoveryPolicy, RecoveryReport};

use crate::connection::Owner;
use crate::engine::chan::Life;
use crate::engine::{Core, OnLost};
use crate::error::{Error, Result, CONNECTION_FORCED, INTERNAL_ERROR};
use crate::params::ConnectionParameters;
use topology::Topology;

/// Whether a connection that ended with `error` is one recovery brings back: the network
/// (socket errors, EOF, TLS, heartbeat timeouts) and the broker closing it with 320
/// CONNECTION_FORCED (a node shutting down, `rabbitmqctl close_connection`) or 541
/// INTERNAL_ERROR. Not: a close by the application, a refused login or vhost, a protocol error
/// (ours or the peer's: the same code would meet it again), a blocked-connection timeout.
pub(crate) fn recoverable(error: &Error) -> bool {
    match error {
        Error::Io { .. }
        | Error::StreamLost { .. }
        | Error::Tls { .. }
        | Error::HeartbeatTimeout { .. } => true,
        Error::ConnectionClosed { reply_code, .. } => {
            matches!(*reply_code, CONNECTION_FORCED | INTERNAL_ERROR)
        }
        _ => false,
    }
}

/// Where the connection is.
#[derive(Debug)]
pub(crate) enum Phase {
    /// The current engine is the one to use (it may have just failed: then the phase
    /// changes as soon as its loss is handled).
    Connected,
    /// The recovery thread is at work; calls wait.
    Recovering,
    /// For good: closed by the application, or recovery gave up. Every call gets this error.
    Closed(Error),
}

#[derive(Debug)]
struct State {
    phase: Phase,
    /// Recoveries so far.
    generation: u64,
    /// Bumped at every change a waiter may look at (phase, event, new connection work), under
    /// the lock.
    changes: u64,
    /// Recovery threads running: counted before one starts, uncounted as it ends. Usually
    /// one; two for a moment when a new engine is lost as it is put in place (its loss starts
    /// the next thread before the first has ended). A close waits for none to be left
    /// ([`Recovery::wait_thread_ended`]).
    running: usize,
}

thread_local! {
    /// Set on recovery threads: a close there (the thread dropped the last handle) does not
    /// wait for itself.
    static ON_RECOVERY_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A connection's recovery: its policy and host list, its phase, and the topology it
/// records (module docs).
#[derive(Debug)]
pub(crate) struct Recovery {
    pub(crate) policy: RecoveryPolicy,
    /// The parameter sets given to `Connection::open`, tried in order at every attempt (the
    /// password follows `update_secret`).
    hosts: Mutex<Vec<ConnectionParameters>>,
    state: Mutex<State>,
    cond: Condvar,
    pub(crate) topology: Mutex<Topology>,
}

impl Recovery {
    pub(crate) fn new(policy: RecoveryPolicy, hosts: Vec<ConnectionParameters>) -> Recovery {
        Recovery {
            policy,
            hosts: Mutex::new(hosts),
            state: Mutex::new(State {
                phase: Phase::Connected,
                generation: 0,
                changes: 0,
                running: 0,
            }),
            cond: Condvar::new(),
            topology: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn lock_topology(&self) -> MutexGuard<'_, Topology> {
        self.topology.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes every waiter after a change.
    fn changed(&self, mut state: MutexGuard<'_, State>) {
        state.changes += 1;
        drop(state);
        self.cond.notify_all();
    }

    /// Sleeps `delay` unless the connection is closed meanwhile; true if it was.
    fn sleep(&self, delay: std::time::Duration) -> bool {
        self.wait_for(delay, |state| matches!(state.phase, Phase::Closed(_)))
    }

    /// Waits until `done` holds (checked at every change), at most `timeout`; whether it does.
    fn wait_for(&self, timeout: std::time::Duration, done: impl Fn(&State) -> bool) -> bool {
        let until = crate::engine::saturating_deadline(timeout);
        let mut state = self.lock();
        loop {
            if done(&state) {
                return true;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .cond
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// The parameter sets to try, in order.
    pub(crate) fn hosts(&self) -> Vec<ConnectionParameters> {
        self.hosts.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// `Connection::update_secret`: the next attempts log in with `secret`; one too large for
    /// their login (`handshake::start_ok`) is refused and nothing changes.
    pub(crate) fn update_secret(&self, secret: &str) -> Result<()> {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        let mut updated = hosts.clone();
        for params in &mut updated {
            if let crate::params::Credentials::Plain(plain) = &params.credentials {
                let username = plain.username().to_owned();
                params.credentials = crate::params::Credentials::Plain(
                    crate::params::PlainCredentials::new(username, secret),
                );
                // A secret the next login could not send is refused now, not at the recovery.
                crate::protocol::handshake::start_ok(&crate::protocol::handshake::Settings::from(
                    &*params,
                ))?;
            }
        }
        *hosts = updated;
        Ok(())
    }

    /// Wakes every waiter (a recovery event, a timer or a threadsafe callback was queued).
    pub(crate) fn notify(&self) {
        self.changed(self.lock());
    }

    /// The application closed the connection: recovery stops, for good.
    pub(crate) fn close(&self, error: Error) {
        let mut state = self.lock();
        if !matches!(state.phase, Phase::Closed(_)) {
            state.phase = Phase::Closed(error);
        }
        self.changed(state);
    }

    /// Runs on a recovery thread as it starts.
    fn thread_started(&self) {
        ON_RECOVERY_THREAD.with(|on| on.set(true));
    }

    /// Runs on a recovery thread as it ends (or where it could not be started).
    fn thread_ended(&self) {
        let mut state = self.lock();
        state.running = state.running.saturating_sub(1);
        self.changed(state);
    }

    /// Waits until no recovery thread is left, at most `timeout` (one stops at its next step
    /// once the connection is closed: within one broker round trip, or the `rpc_timeout` of
    /// the call it is in), unless called on a recovery thread (it dropped the last handle).
    /// So once the application's close returns, the recovery has stopped and given back or
    /// closed what it had opened.
    pub(crate) fn wait_thread_ended(&self, timeout: std::time::Duration) {
        if ON_RECOVERY_THREAD.with(|on| on.get()) {
            return;
        }
        if !self.wait_for(timeout, |state| state.running == 0) {
            log::warn!("the recovery thread is still at work after {timeout:?}");
        }
    }

    /// Recoveries so far.
    pub(crate) fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// True while the recovery thread is at work.
    pub(crate) fn is_recovering(&self) -> bool {
        matches!(self.lock().phase, Phase::Recovering)
    }

    /// The error every call gets, once closed for good.
    pub(crate) fn closed_error(&self) -> Option<Error> {
        match &self.lock().phase {
            Phase::Closed(e) => Some(e.clone()),
            _ => None,
        }
    }

    /// The name a queue has now (`name` unless a recovery renamed it).
    pub(crate) fn current_name(&self, name: &str) -> String {
        self.lock_topology().current_name(name).to_owned()
    }
}

/// How [`Owner::wait_recovered`] ended, when nothing failed.
#[derive(Debug)]
pub(crate) enum Waited {
    /// The connection is usable: its current engine.
    Ready(Arc<Core>),
    /// The wait's own deadline passed first: the [`Error::Timeout`] for a caller that reports
    /// it (a consuming call returns or yields nothing instead).
    TimedOut(Error),
}

impl Waited {
    /// The engine, or the timeout as an error.
    pub(crate) fn ready(self) -> Result<Arc<Core>> {
        match self {
            Waited::Ready(core) => Ok(core),
            Waited::TimedOut(e) => Err(e),
        }
    }
}

impl Owner {
    /// The connection's current engine (it may be a lost one while recovering).
    pub(crate) fn core(&self) -> Arc<Core> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The current engine, once it is usable: at once, unless the connection is recovering;
    /// then it waits for the recovery (module docs), at most until `deadline()` (computed only
    /// then), and gives [`Error::Timeout`] past it, or the error that closed the connection
    /// for good.
    pub(crate) fn ready_core(
        &self,
        deadline: impl FnOnce() -> Option<Instant>,
    ) -> Result<Arc<Core>> {
        let Some(recovery) = &self.recovery else {
            return Ok(self.core());
        };
        self.wait_recovered(recovery, deadline, || Ok(None))?
            .ready()
    }

    /// Waits while the connection recovers (see [`ready_core`](Self::ready_core)), running
    /// `between` at first and after every change (a consuming thread runs the connection's
    /// callbacks there, see `Owner::run_callbacks_while_recovering`), and again by the time
    /// it returns (the next timer), if it returns one. `between`'s error ends the wait as it
    /// is, as does the error that closed the connection for good; the wait's own deadline
    /// passing is [`Waited::TimedOut`]. Otherwise the current engine, open.
    pub(crate) fn wait_recovered(
        &self,
        recovery: &Recovery,
        deadline: impl FnOnce() -> Option<Instant>,
        mut between: impl FnMut() -> Result<Option<Instant>>,
    ) -> Result<Waited> {
        let mut deadline = Some(deadline);
        let mut until = None;
        let started = Instant::now();
        loop {
            let (seen, connected) = {
                let state = recovery.lock();
                match &state.phase {
                    Phase::Connected => (state.changes, true),
                    Phase::Closed(e) => return Err(e.clone()),
                    Phase::Recovering => (state.changes, false),
                }
            };
            // Connected to an engine that has ended: its hook (`connection_lost`, which
            // `Core::fail` runs right after it marks the engine closed) has yet to say whether
            // it recovers or closes for good, and changes the phase when it does: wait.
            if connected {
                let core = self.core();
                if core.closed_error().is_none() {
                    return Ok(Waited::Ready(core));
                }
            }
            let again = between()?;
            if let Some(deadline) = deadline.take() {
                until = deadline();
            }
            let mut state = recovery.lock();
            while state.changes == seen {
                let now = Instant::now();
                if let Some(at) = until.filter(|at| *at <= now) {
                    return Ok(Waited::TimedOut(Error::Timeout {
                        context: "waiting for the connection to recover".into(),
                        after: at.saturating_duration_since(started),
                    }));
                }
                if again.is_some_and(|at| at <= now) {
                    break;
                }
                let timeout = [until, again]
                    .into_iter()
                    .flatten()
                    .min()
                    .map_or(std::time::Duration::from_secs(3600), |at| at - now);
                state = recovery
                    .cond
                    .wait_timeout(state, timeout)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        }
    }

    /// Records in the topology what the broker confirmed, when recovery is on.
    pub(crate) fn record(&self, f: impl FnOnce(&mut Topology)) {
        if let Some(recovery) = &self.recovery {
            f(&mut recovery.lock_topology());
        }
    }

    /// What the engine `core` calls when it ends (see `Core::fail`): if `core` is the
    /// current engine and the connection was connected, starts the recovery thread
    /// (`recover`: a loss recovery handles) or closes the connection for good; otherwise (an
    /// engine the recovery thread is still setting up, a loss already handled, the
    /// application's close) does nothing.
    pub(crate) fn connection_lost(self: &Arc<Self>, core: &Core, error: &Error, recover: bool) {
        let Some(recovery) = &self.recovery else {
            return;
        };
        let mut state = recovery.lock();
        let current = std::ptr::eq(Arc::as_ptr(&self.core()), core);
        if !current || !matches!(state.phase, Phase::Connected) {
            return;
        }
        if !recover {
            log::warn!("connection closed ({error}): not a loss recovery handles");
            drop(state);
            // The event first: whoever sees the connection closed finds it queued.
            self.push_recovery_event(RecoveryEvent::Failed {
                cause: error.clone(),
            });
            recovery.close(error.clone());
            return;
        }
        log::warn!("connection lost ({error}): recovering");
        state.phase = Phase::Recovering;
        state.running += 1;
        recovery.changed(state);
        self.push_recovery_event(RecoveryEvent::ConnectionLost {
            cause: error.clone(),
        });
        driver::spawn(Arc::downgrade(self), recovery.clone(), error.clone());
    }

    /// The hook a new engine gets, so its loss reaches [`connection_lost`](Self::connection_lost).
    pub(crate) fn on_lost_hook(owner: Weak<Owner>) -> OnLost {
        OnLost(Box::new(
            move |core: &Core, error: &Error, recover: bool| {
                if let Some(owner) = owner.upgrade() {
                    owner.connection_lost(core, error, recover);
                }
            },
        ))
    }

    /// Marks every channel still lost closed with `error` (recovery ended for good).
    pub(crate) fn close_lost_channels(&self, error: &Error) {
        for channel in self.live_channels() {
            let core = channel.core();
            let mut st = core.lock();
            if matches!(st.life, Life::Lost(_)) {
                st.life = Life::Closed(error.clone());
            }
        }
        self.core().nudge();
    }
}

impl crate::Connection {
    /// Waits until the connection is usable: at once when it is open, until the recovery
    /// finishes when it is recovering (at most `timeout`: then [`Error::Timeout`]). The error
    /// that closed it for good otherwise (closed by the application, recovery gave up, or,
    /// without recovery, the loss itself).
    pub fn wait_for_recovery(&self, timeout: std::time::Duration) -> Result<()> {
        let owner = self.owner();
        let Some(recovery) = &owner.recovery else {
            return match owner.core().closed_error() {
                Some(e) => Err(e),
                None => Ok(()),
            };
        };
        owner
            .wait_recovered(
                recovery,
                || crate::engine::deadline_after(timeout),
                || Ok(None),
            )?
            .ready()?;
        match recovery.closed_error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// True while the connection recovers from a loss (recovery on, see
    /// [`RecoveryPolicy`]).
    pub fn is_recovering(&self) -> bool {
        self.owner()
            .recovery
            .as_ref()
            .is_some_and(|r| r.is_recovering())
    }

    /// How many times the connection has recovered (0 without recovery). Deliveries carry the
    /// generation they arrived in ([`Delivery::generation`](crate::Delivery::generation)).
    pub fn recovery_generation(&self) -> u64 {
        self.owner().recovery.as_ref().map_or(0, |r| r.generation())
    }

    /// The name the queue called `name` has now: `name` itself, unless it is a server-named
    /// queue that a recovery declared again under a new name (each recovery's renames are
    /// also in its [`RecoveryEvent::Recovered`] report).
    pub fn current_queue_name(&self, name: &str) -> String {
        match &self.owner().recovery {
            Some(recovery) => recovery.current_name(name),
            None => name.to_owned(),
        }
    }
}
