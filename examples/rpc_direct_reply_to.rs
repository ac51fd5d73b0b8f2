//! Tutorial 6, "RPC", with RabbitMQ's direct reply-to instead of a callback queue.
//!
//! The same client as `rpc_client`, but it declares no queue: it consumes the pseudo-queue
//! `amq.rabbitmq.reply-to` (auto-ack, as RabbitMQ requires, and before publishing, on the
//! channel it publishes on), and sends its request with `reply_to = "amq.rabbitmq.reply-to"`.
//! The broker rewrites that to a name routed straight back to this consumer, so the server needs
//! no change. It prints ` [x] Requesting fib(30)`, then ` [.] Got 832040`, and exits.
//! See <https://www.rabbitmq.com/docs/direct-reply-to>.
//!
//! Run: `cargo run --example rpc_direct_reply_to` (pairs with `cargo run --example
//! rpc_server`, or the Python `rpc_server.py`, which must be running). The broker is
//! `localhost` unless `AMQP_HOST` says otherwise.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cottontail::{
    BasicConsumeOptions, BasicProperties, Connection, ConnectionParameters, PublishOptions,
};

/// The pseudo-queue of direct reply-to.
const REPLY_TO: &str = "amq.rabbitmq.reply-to";

fn main() -> cottontail::Result<()> {
    let connection = Connection::open(ConnectionParameters::new(support::broker_host()))?;
    let channel = connection.channel()?;

    // (correlation id waited for, its reply), shared with the consumer callback.
    let pending: Arc<Mutex<(String, Option<Vec<u8>>)>> = Arc::default();
    let on_response = pending.clone();
    channel.basic_consume(
        REPLY_TO,
        move |_ch, _method, props, body| {
            let mut pending = on_response.lock().unwrap_or_else(|p| p.into_inner());
            if props.correlation_id() == Some(pending.0.as_str()) {
                pending.1 = Some(body.to_vec());
            }
            Ok(())
        },
        BasicConsumeOptions {
            auto_ack: true,
            ..Default::default()
        },
    )?;

    println!(" [x] Requesting fib(30)");
    let corr_id = uuid::Uuid::new_v4().to_string();
    pending.lock().unwrap_or_else(|p| p.into_inner()).0 = corr_id.clone();
    channel.basic_publish_with(
        "",
        "rpc_queue",
        b"30",
        &PublishOptions {
            properties: BasicProperties::default()
                .with_reply_to(REPLY_TO)
                .with_correlation_id(corr_id),
            ..Default::default()
        },
    )?;
    let response = loop {
        if let Some(response) = pending.lock().unwrap_or_else(|p| p.into_inner()).1.take() {
            break response;
        }
        connection.process_data_events(Duration::MAX)?;
    };
    let response: u64 = String::from_utf8_lossy(&response)
        .trim()
        .parse()
        .map_err(|e| {
            cottontail::Error::InvalidArgument(format!(
                "the reply {} is not a number: {e}",
                support::python_bytes(&response)
            ))
        })?;
    println!(" [.] Got {response}");
    connection.close()?;
    Ok(())
}
