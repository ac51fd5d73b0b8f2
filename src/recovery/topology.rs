//! The topology a connection declared, recorded so it can be declared again after a
//! reconnection (issue 14): exchanges, queues, queue bindings, exchange-to-exchange bindings
//! and consumers, in the order they must be recovered.
//!
//! A plain state machine: the channel methods report what the broker confirmed (a declare-ok,
//! a bind-ok, a consume-ok, a delete-ok), the recorder keeps what the broker holds, and
//! [`Topology::plan`] lists what to declare again, in order. It follows the broker's rules:
//!
//! - A passive declare records nothing (it declares nothing).
//! - Deleting a queue removes its bindings and consumers; deleting an exchange removes the
//!   bindings it is the source or destination of.
//! - An auto-delete queue goes when its last consumer is cancelled; an auto-delete exchange
//!   when its last binding as a source is removed (RabbitMQ's rules), and the recorder follows.
//! - A server-named queue (declared as `""`) is declared again as `""` and gets a new name;
//!   [`Topology::renamed`] moves its bindings and consumers to the new name, and
//!   [`Topology::current_name`] maps the old name to the new one.
//! - Exclusive queues are recorded like any other: the broker deleted them with the old
//!   connection, and the new connection declares them again.
//!
//! The channel methods feed it (`Owner::record`, only with recovery on) and the recovery
//! thread (`driver`) replays its plan.

use std::collections::{BTreeMap, BTreeSet};

use crate::options::{
    BasicConsumeOptions, ExchangeBindOptions, ExchangeDeclareOptions, QueueDeclareOptions,
};
use crate::protocol::table::FieldTable;

/// A recorded queue: how it was declared, and whether the broker named it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct QueueRecord {
    pub(crate) options: QueueDeclareOptions,
    /// Declared as `""`: declared again as `""`, under a new name.
    pub(crate) server_named: bool,
}

/// A binding of a queue to an exchange.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct QueueBinding {
    pub(crate) queue: String,
    pub(crate) exchange: String,
    pub(crate) routing_key: String,
    pub(crate) arguments: FieldTable,
}

/// An exchange-to-exchange binding.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ExchangeBinding {
    pub(crate) destination: String,
    pub(crate) source: String,
    pub(crate) options: ExchangeBindOptions,
}

/// A consumer: its channel (number, and `ChannelHandle::instance`) and queue, and how it was
/// started.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ConsumerRecord {
    pub(crate) channel: u16,
    pub(crate) instance: u64,
    pub(crate) queue: String,
    pub(crate) options: BasicConsumeOptions,
}

/// One step of a recovery, in the order [`Topology::plan`] lists them.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Step {
    Exchange(String, ExchangeDeclareOptions),
    /// The queue's recorded name (`""`-declared ones: their last name, to rename afterwards).
    Queue(String, QueueRecord),
    QueueBinding(QueueBinding),
    ExchangeBinding(ExchangeBinding),
    Consumer(String, ConsumerRecord),
}

/// What the broker holds of this connection's declarations (module docs).
#[derive(Debug, Default)]
pub(crate) struct Topology {
    exchanges: BTreeMap<String, ExchangeDeclareOptions>,
    queues: BTreeMap<String, QueueRecord>,
    queue_bindings: Vec<QueueBinding>,
    exchange_bindings: Vec<ExchangeBinding>,
    /// By channel (`ChannelHandle::instance`) and consumer tag: a tag is unique only within
    /// its channel.
    consumers: BTreeMap<(u64, String), ConsumerRecord>,
    /// Old name to new name of server-named queues renamed by recoveries.
    renames: BTreeMap<String, String>,
}

impl Topology {
    /// The broker confirmed `exchange.declare` of `name`.
    pub(crate) fn exchange_declared(&mut self, name: &str, options: &ExchangeDeclareOptions) {
        // The default exchange and the amq.* ones are the broker's; a passive declare declares
        // nothing.
        if options.passive || name.is_empty() || name.starts_with("amq.") {
            return;
        }
        self.exchanges.insert(name.to_owned(), options.clone());
    }

    /// The broker confirmed `exchange.delete` of `name`.
    pub(crate) fn exchange_deleted(&mut self, name: &str) {
        self.exchanges.remove(name);
        self.queue_bindings.retain(|b| b.exchange != name);
        self.exchange_bindings
            .retain(|b| b.source != name && b.destination != name);
    }

    /// The broker confirmed `queue.declare` of `requested` (`""`: it named the queue `actual`).
    pub(crate) fn queue_declared(
        &mut self,
        requested: &str,
        actual: &str,
        options: &QueueDeclareOptions,
    ) {
        if options.passive {
            return;
        }
        self.queues.insert(
            actual.to_owned(),
            QueueRecord {
                options: options.clone(),
                server_named: requested.is_empty(),
            },
        );
    }

    /// The broker confirmed `queue.delete` of `name`.
    pub(crate) fn queue_deleted(&mut self, name: &str) {
        self.queues_deleted(&BTreeSet::from([name.to_owned()]));
    }

    /// The queues `names` are gone: with them their bindings and consumers, and the
    /// auto-delete exchanges that leaves unbound. One pass however many there are.
    fn queues_deleted(&mut self, names: &BTreeSet<String>) {
        if names.is_empty() {
            return;
        }
        self.queues.retain(|name, _| !names.contains(name));
        self.queue_bindings.retain(|b| !names.contains(&b.queue));
        self.consumers.retain(|_, c| !names.contains(&c.queue));
        // Its old names lead nowhere now (and would pile up, one per recovery).
        self.renames.retain(|_, new| !names.contains(new));
        self.auto_delete_unbound_exchanges();
    }

    /// The broker confirmed `queue.bind`.
    pub(crate) fn queue_bound(&mut self, binding: QueueBinding) {
        if !self.queue_bindings.contains(&binding) {
            self.queue_bindings.push(binding);
        }
    }

    /// The broker confirmed `queue.unbind`.
    pub(crate) fn queue_unbound(&mut self, binding: &QueueBinding) {
        self.queue_bindings.retain(|b| b != binding);
        self.auto_delete_unbound_exchanges();
    }

    /// The broker confirmed `exchange.bind`.
    pub(crate) fn exchange_bound(&mut self, binding: ExchangeBinding) {
        if !self.exchange_bindings.contains(&binding) {
            self.exchange_bindings.push(binding);
        }
    }

    /// The broker confirmed `exchange.unbind`.
    pub(crate) fn exchange_unbound(&mut self, binding: &ExchangeBinding) {
        self.exchange_bindings.retain(|b| b != binding);
        self.auto_delete_unbound_exchanges();
    }

    /// The broker confirmed `basic.consume` with tag `tag`.
    pub(crate) fn consumer_started(&mut self, tag: &str, record: ConsumerRecord) {
        self.consumers
            .insert((record.instance, tag.to_owned()), record);
    }

    /// The consumer `tag` of the channel `instance` was cancelled (by us or the broker). An
    /// auto-delete queue left without consumers is deleted by the broker, and so here.
    pub(crate) fn consumer_cancelled(&mut self, instance: u64, tag: &str) {
        self.remove_consumers(|t, c| t == tag && c.instance == instance);
    }

    /// Keeps only the recorded consumers that are among `live` (channel instance, tag): the
    /// others went with a channel that is gone (one the broker closed whose number a new
    /// channel took included: by instance, not number).
    pub(crate) fn keep_consumers(&mut self, live: &[(u64, String)]) {
        let live: BTreeSet<(u64, &str)> = live.iter().map(|(i, t)| (*i, t.as_str())).collect();
        self.remove_consumers(|tag, c| !live.contains(&(c.instance, tag)));
    }

    /// The channel `instance` closed (or was dropped): its consumers are gone (with what that
    /// deletes). By instance, not number: a later channel may have the number already.
    pub(crate) fn channel_closed(&mut self, instance: u64) {
        self.remove_consumers(|_, c| c.instance == instance);
    }

    /// Removes the consumers `gone` picks, then the auto-delete queues that leaves without
    /// consumers (the broker deletes those), in passes linear in what is recorded.
    fn remove_consumers(&mut self, mut gone: impl FnMut(&str, &ConsumerRecord) -> bool) {
        let mut left = BTreeSet::new();
        self.consumers.retain(|(_, tag), c| {
            let remove = gone(tag, c);
            if remove {
                left.insert(c.queue.clone());
            }
            !remove
        });
        if left.is_empty() {
            return;
        }
        let consumed: BTreeSet<&str> = self.consumers.values().map(|c| c.queue.as_str()).collect();
        let deleted: BTreeSet<String> = left
            .into_iter()
            .filter(|q| {
                !consumed.contains(q.as_str())
                    && self.queues.get(q).is_some_and(|r| r.options.auto_delete)
            })
            .collect();
        self.queues_deleted(&deleted);
    }

    /// RabbitMQ deletes an auto-delete exchange once it is no longer the source of any binding.
    fn auto_delete_unbound_exchanges(&mut self) {
        let unbound: Vec<String> = self
            .exchanges
            .iter()
            .filter(|(name, options)| {
                options.auto_delete
                    && !self.queue_bindings.iter().any(|b| &b.exchange == *name)
                    && !self.exchange_bindings.iter().any(|b| &b.source == *name)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in unbound {
            self.exchange_deleted(&name);
        }
    }

    /// What to declare again on a new connection, in order: exchanges, queues, queue
    /// bindings, exchange-to-exchange bindings, consumers.
    pub(crate) fn plan(&self) -> Vec<Step> {
        let mut steps = Vec::new();
        steps.extend(
            self.exchanges
                .iter()
                .map(|(name, options)| Step::Exchange(name.clone(), options.clone())),
        );
        steps.extend(
            self.queues
                .iter()
                .map(|(name, record)| Step::Queue(name.clone(), record.clone())),
        );
        steps.extend(self.queue_bindings.iter().cloned().map(Step::QueueBinding));
        steps.extend(
            self.exchange_bindings
                .iter()
                .cloned()
                .map(Step::ExchangeBinding),
        );
        steps.extend(
            self.consumers
                .iter()
                .map(|((_, tag), record)| Step::Consumer(tag.clone(), record.clone())),
        );
        steps
    }

    /// A server-named queue recorded as `old` was declared again as `new`: its record, its
    /// bindings and its consumers follow.
    pub(crate) fn renamed(&mut self, old: &str, new: &str) {
        if old == new {
            return;
        }
        if let Some(record) = self.queues.remove(old) {
            self.queues.insert(new.to_owned(), record);
        }
        for binding in &mut self.queue_bindings {
            if binding.queue == old {
                binding.queue = new.to_owned();
            }
        }
        for consumer in self.consumers.values_mut() {
            if consumer.queue == old {
                consumer.queue = new.to_owned();
            }
        }
        // Chains of renames resolve to the newest name.
        for target in self.renames.values_mut() {
            if target == old {
                *target = new.to_owned();
            }
        }
        self.renames.insert(old.to_owned(), new.to_owned());
    }

    /// The name a queue has now: `name` itself unless a recovery renamed it.
    pub(crate) fn current_name<'a>(&'a self, name: &'a str) -> &'a str {
        self.renames.get(name).map_or(name, String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue_binding(queue: &str, exchange: &str, key: &str) -> QueueBinding {
        QueueBinding {
            queue: queue.into(),
            exchange: exchange.into(),
            routing_key: key.into(),
            arguments: FieldTable::default(),
        }
    }

    fn consumer(channel: u16, queue: &str) -> ConsumerRecord {
        ConsumerRecord {
            channel,
            instance: channel.into(),
            queue: queue.into(),
            options: BasicConsumeOptions::default(),
        }
    }

    fn durable() -> QueueDeclareOptions {
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        }
    }

    #[test]
    fn a_closed_channel_takes_its_consumers_and_their_auto_delete_queue() {
        let mut t = Topology::default();
        let auto_delete = QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        };
        t.queue_declared("q", "q", &auto_delete);
        t.queue_declared("kept", "kept", &durable());
        t.consumer_started("c1", consumer(1, "q"));
        t.consumer_started("c2", consumer(2, "kept"));
        t.channel_closed(1);
        let plan = t.plan();
        assert!(!plan
            .iter()
            .any(|s| matches!(s, Step::Queue(name, _) if name == "q")));
        assert!(plan.contains(&Step::Consumer("c2".into(), consumer(2, "kept"))));
        assert!(!plan
            .iter()
            .any(|s| matches!(s, Step::Consumer(tag, _) if tag == "c1")));
    }

    #[test]
    fn the_plan_declares_in_dependency_order() {
        let mut t = Topology::default();
        t.consumer_started("c1", consumer(1, "q"));
        t.queue_bound(queue_binding("q", "x", "k"));
        t.queue_declared("q", "q", &durable());
        t.exchange_declared("x", &ExchangeDeclareOptions::default());
        t.exchange_bound(ExchangeBinding {
            destination: "x".into(),
            source: "up".into(),
            options: ExchangeBindOptions::default(),
        });
        t.exchange_declared("up", &ExchangeDeclareOptions::default());
        let kinds: Vec<&str> = t
            .plan()
            .iter()
            .map(|s| match s {
                Step::Exchange(..) => "exchange",
                Step::Queue(..) => "queue",
                Step::QueueBinding(_) => "queue binding",
                Step::ExchangeBinding(_) => "exchange binding",
                Step::Consumer(..) => "consumer",
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "exchange",
                "exchange",
                "queue",
                "queue binding",
                "exchange binding",
                "consumer"
            ]
        );
    }

    #[test]
    fn passive_declares_and_the_brokers_exchanges_are_not_recorded() {
        let mut t = Topology::default();
        t.exchange_declared(
            "x",
            &ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
        );
        t.exchange_declared("amq.topic", &ExchangeDeclareOptions::default());
        t.exchange_declared("", &ExchangeDeclareOptions::default());
        t.queue_declared(
            "q",
            "q",
            &QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
        );
        assert!(t.plan().is_empty());
    }

    #[test]
    fn deletes_take_their_bindings_and_consumers_with_them() {
        let mut t = Topology::default();
        t.exchange_declared("x", &ExchangeDeclareOptions::default());
        t.exchange_declared("y", &ExchangeDeclareOptions::default());
        t.queue_declared("q", "q", &durable());
        t.queue_declared("r", "r", &durable());
        t.queue_bound(queue_binding("q", "x", "k"));
        t.queue_bound(queue_binding("r", "x", "k"));
        t.exchange_bound(ExchangeBinding {
            destination: "y".into(),
            source: "x".into(),
            options: ExchangeBindOptions::default(),
        });
        t.consumer_started("c1", consumer(1, "q"));
        t.consumer_started("c2", consumer(1, "r"));
        t.queue_deleted("q");
        t.exchange_deleted("y");
        assert_eq!(
            t.plan(),
            vec![
                Step::Exchange("x".into(), ExchangeDeclareOptions::default()),
                Step::Queue(
                    "r".into(),
                    QueueRecord {
                        options: durable(),
                        server_named: false
                    }
                ),
                Step::QueueBinding(queue_binding("r", "x", "k")),
                Step::Consumer("c2".into(), consumer(1, "r")),
            ]
        );
    }

    #[test]
    fn auto_delete_queues_and_exchanges_go_as_the_broker_deletes_them() {
        let mut t = Topology::default();
        t.exchange_declared(
            "x",
            &ExchangeDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
        );
        t.queue_declared(
            "q",
            "q",
            &QueueDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
        );
        t.queue_bound(queue_binding("q", "x", "k"));
        t.consumer_started("c1", consumer(1, "q"));
        t.consumer_started("c2", consumer(2, "q"));
        t.consumer_cancelled(1, "c1");
        assert_eq!(t.plan().len(), 4, "one consumer left: all stays");
        // The last consumer goes: the queue goes, its binding, then the exchange it left
        // without bindings.
        t.consumer_cancelled(2, "c2");
        assert!(t.plan().is_empty(), "{:?}", t.plan());
    }

    #[test]
    fn a_server_named_queue_is_renamed_with_its_bindings_and_consumers() {
        let mut t = Topology::default();
        let exclusive = QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        };
        t.queue_declared("", "amq.gen-1", &exclusive);
        t.queue_bound(queue_binding("amq.gen-1", "logs", ""));
        t.consumer_started("c1", consumer(3, "amq.gen-1"));
        match &t.plan()[0] {
            Step::Queue(name, record) => {
                assert_eq!(name, "amq.gen-1");
                assert!(record.server_named);
            }
            other => panic!("{other:?}"),
        }
        t.renamed("amq.gen-1", "amq.gen-2");
        t.renamed("amq.gen-2", "amq.gen-3");
        assert_eq!(t.current_name("amq.gen-1"), "amq.gen-3");
        assert_eq!(t.current_name("amq.gen-2"), "amq.gen-3");
        assert_eq!(t.current_name("other"), "other");
        let plan = t.plan();
        assert!(matches!(&plan[0], Step::Queue(name, _) if name == "amq.gen-3"));
        assert_eq!(
            plan[1],
            Step::QueueBinding(queue_binding("amq.gen-3", "logs", ""))
        );
        assert_eq!(
            plan[2],
            Step::Consumer("c1".into(), consumer(3, "amq.gen-3"))
        );
        // Deleted, its old names are forgotten with it.
        t.queue_deleted("amq.gen-3");
        assert!(t.renames.is_empty(), "{:?}", t.renames);
        assert_eq!(t.current_name("amq.gen-1"), "amq.gen-1");
        assert!(t.plan().is_empty());
    }

    #[test]
    fn binding_twice_records_once_and_unbinding_removes_it() {
        let mut t = Topology::default();
        t.queue_declared("q", "q", &durable());
        t.queue_bound(queue_binding("q", "x", "k"));
        t.queue_bound(queue_binding("q", "x", "k"));
        assert_eq!(t.plan().len(), 2);
        t.queue_unbound(&queue_binding("q", "x", "k"));
        assert_eq!(t.plan().len(), 1);
    }

    #[test]
    fn keeping_the_live_consumers_drops_the_others_and_their_auto_delete_queues() {
        // 10,000 consumers, each on an auto-delete queue of its own, on channels 1 to 100;
        // channel 1's consumers are live, the others' channels are gone.
        let mut t = Topology::default();
        let auto_delete = QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        };
        let mut live = Vec::new();
        for i in 0..10_000u16 {
            let (tag, queue, channel) = (format!("c{i}"), format!("q{i}"), 1 + i % 100);
            t.queue_declared(&queue, &queue, &auto_delete);
            t.queue_bound(queue_binding(&queue, "x", "k"));
            t.consumer_started(&tag, consumer(channel, &queue));
            if channel == 1 {
                live.push((1, tag));
            }
        }
        t.queue_declared("kept", "kept", &durable());
        t.keep_consumers(&live);
        let plan = t.plan();
        let count = |f: fn(&Step) -> bool| plan.iter().filter(|s| f(s)).count();
        assert_eq!(count(|s| matches!(s, Step::Consumer(..))), 100);
        assert_eq!(
            count(|s| matches!(s, Step::Queue(..))),
            101,
            "channel 1's and `kept`"
        );
        assert_eq!(count(|s| matches!(s, Step::QueueBinding(..))), 100);
        assert!(plan.contains(&Step::Consumer("c100".into(), consumer(1, "q100"))));
    }

    #[test]
    fn the_same_tag_on_two_channels_is_two_consumers() {
        // Tags are unique within a channel only (AMQP): both come back, and cancelling one
        // leaves the other.
        let mut t = Topology::default();
        t.consumer_started("worker", consumer(1, "q1"));
        t.consumer_started("worker", consumer(2, "q2"));
        assert_eq!(
            t.plan(),
            vec![
                Step::Consumer("worker".into(), consumer(1, "q1")),
                Step::Consumer("worker".into(), consumer(2, "q2")),
            ]
        );
        t.consumer_cancelled(1, "worker");
        assert_eq!(
            t.plan(),
            vec![Step::Consumer("worker".into(), consumer(2, "q2"))]
        );
    }

    #[test]
    fn a_channel_closes_its_own_consumers_not_a_later_channel_on_its_number() {
        // Channel number 1 closed by the broker (instance 10), the number taken again by a
        // new channel (instance 11) with a consumer of its own; then the first one's handle
        // is dropped.
        let mut t = Topology::default();
        let on = |instance: u64, queue: &str| ConsumerRecord {
            instance,
            ..consumer(1, queue)
        };
        t.consumer_started("old", on(10, "a"));
        t.consumer_started("new", on(11, "b"));
        t.channel_closed(10);
        assert_eq!(t.plan(), vec![Step::Consumer("new".into(), on(11, "b"))]);
    }
}
