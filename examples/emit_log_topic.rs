//! Tutorial 5, "Topics": the producer. Port of the official `emit_log_topic.py`.
//!
//! Declares the topic exchange `topic_logs` and publishes one log message to it with a routing
//! key of dot-separated words, `<facility>.<severity>` (e.g. `kern.critical`); queues bound
//! with a matching pattern (`*` one word, `#` zero or more) get it. Arguments: the routing key,
//! then the message words. As in the Python program, the first argument is taken as the
//! routing key only when a message follows it: with fewer than two arguments the key is
//! `anonymous.info`. The message defaults to `Hello World!`. Prints
//! ` [x] Sent <routing key>:<message>`, e.g. ` [x] Sent kern.critical:A critical kernel error`
//! (both are `str`s in Python, so they print as plain text).
//!
//! Run: `cargo run --example emit_log_topic -- kern.critical "A critical kernel error"` (pairs
//! with `cargo run --example receive_logs_topic -- "kern.*" "*.critical"`, or with the Python
//! `receive_logs_topic.py`). The broker is `localhost` unless `AMQP_HOST` says otherwise.

mod support;

use cottontail::{Connection, ConnectionParameters, ExchangeDeclareOptions, ExchangeType};

fn main() -> cottontail::Result<()> {
    let connection = Connection::open(ConnectionParameters::new(support::broker_host()))?;
    let channel = connection.channel()?;

    channel.exchange_declare(
        "topic_logs",
        ExchangeDeclareOptions {
            exchange_type: ExchangeType::Topic,
            ..Default::default()
        },
    )?;

    let args: Vec<String> = std::env::args().collect();
    // `sys.argv[1] if len(sys.argv) > 2 else 'anonymous.info'`: a lone argument is ignored.
    let routing_key = if args.len() > 2 {
        args[1].as_str()
    } else {
        "anonymous.info"
    };
    let mut message = args.get(2..).unwrap_or_default().join(" ");
    if message.is_empty() {
        message = "Hello World!".into();
    }
    channel.basic_publish("topic_logs", routing_key, message.as_bytes())?;
    println!(" [x] Sent {routing_key}:{message}");
    connection.close()?;
    Ok(())
}
