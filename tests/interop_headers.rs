//! Header values between pika and cottontail, both ways, through a real RabbitMQ: what one
//! client writes, the other reads as the same value. Decimals are signed on the wire (pika
//! and the Java client write `>i`): a negative one read as unsigned became 429496728.1.

#[path = "support/process.rs"]
mod process;
mod support;

use std::process::Command;

use cottontail::{BasicProperties, FieldValue, PublishOptions};
use support::{connect, exclusive_queue, named_queue};

/// Runs `code` (Python with pika) with `args`; returns what it printed.
fn pika(code: &str, args: &[&str]) -> String {
    let out = Command::new(process::python())
        .arg("-c")
        .arg(code)
        .args(args)
        .output()
        .expect("running Python");
    assert!(
        out.status.success(),
        "the pika script failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const PIKA_PUBLISHES: &str = r#"
import sys
from decimal import Decimal
import pika
c = pika.BlockingConnection(pika.ConnectionParameters('127.0.0.1'))
ch = c.channel()
ch.basic_publish('', sys.argv[1], b'from pika', pika.BasicProperties(headers={
    'negative': Decimal('-1.5'),
    'positive': Decimal('123.45'),
    'smallest': Decimal('-2147483.648'),
    'integer': -7,
}))
c.close()
"#;

const PIKA_READS: &str = r#"
import sys
import pika
c = pika.BlockingConnection(pika.ConnectionParameters('127.0.0.1'))
ch = c.channel()
method, props, body = ch.basic_get(sys.argv[1], auto_ack=True)
for name in sorted(props.headers):
    print(name, repr(props.headers[name]))
ch.queue_delete(sys.argv[1])
c.close()
"#;

#[test]
fn decimals_pika_writes_are_read_with_their_sign() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    let queue = exclusive_queue(&channel);
    // An exclusive queue is this connection's only: pika publishes through the default
    // exchange, which needs no access to it.
    pika(PIKA_PUBLISHES, &[&queue]);
    let message = support::eventually(std::time::Duration::from_secs(10), || {
        channel
            .queue_declare(&queue, support::consuming::passive())
            .unwrap()
            .message_count
            == 1
    });
    assert!(message, "pika's message did not arrive");
    let got = channel.basic_get(&queue, true).unwrap().expect("a message");
    let header = |name: &str| got.properties.header(name).cloned();
    let decimal = |scale, value| Some(FieldValue::Decimal { scale, value });
    assert_eq!(header("negative"), decimal(1, -15));
    assert_eq!(header("positive"), decimal(2, 12_345));
    assert_eq!(header("smallest"), decimal(3, i32::MIN));
    assert_eq!(
        got.properties
            .header("negative")
            .and_then(FieldValue::as_f64),
        Some(-1.5)
    );
    assert_eq!(
        got.properties
            .header("integer")
            .and_then(FieldValue::as_i64),
        Some(-7)
    );
    connection.close().unwrap();
}

#[test]
fn decimals_cottontail_writes_are_read_by_pika_with_their_sign() {
    let connection = connect();
    let channel = connection.channel().unwrap();
    // Not exclusive: pika reads (and deletes) it from its own connection.
    let queue = named_queue(&channel, "headers-to-pika");
    let properties = BasicProperties::default()
        .with_header(
            "negative",
            FieldValue::Decimal {
                scale: 2,
                value: -12_345,
            },
        )
        .with_header(
            "largest",
            FieldValue::Decimal {
                scale: 0,
                value: i32::MAX,
            },
        )
        .with_header(
            "smallest",
            FieldValue::Decimal {
                scale: 3,
                value: i32::MIN,
            },
        );
    channel
        .basic_publish_with(
            "",
            &queue,
            b"from cottontail",
            &PublishOptions {
                properties,
                ..Default::default()
            },
        )
        .unwrap();
    connection.close().unwrap();
    let printed = pika(PIKA_READS, &[&queue]);
    assert_eq!(
        printed.lines().collect::<Vec<_>>(),
        [
            "largest Decimal('2147483647')",
            "negative Decimal('-123.45')",
            "smallest Decimal('-2147483.648')",
        ],
        "what pika read"
    );
}
