//! Remote results with correlation ids: the compute node. Port of the `compute.py` of the
//! article "python使用rabbitmq实例七，相互关联编号correlation id" (Python 2, pika 0.x).
//!
//! Declares `compute_queue`, takes one request at a time (`basic_qos` prefetch 1) and answers
//! each number `n` with `n + 1`, published through the default exchange to the request's
//! `reply_to` queue with the request's `correlation_id`, then acks the request. It prints
//! ` [*] Waiting for n`, then ` [.] increase(10)` for each request. Ctrl-C stops consuming
//! (`stop_consuming`: see `support::Interrupt`), closes the connection, prints `Interrupted` and
//! exits 0. Several compute nodes may run at once: the broker shares the requests between them.
//!
//! Run: `cargo run --example compute` (pairs with `cargo run --example center`, or the Python
//! `tests/interop/center.py`). The broker is `localhost` unless `AMQP_HOST` says otherwise.

mod support;

use cottontail::{
    BasicConsumeOptions, BasicProperties, Connection, ConnectionParameters, PublishOptions,
    QosOptions, QueueDeclareOptions, RejectOptions,
};

/// Adds 1 to `n`: the "computation".
fn increase(n: i64) -> i64 {
    n + 1
}

fn main() -> cottontail::Result<()> {
    let connection = Connection::open(ConnectionParameters::new(support::broker_host()))?;
    let channel = connection.channel()?;

    channel.queue_declare("compute_queue", QueueDeclareOptions::default())?;
    // Installed before the first line, so a Ctrl-C once it shows always prints `Interrupted`.
    let interrupt = support::Interrupt::on_ctrl_c(&connection);
    interrupt.stop_consuming_on(&channel);
    println!(" [*] Waiting for n");

    channel.basic_qos(QosOptions {
        prefetch_count: 1,
        ..Default::default()
    })?;
    channel.basic_consume(
        "compute_queue",
        |ch, method, props, body| {
            let text = String::from_utf8_lossy(body);
            // The original's int(body) raises on anything but a number and kills the node; a
            // bad request is dropped (rejected without requeue) instead.
            let Ok(n) = text.trim().parse::<i64>() else {
                eprintln!(" [!] not a number: {}", support::python_bytes(body));
                return ch.basic_reject(method.delivery_tag, RejectOptions { requeue: false });
            };
            println!(" [.] increase({text})");
            let response = increase(n);

            let mut properties = BasicProperties::default();
            if let Some(correlation_id) = props.correlation_id() {
                properties = properties.with_correlation_id(correlation_id);
            }
            match props.reply_to() {
                Some(reply_to) => ch.basic_publish_with(
                    "",
                    reply_to,
                    response.to_string().as_bytes(),
                    &PublishOptions {
                        properties,
                        ..Default::default()
                    },
                )?,
                None => eprintln!(" [!] increase({n}) requested without reply_to: answer dropped"),
            }
            ch.basic_ack(method.delivery_tag, false)
        },
        BasicConsumeOptions::default(),
    )?;

    interrupt.finish(channel.start_consuming())
}
