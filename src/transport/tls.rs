//! TLS through native-tls. Certificates and host names are verified by default.

use std::net::TcpStream;

use super::Stream;
use crate::error::{Error, Result};
use crate::params::SslOptions;

fn tls_error(e: impl std::fmt::Display) -> Error {
    Error::Tls {
        message: e.to_string(),
    }
}

/// Runs the TLS handshake on a connected (blocking, with timeouts) TCP stream.
pub(crate) fn wrap(tcp: TcpStream, host: &str, options: &SslOptions) -> Result<Stream> {
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
    let name = options.server_hostname.as_deref().unwrap_or(host);
    let stream = connector.connect(name, tcp).map_err(|e| match e {
        native_tls::HandshakeError::Failure(e) => tls_error(e),
        native_tls::HandshakeError::WouldBlock(_) => Error::Tls {
            message: "the TLS handshake timed out".into(),
        },
    })?;
    Ok(Stream::Tls(Box::new(stream)))
}
