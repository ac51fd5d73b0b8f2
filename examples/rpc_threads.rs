//! Tutorial 6's RPC from many threads at once: 8 threads share one [`RpcClient`] (one
//! connection, one channel, direct reply-to) and ask the tutorial's server for Fibonacci
//! numbers; each checks that every answer is its own.
//!
//! Thread `i` (from 0) asks, one after the other, for `fib(n)` with `n = 2 + i + 8 * k` for
//! `k` in `0..3`: 24 distinct numbers from 2 to 25, whose Fibonacci numbers are all different,
//! so an answer handed to the wrong thread would show. Each thread prints
//! ` [x] Requesting fib(n)` and, when its answer comes, ` [.] fib(n)=<answer>`; the lines of
//! different threads interleave in any order. A wrong answer ends the program with an error.
//! There is no Python original: `center.py` does the same with a callback queue of its own
//! and a hand-written reply dispatcher (see `center`).
//!
//! Run: `cargo run --example rpc_threads` (pairs with `cargo run --example rpc_server`, or the
//! Python `rpc_server.py`, which must be running). The broker is `localhost` unless
//! `AMQP_HOST` says otherwise.

mod support;

use std::thread;

use cottontail::{CallOptions, Connection, ConnectionParameters, RpcClient};

/// Errors of this example: the client's, or a wrong answer.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

const THREADS: u64 = 8;
const CALLS: u64 = 3;

/// The answer to check against, computed here (iteratively).
fn fib(n: u64) -> u64 {
    let (mut a, mut b) = (0u64, 1u64);
    for _ in 0..n {
        (a, b) = (b, a + b);
    }
    a
}

fn main() -> Result<(), BoxError> {
    let connection = Connection::open(ConnectionParameters::new(support::broker_host()))?;
    let client = RpcClient::new(&connection)?;

    let threads: Vec<_> = (0..THREADS)
        .map(|i| {
            let client = client.clone();
            thread::spawn(move || -> Result<(), BoxError> {
                for k in 0..CALLS {
                    let n = 2 + i + THREADS * k;
                    println!(" [x] Requesting fib({n})");
                    let reply = client.call(
                        "",
                        "rpc_queue",
                        n.to_string().as_bytes(),
                        CallOptions::default(),
                    )?;
                    let answer = String::from_utf8_lossy(&reply.body);
                    if answer.trim().parse::<u64>().ok() != Some(fib(n)) {
                        return Err(format!(
                            "fib({n}) is {}, but the answer was {}",
                            fib(n),
                            support::python_bytes(&reply.body)
                        )
                        .into());
                    }
                    println!(" [.] fib({n})={answer}");
                }
                Ok(())
            })
        })
        .collect();

    let mut result = Ok(());
    for thread in threads {
        let outcome = thread.join().expect("a calling thread panicked");
        if result.is_ok() {
            result = outcome;
        }
    }
    connection.close()?;
    result
}
