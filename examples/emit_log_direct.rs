//! Tutorial 4, "Routing": the producer. Port of the official `emit_log_direct.py`.
//!
//! Declares the direct exchange `direct_logs` and publishes one log message to it with the
//! severity as routing key, so only the queues bound with that severity get it. The severity
//! is the first command-line argument (`info` without one) and the message the remaining
//! arguments joined by spaces (`Hello World!` without any). Prints
//! ` [x] Sent <severity>:<message>`, e.g. ` [x] Sent error:Run. Run. Or it will explode.`
//! (both are `str`s in Python, so they print as plain text).
//!
//! Run: `cargo run --example emit_log_direct -- error Run. Run. Or it will explode.` (pairs
//! with `cargo run --example receive_logs_direct -- warning error`, or with the Python
//! `receive_logs_direct.py`). The broker is `localhost` unless `AMQP_HOST` says otherwise.

mod support;

use cottontail::{Connection, ConnectionParameters, ExchangeDeclareOptions, ExchangeType};

fn main() -> cottontail::Result<()> {
    let connection = Connection::open(ConnectionParameters::new(support::broker_host()))?;
    let channel = connection.channel()?;

    channel.exchange_declare(
        "direct_logs",
        ExchangeDeclareOptions {
            exchange_type: ExchangeType::Direct,
            ..Default::default()
        },
    )?;

    let args: Vec<String> = std::env::args().collect();
    let severity = args.get(1).map_or("info", String::as_str);
    let mut message = args.get(2..).unwrap_or_default().join(" ");
    if message.is_empty() {
        message = "Hello World!".into();
    }
    channel.basic_publish("direct_logs", severity, message.as_bytes())?;
    println!(" [x] Sent {severity}:{message}");
    connection.close()?;
    Ok(())
}
