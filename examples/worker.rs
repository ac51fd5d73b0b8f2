//! Tutorial 2, "Work Queues": the worker. Port of the official `worker.py`.
//!
//! Declares the durable queue `task_queue`, asks for one unacknowledged task at a time
//! (`basic_qos` prefetch 1, so a busy worker gets no new task and the tasks go to whichever
//! worker is free), and for each task prints ` [x] Received <task>`, sleeps one second per `.`
//! in it, prints ` [x] Done` and only then acknowledges it (manual ack), so a task whose worker
//! dies before the ack is delivered again to another worker. The Python worker prints
//! `body.decode()`, the body as text, not a `bytes` repr: so does this one, e.g.
//! ` [x] Received First message.`.
//!
//! Ctrl-C, even in the middle of a task, closes the connection (the unacknowledged task goes
//! back to the queue), prints `Interrupted` and exits 0, as `receive` does.
//!
//! Run: `cargo run --example worker` (pairs with `cargo run --example new_task -- Hello...`, or
//! with the Python `new_task.py`; run two workers to see the tasks shared fairly). The broker
//! is `localhost` unless `AMQP_HOST` says otherwise.

mod support;

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use cottontail::{BasicConsumeOptions, Connection, ConnectionParameters, QueueDeclareOptions};

/// Set by Ctrl-C; a task's sleep waits on it, so Ctrl-C interrupts the work at once, as it
/// interrupts Python's `time.sleep`.
#[derive(Default)]
struct Interrupted {
    flag: Mutex<bool>,
    changed: Condvar,
}

impl Interrupted {
    fn set(&self) {
        *self.flag.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.changed.notify_all();
    }

    fn is_set(&self) -> bool {
        *self.flag.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sleeps for `duration`, or less if Ctrl-C comes first; true if it did.
    fn sleep(&self, duration: Duration) -> bool {
        let flag = self.flag.lock().unwrap_or_else(|p| p.into_inner());
        let (flag, _) = self
            .changed
            .wait_timeout_while(flag, duration, |interrupted| !*interrupted)
            .unwrap_or_else(|p| p.into_inner());
        *flag
    }
}

fn main() -> cottontail::Result<()> {
    let connection = Connection::open(ConnectionParameters::new(support::broker_host()))?;

    let interrupted = Arc::new(Interrupted::default());
    let on_ctrl_c = connection.clone();
    let flag = interrupted.clone();
    ctrlc::set_handler(move || {
        flag.set();
        let _ = on_ctrl_c.close();
    })
    .expect("installing the Ctrl-C handler");

    match work(&connection, interrupted.clone()) {
        Err(_) if interrupted.is_set() => {
            println!("Interrupted");
            Ok(())
        }
        other => other,
    }
}

/// The tutorial's program, from the channel on. Returns when consuming ends: on an error
/// (Ctrl-C closes the connection), or once the broker cancels the consumer.
fn work(connection: &Connection, interrupted: Arc<Interrupted>) -> cottontail::Result<()> {
    let channel = connection.channel()?;

    channel.queue_declare(
        "task_queue",
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
    )?;
    println!(" [*] Waiting for messages. To exit press CTRL+C");

    channel.basic_qos(0, 1, false)?;
    channel.basic_consume(
        "task_queue",
        move |ch, method, _properties, body| {
            println!(" [x] Received {}", String::from_utf8_lossy(body));
            let dots = body.iter().filter(|&&b| b == b'.').count() as u64;
            if interrupted.sleep(Duration::from_secs(dots)) {
                // Ctrl-C: the connection is closing; the task goes back to the queue unacked.
                return Ok(());
            }
            println!(" [x] Done");
            ch.basic_ack(method.delivery_tag, false)
        },
        BasicConsumeOptions::default(),
    )?;

    channel.start_consuming()
}
