//! The TCP stream under a TLS stream, with the open's deadline on every read and write.
//!
//! OpenSSL reads until a whole TLS record has arrived, in as many socket reads as it takes: a
//! socket timeout bounds each of them, but a peer sending one byte just within it would keep
//! one TLS read (of the TLS handshake, or of the AMQP handshake after it) going for hours. So
//! while the connection opens, [`Bounded`] sets the socket's timeout before each read and write
//! to `socket_timeout` or what is left of the open's deadline, whichever is less, and once the
//! deadline has passed fails at once. It fails with [`io::ErrorKind::WouldBlock`], what a
//! blocking socket's own timeout gives on Unix, so OpenSSL takes it as a socket timeout (a
//! retryable `WANT_READ` / `WANT_WRITE`, not a TLS failure) and the caller reports it as one:
//! `stack_timeout` once the deadline has passed, else `socket_timeout`.
//!
//! [`Bounded::opened`] ends this when the connection is open: every later read and write goes
//! straight to the socket, which the I/O thread then makes non-blocking. The I/O thread's
//! last flush after the broker's close puts a deadline back ([`Bounded::bound_until`]): one
//! TLS write is as many socket writes as its record takes, each of which would otherwise
//! wait for the whole of the socket's timeout again.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A TCP stream whose reads and writes end by `deadline`: the open's until
/// [`opened`](Self::opened), the last flush's after [`bound_until`](Self::bound_until).
#[derive(Debug)]
pub(crate) struct Bounded {
    tcp: TcpStream,
    /// The bound on each socket wait.
    socket_timeout: Duration,
    /// The deadline; `None` while the connection is open and working.
    deadline: Option<Instant>,
}

impl Bounded {
    /// `tcp` (blocking), with each wait bounded by `socket_timeout` and all by `deadline`.
    pub(crate) fn new(tcp: TcpStream, socket_timeout: Duration, deadline: Instant) -> Bounded {
        Bounded {
            tcp,
            socket_timeout,
            deadline: Some(deadline),
        }
    }

    /// The socket.
    pub(crate) fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// The connection is open: no deadline any more.
    pub(crate) fn opened(&mut self) {
        self.deadline = None;
    }

    /// Every later read and write ends by `deadline` again (the socket is blocking again).
    pub(crate) fn bound_until(&mut self, deadline: Instant) {
        self.deadline = Some(deadline);
    }

    /// Runs `io` on the socket within what is left of the deadline (set as the socket's
    /// timeout for this one wait by `set_timeout`).
    fn bounded<T>(
        &mut self,
        set_timeout: fn(&TcpStream, Option<Duration>) -> io::Result<()>,
        mut io: impl FnMut(&mut TcpStream) -> io::Result<T>,
    ) -> io::Result<T> {
        let Some(deadline) = self.deadline else {
            return io(&mut self.tcp);
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "the deadline of the open (stack_timeout) or of the last flush has passed",
                ));
            }
            let by_deadline = left <= self.socket_timeout;
            let wait = self.socket_timeout.min(left).max(Duration::from_millis(1));
            set_timeout(&self.tcp, Some(wait))?;
            match io(&mut self.tcp) {
                // A socket timeout may end a little early: the deadline decides, above.
                Err(e) if by_deadline && timed_out(&e) => continue,
                result => return result,
            }
        }
    }
}

/// Whether `e` is a socket timeout (`WouldBlock` on Unix, `TimedOut` on Windows).
fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

impl Read for Bounded {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.bounded(TcpStream::set_read_timeout, |tcp| tcp.read(buf))
    }
}

impl Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.bounded(TcpStream::set_write_timeout, |tcp| tcp.write(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    /// A connected loopback pair: (ours, the peer's).
    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let ours = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (theirs, _) = listener.accept().unwrap();
        (ours, theirs)
    }

    #[test]
    fn a_trickle_cannot_stretch_reads_past_the_deadline() {
        let (ours, mut theirs) = pair();
        let started = Instant::now();
        let deadline = started + Duration::from_millis(300);
        let mut bounded = Bounded::new(ours, Duration::from_secs(5), deadline);
        let peer = std::thread::spawn(move || {
            // One byte every 50 ms, until the reader goes away or 10 s pass.
            let mut sent = 0;
            while sent < 200 && theirs.write_all(&[0]).is_ok() {
                sent += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let err = bounded.read_exact(&mut [0; 1000]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "{err}");
        assert!(Instant::now() >= deadline);
        assert!(started.elapsed() < Duration::from_secs(3), "{err}");
        // Past the deadline, a read fails without waiting.
        let again = Instant::now();
        assert_eq!(
            bounded.read(&mut [0; 1]).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        assert!(again.elapsed() < Duration::from_millis(100));
        // Once open, reads go straight to the socket (whose timeout the I/O thread then
        // clears, as here): bytes arrive again.
        bounded.opened();
        bounded.tcp().set_read_timeout(None).unwrap();
        assert_eq!(bounded.read(&mut [0; 1]).unwrap(), 1);
        drop(bounded);
        peer.join().unwrap();
    }

    #[test]
    fn silence_ends_at_the_deadline_or_at_socket_timeout() {
        for (socket_timeout, deadline_in) in [(5_000, 200), (200, 5_000)] {
            let (ours, _theirs) = pair();
            let started = Instant::now();
            let deadline = started + Duration::from_millis(deadline_in);
            let socket_timeout = Duration::from_millis(socket_timeout);
            let mut bounded = Bounded::new(ours, socket_timeout, deadline);
            let err = bounded.read(&mut [0; 1]).unwrap_err();
            assert!(timed_out(&err), "{err}");
            let took = started.elapsed();
            assert!(took >= Duration::from_millis(150), "{took:?}");
            assert!(took < Duration::from_secs(3), "{took:?}");
            // The deadline's wait returns only once the deadline has passed.
            assert_eq!(Instant::now() >= deadline, deadline_in < 1_000);
        }
    }
}
