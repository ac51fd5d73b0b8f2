//! The declare, bind, consume and cancel methods as the wire carries them, built from cottontail's
//! options: one place for what `Channel`'s methods send and what a recovery sends again
//! (`recovery::driver`).

use amq_protocol::protocol::{basic, exchange, queue, AMQPClass};

use crate::error::Result;
use crate::options::{ExchangeBindOptions, ExchangeDeclareOptions, QueueDeclareOptions};
use crate::protocol::codec::short;
use crate::protocol::table::{self, FieldTable};

/// queue.declare of `name` (`""`: the broker names it).
pub(crate) fn queue_declare(name: &str, options: &QueueDeclareOptions) -> Result<AMQPClass> {
    Ok(AMQPClass::Queue(queue::AMQPMethod::Declare(
        queue::Declare {
            queue: short(name)?,
            passive: options.passive,
            durable: options.durable,
            exclusive: options.exclusive,
            auto_delete: options.auto_delete,
            nowait: false,
            arguments: table::to_wire(&options.arguments)?,
        },
    )))
}

/// queue.bind of `queue` to `exchange` with `routing_key`.
pub(crate) fn queue_bind(
    queue: &str,
    exchange: &str,
    routing_key: &str,
    arguments: &FieldTable,
) -> Result<AMQPClass> {
    Ok(AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
        queue: short(queue)?,
        exchange: short(exchange)?,
        routing_key: short(routing_key)?,
        nowait: false,
        arguments: table::to_wire(arguments)?,
    })))
}

/// exchange.declare of `name`.
pub(crate) fn exchange_declare(name: &str, options: &ExchangeDeclareOptions) -> Result<AMQPClass> {
    Ok(AMQPClass::Exchange(exchange::AMQPMethod::Declare(
        exchange::Declare {
            exchange: short(name)?,
            kind: short(options.exchange_type.as_str())?,
            passive: options.passive,
            durable: options.durable,
            auto_delete: options.auto_delete,
            internal: options.internal,
            nowait: false,
            arguments: table::to_wire(&options.arguments)?,
        },
    )))
}

/// exchange.bind of `destination` to `source`.
pub(crate) fn exchange_bind(
    destination: &str,
    source: &str,
    options: &ExchangeBindOptions,
) -> Result<AMQPClass> {
    Ok(AMQPClass::Exchange(exchange::AMQPMethod::Bind(
        exchange::Bind {
            destination: short(destination)?,
            source: short(source)?,
            routing_key: short(&options.routing_key)?,
            nowait: false,
            arguments: table::to_wire(&options.arguments)?,
        },
    )))
}

/// basic.consume of `queue` under consumer tag `tag`.
pub(crate) fn consume(
    queue: &str,
    tag: &str,
    auto_ack: bool,
    exclusive: bool,
    arguments: &FieldTable,
) -> Result<AMQPClass> {
    Ok(AMQPClass::Basic(basic::AMQPMethod::Consume(
        basic::Consume {
            queue: short(queue)?,
            consumer_tag: short(tag)?,
            no_local: false,
            no_ack: auto_ack,
            exclusive,
            nowait: false,
            arguments: table::to_wire(arguments)?,
        },
    )))
}

/// basic.cancel of consumer `tag`, waiting for its cancel-ok.
pub(crate) fn cancel(tag: &str) -> Result<AMQPClass> {
    Ok(AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
        consumer_tag: short(tag)?,
        nowait: false,
    })))
}
