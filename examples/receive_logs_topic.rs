//! Tutorial 5, "Topics": the consumer. Port of the official `receive_logs_topic.py`.
//!
//! Declares the topic exchange `topic_logs` and a fresh exclusive, broker-named queue, binds
//! the queue to `topic_logs` once per binding key given on the command line (patterns of
//! dot-separated words where `*` stands for exactly one word and `#` for zero or more: `#` gets
//! everything, `kern.*` all of facility `kern`, `*.critical` every critical log), and prints
//! each message as ` [x] <routing key>:<body>`, the body as Python prints `bytes`:
//! ` [x] kern.critical:b'A critical kernel error'`. Without any binding key it writes
//! `Usage: <program> [binding_key]...` to stderr and exits with status 1. Ctrl-C stops
//! consuming (`stop_consuming`: see `support::Interrupt`), closes the connection, prints
//! `Interrupted` and exits 0, as `receive` does.
//!
//! Run: `cargo run --example receive_logs_topic -- "kern.*" "*.critical"` (pairs with
//! `cargo run --example emit_log_topic -- kern.critical "A critical kernel error"`, or with the
//! Python `emit_log_topic.py`). The broker is `localhost` unless `AMQP_HOST` says otherwise.

mod support;

use cottontail::{
    BasicConsumeOptions, Connection, ConnectionParameters, ExchangeDeclareOptions, ExchangeType,
    QueueBindOptions, QueueDeclareOptions,
};

fn main() -> cottontail::Result<()> {
    let connection = Connection::open(ConnectionParameters::new(support::broker_host()))?;

    let interrupt = support::Interrupt::on_ctrl_c(&connection);

    interrupt.finish(receive_logs_topic(&connection, &interrupt))
}

/// The tutorial's program, from the channel on. Returns when consuming ends: after Ctrl-C
/// (see `support::Interrupt`), on an error, or once the broker cancels the consumer.
fn receive_logs_topic(
    connection: &Connection,
    interrupt: &support::Interrupt,
) -> cottontail::Result<()> {
    let channel = connection.channel()?;
    interrupt.stop_consuming_on(&channel);

    channel.exchange_declare(
        "topic_logs",
        ExchangeDeclareOptions {
            exchange_type: ExchangeType::Topic,
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

    let args: Vec<String> = std::env::args().collect();
    let binding_keys = args.get(1..).unwrap_or_default();
    if binding_keys.is_empty() {
        let program = args.first().map_or("receive_logs_topic", String::as_str);
        eprintln!("Usage: {program} [binding_key]...");
        std::process::exit(1);
    }

    for binding_key in binding_keys {
        channel.queue_bind(
            &queue_name,
            "topic_logs",
            QueueBindOptions {
                routing_key: Some(binding_key.clone()),
                ..Default::default()
            },
        )?;
    }

    println!(" [*] Waiting for logs. To exit press CTRL+C");

    channel.basic_consume(
        &queue_name,
        |_ch, method, _properties, body| {
            println!(
                " [x] {}:{}",
                method.routing_key,
                support::python_bytes(body)
            );
        },
        BasicConsumeOptions {
            auto_ack: true,
            ..Default::default()
        },
    )?;

    channel.start_consuming()
}
