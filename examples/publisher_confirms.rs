//! Tutorial 7, "Publisher Confirms". Port of the official `PublisherConfirms.java` (the
//! tutorials have no Python version of this one).
//!
//! Publishes 50,000 messages three times, each time on a fresh connection to a fresh queue in
//! confirm mode, and times three ways of waiting for the broker's confirms:
//!
//! - individually: each publish waits for its own confirm (pika's `basic_publish` after
//!   `confirm_delivery`), the slowest way;
//! - in batch: publish 100 messages without waiting
//!   ([`basic_publish_deferred`](cottontail::Channel::basic_publish_deferred)), then wait for
//!   the 100 confirms at once ([`wait_for_confirms`](cottontail::Channel::wait_for_confirms),
//!   at most 5 s, as Java's `waitForConfirmsOrDie(5_000)`);
//! - asynchronously: publish everything without waiting, keeping each message's body by its
//!   sequence number, and let the confirms come back meanwhile; wait once at the end (at most
//!   60 s), reporting any nacked message on stderr as the Java program does.
//!
//! A nack in the first two, or a timeout, stops the program with an error. It prints, with the
//! measured times:
//!
//! ```text
//! Published 50,000 messages individually in 5,549 ms
//! Published 50,000 messages in batch in 1,234 ms
//! Published 50,000 messages and handled confirms asynchronously in 567 ms
//! ```
//!
//! Run: `cargo run --release --example publisher_confirms -- [MESSAGE_COUNT] [--keep-queues]`.
//! It needs no other program. The Java program's queues are auto-delete, so they stay behind,
//! full, since they never get a consumer; here each queue is exclusive, gone with its connection
//! after its run (or if the program fails). With `--keep-queues` they are declared as in Java
//! and kept, and each result line is followed by ` [i] queue <name> kept`. The broker is
//! `localhost` unless `AMQP_HOST` says otherwise.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cottontail::{Channel, Connection, ConnectionParameters, PublishOptions, QueueDeclareOptions};

/// Errors of this example: the client's, or confirms that did not all come back positive.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

const MESSAGE_COUNT: u64 = 50_000;

/// `[MESSAGE_COUNT] [--keep-queues]`.
struct Args {
    message_count: u64,
    keep_queues: bool,
}

fn arguments() -> Args {
    let mut args = Args {
        message_count: MESSAGE_COUNT,
        keep_queues: false,
    };
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--keep-queues" => args.keep_queues = true,
            n => match n.replace(['_', ','], "").parse() {
                Ok(count) => args.message_count = count,
                Err(_) => {
                    eprintln!("usage: publisher_confirms [MESSAGE_COUNT] [--keep-queues]");
                    std::process::exit(2);
                }
            },
        }
    }
    args
}

fn create_connection() -> cottontail::Result<Connection> {
    Connection::open(ConnectionParameters::new(support::broker_host()))
}

/// A fresh connection, and a channel in confirm mode publishing to a fresh queue named by a
/// uuid: exclusive, or, to keep it, as in Java (not durable, not exclusive, auto-delete).
fn set_up(args: &Args) -> cottontail::Result<(Connection, Channel, String)> {
    let connection = create_connection()?;
    let channel = connection.channel()?;
    let queue = uuid::Uuid::new_v4().to_string();
    channel.queue_declare(
        &queue,
        QueueDeclareOptions {
            exclusive: !args.keep_queues,
            auto_delete: true,
            ..Default::default()
        },
    )?;
    channel.confirm_delivery()?;
    Ok((connection, channel, queue))
}

/// Closes the connection, which deletes the exclusive queue, or says the queue is kept.
fn tear_down(connection: Connection, queue: &str, args: &Args) -> cottontail::Result<()> {
    if args.keep_queues {
        println!(" [i] queue {queue} kept");
    }
    connection.close()
}

fn publish_messages_individually(args: &Args) -> Result<(), BoxError> {
    let (connection, channel, queue) = set_up(args)?;

    let start = Instant::now();
    for i in 0..args.message_count {
        let body = i.to_string();
        // In confirm mode basic_publish returns once the broker confirmed the message, and
        // reports a nack as Error::Nack.
        channel.basic_publish("", &queue, body.as_bytes())?;
    }
    let elapsed = start.elapsed();
    println!(
        "Published {} messages individually in {} ms",
        thousands(args.message_count),
        thousands(elapsed.as_millis() as u64)
    );
    tear_down(connection, &queue, args)?;
    Ok(())
}

fn publish_messages_in_batch(args: &Args) -> Result<(), BoxError> {
    let (connection, channel, queue) = set_up(args)?;

    let batch_size = 100;
    let mut outstanding_message_count = 0;

    let start = Instant::now();
    for i in 0..args.message_count {
        let body = i.to_string();
        channel.basic_publish_deferred("", &queue, body.as_bytes(), &PublishOptions::default())?;
        outstanding_message_count += 1;

        if outstanding_message_count == batch_size {
            wait_for_confirms_or_die(&channel, Duration::from_secs(5))?;
            outstanding_message_count = 0;
        }
    }

    if outstanding_message_count > 0 {
        wait_for_confirms_or_die(&channel, Duration::from_secs(5))?;
    }
    let elapsed = start.elapsed();
    println!(
        "Published {} messages in batch in {} ms",
        thousands(args.message_count),
        thousands(elapsed.as_millis() as u64)
    );
    tear_down(connection, &queue, args)?;
    Ok(())
}

fn handle_publish_confirms_asynchronously(args: &Args) -> Result<(), BoxError> {
    let (connection, channel, queue) = set_up(args)?;

    // Java's outstandingConfirms map: body by publish sequence number.
    let mut outstanding_confirms = BTreeMap::new();

    let start = Instant::now();
    for i in 0..args.message_count {
        let body = i.to_string();
        let sequence_number = channel.basic_publish_deferred(
            "",
            &queue,
            body.as_bytes(),
            &PublishOptions::default(),
        )?;
        outstanding_confirms.insert(sequence_number, body);
    }

    // The broker has been confirming all along; wait for whatever is still outstanding.
    let outcome = channel.wait_for_confirms(Some(Duration::from_secs(60)))?;
    for sequence_number in &outcome.nacked {
        let body = outstanding_confirms
            .get(sequence_number)
            .map_or("?", String::as_str);
        eprintln!(
            "Message with body {body} has been nack-ed. Sequence number: {sequence_number}, \
             multiple: false"
        );
    }
    // Acked or nacked, every message is settled now (Java removes nacked ones too).
    outstanding_confirms.clear();

    let elapsed = start.elapsed();
    println!(
        "Published {} messages and handled confirms asynchronously in {} ms",
        thousands(args.message_count),
        thousands(elapsed.as_millis() as u64)
    );
    tear_down(connection, &queue, args)?;
    Ok(())
}

/// Java's `waitForConfirmsOrDie`: every message published so far must be acked within
/// `timeout`.
fn wait_for_confirms_or_die(channel: &Channel, timeout: Duration) -> Result<(), BoxError> {
    let outcome = channel.wait_for_confirms(Some(timeout))?;
    if outcome.all_confirmed() {
        Ok(())
    } else {
        Err(format!("messages nack-ed: {:?}", outcome.nacked).into())
    }
}

/// `n` with thousands separators, as Java's `%,d` prints it: `50,000`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn main() -> Result<(), BoxError> {
    let args = arguments();
    publish_messages_individually(&args)?;
    publish_messages_in_batch(&args)?;
    handle_publish_confirms_asynchronously(&args)?;
    Ok(())
}
