//! Helpers shared by the tutorial examples.
#![allow(dead_code)]

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use cottontail::Connection;

/// Formats `body` the way Python's `print(f"{body}")` shows a `bytes` object (`b'...'`), so the
/// examples print exactly the lines of the official Python tutorials.
pub fn python_bytes(body: &[u8]) -> String {
    let quote = if body.contains(&b'\'') && !body.contains(&b'"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(body.len() + 3);
    out.push('b');
    out.push(quote);
    for &b in body {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            b if b as char == quote => {
                out.push('\\');
                out.push(quote);
            }
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out.push(quote);
    out
}

/// Host of the broker: `localhost` as in the tutorials, or `$AMQP_HOST` if set.
pub fn broker_host() -> String {
    std::env::var("AMQP_HOST").unwrap_or_else(|_| "localhost".into())
}

/// Ctrl-C as the Python tutorials handle it: the consumer stops, the program prints
/// `Interrupted` and exits 0. Python gets there through `KeyboardInterrupt`; here the Ctrl-C
/// handler closes the connection, which ends whatever is consuming on it with an error, and
/// [`finish`](Interrupt::finish) turns that error into the `Interrupted` line.
#[derive(Clone)]
pub struct Interrupt {
    state: Arc<State>,
}

#[derive(Default)]
struct State {
    happened: Mutex<bool>,
    changed: Condvar,
}

impl Interrupt {
    /// Installs the Ctrl-C handler: it marks the interrupt and closes `connection`, which ends
    /// whatever is consuming on it with an error.
    pub fn close_on_ctrl_c(connection: &Connection) -> Interrupt {
        let interrupt = Interrupt {
            state: Arc::default(),
        };
        let on_ctrl_c = interrupt.clone();
        let connection = connection.clone();
        ctrlc::set_handler(move || {
            *on_ctrl_c.lock() = true;
            on_ctrl_c.state.changed.notify_all();
            let _ = connection.close();
        })
        .expect("installing the Ctrl-C handler");
        interrupt
    }

    /// Whether Ctrl-C was pressed.
    pub fn happened(&self) -> bool {
        *self.lock()
    }

    /// Sleeps for `duration`, or less if Ctrl-C comes first, as Ctrl-C interrupts Python's
    /// `time.sleep`; true if it did.
    pub fn sleep(&self, duration: Duration) -> bool {
        let (happened, _) = self
            .state
            .changed
            .wait_timeout_while(self.lock(), duration, |happened| !*happened)
            .unwrap_or_else(|p| p.into_inner());
        *happened
    }

    /// The program's result, with the error a Ctrl-C caused turned into Python's
    /// `Interrupted` line and success.
    pub fn finish(&self, result: cottontail::Result<()>) -> cottontail::Result<()> {
        match result {
            Err(_) if self.happened() => {
                println!("Interrupted");
                Ok(())
            }
            other => other,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, bool> {
        self.state
            .happened
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}
