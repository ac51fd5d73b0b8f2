//! Tutorial 3, "Publish/Subscribe": the consumer. Port of the official `receive_logs.py`.
//!
//! Declares the fanout exchange `logs` and a fresh queue of its own (`queue_declare("")` with
//! `exclusive`: the broker names it, e.g. `amq.gen-JzTY20BRgKO-HjmUJj0wLg`, and deletes it when
//! the connection closes), binds that queue to `logs` (so `rabbitmqctl list_bindings` shows
//! `logs exchange amq.gen-... queue amq.gen-... []`), and prints every log message it receives,
//! as Python prints a `bytes` body: ` [x] b'info: Hello World!'`. Ctrl-C stops consuming
//! (`stop_consuming`: see `support::Interrupt`), closes the connection, prints `Interrupted` and
//! exits 0, as `receive` does.
//!
//! Run: `cargo run --example receive_logs` (pairs with `cargo run --example emit_log`, or with
//! the Python `emit_log.py`; run several receivers and each gets every message). The broker is
//! `localhost` unless `AMQP_HOST` says otherwise.

mod support;

use cottontail::{
    BasicConsumeOptions, Connection, ConnectionParameters, ExchangeDeclareOptions, ExchangeType,
    QueueBindOptions, QueueDeclareOptions,
};

fn main() -> cottontail::Result<()> {
    let connection = Connection::open(ConnectionParameters::new(support::broker_host()))?;

    let interrupt = support::Interrupt::on_ctrl_c(&connection);

    interrupt.finish(receive_logs(&connection, &interrupt))
}

/// The tutorial's program, from the channel on. Returns when consuming ends: after Ctrl-C
/// (see `support::Interrupt`), on an error, or once the broker cancels the consumer.
fn receive_logs(connection: &Connection, interrupt: &support::Interrupt) -> cottontail::Result<()> {
    let channel = connection.channel()?;
    interrupt.stop_consuming_on(&channel);

    channel.exchange_declare(
        "logs",
        ExchangeDeclareOptions {
            exchange_type: ExchangeType::Fanout,
            ..Default::default()
        },
    )?;

    let result = channel.queue_declare(
        "",
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
    )?;
    let queue_name = result.queue;

    channel.queue_bind(&queue_name, "logs", QueueBindOptions::default())?;

    println!(" [*] Waiting for logs. To exit press CTRL+C");

    channel.basic_consume(
        &queue_name,
        |_ch, _method, _properties, body| {
            println!(" [x] {}", support::python_bytes(body));
        },
        BasicConsumeOptions {
            auto_ack: true,
            ..Default::default()
        },
    )?;

    channel.start_consuming()
}
