//! Delivery-tag tracking for publisher confirms.
//!
//! After `confirm.select` every publish on the channel gets the next sequence number (1, 2, ...).
//! The broker answers each with `basic.ack` or `basic.nack`, possibly `multiple` (everything up to
//! and including the tag). A mandatory message that cannot be routed is first returned with
//! `basic.return`, then acked.
//!
//! # Which publish a return belongs to
//!
//! A `basic.return` carries no sequence number, only the message's exchange, routing key,
//! properties and body. Charging it to "the next ack" is wrong as soon as that ack is
//! `multiple`: it settles routable messages along with the returned one, and nothing says which
//! of them came back. So each outstanding *mandatory* publish keeps a [`fingerprint`] (a hash of
//! exchange, routing key, body length and at most the first and last 32 bytes of the body,
//! computed without allocating), and a return marks the **oldest outstanding mandatory publish
//! with the same fingerprint**, keeping the return's reply code and text with that sequence
//! number. Non-mandatory messages are never returned and are not considered.
//!
//! This is exact for RabbitMQ because a channel handles its publishes in order and sends a
//! message's `basic.return` before its `basic.ack`. When a return arrives, its message is still
//! outstanding, and every earlier return has already claimed its own, older message. Any older
//! candidate left with the same fingerprint has the same exchange and routing key, so RabbitMQ
//! routed it the same way: had it been unroutable it would have been returned (and claimed)
//! first, and had it been routable the message at hand would have been routed too. So the oldest
//! candidate is the returned message itself.
//!
//! # After a connection loss
//!
//! A recovered connection opens the channel again and selects confirm mode again: the
//! broker numbers its publishes from 1 again. The tracker keeps numbering on (the sequence
//! numbers the application holds stay unique) and keeps `base`, the number of the last publish
//! before the loss, to turn the broker's tags into its own. Publishes outstanding at the loss
//! become *unknown*: the broker may or may not have routed them.
//!
//! The one limit: two mandatory messages outstanding at once with identical fingerprints whose
//! routing differs anyway, because it reads more than the exchange and routing key (a headers
//! exchange matching their properties, `CC`/`BCC` headers) or because a binding was added or
//! removed between the two publishes (or the 64-bit hashes collide). If then only the newer one
//! is returned, the older one is blamed for it and the newer one reports a plain ack.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Bytes of the body's start and of its end that go into a [`fingerprint`].
const FINGERPRINT_EDGE: usize = 32;

/// A cheap hash identifying a mandatory message, from what both `basic.publish` and
/// `basic.return` carry: exchange, routing key, body length and at most the first and last
/// [`FINGERPRINT_EDGE`] bytes of the body (FNV-1a; no allocation).
pub(crate) fn fingerprint(exchange: &str, routing_key: &str, body: &[u8]) -> u64 {
    let mut hash = Fnv1a::new();
    hash.write_len(exchange.len());
    hash.write(exchange.as_bytes());
    hash.write_len(routing_key.len());
    hash.write(routing_key.as_bytes());
    hash.write_len(body.len());
    hash.write(&body[..body.len().min(FINGERPRINT_EDGE)]);
    hash.write(&body[body.len().saturating_sub(FINGERPRINT_EDGE)..]);
    hash.0
}

/// 64-bit FNV-1a.
struct Fnv1a(u64);

impl Fnv1a {
    fn new() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// Lengths go in too, so `("ab", "c")` and `("a", "bc")` differ.
    fn write_len(&mut self, len: usize) {
        self.write(&(len as u64).to_le_bytes());
    }
}

/// Outstanding and settled publish sequence numbers of one channel in confirm mode.
#[derive(Debug, Default)]
pub(crate) struct ConfirmTracker {
    next: u64,
    /// Added to the broker's tags: the last sequence number before the last connection loss.
    base: u64,
    /// Sequence numbers outstanding when the connection was lost, nobody has looked at yet.
    unknown: BTreeSet<u64>,
    /// Published, not yet confirmed, ascending.
    outstanding: VecDeque<u64>,
    /// The outstanding mandatory publishes not returned yet, as (sequence number,
    /// [`fingerprint`]), ascending: the candidates for the next return.
    mandatory: VecDeque<(u64, u64)>,
    /// Sequence numbers the broker nacked and nobody has looked at yet.
    nacked: BTreeSet<u64>,
    /// Sequence numbers returned as unroutable, with the return's reply code and text, that
    /// nobody has looked at yet.
    returned: BTreeMap<u64, (u16, String)>,
    /// Publishes whose own publisher waits for their outcome (`basic_publish_with`), from the
    /// publish until it takes the outcome or gives up: [`take_outcomes`](Self::take_outcomes)
    /// (a `wait_for_confirms` on another thread) leaves them to it.
    claimed: BTreeSet<u64>,
}

/// What went wrong with a window of publishes: the API's `ConfirmOutcome` is built from it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Outcomes {
    /// Sequence numbers the broker nacked, ascending.
    pub(crate) nacked: Vec<u64>,
    /// Sequence numbers of mandatory messages returned as unroutable (then acked), ascending.
    pub(crate) returned: Vec<u64>,
    /// Sequence numbers outstanding when the connection was lost, ascending.
    pub(crate) unknown: Vec<u64>,
}

impl Outcomes {
    /// True when every message was acked and none was returned.
    #[cfg(test)]
    fn all_confirmed(&self) -> bool {
        self.nacked.is_empty() && self.returned.is_empty() && self.unknown.is_empty()
    }
}

/// How one settled publish ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Settled {
    Acked,
    Nacked,
    /// Returned as unroutable (then acked), with the return's reply code and text.
    Returned {
        reply_code: u16,
        reply_text: String,
    },
    /// Outstanding when the connection was lost.
    Unknown,
}

impl ConfirmTracker {
    pub(crate) fn new() -> Self {
        ConfirmTracker {
            next: 1,
            ..Default::default()
        }
    }

    /// Takes the next sequence number for a publish about to be sent; `mandatory` is the
    /// message's [`fingerprint`] when it was published mandatory, `None` otherwise.
    pub(crate) fn publish(&mut self, mandatory: Option<u64>) -> u64 {
        let seq = self.next;
        self.next += 1;
        self.outstanding.push_back(seq);
        if let Some(fingerprint) = mandatory {
            self.mandatory.push_back((seq, fingerprint));
        }
        seq
    }

    /// The publisher of `seq` waits for its outcome itself: until it takes it with
    /// [`take_outcome_of`](Self::take_outcome_of) or [`release`](Self::release)s it, nobody
    /// else reports it. Called in the same lock as [`publish`](Self::publish), before its
    /// confirm can arrive.
    pub(crate) fn claim(&mut self, seq: u64) {
        self.claimed.insert(seq);
    }

    /// The publisher of a [`claim`](Self::claim)ed `seq` gave up waiting (a timeout): its
    /// outcome goes to the next [`take_outcomes`](Self::take_outcomes) like any other.
    pub(crate) fn release(&mut self, seq: u64) {
        self.claimed.remove(&seq);
    }

    /// The broker returned a message (basic.return) whose [`fingerprint`] is `fingerprint`:
    /// marks the oldest outstanding mandatory publish with that fingerprint as returned (see the
    /// module docs) and gives its sequence number; `None` when no outstanding publish matches
    /// (one published before `confirm.select`, say).
    pub(crate) fn on_return(
        &mut self,
        fingerprint: u64,
        reply_code: u16,
        reply_text: &str,
    ) -> Option<u64> {
        let i = self.mandatory.iter().position(|&(_, f)| f == fingerprint)?;
        let (seq, _) = self.mandatory.remove(i)?;
        self.returned
            .insert(seq, (reply_code, reply_text.to_string()));
        Some(seq)
    }

    /// The broker acked (`nack == false`) or nacked `tag`, `multiple` meaning everything up to it
    /// (and tag 0 with `multiple` every outstanding publish, as AMQP 0-9-1 defines it).
    pub(crate) fn on_confirm(&mut self, tag: u64, multiple: bool, nack: bool) {
        let tag = match (tag, multiple) {
            (0, true) => u64::MAX,
            _ => tag.saturating_add(self.base),
        };
        if multiple {
            while let Some(&front) = self.outstanding.front() {
                if front > tag {
                    break;
                }
                self.outstanding.pop_front();
                if nack {
                    self.nacked.insert(front);
                }
            }
            while self.mandatory.front().is_some_and(|&(seq, _)| seq <= tag) {
                self.mandatory.pop_front();
            }
        } else if let Ok(i) = self.outstanding.binary_search(&tag) {
            self.outstanding.remove(i);
            if nack {
                self.nacked.insert(tag);
            }
            if let Ok(i) = self.mandatory.binary_search_by_key(&tag, |&(seq, _)| seq) {
                self.mandatory.remove(i);
            }
        }
    }

    /// The connection was lost: every outstanding publish becomes unknown, and the next
    /// publish is the broker's 1 on the new channel.
    pub(crate) fn lose(&mut self) {
        // A returned one is settled: the broker said what became of it.
        let returned = &self.returned;
        self.unknown.extend(
            self.outstanding
                .drain(..)
                .filter(|seq| !returned.contains_key(seq)),
        );
        self.mandatory.clear();
        self.base = self.next - 1;
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

    /// Removes and reports what happened to `seq` once it is settled. A nack wins over a
    /// return.
    pub(crate) fn take_outcome_of(&mut self, seq: u64) -> Settled {
        self.claimed.remove(&seq);
        let unknown = self.unknown.remove(&seq);
        let nacked = self.nacked.remove(&seq);
        let returned = self.returned.remove(&seq);
        match (nacked, returned, unknown) {
            (true, _, _) => Settled::Nacked,
            (false, Some((reply_code, reply_text)), _) => Settled::Returned {
                reply_code,
                reply_text,
            },
            (false, None, true) => Settled::Unknown,
            (false, None, false) => Settled::Acked,
        }
    }

    /// Removes and reports everything settled badly so far, but the outcomes
    /// [`claim`](Self::claim)ed by their own publishers.
    pub(crate) fn take_outcomes(&mut self) -> Outcomes {
        let claimed = &self.claimed;
        let unclaimed = |seq: &u64| !claimed.contains(seq);
        let nacked: Vec<u64> = self.nacked.iter().copied().filter(unclaimed).collect();
        let returned: Vec<u64> = self.returned.keys().copied().filter(unclaimed).collect();
        let unknown: Vec<u64> = self.unknown.iter().copied().filter(unclaimed).collect();
        for seq in &nacked {
            self.nacked.remove(seq);
        }
        for seq in &returned {
            self.returned.remove(seq);
        }
        for seq in &unknown {
            self.unknown.remove(seq);
        }
        Outcomes {
            nacked,
            returned,
            unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn returned(reply_code: u16, reply_text: &str) -> Settled {
        Settled::Returned {
            reply_code,
            reply_text: reply_text.into(),
        }
    }

    #[test]
    fn a_message_returned_before_a_loss_is_returned_not_unknown() {
        let fp = fingerprint("", "nowhere", b"x");
        for claim in [false, true] {
            let mut t = ConfirmTracker::new();
            let seq = t.publish(Some(fp));
            if claim {
                t.claim(seq);
            }
            assert_eq!(t.on_return(fp, 312, "NO_ROUTE"), Some(seq));
            // Lost before its ack.
            t.lose();
            if claim {
                assert_eq!(t.take_outcome_of(seq), returned(312, "NO_ROUTE"));
                assert_eq!(t.take_outcomes(), Outcomes::default());
            } else {
                assert_eq!(
                    t.take_outcomes(),
                    Outcomes {
                        returned: vec![seq],
                        ..Default::default()
                    }
                );
            }
        }
    }

    #[test]
    fn a_claimed_outcome_is_left_to_its_publisher_until_released() {
        let mut t = ConfirmTracker::new();
        let fp = fingerprint("", "nowhere", b"x");
        let own = t.publish(None);
        t.claim(own);
        let other = t.publish(None);
        let returned_own = t.publish(Some(fp));
        t.claim(returned_own);
        let lost = t.publish(None);
        t.claim(lost);
        assert_eq!(t.on_return(fp, 312, "NO_ROUTE"), Some(returned_own));
        t.on_confirm(other, true, true);
        t.on_confirm(returned_own, false, false);
        t.lose();
        // A window's wait sees the unclaimed nack only.
        assert_eq!(
            t.take_outcomes(),
            Outcomes {
                nacked: vec![other],
                ..Default::default()
            }
        );
        assert_eq!(t.take_outcome_of(own), Settled::Nacked);
        assert_eq!(t.take_outcome_of(returned_own), returned(312, "NO_ROUTE"));
        // Released by a publisher that gave up: the next window's wait reports it.
        t.release(lost);
        assert_eq!(
            t.take_outcomes(),
            Outcomes {
                unknown: vec![lost],
                ..Default::default()
            }
        );
    }

    #[test]
    fn a_loss_makes_outstanding_publishes_unknown_and_numbering_goes_on() {
        let mut t = ConfirmTracker::new();
        for _ in 0..4 {
            t.publish(Some(7));
        }
        t.on_confirm(2, true, false);
        t.lose();
        assert!(!t.has_outstanding());
        assert_eq!(t.take_outcome_of(3), Settled::Unknown);
        // The new channel's broker numbers from 1: its 1 is our 5.
        assert_eq!(t.publish(None), 5);
        assert_eq!(t.publish(None), 6);
        t.on_confirm(1, false, true);
        assert!(!t.is_outstanding(5) && t.is_outstanding(6));
        t.on_confirm(2, false, false);
        let outcomes = t.take_outcomes();
        assert_eq!(outcomes.nacked, vec![5]);
        assert_eq!(outcomes.unknown, vec![4]);
        assert!(outcomes.returned.is_empty());
        // A return matches nothing from before the loss.
        assert_eq!(t.on_return(7, 312, "NO_ROUTE"), None);
    }

    #[test]
    fn multiple_ack_settles_everything_up_to_the_tag() {
        let mut t = ConfirmTracker::new();
        for _ in 0..5 {
            t.publish(None);
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
            Outcomes {
                nacked: vec![4],
                returned: vec![],
                unknown: vec![],
            }
        );
    }

    #[test]
    fn a_return_is_charged_to_its_own_publish() {
        let mut t = ConfirmTracker::new();
        let a = t.publish(Some(fingerprint("", "queue", b"a")));
        let b = t.publish(Some(fingerprint("", "nowhere", b"b")));
        t.on_confirm(a, false, false);
        assert_eq!(
            t.on_return(fingerprint("", "nowhere", b"b"), 312, "NO_ROUTE"),
            Some(b)
        );
        t.on_confirm(b, false, false);
        assert_eq!(t.take_outcome_of(a), Settled::Acked);
        assert_eq!(t.take_outcome_of(b), returned(312, "NO_ROUTE"));
    }

    #[test]
    fn a_multiple_ack_over_routable_and_returned_messages_marks_only_the_returned_one() {
        // Routable 1 and 2, unroutable 3, routable 4: the broker returns 3, then acks all four
        // at once. The old rule charged the return to 4, the highest tag of that ack.
        let mut t = ConfirmTracker::new();
        let seqs: Vec<u64> = ["queue", "queue", "nowhere", "queue"]
            .iter()
            .enumerate()
            .map(|(i, key)| t.publish(Some(fingerprint("", key, &[i as u8]))))
            .collect();
        assert_eq!(
            t.on_return(fingerprint("", "nowhere", &[2]), 312, "NO_ROUTE"),
            Some(seqs[2])
        );
        t.on_confirm(seqs[3], true, false);
        assert!(!t.has_outstanding());
        assert_eq!(
            t.take_outcomes(),
            Outcomes {
                nacked: vec![],
                returned: vec![seqs[2]],
                unknown: vec![],
            }
        );
    }

    #[test]
    fn interleaved_publishes_returns_and_acks_each_find_their_message() {
        // Two publishers sharing the channel: one to a queue, one to nowhere, alternating, with
        // a non-mandatory message to nowhere in between (never returned, never a candidate).
        let mut t = ConfirmTracker::new();
        let mut unroutable = Vec::new();
        for i in 0..10u32 {
            let body = i.to_be_bytes();
            t.publish(Some(fingerprint("amq.direct", "queue", &body)));
            t.publish(None);
            unroutable.push(t.publish(Some(fingerprint("amq.direct", "nowhere", &body))));
        }
        // The broker returns them in publish order and acks in two multiple acks, the first
        // landing between returns.
        for (i, &seq) in unroutable.iter().enumerate() {
            let body = (i as u32).to_be_bytes();
            let fp = fingerprint("amq.direct", "nowhere", &body);
            assert_eq!(t.on_return(fp, 312, "NO_ROUTE"), Some(seq));
            if i == 4 {
                t.on_confirm(seq + 1, true, false);
            }
        }
        t.on_confirm(t.last_published(), true, false);
        assert_eq!(t.take_outcomes().returned, unroutable);
        // A return nothing outstanding matches is not charged to anyone.
        assert_eq!(
            t.on_return(fingerprint("", "x", b""), 312, "NO_ROUTE"),
            None
        );
    }

    #[test]
    fn returns_of_identical_messages_go_to_the_oldest_first_and_keep_their_reply() {
        let mut t = ConfirmTracker::new();
        let fp = fingerprint("", "nowhere", b"same");
        let a = t.publish(Some(fp));
        let b = t.publish(Some(fp));
        let c = t.publish(Some(fp));
        // The same return twice: the first goes to a, the second to b, not to a again.
        assert_eq!(t.on_return(fp, 312, "NO_ROUTE"), Some(a));
        assert_eq!(t.on_return(fp, 313, "NO_CONSUMERS"), Some(b));
        t.on_confirm(c, true, false);
        assert_eq!(t.take_outcome_of(c), Settled::Acked);
        assert_eq!(t.take_outcome_of(b), returned(313, "NO_CONSUMERS"));
        assert_eq!(t.take_outcome_of(a), returned(312, "NO_ROUTE"));
        // Once acked, c is no candidate any more.
        assert_eq!(t.on_return(fp, 312, "NO_ROUTE"), None);
    }

    #[test]
    fn a_nack_wins_over_a_return_and_settled_messages_stop_being_candidates() {
        let mut t = ConfirmTracker::new();
        let fp = fingerprint("", "nowhere", b"x");
        let a = t.publish(Some(fp));
        assert_eq!(t.on_return(fp, 312, "NO_ROUTE"), Some(a));
        t.on_confirm(a, false, true);
        assert_eq!(t.take_outcome_of(a), Settled::Nacked);
        assert!(t.take_outcomes().all_confirmed());
        let b = t.publish(Some(fp));
        t.on_confirm(b, false, false);
        assert_eq!(t.on_return(fp, 312, "NO_ROUTE"), None);
    }

    #[test]
    fn fingerprints_tell_apart_what_a_return_carries() {
        let fp = fingerprint("ex", "key", b"body");
        assert_eq!(fp, fingerprint("ex", "key", b"body"));
        assert_ne!(fp, fingerprint("exk", "ey", b"body"));
        assert_ne!(fp, fingerprint("ex", "key", b"bodY"));
        assert_ne!(fp, fingerprint("ex", "key", b"body "));
        // Only the first and last 32 bytes of a long body count, and its length.
        let mut long = vec![0u8; 1000];
        let base = fingerprint("", "q", &long);
        long[500] = 1;
        assert_eq!(fingerprint("", "q", &long), base);
        long[999] = 1;
        assert_ne!(fingerprint("", "q", &long), base);
        assert_ne!(fingerprint("", "q", &long[..999]), base);
    }

    #[test]
    fn a_multiple_confirm_of_tag_0_settles_every_outstanding_publish() {
        let mut t = ConfirmTracker::new();
        for _ in 0..3 {
            t.publish(Some(1));
        }
        t.on_confirm(0, true, true);
        assert!(!t.has_outstanding());
        assert_eq!(t.take_outcomes().nacked, vec![1, 2, 3]);
        // Without `multiple`, tag 0 names no publish.
        t.publish(None);
        t.on_confirm(0, false, false);
        assert!(t.is_outstanding(4));
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
