//! Helpers shared by the tutorial examples.
#![allow(dead_code)]

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use cottontail::{Channel, Connection};

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

/// Ctrl-C as the Python tutorials handle it, gracefully: the consumer stops, the program prints
/// `Interrupted` and exits 0.
///
/// The first Ctrl-C calls [`Channel::stop_consuming`] on the channel given to
/// [`stop_consuming_on`](Interrupt::stop_consuming_on): the message being handled is finished
/// and acked (the worker finishes its task), messages the broker had sent ahead are requeued,
/// and `start_consuming` returns; the program then prints `Interrupted` and closes the
/// connection. A second Ctrl-C, or a stop the broker does not answer, is the hard way: the
/// handler closes the connection at once, which ends whatever is consuming with an error that
/// [`finish`](Interrupt::finish) turns into the same `Interrupted` line, and the worker's
/// [`sleep`](Interrupt::sleep) ends at once, leaving its task unacked (back to the queue, as
/// when Python's `time.sleep` is interrupted).
#[derive(Clone)]
pub struct Interrupt {
    state: Arc<State>,
}

#[derive(Default)]
struct State {
    /// Ctrl-C presses so far (0, 1: stop gracefully, 2 or more: now).
    presses: Mutex<u32>,
    changed: Condvar,
    consuming: Mutex<Option<Channel>>,
}

impl Interrupt {
    /// Installs the Ctrl-C handler for `connection` (see the type's docs).
    pub fn on_ctrl_c(connection: &Connection) -> Interrupt {
        let interrupt = Interrupt {
            state: Arc::default(),
        };
        let on_ctrl_c = interrupt.clone();
        let connection = connection.clone();
        ctrlc::set_handler(move || {
            let first = {
                let mut presses = on_ctrl_c.lock();
                *presses += 1;
                *presses == 1
            };
            let channel = on_ctrl_c
                .state
                .consuming
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let stopped = match channel {
                Some(channel) if first => channel.stop_consuming(None).is_ok(),
                _ => false,
            };
            if !stopped {
                // The hard way: a second press, or the graceful stop failed.
                {
                    let mut presses = on_ctrl_c.lock();
                    *presses = (*presses).max(2);
                }
                on_ctrl_c.state.changed.notify_all();
                let _ = connection.close();
            }
        })
        .expect("installing the Ctrl-C handler");
        interrupt
    }

    /// The channel whose consumers the first Ctrl-C stops.
    pub fn stop_consuming_on(&self, channel: &Channel) {
        *self
            .state
            .consuming
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(channel.clone());
    }

    /// Whether Ctrl-C was pressed.
    pub fn happened(&self) -> bool {
        *self.lock() > 0
    }

    /// Sleeps for `duration`, or less if Ctrl-C is pressed the hard way (twice) meanwhile, as
    /// Ctrl-C interrupts Python's `time.sleep`; true if it was. A first Ctrl-C lets the sleep
    /// (the task) finish.
    pub fn sleep(&self, duration: Duration) -> bool {
        let (presses, _) = self
            .state
            .changed
            .wait_timeout_while(self.lock(), duration, |presses| *presses < 2)
            .unwrap_or_else(|p| p.into_inner());
        *presses >= 2
    }

    /// The program's result after consuming ended: after a Ctrl-C, Python's `Interrupted` line
    /// and success (whether consuming stopped gracefully or ended with the error of a closed
    /// connection).
    pub fn finish(&self, result: cottontail::Result<()>) -> cottontail::Result<()> {
        match result {
            _ if self.happened() => {
                println!("Interrupted");
                Ok(())
            }
            other => other,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, u32> {
        self.state.presses.lock().unwrap_or_else(|p| p.into_inner())
    }
}
