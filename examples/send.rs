//! Tutorial 1, "Hello World!": the producer. Port of the official `send.py`.
//!
//! Declares the queue `hello`, publishes `Hello World!` to it through the default exchange and
//! prints ` [x] Sent 'Hello World!'`.
//!
//! Run: `cargo run --example send` (pairs with `cargo run --example receive`, or with the
//! Python `receive.py`). The broker is `localhost` unless `AMQP_HOST` says otherwise.

mod support;

use cottontail::{Connection, ConnectionParameters, QueueDeclareOptions};

fn main() -> cottontail::Result<()> {
    let connection = Connection::open(ConnectionParameters::new(support::broker_host()))?;
    let channel = connection.channel()?;

    channel.queue_declare("hello", QueueDeclareOptions::default())?;

    channel.basic_publish("", "hello", b"Hello World!")?;
    println!(" [x] Sent 'Hello World!'");
    connection.close()?;
    Ok(())
}
