//! Remote results with correlation ids: the control center. Port of the `center.py` of the
//! article "python使用rabbitmq实例七，相互关联编号correlation id" (Python 2, pika 0.x).
//!
//! Several threads share ONE connection and ONE exclusive, server-named callback queue. Each
//! thread sends its number to `compute_queue` with `reply_to` = the callback queue and its own
//! uuid4 `correlation_id`, and receives exactly its own result: a single consumer on the
//! callback queue hands every reply to the thread waiting for its correlation id, through a
//! `Mutex<HashMap<correlation id, mpsc::Sender>>` (the original's `self.response` dictionary).
//! Each thread prints ` [x] Requesting increase(10)` and, when its answer arrives,
//! ` [.] increase(10)=11`; the lines of different threads interleave in any order.
//!
//! Run: `cargo run --example center -- [THREADS [REQUESTS]]` with at least one compute node
//! running (`cargo run --example compute`, or the Python `tests/interop/compute.py`). Without
//! arguments it does what the original does: 5 threads sending 10, 20, 30, 40 and 50. Thread
//! `i` (from 0) of `THREADS` sends, one after the other, `10 * (1 + i + k * THREADS)` for
//! `k` in `0..REQUESTS` (REQUESTS defaults to 1), so every number is distinct and a reply
//! delivered to the wrong thread would show. The broker is `localhost` unless `AMQP_HOST` says
//! otherwise.
//!
//! This port keeps the original's callback queue and dictionary. With cottontail's `RpcClient`
//! (direct reply-to, replies routed to their callers by the client) the threads need no
//! dispatcher of their own: see `rpc_threads`.

mod support;

use std::collections::HashMap;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::thread;

use cottontail::{
    BasicConsumeOptions, BasicProperties, Channel, Connection, ConnectionParameters,
    PublishOptions, QueueDeclareOptions,
};

/// Errors of this example: the client's, or a reply that is not a number.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The threads waiting for a reply, by correlation id; `None` once the consumer has stopped.
type Waiting = Arc<Mutex<Option<HashMap<String, Sender<Vec<u8>>>>>>;

/// The control center: the shared connection, channel and callback queue, and the threads
/// waiting for replies (the original's `self.response` dictionary).
struct Center {
    connection: Connection,
    channel: Channel,
    callback_queue: String,
    waiting: Waiting,
}

impl Center {
    fn new() -> cottontail::Result<Center> {
        let connection = Connection::open(ConnectionParameters::new(support::broker_host()))?;
        let channel = connection.channel()?;

        // The queue the replies come back on.
        let result = channel.queue_declare(
            "",
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
        )?;
        let callback_queue = result.queue;

        let waiting: Waiting = Arc::new(Mutex::new(Some(HashMap::new())));
        let on_response = waiting.clone();
        channel.basic_consume(
            &callback_queue,
            move |_ch, _method, props, body| {
                // Hand the reply to the thread that sent the request; a reply nobody waits for
                // (a late duplicate, another client's) is ignored.
                let sender = props.correlation_id().and_then(|id| {
                    lock(&on_response)
                        .as_mut()
                        .and_then(|waiting| waiting.remove(id))
                });
                if let Some(sender) = sender {
                    let _ = sender.send(body.to_vec());
                }
            },
            BasicConsumeOptions {
                auto_ack: true,
                ..Default::default()
            },
        )?;

        Ok(Center {
            connection,
            channel,
            callback_queue,
            waiting,
        })
    }

    /// Runs the consumer of the callback queue on this thread until it is stopped or the
    /// connection fails; then wakes every thread still waiting, with an error.
    fn dispatch_replies(&self) -> cottontail::Result<()> {
        let result = self.channel.start_consuming();
        // Dropping the senders ends the waits.
        lock(&self.waiting).take();
        result
    }

    /// Sends `n` to the compute nodes and waits for the result; callable from any thread.
    fn request(&self, n: i64) -> Result<i64, BoxError> {
        let corr_id = uuid::Uuid::new_v4().to_string();
        let (sender, receiver) = mpsc::channel();
        // Registered before publishing, so the reply cannot arrive first.
        match lock(&self.waiting).as_mut() {
            Some(waiting) => waiting.insert(corr_id.clone(), sender),
            None => return Err(self.stopped()),
        };
        // Send the computation request with the reply queue and the correlation id. The
        // channel is shared: each publish goes out as one unit, whatever the other threads do.
        let published = self.channel.basic_publish_with(
            "",
            "compute_queue",
            n.to_string().as_bytes(),
            &PublishOptions {
                properties: BasicProperties::default()
                    .with_reply_to(self.callback_queue.as_str())
                    .with_correlation_id(corr_id.as_str()),
                ..Default::default()
            },
        );
        if let Err(e) = published {
            if let Some(waiting) = lock(&self.waiting).as_mut() {
                waiting.remove(&corr_id);
            }
            return Err(e.into());
        }
        // Wait for the returned data.
        let body = receiver.recv().map_err(|_| self.stopped())?;
        let text = String::from_utf8_lossy(&body);
        Ok(text.trim().parse().map_err(|e| {
            format!(
                "the reply {} is not a number: {e}",
                support::python_bytes(&body)
            )
        })?)
    }

    /// Why no reply can come any more.
    fn stopped(&self) -> BoxError {
        match self.connection.close_reason() {
            Some(e) => e.into(),
            None => "the consumer of the callback queue stopped".into(),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// `[THREADS [REQUESTS]]`, defaulting to the original's 5 threads of 1 request.
fn arguments() -> (usize, usize) {
    let mut args = std::env::args().skip(1).map(|a| {
        a.parse::<usize>()
            .ok()
            .filter(|&v| v > 0)
            .unwrap_or_else(|| {
                eprintln!("usage: center [THREADS [REQUESTS]] (positive numbers)");
                std::process::exit(2)
            })
    });
    let threads = args.next().unwrap_or(5);
    let requests = args.next().unwrap_or(1);
    (threads, requests)
}

fn main() -> Result<(), BoxError> {
    let (threads, requests) = arguments();
    let center = Arc::new(Center::new()?);

    // The consumer runs on its own thread, dispatching replies to the waiting threads.
    let consumer = {
        let center = center.clone();
        thread::spawn(move || center.dispatch_replies())
    };

    let workers: Vec<_> = (0..threads)
        .map(|i| {
            let center = center.clone();
            thread::spawn(move || -> Result<(), BoxError> {
                for k in 0..requests {
                    let num = 10 * (1 + i + k * threads) as i64;
                    println!(" [x] Requesting increase({num})");
                    let response = center.request(num)?;
                    println!(" [.] increase({num})={response}");
                }
                Ok(())
            })
        })
        .collect();

    let mut result = Ok(());
    for worker in workers {
        let outcome = worker.join().expect("a requesting thread panicked");
        if result.is_ok() {
            result = outcome;
        }
    }
    center.channel.stop_consuming(None)?;
    consumer.join().expect("the consuming thread panicked")?;
    center.connection.close()?;
    result
}
