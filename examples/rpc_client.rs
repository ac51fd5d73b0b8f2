//! Tutorial 6, "RPC": the client. Port of the official `rpc_client.py`.
//!
//! Declares an exclusive, server-named callback queue and consumes it (auto-ack), then asks
//! for `fib(30)`: it publishes `30` to `rpc_queue` with `reply_to` set to the callback queue and
//! a fresh uuid4 `correlation_id`, and runs the connection's events
//! (`process_data_events`, as the Python client does) until the reply with that correlation id
//! arrives; replies with any other id are ignored. It prints ` [x] Requesting fib(30)`, then
//! ` [.] Got 832040`, and exits. It keeps the tutorial's callback queue and hand-written
//! matching; `rpc_direct_reply_to` makes the same call with cottontail's `RpcClient`.
//!
//! Run: `cargo run --example rpc_client` (pairs with `cargo run --example rpc_server`, or the
//! Python `rpc_server.py`, which must be running). The broker is `localhost` unless `AMQP_HOST`
//! says otherwise.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cottontail::{
    BasicConsumeOptions, BasicProperties, Channel, Connection, ConnectionParameters,
    PublishOptions, QueueDeclareOptions,
};

/// What the consumer callback and `call` share: the id being waited for and its reply.
#[derive(Default)]
struct Pending {
    corr_id: Option<String>,
    response: Option<Vec<u8>>,
}

/// The tutorial's `FibonacciRpcClient`.
struct FibonacciRpcClient {
    connection: Connection,
    channel: Channel,
    callback_queue: String,
    pending: Arc<Mutex<Pending>>,
}

impl FibonacciRpcClient {
    fn new() -> cottontail::Result<Self> {
        let connection = Connection::open(ConnectionParameters::new(support::broker_host()))?;
        let channel = connection.channel()?;

        let result = channel.queue_declare(
            "",
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
        )?;
        let callback_queue = result.queue;

        let pending = Arc::new(Mutex::new(Pending::default()));
        let on_response = pending.clone();
        channel.basic_consume(
            &callback_queue,
            move |_ch, _method, props, body| {
                let mut pending = on_response.lock().unwrap_or_else(|p| p.into_inner());
                let corr_id = props.correlation_id();
                if pending.corr_id.is_some() && pending.corr_id.as_deref() == corr_id {
                    pending.response = Some(body.to_vec());
                }
            },
            BasicConsumeOptions {
                auto_ack: true,
                ..Default::default()
            },
        )?;

        Ok(FibonacciRpcClient {
            connection,
            channel,
            callback_queue,
            pending,
        })
    }

    fn call(&self, n: u64) -> cottontail::Result<u64> {
        let corr_id = uuid::Uuid::new_v4().to_string();
        *self.lock() = Pending {
            corr_id: Some(corr_id.clone()),
            response: None,
        };
        self.channel.basic_publish_with(
            "",
            "rpc_queue",
            n.to_string().as_bytes(),
            &PublishOptions {
                properties: BasicProperties::default()
                    .with_reply_to(self.callback_queue.as_str())
                    .with_correlation_id(corr_id),
                ..Default::default()
            },
        )?;
        let response = loop {
            if let Some(response) = self.lock().response.take() {
                break response;
            }
            // pika's process_data_events(time_limit=None): wait until something happened.
            self.connection.process_data_events(Duration::MAX)?;
        };
        // Python's int(self.response).
        String::from_utf8_lossy(&response)
            .trim()
            .parse()
            .map_err(|e| {
                cottontail::Error::InvalidArgument(format!(
                    "the reply {} is not a number: {e}",
                    support::python_bytes(&response)
                ))
            })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn main() -> cottontail::Result<()> {
    let fibonacci_rpc = FibonacciRpcClient::new()?;

    println!(" [x] Requesting fib(30)");
    let response = fibonacci_rpc.call(30)?;
    println!(" [.] Got {response}");
    fibonacci_rpc.connection.close()?;
    Ok(())
}
