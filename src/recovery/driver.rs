//! The `cottontail-recovery` thread: reconnects a lost connection and restores what it had
//! (see the module docs of `recovery` for who waits for it and how it ends).
//!
//! One attempt tries each parameter set in order. On a new engine it restores, in order:
//!
//! 1. every channel the connection had open, with its number: channel.open, its basic.qos
//!    settings, confirm.select, tx.select;
//! 2. the recorded topology (exchanges, queues, queue bindings, exchange bindings) on a
//!    channel of its own, so that an entity the broker refuses (it closes that channel) costs
//!    only itself: it is reported skipped and the rest goes on; a server-named queue is
//!    declared as `""` and renamed, unless it is not exclusive and a passive declare finds
//!    it still there (it outlived the connection: it keeps its name, bindings and messages);
//! 3. the consumers, each on its own channel with its own tag, once a passive declare has
//!    shown its queue exists (a consumer whose queue is gone is reported cancelled to the
//!    application, as a broker cancel would be, instead of closing its channel with 404).
//!
//! Only then does the new engine become the connection's (the swap, under the phase lock).
//! An attempt that fails part-way gives its channels back (`ChannelCore::lose`) before its
//! engine is closed, so the next attempt finds them as the loss left them.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use amq_protocol::protocol::{basic, channel, confirm, queue, AMQPClass};

use super::policy::{Entity, RecoveryEvent, RecoveryReport};
use super::topology::{ConsumerRecord, Step};
use super::{Phase, Recovery};
use crate::channel::{call, methods, wait_closed, Channel};
use crate::connection::Owner;
use crate::engine::chan::{ChannelCore, Life, Reply};
use crate::engine::{deadline_after, Core};
use crate::error::{Error, Result, ATTEMPT_ERRORS_KEPT};
use crate::options::QueueDeclareOptions;

/// Starts the recovery thread; if no thread can be started, the connection is closed for good
/// with that error.
pub(super) fn spawn(owner: Weak<Owner>, recovery: Arc<Recovery>, cause: Error) {
    let (weak, rec) = (owner.clone(), recovery.clone());
    let spawned = std::thread::Builder::new()
        .name("cottontail-recovery".into())
        .spawn(move || {
            rec.thread_started();
            let ran = std::panic::catch_unwind(AssertUnwindSafe(|| run(&weak, &rec, cause)));
            if let Err(panic) = ran {
                let message = format!(
                    "the recovery thread panicked: {}",
                    crate::error::panic_message(&*panic)
                );
                give_up(&weak, &rec, Error::StreamLost { message });
            }
            rec.thread_ended();
        });
    if let Err(e) = spawned {
        give_up(
            &owner,
            &recovery,
            Error::io("starting the recovery thread", &e),
        );
        recovery.thread_ended();
    }
}

fn run(owner: &Weak<Owner>, recovery: &Recovery, cause: Error) {
    let lost_at = Instant::now();
    let backoff = &recovery.policy.backoff;
    // What every call gets if recovery gives up: the loss, or the attempts' errors.
    let mut failed = Failed {
        cause,
        count: 0,
        errors: VecDeque::new(),
    };
    let mut attempt = 0u32;
    loop {
        attempt = attempt.saturating_add(1);
        if !backoff.should_try(attempt, lost_at.elapsed()) {
            give_up(owner, recovery, failed.into_error());
            return;
        }
        if attempt > 1 && recovery.sleep(backoff.delay(attempt - 1, random())) {
            return;
        }
        let Some(owner) = owner.upgrade() else {
            return;
        };
        match attempt_once(&owner, recovery, attempt, lost_at) {
            Ok(()) => return,
            Err(error) => {
                log::warn!("recovery attempt {attempt} failed: {error}");
                owner.push_recovery_event(RecoveryEvent::AttemptFailed {
                    attempt,
                    error: error.clone(),
                });
                failed.push(error);
            }
        }
        if recovery.closed_error().is_some() {
            return;
        }
    }
}

/// The failed attempts of a recovery, for the error it gives up with.
struct Failed {
    /// The loss, for a recovery that gives up before any attempt.
    cause: Error,
    /// Connection attempts that failed (one per host tried in each attempt).
    count: usize,
    /// Their errors, the last [`ATTEMPT_ERRORS_KEPT`].
    errors: VecDeque<Error>,
}

impl Failed {
    /// Counts an attempt's error (an [`Error::AllAttemptsFailed`], one host each, is counted
    /// and kept as its hosts' errors).
    fn push(&mut self, error: Error) {
        let errors = match error {
            Error::AllAttemptsFailed { attempts, .. } => attempts,
            error => vec![error],
        };
        for error in errors {
            self.count += 1;
            if self.errors.len() >= ATTEMPT_ERRORS_KEPT {
                self.errors.pop_front();
            }
            self.errors.push_back(error);
        }
    }

    /// [`Error::AllAttemptsFailed`], a connection error whatever the attempts' errors were
    /// (an entity the broker refused in each, a broker that never answered: a `ChannelClosed`
    /// or a `Timeout` alone would read as one channel's or one call's trouble).
    fn into_error(self) -> Error {
        if self.count == 0 {
            return self.cause;
        }
        Error::AllAttemptsFailed {
            failed: self.count,
            attempts: self.errors.into(),
        }
    }
}

/// Recovery ends for good with `error`: every call gets it from now on.
fn give_up(owner: &Weak<Owner>, recovery: &Recovery, error: Error) {
    log::error!("recovery gave up: {error}");
    // The event first: whoever sees the connection closed finds it queued.
    if let Some(owner) = owner.upgrade() {
        owner.close_lost_channels(&error);
        owner.push_recovery_event(RecoveryEvent::Failed {
            cause: error.clone(),
        });
    }
    recovery.close(error);
}

/// A number in `0.0..1.0` for the backoff's jitter.
fn random() -> f64 {
    (uuid::Uuid::new_v4().as_u128() >> 75) as f64 / (1u64 << 53) as f64
}

/// One attempt: each parameter set in order until one is restored and in place.
fn attempt_once(
    owner: &Arc<Owner>,
    recovery: &Recovery,
    attempt: u32,
    lost_at: Instant,
) -> Result<()> {
    let generation = recovery.generation() + 1;
    let mut errors = Vec::new();
    for params in &recovery.hosts() {
        if recovery.closed_error().is_some() {
            return Ok(());
        }
        let core = match Core::open(params.clone(), generation) {
            Ok(core) => core,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let mut restored = Vec::new();
        let locked_ends = lost_at.elapsed() < lock_grace(owner.core().tuned.heartbeat);
        let restoring = std::panic::catch_unwind(AssertUnwindSafe(|| {
            restore(
                owner,
                recovery,
                &core,
                generation,
                locked_ends,
                &mut restored,
            )
        }));
        // A panic (a callback's `Drop`, say): what the attempt opened is given back and
        // closed, then the thread ends the recovery (`spawn`).
        let restoring = restoring.unwrap_or_else(|panic| {
            let error = Error::StreamLost {
                message: "the recovery thread panicked".into(),
            };
            abandon(&core, &restored, &error);
            std::panic::resume_unwind(panic)
        });
        match restoring {
            Ok((mut report, open)) => {
                report.attempt = attempt;
                report.took = lost_at.elapsed();
                install(owner, recovery, core, restored, report);
                // Only now: a handle dropped meanwhile closes its channel on the new engine.
                drop(open);
                return Ok(());
            }
            Err(e) => {
                abandon(&core, &restored, &e);
                // The application closed the connection: its channels are closed for good.
                if let Some(closed) = recovery.closed_error() {
                    for channel in &restored {
                        channel.fail(&closed);
                    }
                    return Ok(());
                }
                errors.push(e);
            }
        }
    }
    Err(match errors.len() {
        1 => errors.remove(0),
        failed => Error::AllAttemptsFailed {
            failed,
            attempts: errors,
        },
    })
}

/// Gives the channels an attempt restored back to the loss's state, then closes its engine.
fn abandon(core: &Core, restored: &[Arc<ChannelCore>], error: &Error) {
    core.lock_channels().live.clear();
    for channel in restored {
        channel.lose(error);
    }
    let timeout = core.params.rpc_timeout.min(Duration::from_secs(1));
    if let Err(e) = core.close(200, "recovery attempt abandoned", timeout) {
        log::debug!("closing an abandoned recovery attempt: {e}");
    }
}

/// Makes the restored engine the connection's, unless the application closed it meanwhile.
fn install(
    owner: &Arc<Owner>,
    recovery: &Recovery,
    core: Arc<Core>,
    restored: Vec<Arc<ChannelCore>>,
    report: RecoveryReport,
) {
    log::warn!(
        "connection recovered to {}:{} after {:?} (attempt {}; {} renamed, {} skipped)",
        report.host,
        report.port,
        report.took,
        report.attempt,
        report.renamed.len(),
        report.skipped.len()
    );
    let generation = report.generation;
    // Queued before the phase changes: whoever sees the connection recovered finds it.
    if recovery.closed_error().is_none() {
        owner.push_recovery_event(RecoveryEvent::Recovered(report));
    }
    let mut state = recovery.lock();
    if let Phase::Closed(e) = &state.phase {
        let e = e.clone();
        drop(state);
        abandon(&core, &restored, &e);
        for channel in restored {
            channel.fail(&e);
        }
        return;
    }
    // Before the swap: a consuming thread then finds the old events ahead of the new ones.
    let carried = carry_blocked_events(&owner.core(), &core);
    let old = std::mem::replace(
        &mut *owner.current.write().unwrap_or_else(|p| p.into_inner()),
        core.clone(),
    );
    state.phase = Phase::Connected;
    state.generation = generation;
    recovery.changed(state);
    if carried {
        owner.work_added();
    }
    // A thread still waiting on the lost engine looks again, and moves to this one.
    old.nudge();
    // Lost between its hook and the swap: recover again.
    if let Some(e) = core.closed_error() {
        let recover = super::recoverable(&e);
        owner.connection_lost(&core, &e, recover);
    }
}

/// The blocked/unblocked events of the lost engine that the callbacks have not seen go on
/// from the new one, before its own; a block the loss ended is reported unblocked (the new
/// connection starts unblocked; the broker blocks it again if its alarm lasts), so an
/// application that paused its publishers on the blocked callback hears that it may resume.
/// True if there were any (the consuming threads are to be told).
fn carry_blocked_events(old: &Core, new: &Core) -> bool {
    let mut carried = {
        let mut link = old.lock_link();
        let mut carried = std::mem::take(&mut link.blocked_events);
        if link.blocked_since.is_some() {
            carried.push_back(None);
        }
        carried
    };
    if carried.is_empty() {
        return false;
    }
    let mut link = new.lock_link();
    carried.append(&mut link.blocked_events);
    for event in carried {
        link.push_blocked_event(event);
    }
    true
}

/// Whether an error ends the attempt (the engine is unusable) rather than one channel or
/// entity. So does 405 RESOURCE_LOCKED while `locked_ends` (see [`lock_grace`]).
fn ends_attempt(e: &Error, locked_ends: bool) -> bool {
    e.is_connection_error()
        || matches!(e, Error::Timeout { .. })
        || (locked_ends && e.reply_code() == Some(crate::error::RESOURCE_LOCKED))
}

/// How long after the loss a 405 RESOURCE_LOCKED ends an attempt: the broker may still hold
/// our lost connection's exclusive queues until it notices the loss (two of its heartbeat
/// intervals, plus slack; a minute without heartbeats). Later the queue is another
/// connection's: the entity is skipped (a consumer of it reported cancelled) and the rest
/// recovered, so that one queue does not hold the whole connection back for good.
fn lock_grace(heartbeat_secs: u16) -> Duration {
    match heartbeat_secs {
        0 => Duration::from_secs(60),
        secs => Duration::from_secs(2 * u64::from(secs) + 5),
    }
}

/// Restores channels, topology and consumers on `core` (module docs); the user channels it
/// put in `core`'s table go in `restored`.
fn restore(
    owner: &Arc<Owner>,
    recovery: &Recovery,
    core: &Arc<Core>,
    generation: u64,
    locked_ends: bool,
    restored: &mut Vec<Arc<ChannelCore>>,
) -> Result<(RecoveryReport, Vec<Channel>)> {
    if !core.set_on_lost(Owner::on_lost_hook(Arc::downgrade(owner))) {
        return Err(core.closed_error().unwrap_or(Error::StreamLost {
            message: "the new connection ended at once".into(),
        }));
    }
    let mut report = RecoveryReport {
        generation,
        attempt: 0,
        host: core.params.host.clone(),
        port: core.params.port,
        took: Duration::ZERO,
        renamed: Vec::new(),
        skipped: Vec::new(),
        closed_channels: Vec::new(),
    };
    let mut channels = owner.live_channels();
    channels.sort_by_key(Channel::channel_number);
    let mut open = Vec::new();
    for channel in channels {
        still_wanted(recovery)?;
        let chan = channel.inner.core.clone();
        let unusable = if chan.id > core.tuned.channel_max {
            Some(Error::InvalidChannelNumber {
                number: chan.id,
                reason: format!(
                    "above the new connection's channel_max {}",
                    core.tuned.channel_max
                ),
            })
        } else if channel.lock_settings().tx {
            // Its transaction went with the connection: a commit on a new channel would
            // report success for publishes the broker never kept.
            chan.lock().closed_error()
        } else {
            None
        };
        drop_stale_deliveries(&channel);
        {
            // Checked and changed under one lock: a close by the application meanwhile wins.
            let mut st = chan.lock();
            let Life::Lost(_) = st.life else {
                continue;
            };
            if let Some(e) = unusable {
                st.life = Life::Closed(e.clone());
                report.closed_channels.push((chan.id, e));
                continue;
            }
            st.life = Life::Open;
            st.generation = generation;
            // What it kept across the loss counts on the new connection.
            st.remeter_all(&core.inbound, &core.returns_kept);
        }
        core.lock_channels().live.insert(chan.id, chan.clone());
        restored.push(chan.clone());
        match reopen(core, &channel) {
            Ok(()) => open.push(channel),
            Err(e) if ends_attempt(&e, locked_ends) => return Err(e),
            Err(e) => {
                chan.fail(&e);
                report.closed_channels.push((chan.id, e));
            }
        }
    }
    let mut aux = AuxChannel::open(core, locked_ends)?;
    let plan = {
        // Only the consumers the open channels still have (a channel number reused after a
        // close must not bring its old consumers back).
        // Nor one whose cancel (by the broker, or by an earlier attempt) is still to be
        // handled: the consuming thread removes it when it handles the cancel. Nor one the
        // application is cancelling (its cancel waits for this recovery, or gave up).
        let live: Vec<(u64, String)> = open
            .iter()
            .flat_map(|c| {
                let instance = c.inner.instance;
                let cancelled = c.inner.core.lock().cancelled.clone();
                c.lock_consumers()
                    .iter()
                    .filter(|(tag, entry)| !cancelled.contains(tag) && entry.active())
                    .map(|(tag, _)| (instance, tag.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut topology = recovery.lock_topology();
        topology.keep_consumers(&live);
        topology.plan()
    };
    let mut consumers = Vec::new();
    for step in plan {
        still_wanted(recovery)?;
        match step {
            Step::Consumer(tag, record) => consumers.push((tag, record)),
            step => declare(core, recovery, &mut aux, step, &mut report)?,
        }
    }
    for (tag, mut record) in consumers {
        still_wanted(recovery)?;
        record.queue = recovery.current_name(&record.queue);
        let Some(channel) = open.iter().find(|c| c.inner.instance == record.instance) else {
            continue;
        };
        consume(
            core,
            recovery,
            &mut aux,
            channel,
            &tag,
            &record,
            &mut report,
        )?;
    }
    aux.close(core);
    Ok((report, open))
}

/// Ends the attempt (`attempt_once` gives back what it restored) once the application has
/// closed the connection: nothing more is declared or consumed for it.
fn still_wanted(recovery: &Recovery) -> Result<()> {
    match recovery.closed_error() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Drops the manual-ack deliveries a channel holds from before the recovery (queued on the
/// channel or for an iterator): they cannot be acked any more, and the broker delivers them
/// again. Auto-acked ones stay, to be handed out.
fn drop_stale_deliveries(channel: &Channel) {
    // Lock order: the consumer table, released, then the channel's state.
    let manual: Vec<String> = {
        let mut consumers = channel.lock_consumers();
        consumers
            .iter_mut()
            .filter(|(_, entry)| !entry.auto_ack())
            .map(|(tag, entry)| {
                entry.drop_pending();
                tag.clone()
            })
            .collect()
    };
    channel
        .inner
        .core
        .lock()
        .deliveries
        .retain(|held| !manual.iter().any(|tag| tag == held.consumer_tag()));
}

/// Opens a user channel again on `core` with its settings (module docs, step 1).
fn reopen(core: &Core, channel: &Channel) -> Result<()> {
    let chan = &channel.inner.core;
    call(
        core,
        chan,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        "channel.open",
    )?;
    let settings = channel.lock_settings().clone();
    for qos in settings.qos.iter().flatten() {
        let method = AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: qos.prefetch_count,
            global: qos.global_qos,
        }));
        call(core, chan, method, "basic.qos")?;
        chan.lock().acks.set_prefetch(qos.prefetch_count);
    }
    if chan.lock().confirms.is_some() {
        let method = AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
            nowait: false,
        }));
        call(core, chan, method, "confirm.select")?;
    }
    // A channel in transaction mode is not opened again (`restore`).
    log::debug!("channel {} open again", chan.id);
    Ok(())
}

/// The channel the topology is declared on (module docs, step 2): a number no user channel
/// has, opened again whenever the broker closes it for an entity it refused.
struct AuxChannel {
    channel: Arc<ChannelCore>,
    /// A 405 RESOURCE_LOCKED ends the attempt (see [`lock_grace`]).
    locked_ends: bool,
}

impl AuxChannel {
    fn open(core: &Core, locked_ends: bool) -> Result<AuxChannel> {
        let channel = {
            let mut table = core.lock_channels();
            let id = table
                .free_number(core.tuned.channel_max, Instant::now())
                .map_err(|_| Error::NoFreeChannels {
                    channel_max: core.tuned.channel_max,
                })?;
            let channel = Arc::new(ChannelCore::new(id));
            table.live.insert(id, channel.clone());
            channel
        };
        call(
            core,
            &channel,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
            "channel.open",
        )?;
        Ok(AuxChannel {
            channel,
            locked_ends,
        })
    }

    /// Runs `method`; a channel error (the broker refused it and closed the channel) is
    /// returned as `Ok(Err(e))` after the channel is opened again. One refused before it was
    /// sent (too large for the new connection's `frame_max`) leaves the channel as it is.
    fn call(&mut self, core: &Core, method: AMQPClass, what: &str) -> Result<Result<Reply>> {
        match call(core, &self.channel, method, what) {
            Ok(reply) => Ok(Ok(reply)),
            Err(e) if ends_attempt(&e, self.locked_ends) => Err(e),
            Err(e @ Error::InvalidArgument(_)) => Ok(Err(e)),
            Err(e) => {
                self.wait_closed(core);
                *self = AuxChannel::open(core, self.locked_ends)?;
                Ok(Err(e))
            }
        }
    }

    /// Waits until the broker's close of the channel is routed (its number freed), briefly.
    fn wait_closed(&self, core: &Core) {
        let briefly = Duration::from_secs(1);
        let _ = wait_closed(core, &self.channel, deadline_after(briefly), briefly);
    }

    fn close(self, core: &Core) {
        let timeout = core.params.rpc_timeout;
        let closed = crate::channel::begin_close(core, &self.channel, 200, "recovery done")
            .and_then(|_| wait_closed(core, &self.channel, deadline_after(timeout), timeout));
        if let Err(e) = closed {
            log::debug!("closing the recovery's channel: {e}");
        }
    }
}

/// Asks the topology filter about `entity`: false, and `entity` reported skipped (with the
/// filter's panic, if it panicked), when it is not to be declared again.
fn kept(recovery: &Recovery, entity: &Entity, report: &mut RecoveryReport) -> bool {
    match recovery.policy.keeps(entity) {
        Ok(true) => true,
        Ok(false) => {
            report.skipped.push((entity.clone(), None));
            false
        }
        Err(e) => {
            log::error!("recovery: skipping {entity}: {e}");
            report.skipped.push((entity.clone(), Some(e)));
            false
        }
    }
}

/// Declares one entity again (module docs, step 2).
fn declare(
    core: &Core,
    recovery: &Recovery,
    aux: &mut AuxChannel,
    step: Step,
    report: &mut RecoveryReport,
) -> Result<()> {
    // Recorded declares are never passive (`Topology` records none).
    let (entity, method, what) = match &step {
        Step::Exchange(name, options) => (
            Entity::Exchange { name: name.clone() },
            methods::exchange_declare(name, options)?,
            "exchange.declare",
        ),
        Step::Queue(name, record) => (
            Entity::Queue {
                name: name.clone(),
                server_named: record.server_named,
            },
            methods::queue_declare(if record.server_named { "" } else { name }, &record.options)?,
            "queue.declare",
        ),
        Step::QueueBinding(binding) => {
            // Its queue may have been renamed a step before.
            let queue = recovery.current_name(&binding.queue);
            (
                Entity::QueueBinding {
                    queue: queue.clone(),
                    exchange: binding.exchange.clone(),
                    routing_key: binding.routing_key.clone(),
                },
                methods::queue_bind(
                    &queue,
                    &binding.exchange,
                    &binding.routing_key,
                    &binding.arguments,
                )?,
                "queue.bind",
            )
        }
        Step::ExchangeBinding(binding) => (
            Entity::ExchangeBinding {
                destination: binding.destination.clone(),
                source: binding.source.clone(),
                routing_key: binding.options.routing_key.clone(),
            },
            methods::exchange_bind(&binding.destination, &binding.source, &binding.options)?,
            "exchange.bind",
        ),
        Step::Consumer(..) => return Ok(()),
    };
    if !kept(recovery, &entity, report) {
        return Ok(());
    }
    // A server-named queue that outlived the connection is kept: declaring "" would leave it
    // bound and filling, unseen.
    if let Step::Queue(name, record) = &step {
        if record.server_named && !record.options.exclusive && still_there(core, aux, name)? {
            return Ok(());
        }
    }
    match aux.call(core, method, what)? {
        Ok(Reply::Method(AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)))) => {
            if let Entity::Queue {
                name,
                server_named: true,
            } = &entity
            {
                if ok.queue.as_str() != name {
                    log::info!("server-named queue {name} is now {}", ok.queue);
                    // Its bindings and consumers follow, in the steps after this one.
                    recovery.lock_topology().renamed(name, ok.queue.as_str());
                    report.renamed.push((name.clone(), ok.queue.to_string()));
                }
            }
        }
        Ok(_) => {}
        Err(e) => {
            log::warn!("recovery: the broker refused {entity}: {e}");
            report.skipped.push((entity, Some(e)));
        }
    }
    Ok(())
}

/// Whether queue `name` exists (a passive declare on the recovery's channel, opened again if
/// the broker refused it).
fn still_there(core: &Core, aux: &mut AuxChannel, name: &str) -> Result<bool> {
    let passive = methods::queue_declare(
        name,
        &QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
    )?;
    Ok(aux.call(core, passive, "queue.declare")?.is_ok())
}

/// Whether the channel still has consumer `tag`, to recover (not being cancelled).
fn wanted(channel: &Channel, tag: &str) -> bool {
    channel
        .lock_consumers()
        .get(tag)
        .is_some_and(|entry| entry.active())
}

/// Registers a consumer again on its channel (module docs, step 3).
fn consume(
    core: &Core,
    recovery: &Recovery,
    aux: &mut AuxChannel,
    channel: &Channel,
    tag: &str,
    record: &ConsumerRecord,
    report: &mut RecoveryReport,
) -> Result<()> {
    let entity = Entity::Consumer {
        tag: tag.to_owned(),
        queue: record.queue.clone(),
        channel: record.channel,
    };
    let chan = &channel.inner.core;
    let mut refused = None;
    if !kept(recovery, &entity, report) {
        chan.lock().push_cancel(tag.to_owned());
        return Ok(());
    }
    // Direct reply-to is a pseudo-queue: nothing to declare.
    if !record.queue.starts_with("amq.rabbitmq.reply-to") {
        let passive = methods::queue_declare(
            &record.queue,
            &QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
        )?;
        if let Err(e) = aux.call(core, passive, "queue.declare")? {
            refused = Some(e);
        }
    }
    if refused.is_none() {
        // The application may have closed the connection, or begun to cancel this consumer,
        // while the filter or the passive declare ran.
        still_wanted(recovery)?;
        if !wanted(channel, tag) {
            return Ok(());
        }
        let options = &record.options;
        let method = methods::consume(
            &record.queue,
            tag,
            options.auto_ack,
            options.exclusive,
            &options.arguments,
        )?;
        match call(core, chan, method, "basic.consume") {
            Ok(_) if !wanted(channel, tag) => {
                // Cancelled meanwhile: that cancel may have given up waiting for this
                // recovery, so the consumer is cancelled here (a second cancel is harmless).
                return match call(core, chan, methods::cancel(tag)?, "basic.cancel") {
                    Err(e) if ends_attempt(&e, aux.locked_ends) => Err(e),
                    _ => Ok(()),
                };
            }
            Ok(_) => return Ok(()),
            Err(e) if ends_attempt(&e, aux.locked_ends) => return Err(e),
            // Refused before it was sent (too large for the new connection): the channel is
            // open as it was.
            Err(e @ Error::InvalidArgument(_)) => refused = Some(e),
            Err(e) => {
                // The broker closed the consumer's channel: the application sees it closed.
                report.closed_channels.push((chan.id, e.clone()));
                refused = Some(e);
            }
        }
    }
    let e = refused.expect("set above");
    log::warn!("recovery: consumer {tag} not registered again: {e}");
    // As if the broker had cancelled it: the cancel callbacks run, its iterator ends.
    chan.lock().push_cancel(tag.to_owned());
    report.skipped.push((entity, Some(e)));
    Ok(())
}
