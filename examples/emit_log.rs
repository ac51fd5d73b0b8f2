//! Tutorial 3, "Publish/Subscribe": the producer. Port of the official `emit_log.py`.
//!
//! Declares the fanout exchange `logs` and publishes one log message to it (the routing key is
//! empty: a fanout exchange ignores it and copies the message to every bound queue). The message
//! is the command-line arguments joined by spaces, or `info: Hello World!` without any. Prints
//! ` [x] Sent <message>`, e.g. ` [x] Sent info: Hello World!` (the message is a `str` in
//! Python, so it prints as plain text). With no consumer running, the message is simply lost.
//!
//! Run: `cargo run --example emit_log -- info: Hello World!` (pairs with
//! `cargo run --example receive_logs`, or with the Python `receive_logs.py`; every running
//! receiver gets every message). The broker is `localhost` unless `AMQP_HOST` says otherwise.

mod support;

use cottontail::{Connection, ConnectionParameters, ExchangeDeclareOptions, ExchangeType};

fn main() -> cottontail::Result<()> {
    let connection = Connection::open(ConnectionParameters::new(support::broker_host()))?;
    let channel = connection.channel()?;

    channel.exchange_declare(
        "logs",
        ExchangeDeclareOptions {
            exchange_type: ExchangeType::Fanout,
            ..Default::default()
        },
    )?;

    let mut message = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    if message.is_empty() {
        message = "info: Hello World!".into();
    }
    channel.basic_publish("logs", "", message.as_bytes())?;
    println!(" [x] Sent {message}");
    connection.close()?;
    Ok(())
}
