//! Secrets never reach the logs: everything cottontail logs at every level while it connects
//! (with a good and a wrong password), works and closes is captured and searched. Its own test
//! binary, because the logger is process-wide.

mod support;

use std::sync::Mutex;

use cottontail::{Connection, PlainCredentials};
use support::{params, rabbitmqctl, unique};

static CAPTURED: Mutex<String> = Mutex::new(String::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        let mut captured = CAPTURED.lock().unwrap();
        captured.push_str(&format!("{} {}\n", record.level(), record.args()));
    }
    fn flush(&self) {}
}

#[test]
fn passwords_appear_in_no_log_record_at_any_level() {
    log::set_logger(&Capture).unwrap();
    log::set_max_level(log::LevelFilter::Trace);
    let user = unique("log-user");
    let password = format!("pw-{}", unique("secret"));
    let wrong = format!("wrong-{}", unique("secret"));
    rabbitmqctl(&["add_user", &user, &password]);
    rabbitmqctl(&["set_permissions", "-p", "/", &user, ".*", ".*", ".*"]);

    let url = format!("amqp://{user}:{password}@127.0.0.1:5672/%2f?heartbeat=5");
    let connection = Connection::open_url(&url).unwrap();
    let channel = connection.channel().unwrap();
    let queue = support::exclusive_queue(&channel);
    channel.basic_publish("", &queue, b"logged?").unwrap();
    assert!(channel.basic_get(&queue, true).unwrap().is_some());
    connection.close().unwrap();
    let refused = Connection::open(
        params()
            .with_credentials(PlainCredentials::new(user.as_str(), wrong.as_str()))
            .with_connection_attempts(2)
            .with_retry_delay(std::time::Duration::from_millis(10)),
    );
    assert!(refused.is_err());
    rabbitmqctl(&["delete_user", &user]);

    let captured = CAPTURED.lock().unwrap().clone();
    assert!(
        captured.contains("TRACE") && captured.contains("WARN"),
        "the logger saw too little to prove anything:\n{captured}"
    );
    assert!(
        !captured.contains(&password),
        "the password was logged:\n{captured}"
    );
    assert!(
        !captured.contains(&wrong),
        "the wrong password was logged:\n{captured}"
    );
}
