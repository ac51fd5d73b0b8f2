//! # cottontail
//!
//! A blocking, thread-safe RabbitMQ (AMQP 0-9-1) client whose API mirrors Python pika's
//! `BlockingConnection` / `BlockingChannel`: the same method names, the same defaults, in Rust
//! idiom (option structs with `Default` where pika takes keyword arguments, `Result` where it
//! raises).
//!
//! ## Quick start
//!
//! ```no_run
//! use cottontail::{Connection, ConnectionParameters, QueueDeclareOptions};
//!
//! let connection = Connection::open(ConnectionParameters::new("localhost"))?;
//! let channel = connection.channel()?;
//! channel.queue_declare("hello", QueueDeclareOptions::default())?;
//! channel.basic_publish("", "hello", b"Hello World!")?;
//! println!(" [x] Sent 'Hello World!'");
//!
//! channel.basic_consume("hello", |_ch, _method, _properties, body| {
//!     println!(" [x] Received {}", String::from_utf8_lossy(body));
//! }, cottontail::BasicConsumeOptions { auto_ack: true, ..Default::default() })?;
//! channel.start_consuming()?;
//! # Ok::<(), cottontail::Error>(())
//! ```
//!
//! ## Common tasks
//!
//! ### A worker: manual acks, a prefetch window, dead-lettering
//!
//! Failed messages go to a dead-letter exchange instead of coming back for ever; each message
//! is acked only once its work is done, so a worker that dies loses nothing.
//!
//! ```no_run
//! use cottontail::{
//!     BasicConsumeOptions, Connection, ConnectionParameters, ExchangeDeclareOptions,
//!     ExchangeType, FieldTable, NackOptions, QosOptions, QueueBindOptions, QueueDeclareOptions,
//! };
//!
//! let connection = Connection::open(ConnectionParameters::new("localhost"))?;
//! let channel = connection.channel()?;
//! let durable = QueueDeclareOptions { durable: true, ..Default::default() };
//! channel.exchange_declare("dead", ExchangeDeclareOptions {
//!     exchange_type: ExchangeType::Fanout,
//!     durable: true,
//!     ..Default::default()
//! })?;
//! channel.queue_declare("dead_letters", durable.clone())?;
//! channel.queue_bind("dead_letters", "dead", QueueBindOptions::default())?;
//! channel.queue_declare("tasks", QueueDeclareOptions {
//!     arguments: FieldTable::new().with("x-dead-letter-exchange", "dead"),
//!     ..durable
//! })?;
//! channel.basic_qos(QosOptions { prefetch_count: 10, ..Default::default() })?;
//! channel.basic_consume("tasks", |ch, method, _properties, body| {
//!     match std::str::from_utf8(body) {
//!         Ok(task) => {
//!             println!("working on {task}");
//!             ch.basic_ack(method.delivery_tag, false)
//!         }
//!         // Not worth retrying: to the dead-letter exchange.
//!         Err(_) => ch.basic_nack(method.delivery_tag, NackOptions { requeue: false, ..Default::default() }),
//!     }
//! }, BasicConsumeOptions::default())?;
//! channel.start_consuming()?;
//! # Ok::<(), cottontail::Error>(())
//! ```
//!
//! ### A confirming publisher, with returns
//!
//! In confirm mode `basic_publish_with` returns once the broker has the message; a mandatory
//! message no queue receives is [`Error::Unroutable`], carrying the message. For throughput,
//! publish a window without waiting and wait once.
//!
//! ```no_run
//! use cottontail::{
//!     BasicProperties, Connection, ConnectionParameters, DeliveryMode, Error, PublishOptions,
//! };
//!
//! let connection = Connection::open(ConnectionParameters::new("localhost"))?;
//! let channel = connection.channel()?;
//! channel.confirm_delivery()?;
//! let options = PublishOptions {
//!     properties: BasicProperties::default().with_delivery_mode(DeliveryMode::Persistent),
//!     mandatory: true,
//! };
//! match channel.basic_publish_with("orders", "eu.new", b"order 1", &options) {
//!     Ok(()) => println!("the broker has it"),
//!     Err(Error::Unroutable { message, .. }) => eprintln!("no queue for {}", message.routing_key),
//!     Err(Error::Nack { message, .. }) => eprintln!("the broker lost {:?}", message.body),
//!     Err(e) => return Err(e),
//! }
//! for i in 0..1000 {
//!     channel.basic_publish_deferred("orders", "eu.new", format!("order {i}").as_bytes(), &options)?;
//! }
//! let outcome = channel.wait_for_confirms(None)?;
//! for (seq, returned) in &outcome.returned_messages {
//!     eprintln!("message {seq} came back: {}", returned.reply_text());
//! }
//! for seq in &outcome.nacked {
//!     eprintln!("message {seq} was nacked: publish it again");
//! }
//! # Ok::<(), cottontail::Error>(())
//! ```
//!
//! ### Headers
//!
//! ```
//! use cottontail::{BasicProperties, FieldTable, FieldValue};
//!
//! let properties = BasicProperties::default()
//!     .with_header("x-retries", 3)
//!     .with_header("source", "billing")
//!     .with_header("tags", vec![FieldValue::from("a"), "b".into()]);
//! assert_eq!(properties.header("x-retries").and_then(FieldValue::as_i64), Some(3));
//! assert_eq!(properties.header("source").and_then(FieldValue::as_str), Some("billing"));
//! // A whole table, e.g. a headers exchange's binding arguments:
//! let binding = FieldTable::new().with("x-match", "any").with("source", "billing");
//! assert_eq!(binding.len(), 2);
//! ```
//!
//! ### An RPC client shared by threads
//!
//! [`RpcClient`] calls over direct reply-to: any number of threads share one client, each call
//! waits for its own reply with its own timeout, and [`rpc::serve`] is the server side.
//!
//! ```no_run
//! use std::time::Duration;
//! use cottontail::{CallOptions, Connection, ConnectionParameters, RpcClient};
//!
//! let connection = Connection::open(ConnectionParameters::new("localhost"))?;
//! let client = RpcClient::new(&connection)?;
//! let reply = client.call("", "rpc_queue", b"30", CallOptions {
//!     timeout: Some(Duration::from_secs(5)),
//!     // No server's queue there: fail at once with Error::Unroutable, not at the timeout.
//!     mandatory: true,
//!     ..Default::default()
//! })?;
//! println!("fib(30) = {}", String::from_utf8_lossy(&reply.body));
//! # Ok::<(), cottontail::Error>(())
//! ```
//!
//! ### TLS
//!
//! Certificates and host names are verified by default; give the CA when the broker's
//! certificate is not signed by one the system trusts.
//!
//! ```no_run
//! use cottontail::{Connection, ConnectionParameters, PlainCredentials, SslOptions};
//!
//! let tls = SslOptions::new().with_ca_file("/etc/rabbitmq/ca.pem")?;
//! let params = ConnectionParameters::new("broker.example.com")
//!     .with_credentials(PlainCredentials::new("app", "secret"))
//!     .with_ssl_options(Some(tls)); // port 5671 unless set
//! let connection = Connection::open(params)?;
//! // Or the pika URL form:
//! let connection = Connection::open_url("amqps://app:secret@broker.example.com/")?;
//! # Ok::<(), cottontail::Error>(())
//! ```
//!
//! ## Threading model
//!
//! A [`Connection`] owns the socket and one background thread named `cottontail-io`. That
//! thread reads and parses frames, assembles messages (method, header and body frames), routes
//! them by channel, answers and watches heartbeats, and writes what callers queued. It never
//! runs user code. Consumer callbacks run on the thread that calls
//! [`Channel::start_consuming`], as in pika; so a slow callback cannot starve heartbeats
//! (pika's best-known failure), and a panicking one cannot kill the connection.
//!
//! [`Connection`] and [`Channel`] are `Send + Sync` cheap handles (an `Arc` inside): clone them
//! into threads. Synchronous methods on one channel are serialised (AMQP allows one outstanding
//! per channel), each with a deadline (`rpc_timeout`, 10 s by default); use one channel per
//! thread for parallelism.
//!
//! ### The I/O design, and why
//!
//! native-tls streams cannot be split into a read half and a write half, and a lock held
//! across a blocking read would stall writers. So the I/O thread owns the stream, TCP or TLS
//! alike, in non-blocking mode, waiting on `mio` for readiness (DESIGN option (a), amiquip's
//! design). Callers encode their frames on their own thread and append them, a whole
//! publish (method + header + body frames) at a time, to one shared outbound buffer; the first
//! append into an empty buffer wakes the I/O thread with a `mio::Waker`. The I/O thread swaps
//! the buffer out and writes it; whatever callers queue meanwhile goes out in the next single
//! write, so a burst of publishes or acks costs the broker one read instead of one per frame.
//! On plain TCP, a caller that finds nothing queued and nothing half-written writes its frames
//! to the socket itself (non-blocking, under the buffer's lock), saving the wake-up; what the
//! socket does not take is queued. A publish that follows another within 20 us is queued
//! instead, so a publishing loop leaves in a few large writes. An ack or publish is therefore
//! on the wire when the call returns or one I/O-thread pass later (tens of microseconds);
//! [`Connection::close`] (and dropping the last handle) writes everything queued before
//! closing, and [`Connection::flush`] waits until it is written: a process that ends without
//! either (`std::process::exit`, a connection in a `static`) can lose the last publishes and
//! acks, where pika has written each before its call returns. See `BENCHMARKS.md` for the
//! measurements behind this choice.
//!
//! Reading works with one read token: whoever holds it reads and routes the socket for
//! everyone. On plain TCP a thread that waits on the connection (a consumer in
//! [`Channel::start_consuming`] or a [`Channel::consume`] iteration with nothing to hand out,
//! a caller waiting for a method's reply, a confirm or a close-ok) takes the token when it is
//! free and reads itself, so what it waits for reaches it without a hand-over between
//! threads; the others sleep until what they wait for has been routed. The I/O thread keeps
//! heartbeats, writes and timers, and reads whenever no user thread does. A thread that
//! leaves the token after reading something for itself puts it down ("parks" it): it is back
//! to read at no cost if it returns within a millisecond (a busy consumer), any other waiter
//! takes it at once, and otherwise the I/O thread takes it back when it next looks (it looks
//! by itself, within 10 ms in busy traffic and at most a second after a long quiet spell), so
//! what the broker says meanwhile (a channel closed for a bad publish, connection.blocked) is
//! still read while the callback runs. Under TLS only the I/O thread reads. The rules are
//! written once, in the engine's `token` module.
//!
//! One exception, for acks: while more deliveries wait in a channel's queue, consecutive
//! `basic_ack(tag, false)` calls (each tag right after the last) are held and written as one
//! `basic.ack(multiple=true)`, which settles exactly the messages acked and costs the broker
//! one ack instead of many. A held ack is written when the run ends or reaches 256 acks, before
//! any other frame of its channel, when a consumer of the channel waits for messages, before a
//! close, and otherwise by the I/O thread within 5 ms. Merging stops for good on a channel in
//! transaction mode or after `basic_recover`.
//!
//! Every buffer is bounded: callers wait when more than 4 MiB is queued for writing
//! (back-pressure, bounded by `rpc_timeout`; publishes also wait while the broker has the
//! connection blocked, up to `blocked_connection_timeout`). Reading pauses when the messages
//! the connection holds for its callers (deliveries queued for callbacks or `consume()`
//! iterators) pass 16 MiB and nobody waits for anything reading brings, and whoever waits
//! when they pass 64 MiB; heartbeat deadlines stand still meanwhile. Up to 64 MiB, reading goes
//! on while any thread waits for a reply, a confirm, a close-ok, a message or outbound room,
//! so an RPC or a publish from a consumer callback cannot deadlock behind the deliveries that
//! caused the pause. A channel the broker closes keeps what it had read for its consumers (to
//! hand the `auto_ack` ones out before the channel's error) outside these counts, since no
//! more arrive; it goes when the channel is pumped or dropped. Returned messages nobody
//! handles are kept up to 16 MiB per channel and 64 MiB per connection (bodies and headers).
//! A message being received is kept whole until its last frame, up to 512 MiB for the messages
//! in progress on all channels together. Use `basic_qos` prefetch to bound what the broker
//! pushes.
//!
//! ### Consuming and the event loop
//!
//! [`Channel::start_consuming`], the [`Channel::consume`] iterator and
//! [`Connection::process_data_events`] share one dispatcher that runs, on the calling thread,
//! consumer callbacks, return and cancel callbacks, timers ([`Connection::call_later`]),
//! [`Connection::add_callback_threadsafe`] callbacks and the blocked/unblocked callbacks.
//! `start_consuming` serves its own channel (so threads can each consume their own channel of
//! one connection), `process_data_events` every channel nobody else is consuming.
//!
//! As in pika, callbacks never nest: on a thread running a callback of a connection,
//! `process_data_events` and [`Connection::sleep`] only wait (the I/O thread keeps the
//! connection alive), and `start_consuming` or `consume()` on any of its channels is
//! [`Error::Reentrancy`] (a `consume()` iterator used there yields it once, then ends; pika
//! refuses only `start_consuming` there). So a callback never sees another one half-way, and
//! `connection.sleep(..)` inside a callback is a safe back-off. What falls due meanwhile runs when the thread next dispatches: in
//! `start_consuming` and `consume()`, right after the callback returns, before the next
//! delivery (also when deliveries never stop coming; pika would wait for the channel to run
//! dry); in `process_data_events`, after the deliveries that call is handling, as in pika.
//!
//! #### What a callback returns, and where its error goes
//!
//! Every callback returns `()` (it cannot fail) or a `Result<(), E>` with any error type `E`
//! that converts into [`BoxError`] ([`CallbackReturn`]): a cottontail [`Result`], so a consumer
//! callback can end with `ch.basic_ack(method.delivery_tag, false)`; `std::io::Result<()>`;
//! an application's own error; or `Result<(), BoxError>` to use `?` on all of them:
//!
//! ```no_run
//! # let connection = cottontail::Connection::open(cottontail::ConnectionParameters::default())?;
//! # let channel = connection.channel()?;
//! use cottontail::{BasicConsumeOptions, BoxError};
//!
//! channel.basic_consume("tasks", |ch, method, _properties, body| -> Result<(), BoxError> {
//!     let task: u64 = std::str::from_utf8(body)?.parse()?;
//!     std::fs::write(format!("/tmp/task-{task}"), body)?;
//!     ch.basic_ack(method.delivery_tag, false)?;
//!     Ok(())
//! }, BasicConsumeOptions::default())?;
//! match channel.start_consuming() {
//!     Ok(()) => {}
//!     // The callback's own error, as it returned it.
//!     Err(cottontail::Error::Callback(e)) => eprintln!("a callback failed: {e}"),
//!     // A cottontail error: the channel or connection failed, or the callback's basic_ack did.
//!     Err(e) => return Err(e),
//! }
//! # Ok::<(), cottontail::Error>(())
//! ```
//!
//! The error type is inferred from what the closure returns; a closure that only returns
//! `Ok(())` names it (`|..| -> cottontail::Result<()> { .. }`), or returns `()` instead.
//!
//! A callback's error ends the call that ran it, on the thread that called it: the first
//! callback that fails makes `start_consuming` return its error, a `consume()` iteration yield
//! it, `process_data_events` or `sleep` return it. That holds for every kind of callback,
//! timers and threadsafe callbacks included: they only ever run inside one of those calls. A
//! cottontail [`Error`] (say the callback's `basic_ack` failed because the channel closed)
//! comes back as it is; any other error comes back as [`Error::Callback`], whose
//! [`source()`](std::error::Error::source) is the callback's error, to downcast. A panic in a
//! callback is caught and becomes an [`Error::Callback`] too
//! ([`CallbackError::is_panic`]), so it cannot kill the connection. Nothing else stops: the
//! consumers stay registered, the channel open, a delivery whose callback failed stays
//! unacked unless the callback acked it (the broker delivers it again once the channel
//! closes; with a prefetch window, settle it first, by [`CallbackError::delivery_tag`], or it
//! keeps a place in the window), and the callbacks that were due after the failed one run at
//! the next call. A
//! `consume()` iterator goes on after yielding a callback's error.
//!
//! ### Request/reply
//!
//! [`RpcClient`] makes calls over RabbitMQ's direct reply-to from any number of threads of one
//! connection: each call waits for the reply with its own correlation id, at most its own
//! timeout, and one waiting caller at a time reads the replies for all (see the [`rpc`] module).
//!
//! ## Deadlines
//!
//! Nothing waits for ever on a broker that stopped answering: `socket_timeout` bounds each
//! socket wait while opening and `stack_timeout` the whole open (TLS handshake included,
//! however slowly the peer sends); `rpc_timeout` bounds every synchronous method, confirm wait
//! and [`Connection::close`] (also while the broker blocks the connection); a broker silent
//! for two heartbeat intervals is [`Error::HeartbeatTimeout`]. A publish waits at most
//! `rpc_timeout` for room in the outbound buffer; while the broker blocks the connection
//! (`connection.blocked`, a resource alarm) it waits until the broker unblocks it (pika's
//! publisher ends up waiting too, once the socket's buffers fill), and
//! `blocked_connection_timeout` (off by default, as in pika) bounds that by ending the connection ([`Error::ConnectionBlockedTimeout`]); `RpcClient::call` stops
//! at its own timeout. Only `start_consuming` waits without a deadline of its own, as in
//! pika: it returns when its consumers are cancelled or the channel or connection fails.
//!
//! ## What a hostile peer cannot do
//!
//! Every frame size is checked against the negotiated `frame_max` before anything is buffered;
//! a body longer than its header announced (even when its frame arrives in pieces), messages
//! in progress on all channels announcing more than 512 MiB together, content frames out of
//! order, frames on channels that are not open, unknown frame types, a bad
//! frame-end octet, a heartbeat with a payload, field tables nested deeper than 32 levels, a
//! tune below the protocol's minimum frame size, delivery tags that would overflow, a reply
//! that does not answer the request awaiting it (a consume-ok or cancel-ok for another
//! consumer tag included) and a connection.close-ok nobody asked for close the connection with
//! the AMQP reply code that fits (501 to 505) and reach every waiter as [`Error::Protocol`].
//! Nothing a peer sends makes cottontail panic or allocate more than the frames it actually
//! sends: a peer that sends requests and reads none of the replies finds reading paused once
//! a megabyte of them waits. A peer that reads slowly after closing the connection gets one
//! second for its close-ok; a TLS peer that trickles its handshake, `stack_timeout`.
//!
//! ## TLS and failover
//!
//! `amqps://` URLs or [`ConnectionParameters::with_ssl_options`] connect through native-tls,
//! verifying the certificate and host name unless told otherwise ([`SslOptions`]); a client
//! certificate with [`ExternalCredentials`] logs in with SASL EXTERNAL. [`Connection::open`]
//! takes a list of parameter sets to fail over between cluster nodes.
//!
//! ## Recovery
//!
//! Off by default, as in pika: a lost connection stays lost, and every call gets the error it
//! was lost with. One setting turns automatic recovery on ([`RecoveryPolicy`]; the URL form
//! is `?recovery=true`), and a recovery callback hears what happens:
//!
//! ```no_run
//! use cottontail::{Connection, ConnectionParameters, RecoveryEvent, RecoveryPolicy};
//!
//! let connection = Connection::open(
//!     ConnectionParameters::new("localhost").with_recovery(RecoveryPolicy::default()),
//! )?;
//! connection.add_on_recovery_callback(|_connection, event: &RecoveryEvent| match event {
//!     RecoveryEvent::ConnectionLost { cause } => eprintln!("connection lost: {cause}"),
//!     RecoveryEvent::AttemptFailed { attempt, error } => eprintln!("attempt {attempt}: {error}"),
//!     RecoveryEvent::Recovered(report) => {
//!         eprintln!("recovered after {:?} to {}:{}", report.took, report.host, report.port);
//!         for (old, new) in &report.renamed {
//!             eprintln!("server-named queue {old} is now {new}");
//!         }
//!     }
//!     RecoveryEvent::Failed { cause } => eprintln!("recovery gave up: {cause}"),
//!     _ => {}
//! });
//! # Ok::<(), cottontail::Error>(())
//! ```
//!
//! The callback runs where every cottontail callback runs, on a thread inside
//! [`Channel::start_consuming`], a [`Channel::consume`] iteration,
//! [`Connection::process_data_events`] or [`Connection::sleep`] (also while that thread waits
//! for the recovery); events nobody has run yet are kept, the last 64. Timers and threadsafe
//! callbacks run on time during that wait too, and any callback's error ends the call as it
//! does while connected, an [`Error::Timeout`] included.
//! `examples/recovering_worker.rs` is tutorial 2's worker with recovery on.
//!
//! **What starts a recovery.** A loss by a socket error or EOF, a TLS error, a heartbeat
//! timeout, or the broker closing the connection with 320 CONNECTION_FORCED (a node shutting
//! down, `rabbitmqctl close_connection`) or 541 INTERNAL_ERROR. Not: a close by the
//! application, a refused login or vhost, a protocol error, a blocked-connection timeout;
//! those close the connection as before. A channel the broker closes (404, 406...) is the
//! application's error as before, never recovered silently. [`Connection::open`] itself is
//! not retried by recovery (use `connection_attempts` and `retry_delay` for that).
//!
//! **How it reconnects.** Each attempt tries every parameter set given to
//! [`Connection::open`], in order (with several sets, the first one's policy counts). The
//! first attempt is made at once, the next after 100 ms, each delay twice the last up to
//! 10 s, a quarter of each random ([`RecoveryPolicy::with_initial_delay`], `with_max_delay`,
//! `with_jitter`). There is no limit unless [`RecoveryPolicy::with_max_attempts`] or
//! `with_max_elapsed` sets one; past it, [`RecoveryEvent::Failed`] is reported and every
//! call on the connection gets its error from then on.
//!
//! **What comes back.** Every channel, with its number, its `basic_qos` and confirm mode
//! (a channel in transaction mode is closed instead, with the loss's error, and listed in
//! [`RecoveryReport::closed_channels`]: its transaction went with the connection, and a
//! commit on a new channel would report success for publishes the broker never kept); the
//! exchanges, queues, queue bindings and exchange-to-exchange bindings
//! the connection declared (recording follows deletes and unbinds; passive declares record
//! nothing; an auto-delete queue is forgotten with its last consumer and an auto-delete
//! exchange with its last binding, as the broker deletes them; exclusive queues, which the
//! broker deleted with the old connection, are declared again); every consumer, with the same
//! tag, the same callback and the same `consume()` iterator. A server-named queue (declared as
//! `""`) comes back under a new name: each recovery's renames are in
//! [`RecoveryReport::renamed`], and [`Connection::current_queue_name`]`(old)` gives the name
//! now; one that is not exclusive and is still on the broker (it outlived the connection) is
//! kept as it is, with its name and messages. A consumer whose queue is
//! gone, or that [`RecoveryPolicy::with_topology_filter`] leaves out, is reported cancelled
//! (its cancel callbacks run, its iterator ends) instead of closing its channel; what was
//! not declared again is in [`RecoveryReport::skipped`]. `channel.flow` is not restored
//! (RabbitMQ does not implement `flow(false)`).
//!
//! **Calls meanwhile.** A call made while the connection recovers waits and then goes out on
//! the new connection: a method, a publish or an ack at most `rpc_timeout` (then
//! [`Error::Timeout`]),
//! `start_consuming` without limit, a `consume()` iterator up to its inactivity timeout (then
//! it yields [`Consumed::Inactive`]). A call in flight at the loss fails with the loss's
//! error. [`Connection::is_recovering`] tells whether a recovery is under way (meanwhile
//! [`Connection::is_open`] and [`Channel::is_open`] are false and `close_reason()` is the
//! loss), [`Connection::wait_for_recovery`] waits for it, and
//! [`Connection::recovery_generation`] counts recoveries. [`Connection::close`] during a
//! recovery stops it at its next step and returns once what it had opened again is closed
//! (consuming threads then end as after any close by the application); a channel closed
//! meanwhile stays closed, and a consumer cancelled meanwhile is not registered again.
//!
//! **Deliveries.** Delivery tags keep growing across recoveries, and each delivery carries
//! the generation it arrived in ([`Delivery::generation`]). A delivery from before a recovery
//! cannot be settled: its ack, nack or reject is [`Error::StaleDeliveryTag`], nothing is sent
//! and the channel stays open; the broker delivers the message again, with `redelivered`
//! set, unless it was auto-acked. A consumer callback that returns that error (the usual
//! `ch.basic_ack(method.delivery_tag, false)`), or the loss's own error, does not stop
//! consuming: it is logged. For the
//! same reason, manual-ack deliveries received but not yet handed to the application at the
//! loss are dropped (they come again); auto-ack ones are kept.
//!
//! **Confirms.** In confirm mode, a `basic_publish` whose confirm had not come at the loss
//! fails with [`Error::ConfirmUnknown`], carrying the message: it may or may not have reached
//! its queues. [`Channel::wait_for_confirms`] lists such messages in
//! [`ConfirmOutcome::unknown`], never as confirmed.
//!
//! **What stays the application's job.** Consumers must be idempotent: messages in progress
//! at a loss are delivered again. Publish `ConfirmUnknown` messages again if duplicates are
//! acceptable. Refer to server-named queues through `current_queue_name`. Handle
//! [`RecoveryEvent::Failed`] when the policy has a limit. Retry [`RpcClient`] calls and
//! `basic_get`s that were in flight at the loss: they fail with its error.
//!
//! ## Porting from pika
//!
//! | pika | cottontail |
//! |---|---|
//! | `pika.BlockingConnection(pika.ConnectionParameters('localhost'))` | `Connection::open(ConnectionParameters::new("localhost"))` |
//! | `pika.URLParameters(url)` | `Connection::open_url(url)` or `url.parse::<ConnectionParameters>()` |
//! | `connection.channel()` / `channel(channel_number=n)` | [`Connection::channel`] / [`Connection::channel_with_number`] |
//! | `channel.queue_declare(queue='', exclusive=True)` | `channel.queue_declare("", QueueDeclareOptions { exclusive: true, ..Default::default() })` |
//! | `result.method.queue` | `ok.queue` |
//! | `channel.exchange_declare(exchange='logs', exchange_type='fanout')` (pika 0.x: `type='fanout'`) | `channel.exchange_declare("logs", ExchangeDeclareOptions { exchange_type: ExchangeType::Fanout, ..Default::default() })` |
//! | `channel.queue_bind(exchange=..., queue=..., routing_key=...)` | `channel.queue_bind(queue, exchange, QueueBindOptions { routing_key: Some(..), ..Default::default() })` |
//! | `channel.basic_publish(exchange, routing_key, body)` | `channel.basic_publish(exchange, routing_key, body)` |
//! | `channel.basic_publish(exchange, routing_key, body, properties=pika.BasicProperties(delivery_mode=2), mandatory=True)` | `channel.basic_publish_with(exchange, routing_key, body, &PublishOptions { properties: BasicProperties::default().with_delivery_mode(2), mandatory: true })` |
//! | `properties.correlation_id`, `properties.headers['x']` | `properties.correlation_id()` (an `Option<&str>`), `properties.header("x")` (an `Option<&FieldValue>`) |
//! | `pika.DeliveryMode.Persistent`, `pika.spec.PERSISTENT_DELIVERY_MODE` | [`DeliveryMode::Persistent`] |
//! | `ExchangeType.fanout` | [`ExchangeType::Fanout`] |
//! | `channel.basic_qos(prefetch_count=1)` | `channel.basic_qos(QosOptions { prefetch_count: 1, ..Default::default() })` |
//! | `channel.basic_nack(tag, requeue=False)` / `basic_reject(tag, requeue=False)` | `channel.basic_nack(tag, NackOptions { requeue: false, ..Default::default() })` / `basic_reject(tag, RejectOptions { requeue: false })` |
//! | `channel.exchange_bind(destination, source, routing_key='k')` | `channel.exchange_bind(destination, source, ExchangeBindOptions { routing_key: "k".into(), ..Default::default() })` |
//! | `channel.basic_consume(queue, on_message_callback, auto_ack=True)` (pika 0.x: `basic_consume(callback, queue=..., no_ack=True)`) | `channel.basic_consume(queue, callback, BasicConsumeOptions { auto_ack: true, ..Default::default() })` |
//! | `def callback(ch, method, properties, body)` | `\|ch, method, properties, body\| { .. }`, returning `()` or any `Result<(), E>` ([`CallbackReturn`]) |
//! | an exception raised in a callback, out of `start_consuming()` | the callback's error, out of `start_consuming()` (as [`Error::Callback`] unless it is a cottontail [`Error`]) |
//! | `ch.basic_ack(delivery_tag=method.delivery_tag)` | `ch.basic_ack(method.delivery_tag, false)` |
//! | `channel.start_consuming()` / `stop_consuming()` / `stop_consuming(consumer_tag)` | [`Channel::start_consuming`] / `stop_consuming(None)` / `stop_consuming(Some(tag))` ([`Channel::stop_consuming`]) |
//! | `ch1.start_consuming()` also runs the consumers and return callbacks of `ch2` (pika runs every channel's events) | `start_consuming` runs its own channel's only (so threads can each consume a channel of one connection): run each channel's `start_consuming` on a thread of its own, or loop on [`Connection::process_data_events`], which runs every channel nobody else is consuming |
//! | `connection.sleep(5)` inside a callback (a back-off that keeps heartbeats; nothing else is dispatched meanwhile) | `connection.sleep(Duration::from_secs(5))?`, the same: no callback runs inside another |
//! | `connection.add_callback_threadsafe(cb)` (raises on a closed connection) | [`Connection::add_callback_threadsafe`]`(cb)?` |
//! | `for method, properties, body in channel.consume(queue, inactivity_timeout=1): ... break`, then `channel.consume(queue)` again resumes the same generator | `let mut consumer = channel.consume(queue, options)?;` then `for item in &mut consumer { .. break }`, and iterate `&mut consumer` again to go on: leaving a `for` over the [`Consumer`] itself drops it, which cancels the consumer (its unyielded messages go back to the queue; an `auto_ack` one's are lost, with a warning) |
//! | `channel.close()` or `connection.close()` in a callback or a `consume()` loop: `start_consuming()` returns, the generator ends | the same: `start_consuming()` returns `Ok(())`, the iterator ends without an error |
//! | a call in a `consume()` loop fails because the broker closed the channel (a passive declare's 404); the program catches it, and the generator then just ends | the iterator yields that close once more, then ends: `for item in consumer { let d = item?; .. }` leaves with the error; match it (`Err(e) if e.reply_code() == Some(404)`) to end the loop quietly |
//! | a `call_later(0, cb)` or `add_callback_threadsafe(cb)` queued while a batch of deliveries is being dispatched runs after the rest of the batch (what one socket read brought) | it runs after the callback that was running, before the next delivery: `add_callback_threadsafe(move \|\| ch.stop_consuming(None))` stops sooner (the deliveries not yet handed out go back to the queue; an `auto_ack` consumer's are dropped with a warning, as pika drops those that arrive after the batch) |
//! | `channel.basic_get(queue, auto_ack)` → `(method, properties, body)` or `(None, None, None)` | `channel.basic_get(queue, auto_ack)` → `Option<GetMessage>` |
//! | `channel.confirm_delivery()` | [`Channel::confirm_delivery`], plus [`Channel::basic_publish_deferred`] and [`Channel::wait_for_confirms`] for windows |
//! | `ch = connection.channel(); ch.basic_consume(q, cb)` in a loop, the channels kept open by the connection | keep each [`Channel`] (in a `Vec`, say): dropping its last handle closes it, and its consumers stop (with a warning in the log) |
//! | `basic_publish(...)` then `sys.exit()`: each publish was written before its call returned | [`Connection::close`] or dropping the connection writes what is queued; before `std::process::exit`, or with a connection in a `static`, call [`Connection::flush`] |
//! | exceptions | [`Error`] variants (the table is on [`Error`]) |
//!
//! ## Types, and what is promised about them
//!
//! Everything in the public API is cottontail's own: [`BasicProperties`], [`FieldTable`] and
//! [`FieldValue`], and the methods a callback receives ([`Deliver`], whose strings are
//! [`SharedStr`]s, [`GetOk`], [`Return`]).
//! The frame codec (amq-protocol) is an implementation detail; no signature names it, so a new
//! major version of it changes no user code. Result structs and enums that may grow
//! ([`Delivery`], [`QueueDeclareOk`], [`ConfirmOutcome`], [`Error`]...) are
//! `#[non_exhaustive]`: read their fields, match them with `..`, but do not build them.
//! Option structs are plain structs with `Default`, built with `..Default::default()`.
//!
//! Versions follow Cargo's rules for 0.x: a breaking change bumps the minor version (0.1 to
//! 0.2) and is listed in `CHANGELOG.md` as **Breaking:** with the call before and after; the
//! minimum supported Rust version is the `rust-version` of `Cargo.toml` (1.89) and rises only
//! with a minor version.
//!
//! ## Feature flags
//!
//! - `tls` (default): `amqps://` through native-tls; certificates are verified by default.

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations)]

mod callback;
mod channel;
mod connection;
mod consumer;
mod delivery;
mod engine;
mod error;
mod events;
mod options;
mod params;
mod protocol;
mod publish;
mod recovery;
pub mod rpc;
mod transport;

pub use crate::callback::{BoxError, CallbackReturn};
pub use crate::channel::{BlockingChannel, Channel};
pub use crate::connection::{BlockingConnection, Connection, IntoParameterList};
pub use crate::consumer::{
    CancelCallback, ConsumeOptions, Consumed, Consumer, ConsumerCallback, ReturnCallback,
};
pub use crate::delivery::{Delivery, GetMessage, Returned};
pub use crate::error::{CallbackError, Error, Result, ATTEMPT_ERRORS_KEPT};
pub use crate::events::{
    BlockedCallback, RecoveryCallback, ThreadsafeCallback, TimeoutId, TimerCallback,
    UnblockedCallback,
};
pub use crate::options::{
    BasicConsumeOptions, DeliveryMode, ExchangeBindOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, ExchangeType, NackOptions, PublishOptions, QosOptions, QueueBindOptions,
    QueueDeclareOk, QueueDeclareOptions, QueueDeleteOptions, RejectOptions,
};
pub use crate::params::{
    ConnectionParameters, Credentials, ExternalCredentials, PlainCredentials, SslOptions,
    TcpOptions, TlsVersion,
};
pub use crate::publish::ConfirmOutcome;
pub use crate::recovery::{Entity, RecoveryEvent, RecoveryPolicy, RecoveryReport};
pub use crate::rpc::{CallOptions, RpcClient};

/// AMQP reply codes, as constants.
pub mod reply_code {
    pub use crate::error::{
        ACCESS_REFUSED, CHANNEL_ERROR, COMMAND_INVALID, CONNECTION_FORCED, FRAME_ERROR,
        INTERNAL_ERROR, NOT_FOUND, NOT_IMPLEMENTED, PRECONDITION_FAILED, REPLY_SUCCESS,
        RESOURCE_LOCKED, SYNTAX_ERROR, UNEXPECTED_FRAME,
    };
}

pub use crate::protocol::methods::{Deliver, GetOk, Message, Return};
pub use crate::protocol::properties::BasicProperties;
pub use crate::protocol::shared_str::SharedStr;
pub use crate::protocol::table::{FieldTable, FieldValue};
