//! The byte stream the I/O thread drives: plain TCP, or TLS through native-tls.
//!
//! Both are used the same way: connected and (for TLS) handshaken in blocking mode with
//! timeouts, then switched to non-blocking mode and registered with `mio` by file descriptor,
//! so the I/O thread owns the one stream and does every read and write (see the crate docs).
//! Under TLS the socket is a [`bounded::Bounded`], which holds every wait of the TLS and AMQP
//! handshakes to the open's deadline however slowly a peer sends its records, until
//! [`Stream::opened`].

#[cfg(feature = "tls")]
mod bounded;
mod tcp;
#[cfg(feature = "tls")]
mod tls;

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use crate::error::Result;
use crate::params::ConnectionParameters;

/// A connected stream, TCP or TLS.
#[derive(Debug)]
pub(crate) enum Stream {
    Tcp(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<native_tls::TlsStream<bounded::Bounded>>),
}

impl Stream {
    /// Connects to the broker named by `params`, within `deadline`.
    pub(crate) fn connect(params: &ConnectionParameters, deadline: Instant) -> Result<Stream> {
        let tcp = tcp::connect(
            &params.host,
            params.port,
            params.socket_timeout,
            &params.tcp_options,
            deadline,
        )?;
        match &params.ssl_options {
            None => Ok(Stream::Tcp(tcp)),
            #[cfg(feature = "tls")]
            Some(options) => tls::wrap(tcp, params, options, deadline),
            #[cfg(not(feature = "tls"))]
            Some(_) => Err(crate::Error::Tls {
                message: "TLS needs cottontail's `tls` feature".into(),
            }),
        }
    }

    /// The TCP socket underneath.
    pub(crate) fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Tcp(s) => s,
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.get_ref().tcp(),
        }
    }

    /// The connection is open: the open's deadline no longer bounds reads and writes.
    pub(crate) fn opened(&mut self) {
        match self {
            Stream::Tcp(_) => {}
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.get_mut().opened(),
        }
    }

    /// Bounds every later socket wait by `deadline` (the I/O thread's last flush, on a
    /// blocking socket): over TLS by the `Bounded` stream under it, each of a record's writes;
    /// on plain TCP the caller's write timeout does it.
    #[cfg_attr(not(feature = "tls"), allow(unused_variables))]
    pub(crate) fn bound_until(&mut self, deadline: Instant) {
        match self {
            Stream::Tcp(_) => {}
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.get_mut().bound_until(deadline),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.flush(),
        }
    }
}
