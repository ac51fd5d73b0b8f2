//! TLS through native-tls. Certificates and host names are verified by default.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::Stream;
use crate::error::{Error, Result};
use crate::params::{ConnectionParameters, SslOptions};

fn tls_error(e: impl std::fmt::Display) -> Error {
    Error::Tls {
        message: e.to_string(),
    }
}

/// Sets the socket's timeouts to what is left of `socket_timeout` and the open's deadline.
fn bound_waits(tcp: &TcpStream, params: &ConnectionParameters, deadline: Instant) -> Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(Error::timeout("the TLS handshake", params.stack_timeout));
    }
    let wait = Some(
        params
            .socket_timeout
            .min(left)
            .max(Duration::from_millis(1)),
    );
    tcp.set_read_timeout(wait)
        .and_then(|()| tcp.set_write_timeout(wait))
        .map_err(|e| Error::io("setting the socket timeout", &e))
}

/// Runs the TLS handshake on a connected (blocking, with timeouts) TCP stream, each wait
/// bounded by `socket_timeout` and the whole by the open's `deadline`.
pub(crate) fn wrap(
    tcp: TcpStream,
    params: &ConnectionParameters,
    options: &SslOptions,
    deadline: Instant,
) -> Result<Stream> {
    let mut builder = native_tls::TlsConnector::builder();
    for pem in &options.ca_pem {
        for cert in native_tls::Certificate::stack_from_pem(pem).map_err(tls_error)? {
            builder.add_root_certificate(cert);
        }
    }
    if let Some((cert, key)) = &options.identity {
        builder.identity(native_tls::Identity::from_pkcs8(cert, key).map_err(tls_error)?);
    }
    builder.danger_accept_invalid_certs(options.skip_verify);
    builder.danger_accept_invalid_hostnames(options.skip_hostname);
    let connector = builder.build().map_err(tls_error)?;
    let name = options.server_hostname.as_deref().unwrap_or(&params.host);
    bound_waits(&tcp, params, deadline)?;
    match connector.connect(name, tcp) {
        Ok(stream) => {
            // Back to the plain per-wait bound for the AMQP handshake that follows.
            let wait = Some(params.socket_timeout.max(Duration::from_millis(1)));
            let tcp = stream.get_ref();
            tcp.set_read_timeout(wait)
                .and_then(|()| tcp.set_write_timeout(wait))
                .map_err(|e| Error::io("setting the socket timeout", &e))?;
            Ok(Stream::Tls(Box::new(stream)))
        }
        Err(native_tls::HandshakeError::Failure(e)) => Err(tls_error(e)),
        // A socket wait timed out: the open's deadline if it has passed, else socket_timeout.
        Err(native_tls::HandshakeError::WouldBlock(_)) => {
            let after = if Instant::now() >= deadline {
                params.stack_timeout
            } else {
                params.socket_timeout
            };
            Err(Error::timeout("the TLS handshake", after))
        }
    }
}
