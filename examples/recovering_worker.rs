//! Tutorial 2's worker (`worker.rs`) with automatic recovery on: the same queue, the same
//! output, and it outlives a lost connection.
//!
//! Declares the durable queue `task_queue`, takes one task at a time (prefetch 1, manual ack),
//! prints ` [x] Received <task>`, sleeps one second per `.`, prints ` [x] Done` and acks, as
//! `worker` does; it pairs with `new_task` or the Python `new_task.py`.
//!
//! The one difference is `with_recovery(RecoveryPolicy::default())`: when the connection is
//! lost (the network, a heartbeat timeout, the broker closing it with 320 CONNECTION_FORCED),
//! the connection reconnects (at once, then after 100 ms doubling up to 10 s), opens its
//! channel again with its prefetch, declares `task_queue` again and registers the consumer
//! again with its tag; `start_consuming` goes on as if nothing happened. A recovery callback
//! prints what happens:
//!
//! ```text
//!  [!] connection lost: connection closed by the broker: 320 ...
//!  [!] recovered after 104.2ms (localhost:5672, attempt 2)
//! ```
//!
//! A task in progress when the connection is lost cannot be acked afterwards (its delivery tag
//! belonged to the old connection: `Error::StaleDeliveryTag`); the broker delivers it again,
//! with `redelivered` set, so it is done twice. Sleeping is harmless to repeat; real work should
//! be idempotent. The worker then prints ` [!] not acked: the connection was lost during the
//! task; the broker delivers it again` (before the ` [!] connection lost` line: recovery
//! callbacks run once the task's callback has returned).
//!
//! Ctrl-C works as in `worker` (`support::Interrupt`): the first finishes the task and stops,
//! printing `Interrupted`; a second stops at once. Closing the connection also ends recovery.
//!
//! Try it: `cargo run --example recovering_worker`, then `cargo run --example new_task --
//! Hello...`, and while the task runs or afterwards force a reconnect with
//! `rabbitmqctl close_all_connections test` (as root, or `sudo`); then publish again. The broker
//! is `localhost` unless `AMQP_HOST` says otherwise.

mod support;

use std::time::Duration;

use cottontail::{
    BasicConsumeOptions, Connection, ConnectionParameters, Error, QosOptions, QueueDeclareOptions,
    RecoveryEvent, RecoveryPolicy,
};

fn main() -> cottontail::Result<()> {
    let connection = Connection::open(
        ConnectionParameters::new(support::broker_host()).with_recovery(RecoveryPolicy::default()),
    )?;
    // Runs on the thread in `start_consuming`, between deliveries and while it waits for the
    // recovery.
    connection.add_on_recovery_callback(|_connection, event: &RecoveryEvent| match event {
        RecoveryEvent::ConnectionLost { cause } => println!(" [!] connection lost: {cause}"),
        RecoveryEvent::AttemptFailed { attempt, error } => {
            println!(" [!] reconnection attempt {attempt} failed: {error}")
        }
        RecoveryEvent::Recovered(report) => println!(
            " [!] recovered after {:.1?} ({}:{}, attempt {})",
            report.took, report.host, report.port, report.attempt
        ),
        // Only with `with_max_attempts` / `with_max_elapsed`: `start_consuming` then returns
        // this error.
        RecoveryEvent::Failed { cause } => println!(" [!] recovery failed: {cause}"),
        _ => {}
    });

    let interrupt = support::Interrupt::on_ctrl_c(&connection);
    interrupt.finish(work(&connection, interrupt.clone()))
}

/// The tutorial's program, from the channel on (as in `worker`). Returns when consuming ends:
/// after Ctrl-C, on an error recovery does not cover, or once the broker cancels the consumer.
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
            if interrupt.sleep(Duration::from_secs(dots)) {
                // A second Ctrl-C: the task goes back to the queue unacked.
                return Ok(());
            }
            println!(" [x] Done");
            match ch.basic_ack(method.delivery_tag, false) {
                // The connection was lost while we worked: this delivery's channel is gone,
                // nothing was sent, and the broker delivers the task again.
                Err(Error::StaleDeliveryTag { .. }) => {
                    println!(
                        " [!] not acked: the connection was lost during the task; \
                         the broker delivers it again"
                    );
                    Ok(())
                }
                other => other,
            }
        },
        BasicConsumeOptions::default(),
    )?;

    channel.start_consuming()
}
