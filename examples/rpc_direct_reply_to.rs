//! Tutorial 6, "RPC", with RabbitMQ's direct reply-to instead of a callback queue.
//!
//! The same client as `rpc_client`, but it declares no queue: a [`RpcClient`] consumes the
//! pseudo-queue `amq.rabbitmq.reply-to` (auto-ack, as RabbitMQ requires, and before publishing,
//! on the channel it publishes on), sends the request `30` to `rpc_queue` with
//! `reply_to = "amq.rabbitmq.reply-to"` and a fresh uuid4 `correlation_id`, and returns the
//! reply with that id. The broker rewrites the `reply_to` to a name routed straight back to the
//! client's consumer, so the server needs no change. It prints ` [x] Requesting fib(30)`, then
//! ` [.] Got 832040`, and exits. Unlike the Python client, which waits for ever, the call gives
//! up after the connection's `rpc_timeout` (10 s). See
//! <https://www.rabbitmq.com/docs/direct-reply-to>.
//!
//! Run: `cargo run --example rpc_direct_reply_to` (pairs with `cargo run --example
//! rpc_server`, or the Python `rpc_server.py`, which must be running). The broker is
//! `localhost` unless `AMQP_HOST` says otherwise.

mod support;

use cottontail::{CallOptions, Connection, ConnectionParameters, RpcClient};

fn main() -> cottontail::Result<()> {
    let connection = Connection::open(ConnectionParameters::new(support::broker_host()))?;
    let fibonacci_rpc = RpcClient::new(&connection)?;

    println!(" [x] Requesting fib(30)");
    let reply = fibonacci_rpc.call("", "rpc_queue", b"30", CallOptions::default())?;
    // Python's int(response).
    let response: u64 = String::from_utf8_lossy(&reply.body)
        .trim()
        .parse()
        .map_err(|e| {
            cottontail::Error::InvalidArgument(format!(
                "the reply {} is not a number: {e}",
                support::python_bytes(&reply.body)
            ))
        })?;
    println!(" [.] Got {response}");
    connection.close()?;
    Ok(())
}
