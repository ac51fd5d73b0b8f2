//! Tutorial 2, "Work Queues": the producer. Port of the official `new_task.py`.
//!
//! Declares the durable queue `task_queue` and publishes one task to it through the default
//! exchange, marked persistent (`delivery_mode` 2), so it survives a broker restart. The task is
//! the command-line arguments joined by spaces, or `Hello World!` without any; each `.` in it
//! stands for one second of work for the worker. Prints ` [x] Sent <task>`, e.g.
//! ` [x] Sent First message.` (the task is a `str` in Python, so it prints as plain text).
//!
//! Run: `cargo run --example new_task -- First message.` (pairs with
//! `cargo run --example worker`, or with the Python `worker.py`; start several workers to see
//! the tasks shared between them). The broker is `localhost` unless `AMQP_HOST` says otherwise.

mod support;

use cottontail::{
    BasicProperties, Connection, ConnectionParameters, DeliveryMode, PublishOptions,
    QueueDeclareOptions,
};

fn main() -> cottontail::Result<()> {
    let connection = Connection::open(ConnectionParameters::new(support::broker_host()))?;
    let channel = connection.channel()?;

    channel.queue_declare(
        "task_queue",
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
    )?;

    let mut message = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    if message.is_empty() {
        message = "Hello World!".into();
    }
    channel.basic_publish_with(
        "",
        "task_queue",
        message.as_bytes(),
        &PublishOptions {
            // pika.DeliveryMode.Persistent
            properties: BasicProperties::default().with_delivery_mode(DeliveryMode::Persistent),
            ..Default::default()
        },
    )?;
    println!(" [x] Sent {message}");
    connection.close()?;
    Ok(())
}
