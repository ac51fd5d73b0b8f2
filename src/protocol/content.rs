//! Content assembly: a content method (basic.deliver, basic.get-ok or basic.return), then its
//! content header, then body frames, into one message.
//!
//! One [`Assembly`] per channel. The sizes a peer announces are checked before anything is
//! reserved: a body larger than [`MAX_BODY_SIZE`] is refused, and so is one that would make the
//! bodies being received on all the connection's channels together larger than that (the
//! caller says how much the other channels' announced), at most [`MAX_BODY_PREALLOC`] is
//! reserved up front, and a body frame that would make the body longer than its header
//! announced is refused (501 FRAME_ERROR). Frames out of order are 505 UNEXPECTED_FRAME.
//! So a connection's partial bodies never hold more than [`MAX_BODY_SIZE`], however many
//! channels a peer starts messages on.
//!
//! A large body is assembled in the buffer of an earlier one when there is one to spare
//! ([`SpareBody`]): a consumer callback only borrows its delivery's body, so the consuming
//! thread hands the buffer back once the callback returns. Without it each 1 MiB delivery
//! was a fresh allocation whose 256 pages the kernel had to fault in as the body was copied
//! (S5, 500 x 1 MiB: 26,000-40,000 page faults and ~15% more client CPU, against ~1,700 with
//! it; BENCHMARKS.md).

use std::sync::Mutex;

use super::codec::Header;
use super::methods::{Deliver, GetOk, Return};
use super::properties::BasicProperties;

use crate::error::{Error, Result, FRAME_ERROR, UNEXPECTED_FRAME};

/// The class of every content method (basic); a content header must carry it.
const BASIC_CLASS: u16 = 60;
/// Largest message body accepted (RabbitMQ's own hard limit is 512 MiB), and the most the
/// bodies being received on a connection's channels may announce together.
pub(crate) const MAX_BODY_SIZE: u64 = 512 * 1024 * 1024;
/// Largest body buffer reserved up front from a content header's (peer-controlled) size.
pub(crate) const MAX_BODY_PREALLOC: u64 = 16 * 1024 * 1024;

/// Smallest body whose buffer is kept for the next one ([`SpareBody`]): below it the
/// allocator reuses memory it already has.
pub(crate) const SPARE_MIN: usize = 128 * 1024;

/// At most one body buffer of at least [`SPARE_MIN`] and at most [`MAX_BODY_PREALLOC`]
/// bytes, handed back after use, for the next large body of the connection that needs at
/// least half of it. It holds the last one given back (so it follows the sizes the
/// connection receives), empty, at most one buffer per connection. A leaf lock: nothing else
/// is locked while it is held.
#[derive(Debug, Default)]
pub(crate) struct SpareBody(Mutex<Option<Vec<u8>>>);

impl SpareBody {
    /// Keeps `body`'s buffer for the next large body, if it is one worth keeping.
    pub(crate) fn give(&self, mut body: Vec<u8>) {
        if (SPARE_MIN as u64..=MAX_BODY_PREALLOC).contains(&(body.capacity() as u64)) {
            body.clear();
            let older = self.lock().replace(body);
            drop(older);
        }
    }

    /// The spare buffer, if there is one and it holds `size` bytes (at least [`SPARE_MIN`])
    /// without growing, and at most twice that: a message never holds much more memory than
    /// its body, which is what the inbound limits count (`token`, rule 9). Out of line: small
    /// bodies, the common case, never call it.
    #[cold]
    #[inline(never)]
    fn take(&self, size: usize) -> Option<Vec<u8>> {
        let mut spare = self.lock();
        spare
            .as_ref()
            .filter(|b| (size..=size.saturating_mul(2)).contains(&b.capacity()))?;
        spare.take()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Vec<u8>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The method a content belongs to.
#[derive(Debug)]
pub(crate) enum ContentMethod {
    Deliver(Deliver),
    GetOk(GetOk),
    Return(Return),
}

/// A whole message: its method, properties and body.
#[derive(Debug)]
pub(crate) struct Content {
    pub(crate) method: ContentMethod,
    pub(crate) properties: BasicProperties,
    pub(crate) body: Vec<u8>,
}

#[derive(Debug)]
struct Partial {
    method: ContentMethod,
    /// The properties and announced body size, once the header arrived.
    header: Option<(BasicProperties, u64)>,
    body: Vec<u8>,
}

/// The content being received on one channel, if any.
#[derive(Debug, Default)]
pub(crate) struct Assembly {
    partial: Option<Partial>,
}

impl Assembly {
    /// True between a content method and the end of its body: no other method may come.
    pub(crate) fn in_progress(&self) -> bool {
        self.partial.is_some()
    }

    /// A method other than content may arrive on `channel` now (not in the middle of content).
    pub(crate) fn expect_method(&self, channel: u16) -> Result<()> {
        if self.in_progress() {
            return Err(Error::protocol(
                UNEXPECTED_FRAME,
                format!("method on channel {channel} while content was being received"),
            ));
        }
        Ok(())
    }

    /// The body buffer of the content being received, if any: its length and its capacity
    /// (what the announced size made it reserve). For the property tests' memory bound.
    #[cfg(test)]
    pub(crate) fn body_buffer(&self) -> Option<(usize, usize)> {
        self.partial
            .as_ref()
            .map(|p| (p.body.len(), p.body.capacity()))
    }

    /// A content method arrived on `channel`.
    pub(crate) fn start(&mut self, channel: u16, method: ContentMethod) -> Result<()> {
        self.expect_method(channel)?;
        self.partial = Some(Partial {
            method,
            header: None,
            body: Vec::new(),
        });
        Ok(())
    }

    /// A content header arrived; returns the message if its body is empty. `elsewhere` is
    /// what the headers of the messages still being received on other channels announced.
    pub(crate) fn header(
        &mut self,
        channel: u16,
        header: Header,
        elsewhere: u64,
        spare: &SpareBody,
    ) -> Result<Option<Content>> {
        let partial = match self.partial.as_mut() {
            Some(p) if p.header.is_none() => p,
            _ => {
                return Err(Error::protocol(
                    UNEXPECTED_FRAME,
                    format!("content header on channel {channel} without a content method"),
                ))
            }
        };
        if header.class_id != BASIC_CLASS {
            return Err(Error::protocol(
                UNEXPECTED_FRAME,
                format!(
                    "content header of class {} on channel {channel}, for a basic-class method",
                    header.class_id
                ),
            ));
        }
        if header.body_size > MAX_BODY_SIZE {
            return Err(Error::protocol(
                FRAME_ERROR,
                format!("content of {} bytes announced", header.body_size),
            ));
        }
        if header.body_size > MAX_BODY_SIZE.saturating_sub(elsewhere) {
            return Err(Error::protocol(
                FRAME_ERROR,
                format!(
                    "content of {} bytes announced on channel {channel} while {elsewhere} bytes \
                     of content are still being received on other channels (at most \
                     {MAX_BODY_SIZE} at once)",
                    header.body_size
                ),
            ));
        }
        let reserve = header.body_size.min(MAX_BODY_PREALLOC) as usize;
        let kept = if reserve >= SPARE_MIN {
            spare.take(reserve)
        } else {
            None
        };
        partial.body = kept.unwrap_or_else(|| Vec::with_capacity(reserve));
        partial.header = Some((header.properties, header.body_size));
        Ok(self.finish_if_complete())
    }

    /// A body frame, or a piece of one with `rest` more of the frame's bytes to come, arrived;
    /// returns the message once its body is complete. A frame that would overrun the announced
    /// size is refused at its first piece, so a message never completes from part of a frame.
    pub(crate) fn body(
        &mut self,
        channel: u16,
        data: &[u8],
        rest: usize,
    ) -> Result<Option<Content>> {
        let Some(Partial {
            header: Some((_, size)),
            body,
            ..
        }) = self.partial.as_mut()
        else {
            return Err(Error::protocol(
                UNEXPECTED_FRAME,
                format!("body frame on channel {channel} without a content header"),
            ));
        };
        if (body.len() as u64)
            .saturating_add(data.len() as u64)
            .saturating_add(rest as u64)
            > *size
        {
            return Err(Error::protocol(
                FRAME_ERROR,
                format!(
                    "body on channel {channel} longer than the {size} bytes its header announced"
                ),
            ));
        }
        body.extend_from_slice(data);
        Ok(self.finish_if_complete())
    }

    fn finish_if_complete(&mut self) -> Option<Content> {
        let complete = matches!(
            &self.partial,
            Some(Partial { header: Some((_, size)), body, .. }) if body.len() as u64 == *size
        );
        if !complete {
            return None;
        }
        let partial = self.partial.take()?;
        let (properties, _) = partial.header?;
        Some(Content {
            method: partial.method,
            properties,
            body: partial.body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deliver(tag: u64) -> ContentMethod {
        ContentMethod::Deliver(Deliver {
            consumer_tag: "c".into(),
            delivery_tag: tag,
            redelivered: false,
            exchange: "".into(),
            routing_key: "q".into(),
        })
    }

    fn header(size: u64) -> Header {
        Header {
            class_id: 60,
            body_size: size,
            properties: BasicProperties::default(),
        }
    }

    /// Assembles a body of `size` bytes, all `fill`, with `spare`.
    fn assemble(spare: &SpareBody, size: usize, fill: u8) -> Vec<u8> {
        let mut a = Assembly::default();
        a.start(1, deliver(1)).unwrap();
        assert!(a
            .header(1, header(size as u64), 0, spare)
            .unwrap()
            .is_none());
        a.body(1, &vec![fill; size], 0).unwrap().unwrap().body
    }

    #[test]
    fn a_large_body_given_back_takes_the_next_large_one_and_nothing_of_it_shows() {
        let spare = SpareBody::default();
        let first = assemble(&spare, 1 << 20, 1);
        let buffer = first.as_ptr();
        spare.give(first);
        // A smaller large body (at least half of it) goes into the same buffer, holding
        // only its own bytes.
        let second = assemble(&spare, 600_000, 2);
        assert_eq!(second.as_ptr(), buffer);
        assert_eq!(second.len(), 600_000);
        assert!(second.iter().all(|&b| b == 2));
        // Taken: the next body gets a buffer of its own.
        let third = assemble(&spare, 600_000, 3);
        assert_ne!(third.as_ptr(), buffer);
        // A body too large for the spare, or needing less than half of it, leaves it there
        // for a later one: a message never holds more than twice its body.
        spare.give(second);
        let larger = assemble(&spare, 2 << 20, 4);
        assert_ne!(larger.as_ptr(), buffer);
        let smaller = assemble(&spare, 500_000, 5);
        assert_ne!(smaller.as_ptr(), buffer);
        assert!(smaller.capacity() < 1 << 20);
        let again = assemble(&spare, 1 << 20, 6);
        assert_eq!(again.as_ptr(), buffer);
    }

    #[test]
    fn small_and_oversized_buffers_are_not_kept_and_small_bodies_never_take_one() {
        let spare = SpareBody::default();
        spare.give(Vec::with_capacity(SPARE_MIN - 1));
        assert!(spare.take(SPARE_MIN).is_none());
        spare.give(Vec::with_capacity(MAX_BODY_PREALLOC as usize + 1));
        assert!(spare.take(SPARE_MIN).is_none());
        spare.give(Vec::with_capacity(SPARE_MIN));
        assert!(
            assemble(&spare, SPARE_MIN - 1, 1).capacity() < SPARE_MIN,
            "a small body allocates its own"
        );
        let kept = spare.take(SPARE_MIN).expect("kept");
        assert!(kept.is_empty());
    }

    #[test]
    fn method_header_and_bodies_make_one_message() {
        let mut a = Assembly::default();
        a.start(1, deliver(7)).unwrap();
        assert!(a
            .header(1, header(5), 0, &SpareBody::default())
            .unwrap()
            .is_none());
        assert!(a.body(1, b"he", 0).unwrap().is_none());
        let content = a.body(1, b"llo", 0).unwrap().expect("complete");
        assert_eq!(content.body, b"hello");
        assert!(matches!(content.method, ContentMethod::Deliver(d) if d.delivery_tag == 7));
        assert!(!a.in_progress());
    }

    #[test]
    fn a_frame_that_overruns_the_body_is_refused_at_its_first_piece() {
        let mut a = Assembly::default();
        a.start(1, deliver(1)).unwrap();
        a.header(1, header(5), 0, &SpareBody::default()).unwrap();
        // Five bytes, with five more of their frame to come: they would fill the body, but
        // their frame is longer than it.
        assert_eq!(
            a.body(1, b"01234", 5).unwrap_err().reply_code(),
            Some(FRAME_ERROR)
        );
        // A frame that fits completes with its last piece only.
        let mut a = Assembly::default();
        a.start(1, deliver(1)).unwrap();
        a.header(1, header(5), 0, &SpareBody::default()).unwrap();
        assert!(a.body(1, b"012", 2).unwrap().is_none());
        let content = a.body(1, b"34", 0).unwrap().expect("complete");
        assert_eq!(content.body, b"01234");
    }

    #[test]
    fn an_empty_body_completes_at_the_header() {
        let mut a = Assembly::default();
        a.start(1, deliver(1)).unwrap();
        assert!(a
            .header(1, header(0), 0, &SpareBody::default())
            .unwrap()
            .is_some());
    }

    #[test]
    fn frames_out_of_order_or_too_long_are_refused() {
        let mut a = Assembly::default();
        assert_eq!(
            a.body(1, b"x", 0).unwrap_err().reply_code(),
            Some(UNEXPECTED_FRAME)
        );
        assert_eq!(
            a.header(1, header(1), 0, &SpareBody::default())
                .unwrap_err()
                .reply_code(),
            Some(UNEXPECTED_FRAME)
        );
        a.start(1, deliver(1)).unwrap();
        assert_eq!(
            a.start(1, deliver(2)).unwrap_err().reply_code(),
            Some(UNEXPECTED_FRAME)
        );
        a.header(1, header(2), 0, &SpareBody::default()).unwrap();
        assert_eq!(
            a.body(1, b"xyz", 0).unwrap_err().reply_code(),
            Some(FRAME_ERROR)
        );
        let mut c = Assembly::default();
        c.start(1, deliver(1)).unwrap();
        let mut wrong_class = header(1);
        wrong_class.class_id = 50;
        assert_eq!(
            c.header(1, wrong_class, 0, &SpareBody::default())
                .unwrap_err()
                .reply_code(),
            Some(UNEXPECTED_FRAME)
        );
        let mut b = Assembly::default();
        b.start(1, deliver(1)).unwrap();
        assert_eq!(
            b.header(1, header(MAX_BODY_SIZE + 1), 0, &SpareBody::default())
                .unwrap_err()
                .reply_code(),
            Some(FRAME_ERROR)
        );
    }

    #[test]
    fn bodies_on_all_channels_together_stay_within_the_largest_body() {
        let half = MAX_BODY_SIZE / 2;
        let mut a = Assembly::default();
        a.start(1, deliver(1)).unwrap();
        let err = a
            .header(1, header(half + 1), half, &SpareBody::default())
            .unwrap_err();
        assert_eq!(err.reply_code(), Some(FRAME_ERROR));
        assert!(
            err.to_string().contains(&format!("while {half} bytes")),
            "{err}"
        );
        let mut b = Assembly::default();
        b.start(2, deliver(1)).unwrap();
        assert!(b
            .header(2, header(half), half, &SpareBody::default())
            .unwrap()
            .is_none());
        assert_eq!(b.body_buffer(), Some((0, MAX_BODY_PREALLOC as usize)));
    }
}
