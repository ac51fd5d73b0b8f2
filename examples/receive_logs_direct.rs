//! Tutorial 4, "Routing": the consumer. Port of the official `receive_logs_direct.py`.
//!
//! Declares the direct exchange `direct_logs` and a fresh exclusive, broker-named queue, binds
//! the queue to `direct_logs` once per severity given on the command line (so it gets only the
//! messages published with one of those routing keys), and prints each message as
//! ` [x] <severity>:<body>`, the body as Python prints `bytes`: ` [x] error:b'Run. Run. Or it
//! will explode.'`. Without any severity it writes `Usage: <program> [info] [warning] [error]`
//! to stderr and exits with status 1. Ctrl-C stops consuming (`stop_consuming`: see
//! `support::Interrupt`), closes the connection, prints `Interrupted` and
//! exits 0, as `receive` does.
//!
//! Run: `cargo run --example receive_logs_direct -- warning error` (pairs with
//! `cargo run --example emit_log_direct -- error Run. Run. Or it will explode.`, or with the
//! Python `emit_log_direct.py`). The broker is `localhost` unless `AMQP_HOST` says otherwise.

mod support;

use cottontail::{
    BasicConsumeOptions, Connection, ConnectionParameters, ExchangeDeclareOptions, ExchangeType,
    QueueBindOptions, QueueDeclareOptions,
};

fn main() -> cottontail::Result<()> {
    let connection = Connection::open(ConnectionParameters::new(support::broker_host()))?;

    let interrupt = support::Interrupt::on_ctrl_c(&connection);

    interrupt.finish(receive_logs_direct(&connection, &interrupt))
}

/// The tutorial's program, from the channel on. Returns when consuming ends: after Ctrl-C
/// (see `support::Interrupt`), on an error, or once the broker cancels the consumer.
fn receive_logs_direct(
    connection: &Connection,
    interrupt: &support::Interrupt,
) -> cottontail::Result<()> {
    let channel = connection.channel()?;
    interrupt.stop_consuming_on(&channel);

    channel.exchange_declare(
        "direct_logs",
        ExchangeDeclareOptions {
            exchange_type: ExchangeType::Direct,
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
    let severities = args.get(1..).unwrap_or_default();
    if severities.is_empty() {
        let program = args.first().map_or("receive_logs_direct", String::as_str);
        eprintln!("Usage: {program} [info] [warning] [error]");
        std::process::exit(1);
    }

    for severity in severities {
        channel.queue_bind(
            &queue_name,
            "direct_logs",
            QueueBindOptions {
                routing_key: Some(severity.clone()),
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
