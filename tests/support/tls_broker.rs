//! A private RabbitMQ node with TLS for `tests/tls.rs`, started once per test binary.
//!
//! Certificates are made at test time with the `openssl` CLI in a temporary directory: a CA, a
//! server certificate for `localhost` / 127.0.0.1, a client certificate (CN
//! [`CLIENT_CN`], key in PKCS#8 PEM) and an unrelated second CA. The node
//! (`cottontail-tls@localhost`, Debian's `rabbitmq-server`) listens on 127.0.0.1 only: TLS on
//! [`TLS_PORT`], plain AMQP on [`TCP_PORT`], with `rabbitmq_auth_mechanism_ssl` for SASL
//! EXTERNAL. The main test node (`rabbit@localhost` on 5672) is left alone.
//!
//! A detached watchdog stops the node (SIGTERM to the pid the node wrote, a graceful stop) and
//! removes the directory once the test process is gone, however it ends; set
//! `COTTONTAIL_TLS_KEEP=1` to keep the directory (logs, certificates) for inspection.
#![allow(dead_code)]

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The private node's name.
pub const NODE: &str = "cottontail-tls@localhost";
/// Its TLS (amqps) listener, on 127.0.0.1.
pub const TLS_PORT: u16 = 5681;
/// Its plain AMQP listener, on 127.0.0.1.
pub const TCP_PORT: u16 = 5682;
/// Its Erlang distribution port, on 127.0.0.1.
pub const DIST_PORT: u16 = 25682;
/// The client certificate's common name, which is also the broker user for SASL EXTERNAL.
pub const CLIENT_CN: &str = "cottontail-client";
/// The password of [`TlsBroker::client_encrypted_key_file`].
pub const CLIENT_KEY_PASSWORD: &str = "s3cret-key";

const RABBITMQ_SERVER: &str = "/usr/sbin/rabbitmq-server";
const RABBITMQCTL: &str = "/usr/sbin/rabbitmqctl";
const STARTUP_LIMIT: Duration = Duration::from_secs(60);

/// The running node and the files the tests use.
#[derive(Debug)]
pub struct TlsBroker {
    dir: PathBuf,
}

impl TlsBroker {
    /// The temporary directory holding certificates, configuration, data and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA that signed the server and client certificates (PEM).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A CA that signed nothing the broker uses (PEM).
    pub fn other_ca_file(&self) -> PathBuf {
        self.dir.join("other_ca.pem")
    }

    /// The client certificate (PEM), CN [`CLIENT_CN`].
    pub fn client_cert_file(&self) -> PathBuf {
        self.dir.join("client.pem")
    }

    /// The client certificate's private key (PKCS#8 PEM).
    pub fn client_key_file(&self) -> PathBuf {
        self.dir.join("client.key")
    }

    /// The client certificate's private key as PKCS#1 PEM (`BEGIN RSA PRIVATE KEY`).
    pub fn client_pkcs1_key_file(&self) -> PathBuf {
        self.dir.join("client.pkcs1.key")
    }

    /// The client certificate's private key as encrypted PKCS#8 PEM, password
    /// [`CLIENT_KEY_PASSWORD`].
    pub fn client_encrypted_key_file(&self) -> PathBuf {
        self.dir.join("client.enc.key")
    }

    /// Runs `rabbitmqctl -n NODE -q ARGS` and returns its stdout; panics if it fails.
    pub fn rabbitmqctl(&self, args: &[&str]) -> String {
        rabbitmqctl(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The last lines of the node's log, for failure messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.dir)
    }
}

/// The node, started (with its certificates) on first use; panics with the reason and the
/// node's log if it cannot be started.
pub fn broker() -> &'static TlsBroker {
    static BROKER: OnceLock<Result<TlsBroker, String>> = OnceLock::new();
    match BROKER.get_or_init(start) {
        Ok(broker) => broker,
        Err(e) => panic!("the private TLS broker is not available: {e}"),
    }
}

fn start() -> Result<TlsBroker, String> {
    for tool in ["/usr/bin/openssl", RABBITMQ_SERVER, RABBITMQCTL] {
        if !Path::new(tool).exists() {
            return Err(format!(
                "{tool} is missing (these tests need the openssl CLI and Debian's rabbitmq-server; \
                 `scripts/broker.sh` installs the latter)"
            ));
        }
    }
    let dir = std::env::temp_dir().join(format!("cottontail-tls-{}", std::process::id()));
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(|e| format!("removing {}: {e}", dir.display()))?;
    }
    for sub in ["mnesia", "log"] {
        fs::create_dir_all(dir.join(sub))
            .map_err(|e| format!("creating {}: {e}", dir.join(sub).display()))?;
    }
    make_certificates(&dir)?;
    write_config(&dir)?;
    // The Debian script drops to the `rabbitmq` user: it must own (and read) all of it.
    run(Command::new("chown")
        .args(["-R", "rabbitmq:rabbitmq"])
        .arg(&dir))?;

    // A node of the same name left over from an earlier run would hold the ports (one whose
    // run just ended may still be stopping: give it a few seconds).
    let _ = rabbitmqctl(&["stop"]);
    let free_by = Instant::now() + Duration::from_secs(15);
    for port in [TLS_PORT, TCP_PORT, DIST_PORT] {
        while answers(port) {
            if Instant::now() > free_by {
                return Err(format!(
                    "127.0.0.1:{port} is already in use; the private TLS node needs ports \
                     {TLS_PORT}, {TCP_PORT} and {DIST_PORT}"
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    let started = Instant::now();
    let out = fs::File::create(dir.join("server.out")).map_err(|e| e.to_string())?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut server = Command::new(RABBITMQ_SERVER)
        .envs(node_env(&dir))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        // Its own process group: a Ctrl-C of the test run does not reach it (the watchdog
        // stops it).
        .process_group(0)
        .spawn()
        .map_err(|e| format!("starting {RABBITMQ_SERVER}: {e}"))?;
    spawn_watchdog(&dir)?;

    // The listeners open at the end of the boot; await_startup then returns at once (called
    // earlier, it polls only every 10 s).
    loop {
        if let Ok(Some(status)) = server.try_wait() {
            return Err(format!(
                "rabbitmq-server exited with {status} during start-up\n{}",
                log_tail(&dir)
            ));
        }
        if answers(TLS_PORT) && answers(TCP_PORT) {
            break;
        }
        if started.elapsed() > STARTUP_LIMIT {
            return Err(format!(
                "the node did not open 127.0.0.1:{TLS_PORT} and :{TCP_PORT} within {STARTUP_LIMIT:?}\n{}",
                log_tail(&dir)
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let setup = || -> Result<(), String> {
        rabbitmqctl(&["await_startup", "--timeout", "60"])?;
        rabbitmqctl(&["add_user", CLIENT_CN, "not-used-with-external"])?;
        rabbitmqctl(&["set_permissions", "-p", "/", CLIENT_CN, ".*", ".*", ".*"])?;
        Ok(())
    };
    setup().map_err(|e| format!("{e}\n{}", log_tail(&dir)))?;
    eprintln!(
        "tls_broker: {NODE} ready on 127.0.0.1:{TLS_PORT} (TLS) and :{TCP_PORT} in {:?}; files in {}",
        started.elapsed(),
        dir.display()
    );
    Ok(TlsBroker { dir })
}

/// The environment of the node: everything of its own, and bound to 127.0.0.1.
fn node_env(dir: &Path) -> Vec<(String, String)> {
    let d = dir.display();
    [
        ("RABBITMQ_NODENAME", NODE.to_string()),
        ("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1".into()),
        ("RABBITMQ_NODE_PORT", TCP_PORT.to_string()),
        ("RABBITMQ_DIST_PORT", DIST_PORT.to_string()),
        ("RABBITMQ_MNESIA_BASE", format!("{d}/mnesia")),
        ("RABBITMQ_LOG_BASE", format!("{d}/log")),
        ("RABBITMQ_PID_FILE", format!("{d}/node.pid")),
        // 3.10 takes the path without the .conf extension.
        ("RABBITMQ_CONFIG_FILE", format!("{d}/rabbitmq")),
        (
            "RABBITMQ_ENABLED_PLUGINS_FILE",
            format!("{d}/enabled_plugins"),
        ),
        ("ERL_EPMD_ADDRESS", "127.0.0.1".into()),
        (
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
            "-kernel inet_dist_use_interface {127,0,0,1}".into(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn write_config(dir: &Path) -> Result<(), String> {
    let d = dir.display();
    // `listeners.*.default = PORT` would bind every interface whatever RABBITMQ_NODE_IP_ADDRESS
    // says: give the address explicitly.
    let conf = format!(
        "listeners.tcp.1 = 127.0.0.1:{TCP_PORT}\n\
         listeners.ssl.1 = 127.0.0.1:{TLS_PORT}\n\
         ssl_options.cacertfile = {d}/ca.pem\n\
         ssl_options.certfile = {d}/server.pem\n\
         ssl_options.keyfile = {d}/server.key\n\
         ssl_options.verify = verify_peer\n\
         ssl_options.fail_if_no_peer_cert = false\n\
         auth_mechanisms.1 = PLAIN\n\
         auth_mechanisms.2 = AMQPLAIN\n\
         auth_mechanisms.3 = EXTERNAL\n\
         ssl_cert_login_from = common_name\n\
         loopback_users = none\n\
         log.file.level = info\n"
    );
    fs::write(dir.join("rabbitmq.conf"), conf).map_err(|e| e.to_string())?;
    fs::write(
        dir.join("enabled_plugins"),
        "[rabbitmq_auth_mechanism_ssl].\n",
    )
    .map_err(|e| e.to_string())
}

fn make_certificates(dir: &Path) -> Result<(), String> {
    // Arguments are whitespace-separated: no value below contains a space.
    let openssl = |args: &str| {
        run(Command::new("/usr/bin/openssl")
            .current_dir(dir)
            .args(args.split_whitespace()))
    };
    for (name, subject) in [
        ("ca", "/CN=cottontail-test-CA"),
        ("other_ca", "/CN=cottontail-unrelated-CA"),
    ] {
        openssl(&format!(
            "req -x509 -newkey rsa:2048 -nodes -days 2 -subj {subject} \
             -keyout {name}.key -out {name}.pem"
        ))?;
    }
    fs::write(
        dir.join("server.ext"),
        "basicConstraints = CA:FALSE\n\
         keyUsage = digitalSignature, keyEncipherment\n\
         extendedKeyUsage = serverAuth\n\
         subjectAltName = DNS:localhost, IP:127.0.0.1\n",
    )
    .map_err(|e| e.to_string())?;
    fs::write(
        dir.join("client.ext"),
        "basicConstraints = CA:FALSE\n\
         keyUsage = digitalSignature, keyEncipherment\n\
         extendedKeyUsage = clientAuth\n",
    )
    .map_err(|e| e.to_string())?;
    let client_subject = format!("/O=client/CN={CLIENT_CN}");
    for (name, subject, serial) in [
        ("server", "/CN=localhost", 2),
        ("client", client_subject.as_str(), 3),
    ] {
        openssl(&format!(
            "req -newkey rsa:2048 -nodes -subj {subject} -keyout {name}.raw.key -out {name}.csr"
        ))?;
        openssl(&format!(
            "x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -set_serial {serial} -days 2 \
             -extfile {name}.ext -out {name}.pem"
        ))?;
        // PKCS#8 PEM, what native-tls itself takes.
        openssl(&format!(
            "pkcs8 -topk8 -nocrypt -in {name}.raw.key -out {name}.key"
        ))?;
    }
    // The client's key in the other forms pika users have: PKCS#1, and encrypted PKCS#8.
    openssl("rsa -in client.raw.key -traditional -out client.pkcs1.key")?;
    openssl(&format!(
        "pkcs8 -topk8 -v2 aes-256-cbc -passout pass:{CLIENT_KEY_PASSWORD} \
         -in client.raw.key -out client.enc.key"
    ))?;
    Ok(())
}

/// Stops the node and removes `dir` once this test process has exited, whichever way it ends.
fn spawn_watchdog(dir: &Path) -> Result<(), String> {
    let keep = std::env::var_os("COTTONTAIL_TLS_KEEP").is_some_and(|v| !v.is_empty() && v != "0");
    let cleanup = if keep {
        String::new()
    } else {
        format!("rm -rf '{}'", dir.display())
    };
    // SIGTERM to the node's own pid is a graceful stop, and cannot hit another node of the
    // same name that a later run may have started meanwhile (as `rabbitmqctl stop` could).
    let script = format!(
        "while kill -0 {test} 2>/dev/null; do sleep 1; done\n\
         pidfile='{dir}/node.pid'\n\
         if [ -s \"$pidfile\" ]; then\n\
           pid=$(cat \"$pidfile\")\n\
           kill -TERM \"$pid\" 2>/dev/null\n\
           i=0; while kill -0 \"$pid\" 2>/dev/null && [ $i -lt 120 ]; do sleep 0.5; i=$((i+1)); done\n\
         fi\n\
         {cleanup}\n",
        test = std::process::id(),
        dir = dir.display(),
    );
    Command::new("/bin/sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map(drop)
        .map_err(|e| format!("starting the watchdog: {e}"))
}

fn rabbitmqctl(args: &[&str]) -> Result<String, String> {
    let out = Command::new(RABBITMQCTL)
        .env("ERL_EPMD_ADDRESS", "127.0.0.1")
        .args(["-n", NODE, "-q"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running rabbitmqctl: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "rabbitmqctl {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn run(command: &mut Command) -> Result<(), String> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {command:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn answers(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

fn log_tail(dir: &Path) -> String {
    let mut text = String::new();
    for file in [
        dir.join("server.out"),
        dir.join("log").join(format!("{NODE}.log")),
    ] {
        let content = fs::read_to_string(&file).unwrap_or_default();
        let lines: Vec<&str> = content.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        text.push_str(&format!(
            "--- last lines of {} ---\n{tail}\n",
            file.display()
        ));
    }
    text
}
