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
//! Ctrl-C stops consuming gracefully (`stop_consuming`: see `support::Interrupt`): a task in
//! progress is finished (` [x] Done`) and acked, tasks the broker had sent ahead go back to the
//! queue, and the worker prints `Interrupted` and exits 0, as `receive` does. A second Ctrl-C
//! stops at once, as Ctrl-C interrupts Python's `time.sleep`: the task is not acked and goes
//! back to the queue.
//!
//! Run: `cargo run --example worker` (pairs with `cargo run --example new_task -- Hello...`, or
//! with the Python `new_task.py`; run two workers to see the tasks shared fairly). The broker
//! is `localhost` unless `AMQP_HOST` says otherwise.

mod support;

use std::time::Duration;

use cottontail::{
    BasicConsumeOptions, Connection, ConnectionParameters, QosOptions, QueueDeclareOptions,
};

fn main() -> cottontail::Result<()> {
    let connection = Connection::open(ConnectionParameters::new(support::broker_host()))?;

    let interrupt = support::Interrupt::on_ctrl_c(&connection);
    interrupt.finish(work(&connection, interrupt.clone()))
}

/// The tutorial's program, from the channel on. Returns when consuming ends: after Ctrl-C (see
/// `support::Interrupt`), on an error, or once the broker cancels the consumer.
fn work(connection: &Connection, interrupt: support::Interrupt) -> cottontail::Result<()> {
    let channel = connection.channel()?;
    interrupt.stop_consuming_on(&channel);

    channel.queue_declare(
        "task_queue",
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
    )?;
    println!(" [*] Waiting for messages. To exit press CTRL+C");

    channel.basic_qos(QosOptions {
        prefetch_count: 1,
        ..Default::default()
    })?;
    channel.basic_consume(
        "task_queue",
        move |ch, method, _properties, body| {
            println!(" [x] Received {}", String::from_utf8_lossy(body));
            let dots = body.iter().filter(|&&b| b == b'.').count() as u64;
            // A second Ctrl-C interrupts the work at once, as it interrupts Python's
            // `time.sleep`; a first one lets it finish.
            if interrupt.sleep(Duration::from_secs(dots)) {
                // A second Ctrl-C: the connection is closing; the task goes back to the queue
                // unacked.
                return Ok(());
            }
            println!(" [x] Done");
            ch.basic_ack(method.delivery_tag, false)
        },
        BasicConsumeOptions::default(),
    )?;

    channel.start_consuming()
}
