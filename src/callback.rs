//! What user callbacks may return, and how their errors and panics become an [`Error`].
//!
//! Every callback cottontail runs (consumer, return, cancel, timer, threadsafe, blocked and
//! unblocked callbacks) is stored erased to `Result<(), BoxError>`; the dispatcher runs it
//! through [`call`], which turns its error (or panic) into the cottontail error that ends the
//! call that ran it.

use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, AssertUnwindSafe};

pub use crate::error::BoxError;
use crate::error::{panic_message, CallbackError, Error};

mod sealed {
    pub trait Sealed {}
    impl Sealed for () {}
    impl<E> Sealed for std::result::Result<(), E> {}
}

/// What a callback may return: `()` (it cannot fail), or `Result<(), E>` for any error type
/// `E` that converts into [`BoxError`]: a cottontail [`Result`](crate::Result) (so a callback
/// can end with `ch.basic_ack(..)`), `std::io::Result<()>`, `Result<(), BoxError>`, an
/// application's error type, `Result<(), String>`...
///
/// An error ends the call that ran the callback (see the crate docs, "Consuming and the event
/// loop"). The error type is inferred from what the closure returns; a closure that only
/// returns `Ok(())` (with or without `?` inside) gives the compiler nothing to infer it from, so
/// it names its return type: `|ch, method, properties, body| -> cottontail::Result<()> { .. }`
/// or `-> Result<(), cottontail::BoxError>`.
///
/// The trait is sealed: it is implemented for `()` and `Result<(), E>` only.
#[diagnostic::on_unimplemented(
    message = "a cottontail callback returns `()` or `Result<(), E>` with `E: Into<BoxError>`, not `{Self}`",
    label = "this callback's return type"
)]
pub trait CallbackReturn: sealed::Sealed {
    /// The callback's outcome, its error boxed.
    fn into_result(self) -> std::result::Result<(), BoxError>;
}

impl CallbackReturn for () {
    fn into_result(self) -> std::result::Result<(), BoxError> {
        Ok(())
    }
}

impl<E: Into<BoxError>> CallbackReturn for std::result::Result<(), E> {
    fn into_result(self) -> std::result::Result<(), BoxError> {
        self.map_err(Into::into)
    }
}

thread_local! {
    /// The connection (its [`Owner::id`](crate::connection::Owner::id)) whose callback this
    /// thread is running, the innermost if several; 0 for none.
    static INNERMOST: Cell<usize> = const { Cell::new(0) };
    /// The connections whose callbacks run further out on this thread (a callback of one
    /// connection dispatching another's: rare, so the common case touches only `INNERMOST`).
    static OUTER: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

/// Runs a callback of the connection `connection` (its `Owner::id`) through [`call`], noting
/// meanwhile that this thread is inside one of its callbacks. As in pika, a thread never
/// dispatches a connection's events from inside one of its callbacks: `process_data_events`
/// and `sleep` there only wait (the I/O goes on), and `start_consuming` and `consume()` are
/// [`Error::Reentrancy`], so callbacks never nest and one never sees another half-way. This
/// is pika's event-dispatch depth, kept per thread: other threads dispatch on their own.
pub(crate) fn call_for(
    connection: usize,
    what: impl FnOnce() -> String,
    callback: impl FnOnce() -> std::result::Result<(), BoxError>,
) -> crate::Result<()> {
    let outer = INNERMOST.replace(connection);
    if outer != 0 {
        OUTER.with_borrow_mut(|running| running.push(outer));
    }
    // `call` catches the callback's panic: what follows always runs.
    let ran = call(what, callback);
    if outer != 0 {
        OUTER.with_borrow_mut(|running| running.pop());
    }
    INNERMOST.set(outer);
    ran
}

/// Whether this thread is inside a callback of the connection `connection` (see [`call_for`]).
pub(crate) fn inside_callback_of(connection: usize) -> bool {
    let innermost = INNERMOST.get();
    innermost == connection
        || (innermost != 0 && OUTER.with_borrow(|running| running.contains(&connection)))
}

/// Runs a stored callback on this thread: its error becomes [`Error::from_callback`]'s, a panic
/// an [`Error::Callback`] whose [`CallbackError::is_panic`] is true, with a message naming
/// `what` ran (e.g. "the callback of consumer ctag1.x on delivery 5").
pub(crate) fn call(
    what: impl FnOnce() -> String,
    callback: impl FnOnce() -> std::result::Result<(), BoxError>,
) -> crate::Result<()> {
    match catch_unwind(AssertUnwindSafe(callback)) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Error::from_callback(e)),
        Err(panic) => Err(Error::Callback(CallbackError::panicked(format!(
            "{} panicked: {}",
            what(),
            panic_message(&*panic)
        )))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;
    use std::io;

    /// Each thread knows every connection whose callback it runs, the outer ones too (a
    /// callback of connection 1 that dispatches connection 2's), and forgets each when its
    /// callback ends, even by a panic.
    #[test]
    fn a_thread_knows_every_connection_whose_callback_it_runs() {
        assert!(!inside_callback_of(1));
        let seen = std::cell::RefCell::new(Vec::new());
        let _ = call_for(1, String::new, || {
            seen.borrow_mut()
                .push((inside_callback_of(1), inside_callback_of(2)));
            let _ = call_for(2, String::new, || {
                seen.borrow_mut()
                    .push((inside_callback_of(1), inside_callback_of(2)));
                panic!("in the inner callback");
            });
            seen.borrow_mut()
                .push((inside_callback_of(1), inside_callback_of(2)));
            // Another thread is inside nothing.
            let other = std::thread::spawn(|| inside_callback_of(1)).join().unwrap();
            assert!(!other);
            Ok(())
        });
        assert_eq!(*seen.borrow(), [(true, false), (true, true), (true, false)]);
        assert!(!inside_callback_of(1) && !inside_callback_of(2));
    }

    #[test]
    fn an_io_error_becomes_a_callback_error_whose_source_is_that_error() {
        let e = call(String::new, || {
            Err::<(), _>(io::Error::new(io::ErrorKind::NotFound, "no such thing")).into_result()
        })
        .unwrap_err();
        let Error::Callback(ref inner) = e else {
            panic!("expected Error::Callback, got {e:?}");
        };
        assert!(!inner.is_panic());
        let source = e.source().expect("a source");
        let io = source
            .downcast_ref::<io::Error>()
            .expect("the io::Error itself");
        assert_eq!(io.kind(), io::ErrorKind::NotFound);
        assert_eq!(io.to_string(), "no such thing");
        // The message is the source's, not repeated in the error's own.
        assert_eq!(e.to_string(), "a callback failed");
        // Clones are equal (the same error); another error with the same text is not.
        assert_eq!(e.clone(), e);
        let other = call(String::new, || Err("no such thing".into())).unwrap_err();
        assert_ne!(other, e);
    }

    #[test]
    fn a_cottontail_error_comes_back_unchanged() {
        let closed = Error::ChannelClosedByClient {
            reply_code: 200,
            reply_text: "bye".into(),
        };
        let returned = closed.clone();
        let e = call(String::new, move || Err::<(), _>(returned).into_result()).unwrap_err();
        assert_eq!(e, closed);
        // Also when it comes boxed (a callback declared `-> Result<(), BoxError>` using `?`).
        let returned = closed.clone();
        let e = call(String::new, move || -> std::result::Result<(), BoxError> {
            Err(returned)?;
            Ok(())
        })
        .unwrap_err();
        assert_eq!(e, closed);
    }

    #[test]
    fn a_panic_becomes_a_callback_error_naming_what_panicked() {
        let e = call(|| "the timer".into(), || panic!("boom")).unwrap_err();
        let Error::Callback(ref inner) = e else {
            panic!("expected Error::Callback, got {e:?}");
        };
        assert!(inner.is_panic());
        assert_eq!(
            e.source().map(ToString::to_string).as_deref(),
            Some("the timer panicked: boom")
        );
    }

    #[test]
    fn unit_and_any_error_type_are_callback_returns() {
        fn takes<R: CallbackReturn>(f: impl FnOnce() -> R) -> std::result::Result<(), BoxError> {
            f().into_result()
        }
        #[derive(Debug)]
        struct AppError;
        impl std::fmt::Display for AppError {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("app error")
            }
        }
        impl std::error::Error for AppError {}
        assert!(takes(|| ()).is_ok());
        assert!(takes(|| -> crate::Result<()> { Ok(()) }).is_ok());
        assert!(takes(|| Err::<(), _>(AppError)).is_err());
        assert!(takes(|| -> io::Result<()> { Err(io::ErrorKind::Other.into()) }).is_err());
        assert!(takes(|| -> std::result::Result<(), BoxError> {
            std::fs::metadata("/nonexistent/cottontail")?;
            Err(AppError)?;
            Ok(())
        })
        .is_err());
    }
}
