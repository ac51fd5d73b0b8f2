//! Delivery-tag tracking for publisher confirms.
//!
//! After `confirm.select` every publish on the channel gets the next sequence number (1, 2, ...).
//! The broker answers each with `basic.ack` or `basic.nack`, possibly `multiple` (everything up to
//! and including the tag). A mandatory message that cannot be routed is first returned with
//! `basic.return`, then acked; a return carries no sequence number, so it is matched to the next
//! ack, as RabbitMQ sends them back to back.

use std::collections::{BTreeSet, VecDeque};

/// Outstanding and settled publish sequence numbers of one channel in confirm mode.
#[derive(Debug, Default)]
pub(crate) struct ConfirmTracker {
    next: u64,
    /// Published, not yet confirmed, ascending.
    outstanding: VecDeque<u64>,
    /// Sequence numbers the broker nacked and nobody has looked at yet.
    nacked: BTreeSet<u64>,
    /// Sequence numbers that were returned as unroutable before their ack.
    returned: BTreeSet<u64>,
    /// Returns seen whose ack has not arrived yet.
    pending_returns: usize,
}

/// How one publish (or a window) ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfirmOutcome {
    /// Sequence numbers the broker nacked.
    pub nacked: Vec<u64>,
    /// Sequence numbers of mandatory messages returned as unroutable (then acked).
    pub returned: Vec<u64>,
}

impl ConfirmOutcome {
    /// True when every message was acked and none was returned.
    pub fn all_confirmed(&self) -> bool {
        self.nacked.is_empty() && self.returned.is_empty()
    }
}

impl ConfirmTracker {
    pub(crate) fn new() -> Self {
        ConfirmTracker {
            next: 1,
            ..Default::default()
        }
    }

    /// Takes the next sequence number for a publish about to be sent.
    pub(crate) fn publish(&mut self) -> u64 {
        let seq = self.next;
        self.next += 1;
        self.outstanding.push_back(seq);
        seq
    }

    /// The broker returned a message (basic.return): it belongs to the next ack.
    pub(crate) fn on_return(&mut self) {
        self.pending_returns += 1;
    }

    /// The broker acked (`nack == false`) or nacked `tag`, `multiple` meaning everything up to it.
    pub(crate) fn on_confirm(&mut self, tag: u64, multiple: bool, nack: bool) {
        let mut settled = Vec::new();
        if multiple {
            while let Some(&front) = self.outstanding.front() {
                if front > tag {
                    break;
                }
                settled.push(front);
                self.outstanding.pop_front();
            }
        } else if let Ok(i) = self.outstanding.binary_search(&tag) {
            self.outstanding.remove(i);
            settled.push(tag);
        }
        if nack {
            self.nacked.extend(settled.iter().copied());
        } else if self.pending_returns > 0 {
            if let Some(&last) = settled.last() {
                self.pending_returns -= 1;
                self.returned.insert(last);
            }
        }
    }

    /// True while `seq` has not been acked or nacked.
    pub(crate) fn is_outstanding(&self, seq: u64) -> bool {
        self.outstanding.binary_search(&seq).is_ok()
    }

    /// True while any publish awaits its confirm.
    pub(crate) fn has_outstanding(&self) -> bool {
        !self.outstanding.is_empty()
    }

    /// The last sequence number handed out (0 before any publish).
    pub(crate) fn last_published(&self) -> u64 {
        self.next - 1
    }

    /// Removes and reports what happened to `seq` once it is settled.
    pub(crate) fn take_outcome_of(&mut self, seq: u64) -> ConfirmOutcome {
        ConfirmOutcome {
            nacked: self.nacked.take(&seq).into_iter().collect(),
            returned: self.returned.take(&seq).into_iter().collect(),
        }
    }

    /// Removes and reports everything settled badly so far.
    pub(crate) fn take_outcomes(&mut self) -> ConfirmOutcome {
        ConfirmOutcome {
            nacked: std::mem::take(&mut self.nacked).into_iter().collect(),
            returned: std::mem::take(&mut self.returned).into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiple_ack_settles_everything_up_to_the_tag() {
        let mut t = ConfirmTracker::new();
        for _ in 0..5 {
            t.publish();
        }
        t.on_confirm(3, true, false);
        assert!(!t.is_outstanding(1) && !t.is_outstanding(3));
        assert!(t.is_outstanding(4));
        t.on_confirm(5, false, false);
        assert!(t.is_outstanding(4) && !t.is_outstanding(5));
        t.on_confirm(4, false, true);
        assert!(!t.has_outstanding());
        assert_eq!(
            t.take_outcomes(),
            ConfirmOutcome {
                nacked: vec![4],
                returned: vec![]
            }
        );
    }

    #[test]
    fn a_return_belongs_to_the_next_ack() {
        let mut t = ConfirmTracker::new();
        let a = t.publish();
        let b = t.publish();
        t.on_confirm(a, false, false);
        t.on_return();
        t.on_confirm(b, false, false);
        assert!(t.take_outcome_of(a).all_confirmed());
        assert_eq!(t.take_outcome_of(b).returned, vec![b]);
    }

    #[test]
    fn unknown_tags_are_ignored() {
        let mut t = ConfirmTracker::new();
        t.on_confirm(42, false, false);
        t.on_confirm(42, true, true);
        assert!(!t.has_outstanding());
        assert_eq!(t.last_published(), 0);
    }
}
