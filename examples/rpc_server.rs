//! Tutorial 6, "RPC": the server. Port of the official `rpc_server.py`.
//!
//! Declares the queue `rpc_queue`, takes one request at a time (`basic_qos` prefetch 1), and
//! answers each request `n` with the `n`-th Fibonacci number (the tutorial's deliberately slow
//! recursive `fib`), published through the default exchange to the request's `reply_to` queue
//! with the request's `correlation_id`; then it acks the request. It prints
//! ` [x] Awaiting RPC requests`, then ` [.] fib(30)` for each request. Ctrl-C stops consuming
//! (`stop_consuming`: see `support::Interrupt`), closes the connection, prints `Interrupted` and
//! exits 0, as `receive` does.
//!
//! Run: `cargo run --example rpc_server` (pairs with `cargo run --example rpc_client`,
//! `cargo run --example rpc_direct_reply_to`, or the Python `rpc_client.py`). The broker is
//! `localhost` unless `AMQP_HOST` says otherwise.

mod support;

use cottontail::{
    BasicConsumeOptions, BasicProperties, Connection, ConnectionParameters, PublishOptions,
    QosOptions, QueueDeclareOptions, RejectOptions,
};

/// The tutorial's Fibonacci function, recursive on purpose ("probably the slowest recursive
/// implementation possible"), so a request takes visible time for large `n`.
fn fib(n: u64) -> u64 {
    match n {
        0 => 0,
        1 => 1,
        n => fib(n - 1) + fib(n - 2),
    }
}

fn main() -> cottontail::Result<()> {
    let connection = Connection::open(ConnectionParameters::new(support::broker_host()))?;
    let channel = connection.channel()?;

    channel.queue_declare("rpc_queue", QueueDeclareOptions::default())?;

    channel.basic_qos(QosOptions {
        prefetch_count: 1,
        ..Default::default()
    })?;
    channel.basic_consume(
        "rpc_queue",
        |ch, method, props, body| {
            // Python's int(body) raises on anything but a number; a server should not die of
            // one bad request, so it is dropped (rejected without requeue) instead.
            let Some(n) = std::str::from_utf8(body)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
            else {
                eprintln!(" [!] not a number: {}", support::python_bytes(body));
                return ch.basic_reject(method.delivery_tag, RejectOptions { requeue: false });
            };

            println!(" [.] fib({n})");
            let response = fib(n);

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
                None => eprintln!(" [!] fib({n}) requested without reply_to: answer dropped"),
            }
            ch.basic_ack(method.delivery_tag, false)
        },
        BasicConsumeOptions::default(),
    )?;

    let interrupt = support::Interrupt::on_ctrl_c(&connection);
    interrupt.stop_consuming_on(&channel);

    println!(" [x] Awaiting RPC requests");
    interrupt.finish(channel.start_consuming())
}
