//! Tutorial 1, "Hello World!": the consumer. Port of the official `receive.py`.
//!
//! Declares the queue `hello` and prints every message it receives, as Python prints a `bytes`
//! body: ` [x] Received b'Hello World!'`. Ctrl-C stops consuming (`stop_consuming`: see
//! `support::Interrupt`), closes the connection, prints `Interrupted`
//! and exits 0, as the Python script does.
//!
//! Run: `cargo run --example receive` (pairs with `cargo run --example send`, or with the
//! Python `send.py`). The broker is `localhost` unless `AMQP_HOST` says otherwise.

mod support;

use cottontail::{BasicConsumeOptions, Connection, ConnectionParameters, QueueDeclareOptions};

fn main() -> cottontail::Result<()> {
    let connection = Connection::open(ConnectionParameters::new(support::broker_host()))?;
    let channel = connection.channel()?;

    channel.queue_declare("hello", QueueDeclareOptions::default())?;

    channel.basic_consume(
        "hello",
        |_ch, _method, _properties, body| {
            println!(" [x] Received {}", support::python_bytes(body));
        },
        BasicConsumeOptions {
            auto_ack: true,
            ..Default::default()
        },
    )?;

    let interrupt = support::Interrupt::on_ctrl_c(&connection);
    interrupt.stop_consuming_on(&channel);

    println!(" [*] Waiting for messages. To exit press CTRL+C");
    interrupt.finish(channel.start_consuming())
}
