//! Tutorials 3 to 5 ("Publish/Subscribe", "Routing", "Topics"; tutorial 2 is in
//! `interop_work_queues.rs`, the helpers in `support/tutorials.rs`) across
//! implementations: the Rust examples against the official Python (pika) programs in
//! `tests/interop/`, in both directions, and against each other.
//!
//! Every test runs real processes against the broker on 127.0.0.1 and checks, line for line,
//! that they print what the Python tutorial prints, and what the broker holds meanwhile and
//! afterwards (bindings, consumers and their prefetch, queues left empty or gone). A Rust
//! consumer stopped with Ctrl-C (SIGINT) prints `Interrupted` and exits 0; the official Python
//! programs of these tutorials do not catch Ctrl-C, so theirs end with a `KeyboardInterrupt`
//! traceback on stderr.
//!
//! The tutorials use fixed names (`task_queue`, `logs`, `direct_logs`, `topic_logs`): tests
//! sharing one run one at a time; each starts by clearing what an earlier run may have left.
//!
//! The Python side needs `COTTONTAIL_PYTHON`, a Python with pika, which `scripts/test.sh` sets
//! up; without it those tests fail (they never pass silently).

#[path = "support/process.rs"]
mod process;
mod support;
#[path = "support/tutorials.rs"]
mod tutorials;

use process::script;
use tutorials::*;

// ---------------------------------------------------------------------------------------------
// Tutorial 3: Publish/Subscribe (emit_log / receive_logs)
// ---------------------------------------------------------------------------------------------

/// Messages sent by `publish_subscribe` and what `receive_logs` prints for each.
const LOG_MESSAGES: [(&[&str], &str, &str); 3] = [
    (
        &[],
        " [x] Sent info: Hello World!",
        " [x] b'info: Hello World!'",
    ),
    (
        &["warning:", "it's", "café"],
        " [x] Sent warning: it's café",
        r#" [x] b"warning: it's caf\xc3\xa9""#,
    ),
    (
        &["error:", "'single'", "and", "\"double\"", "quotes,", "a\\b"],
        r#" [x] Sent error: 'single' and "double" quotes, a\b"#,
        r#" [x] b'error: \'single\' and "double" quotes, a\\b'"#,
    ),
];

/// The fanout: one consumer's server-named exclusive queue bound to `logs`, every message
/// printed as Python prints bytes, the queue gone once the consumer stops.
fn publish_subscribe(producer: Lang, consumer: Lang) {
    let _serial = serialize(LOGS);
    prepare_exchange(LOGS);

    let (mut receiver, queue) = start_log_consumer(consumer, "receive_logs", LOGS, &[], None);
    let mut expected = vec![WAITING_FOR_LOGS];
    for (args, sent, printed) in LOG_MESSAGES {
        produce(producer, "emit_log", args, sent);
        receiver.expect_line(printed);
        expected.push(printed);
    }
    receiver.stop(&expected);
    wait_queue_gone(LOGS, &queue);
}

#[test]
fn publish_subscribe_rust_emit_log_to_python_receive_logs() {
    publish_subscribe(Rust, Python);
}

#[test]
fn publish_subscribe_python_emit_log_to_rust_receive_logs() {
    publish_subscribe(Python, Rust);
}

/// The tutorial's "two receive_logs running": a Rust and a Python receiver at once, each with
/// its own queue bound to `logs`, each get every message of both producers.
#[test]
fn publish_subscribe_rust_and_python_receivers_both_get_everything() {
    let _serial = serialize(LOGS);
    prepare_exchange(LOGS);

    let (mut rust, rust_queue) = start_log_consumer(Rust, "receive_logs", LOGS, &[], None);
    let (mut python, python_queue) = start_log_consumer(Python, "receive_logs", LOGS, &[], None);
    assert_eq!(
        bindings_from(LOGS),
        [
            (rust_queue.clone(), rust_queue.clone()),
            (python_queue.clone(), python_queue.clone())
        ]
        .into(),
        "`rabbitmqctl list_bindings` should show the two receivers' queues bound to `logs`"
    );

    let mut expected = vec![WAITING_FOR_LOGS];
    for producer in [Rust, Python] {
        for (args, sent, printed) in LOG_MESSAGES {
            produce(producer, "emit_log", args, sent);
            rust.expect_line(printed);
            python.expect_line(printed);
            expected.push(printed);
        }
    }
    rust.stop(&expected);
    python.stop(&expected);
    wait_queue_gone(LOGS, &rust_queue);
    wait_queue_gone(LOGS, &python_queue);
}

/// `emit_log` prints and sends what `emit_log.py` does for the same arguments.
#[test]
fn publish_subscribe_emit_log_sends_what_python_sends() {
    let _serial = serialize(LOGS);
    prepare_exchange(LOGS);
    // The producers declare `logs`; the capture queue needs it first.
    produce(Rust, "emit_log", &[], " [x] Sent info: Hello World!");
    let (connection, channel, queue) = capture(LOGS, &[""]);
    for (args, message) in [
        (&[][..], "info: Hello World!"),
        (&["error:", "disk", "full"][..], "error: disk full"),
        (&[""][..], "info: Hello World!"),
    ] {
        producers_agree(
            &channel,
            &queue,
            "emit_log",
            args,
            &format!(" [x] Sent {message}"),
            "",
            message,
        );
    }
    connection.close().expect("closing the connection");
}

// ---------------------------------------------------------------------------------------------
// Tutorial 4: Routing (emit_log_direct / receive_logs_direct)
// ---------------------------------------------------------------------------------------------

/// A consumer bound to `direct_logs` with two severities gets exactly the messages published
/// with those routing keys.
fn routing(producer: Lang, consumer: Lang, severities: [&str; 2]) {
    let _serial = serialize(DIRECT_LOGS);
    prepare_exchange(DIRECT_LOGS);

    let (mut receiver, queue) = start_log_consumer(
        consumer,
        "receive_logs_direct",
        DIRECT_LOGS,
        &severities,
        Some(&severities),
    );
    let sends: [(&[&str], &str, &str); 5] = [
        (
            &["error", "Run.", "Run.", "Or", "it", "will", "explode."],
            " [x] Sent error:Run. Run. Or it will explode.",
            " [x] error:b'Run. Run. Or it will explode.'",
        ),
        (
            &["warning"],
            " [x] Sent warning:Hello World!",
            " [x] warning:b'Hello World!'",
        ),
        (
            &[],
            " [x] Sent info:Hello World!",
            " [x] info:b'Hello World!'",
        ),
        (
            &["debug", "not", "for", "anyone"],
            " [x] Sent debug:not for anyone",
            " [x] debug:b'not for anyone'",
        ),
        (
            &["info", "disk", "95%", "full"],
            " [x] Sent info:disk 95% full",
            " [x] info:b'disk 95% full'",
        ),
    ];
    let mut expected = vec![WAITING_FOR_LOGS];
    for (args, sent, printed) in sends {
        produce(producer, "emit_log_direct", args, sent);
        let severity = args.first().copied().unwrap_or("info");
        if severities.contains(&severity) {
            expected.push(printed);
        }
    }
    // Last, a message for the consumer: anything it should not have got would come before.
    let last = format!(" [x] {}:b'The end'", severities[0]);
    produce(
        producer,
        "emit_log_direct",
        &[severities[0], "The", "end"],
        &format!(" [x] Sent {}:The end", severities[0]),
    );
    expected.push(&last);
    for line in &expected[1..] {
        receiver.expect_line(line);
    }
    receiver.stop(&expected);
    wait_queue_gone(DIRECT_LOGS, &queue);
}

#[test]
fn routing_rust_emit_log_direct_to_python_receive_logs_direct() {
    routing(Rust, Python, ["warning", "error"]);
}

#[test]
fn routing_python_emit_log_direct_to_rust_receive_logs_direct() {
    routing(Python, Rust, ["info", "error"]);
}

/// Without a severity, `receive_logs_direct` writes its usage line to stderr and exits 1,
/// as `receive_logs_direct.py` does.
#[test]
fn routing_receive_logs_direct_without_severity_prints_usage() {
    let _serial = serialize(DIRECT_LOGS);
    for lang in [Rust, Python] {
        let done = run(lang, "receive_logs_direct", &[]);
        let program = match lang {
            Rust => process::examples(&PROGRAMS)["receive_logs_direct"]
                .display()
                .to_string(),
            Python => script("receive_logs_direct.py").display().to_string(),
        };
        assert_eq!(
            (
                done.status.code(),
                done.stdout.as_slice(),
                done.stderr.as_str()
            ),
            (
                Some(1),
                &[][..],
                format!("Usage: {program} [info] [warning] [error]\n").as_str()
            ),
            "{} without arguments",
            done.name
        );
    }
}

/// `emit_log_direct` prints and sends what `emit_log_direct.py` does for the same arguments.
#[test]
fn routing_emit_log_direct_sends_what_python_sends() {
    let _serial = serialize(DIRECT_LOGS);
    prepare_exchange(DIRECT_LOGS);
    produce(Rust, "emit_log_direct", &[], " [x] Sent info:Hello World!");
    let (connection, channel, queue) = capture(DIRECT_LOGS, &["info", "error", ""]);
    for (args, severity, message) in [
        (&[][..], "info", "Hello World!"),
        (&["error"][..], "error", "Hello World!"),
        (&["error", "Run.", "Run."][..], "error", "Run. Run."),
        (&["", "no", "severity"][..], "", "no severity"),
    ] {
        producers_agree(
            &channel,
            &queue,
            "emit_log_direct",
            args,
            &format!(" [x] Sent {severity}:{message}"),
            severity,
            message,
        );
    }
    connection.close().expect("closing the connection");
}

// ---------------------------------------------------------------------------------------------
// Tutorial 5: Topics (emit_log_topic / receive_logs_topic)
// ---------------------------------------------------------------------------------------------

/// Messages for the topic tests: emit_log_topic's arguments, the routing key it uses (the
/// first argument only when a message follows: `anonymous.info` otherwise) and the body.
const TOPIC_MESSAGES: [(&[&str], &str, &str); 6] = [
    (
        &["kern.critical", "A", "critical", "kernel", "error"],
        "kern.critical",
        "A critical kernel error",
    ),
    (&["kern.info", "booted"], "kern.info", "booted"),
    (
        &["auth.critical", "root", "login"],
        "auth.critical",
        "root login",
    ),
    (&[], "anonymous.info", "Hello World!"),
    (&["kern.critical"], "anonymous.info", "Hello World!"),
    (&["cron.info.daily", "ran"], "cron.info.daily", "ran"),
];

/// Whether a topic binding key matches a routing key (`*` one word, `#` zero or more).
fn topic_matches(key: &[&str], routing: &[&str]) -> bool {
    match (key.first(), routing.first()) {
        (None, None) => true,
        (Some(&"#"), _) => {
            topic_matches(&key[1..], routing)
                || (!routing.is_empty() && topic_matches(key, &routing[1..]))
        }
        (Some(&k), Some(&r)) if k == "*" || k == r => topic_matches(&key[1..], &routing[1..]),
        _ => false,
    }
}

/// What a receiver bound with `keys` prints for the messages sent, in order.
fn topic_lines(keys: &[&str], sent: &[(String, String)]) -> Vec<String> {
    sent.iter()
        .filter(|(routing_key, _)| {
            let routing: Vec<&str> = routing_key.split('.').collect();
            keys.iter()
                .any(|key| topic_matches(&key.split('.').collect::<Vec<_>>(), &routing))
        })
        .map(|(routing_key, body)| format!(" [x] {routing_key}:b'{body}'"))
        .collect()
}

/// Receivers bound to `topic_logs` with `bindings` (one process each) get exactly the messages
/// whose routing keys match, whoever sends them (`producers` take turns).
fn topics(producers: &[Lang], receivers: &[(Lang, &[&str])]) {
    let _serial = serialize(TOPIC_LOGS);
    prepare_exchange(TOPIC_LOGS);

    let mut running = Vec::new();
    for &(lang, keys) in receivers {
        let (receiver, queue) =
            start_log_consumer(lang, "receive_logs_topic", TOPIC_LOGS, keys, Some(keys));
        running.push((receiver, queue, keys));
    }

    let mut sent = Vec::new();
    // Last, a message every receiver of these tests gets: anything a receiver should not have
    // got would come before it.
    let last: (&[&str], &str, &str) =
        (&["kern.critical", "The", "end"], "kern.critical", "The end");
    for (i, &(args, routing_key, body)) in TOPIC_MESSAGES.iter().chain([&last]).enumerate() {
        produce(
            producers[i % producers.len()],
            "emit_log_topic",
            args,
            &format!(" [x] Sent {routing_key}:{body}"),
        );
        sent.push((routing_key.to_string(), body.to_string()));
    }

    for (mut receiver, queue, keys) in running {
        let lines = topic_lines(keys, &sent);
        assert_eq!(
            lines.last().map(String::as_str),
            Some(" [x] kern.critical:b'The end'"),
            "the test's last message should match {keys:?}"
        );
        for line in &lines {
            receiver.expect_line(line);
        }
        let mut expected = vec![WAITING_FOR_LOGS];
        expected.extend(lines.iter().map(String::as_str));
        receiver.stop(&expected);
        wait_queue_gone(TOPIC_LOGS, &queue);
    }
}

#[test]
fn topics_rust_emit_log_topic_to_python_receive_logs_topic() {
    topics(&[Rust], &[(Python, &["kern.*", "*.critical"])]);
}

#[test]
fn topics_python_emit_log_topic_to_rust_receive_logs_topic() {
    topics(&[Python], &[(Rust, &["#"])]);
}

/// The tutorial's bindings, one Rust receiver each: `kern.*` gets all of facility `kern`,
/// `*.critical` every critical log, `#` everything, `kern.critical` just that; the producers
/// (Rust and Python in turn) send `kern.critical`, `kern.info`, `auth.critical`,
/// `anonymous.info`...
#[test]
fn topics_four_receivers_get_what_the_tutorial_says() {
    let receivers: [(Lang, &[&str]); 4] = [
        (Rust, &["kern.*"]),
        (Rust, &["*.critical"]),
        (Rust, &["#"]),
        (Rust, &["kern.critical"]),
    ];
    // The tutorial's expectations, spelled out, for the first four messages.
    let first_four: Vec<(String, String)> = TOPIC_MESSAGES[..4]
        .iter()
        .map(|&(_, key, body)| (key.to_string(), body.to_string()))
        .collect();
    let keys_received = |keys: &[&str]| -> Vec<String> {
        topic_lines(keys, &first_four)
            .iter()
            .map(|line| line[5..line.find(':').unwrap()].to_string())
            .collect()
    };
    assert_eq!(keys_received(&["kern.*"]), ["kern.critical", "kern.info"]);
    assert_eq!(
        keys_received(&["*.critical"]),
        ["kern.critical", "auth.critical"]
    );
    assert_eq!(
        keys_received(&["#"]),
        [
            "kern.critical",
            "kern.info",
            "auth.critical",
            "anonymous.info"
        ]
    );
    assert_eq!(keys_received(&["kern.critical"]), ["kern.critical"]);

    topics(&[Rust, Python], &receivers);
}

/// Without a binding key, `receive_logs_topic` writes its usage line to stderr and exits 1,
/// as `receive_logs_topic.py` does.
#[test]
fn topics_receive_logs_topic_without_binding_key_prints_usage() {
    let _serial = serialize(TOPIC_LOGS);
    for lang in [Rust, Python] {
        let done = run(lang, "receive_logs_topic", &[]);
        let program = match lang {
            Rust => process::examples(&PROGRAMS)["receive_logs_topic"]
                .display()
                .to_string(),
            Python => script("receive_logs_topic.py").display().to_string(),
        };
        assert_eq!(
            (
                done.status.code(),
                done.stdout.as_slice(),
                done.stderr.as_str()
            ),
            (
                Some(1),
                &[][..],
                format!("Usage: {program} [binding_key]...\n").as_str()
            ),
            "{} without arguments",
            done.name
        );
    }
}

/// `emit_log_topic` prints and sends what `emit_log_topic.py` does for the same arguments,
/// including its quirk: a lone argument is not taken as the routing key.
#[test]
fn topics_emit_log_topic_sends_what_python_sends() {
    let _serial = serialize(TOPIC_LOGS);
    prepare_exchange(TOPIC_LOGS);
    produce(
        Rust,
        "emit_log_topic",
        &[],
        " [x] Sent anonymous.info:Hello World!",
    );
    let (connection, channel, queue) = capture(TOPIC_LOGS, &["#"]);
    for (args, routing_key, body) in TOPIC_MESSAGES {
        producers_agree(
            &channel,
            &queue,
            "emit_log_topic",
            args,
            &format!(" [x] Sent {routing_key}:{body}"),
            routing_key,
            body,
        );
    }
    connection.close().expect("closing the connection");
}
