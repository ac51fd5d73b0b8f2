//! TCP connect with a deadline and TCP_NODELAY.

use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::params::TcpOptions;

/// Resolves `host:port` and connects to the first address that answers, each attempt bounded by
/// `socket_timeout` and all of them by `deadline`. TCP_NODELAY is set: without it every
/// request/reply pays Nagle's delay against the broker's delayed ACK (~40 ms).
pub(crate) fn connect(
    host: &str,
    port: u16,
    socket_timeout: Duration,
    tcp_options: &TcpOptions,
    deadline: Instant,
) -> Result<TcpStream> {
    let context = format!("connecting to {host}:{port}");
    let addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| Error::io(format!("resolving {host}:{port}"), &e))?;
    let mut last = None;
    for addr in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::timeout(&context, socket_timeout));
        }
        match TcpStream::connect_timeout(&addr, socket_timeout.min(left)) {
            Ok(stream) => {
                // Bound every blocking read and write of the handshake (TLS included); the
                // I/O thread later switches the socket to non-blocking mode.
                let timeout = Some(socket_timeout.max(Duration::from_millis(1)));
                stream
                    .set_nodelay(true)
                    .and_then(|()| stream.set_read_timeout(timeout))
                    .and_then(|()| stream.set_write_timeout(timeout))
                    .and_then(|()| apply_tcp_options(&stream, tcp_options))
                    .map_err(|e| Error::io("configuring the socket", &e))?;
                return Ok(stream);
            }
            Err(e) => last = Some(Error::io(&context, &e)),
        }
    }
    Err(last.unwrap_or_else(|| Error::Io {
        context,
        kind: std::io::ErrorKind::NotFound,
        message: "host name resolved to no address".into(),
    }))
}

/// Keepalive and `TCP_USER_TIMEOUT`, through socket2 (std has neither).
fn apply_tcp_options(stream: &TcpStream, options: &TcpOptions) -> std::io::Result<()> {
    let socket = socket2::SockRef::from(stream);
    if options.keepalive_idle.is_some()
        || options.keepalive_interval.is_some()
        || options.keepalive_count.is_some()
    {
        let mut keepalive = socket2::TcpKeepalive::new();
        if let Some(idle) = options.keepalive_idle {
            keepalive = keepalive.with_time(idle);
        }
        #[cfg(any(target_os = "linux", target_os = "macos", target_os = "freebsd"))]
        {
            if let Some(interval) = options.keepalive_interval {
                keepalive = keepalive.with_interval(interval);
            }
            if let Some(count) = options.keepalive_count {
                keepalive = keepalive.with_retries(count);
            }
        }
        socket.set_tcp_keepalive(&keepalive)?;
    }
    #[cfg(target_os = "linux")]
    if let Some(timeout) = options.user_timeout {
        socket.set_tcp_user_timeout(Some(timeout))?;
    }
    Ok(())
}
