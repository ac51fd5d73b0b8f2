//! TLS through native-tls. Certificates and host names are verified by default.

use std::net::TcpStream;

use super::Stream;
use crate::error::{Error, Result};

/// Runs the TLS handshake on a connected (blocking, with timeouts) TCP stream.
pub(crate) fn wrap(tcp: TcpStream, host: &str) -> Result<Stream> {
    let connector = native_tls::TlsConnector::new().map_err(|e| Error::Tls {
        message: e.to_string(),
    })?;
    let stream = connector.connect(host, tcp).map_err(|e| Error::Tls {
        message: e.to_string(),
    })?;
    Ok(Stream::Tls(Box::new(stream)))
}
