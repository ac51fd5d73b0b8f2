//! TLS through native-tls. Certificates and host names are verified by default.

use std::net::TcpStream;
use std::time::Instant;

use super::bounded::Bounded;
use super::Stream;
use crate::error::{Error, Result};
use crate::params::{ConnectionParameters, SslOptions, TlsVersion};
#[cfg(not(any(target_os = "windows", target_vendor = "apple")))]
use openssl::error::ErrorStack;

fn tls_error(e: impl std::fmt::Display) -> Error {
    Error::Tls {
        message: e.to_string(),
    }
}

/// The client key as the unencrypted PKCS#8 PEM that native-tls takes, from any PEM form
/// OpenSSL reads (PKCS#8, PKCS#1, SEC1; encrypted with `password`). The password goes through
/// a callback, so an encrypted key without one fails instead of prompting on a terminal.
#[cfg(not(any(target_os = "windows", target_vendor = "apple")))]
fn pkcs8_key(key: &[u8], password: Option<&str>) -> Result<Vec<u8>> {
    use openssl::pkey::PKey;
    let encrypted = key.windows(9).any(|w| w == b"ENCRYPTED");
    let parsed = PKey::private_key_from_pem_callback(key, |buf| {
        let password = password.unwrap_or_default().as_bytes();
        let room = buf.get_mut(..password.len()).ok_or_else(ErrorStack::get)?;
        room.copy_from_slice(password);
        Ok(password.len())
    });
    let key = parsed.map_err(|e| Error::Tls {
        message: match (encrypted, password) {
            (true, None) => "the client key is encrypted and no password was given \
                             (SslOptions::with_client_key_password, ssl_options 'password')"
                .into(),
            (true, Some(_)) => format!("decrypting the client key failed (wrong password?): {e}"),
            (false, _) => format!("reading the client key (PEM) failed: {e}"),
        },
    })?;
    key.private_key_to_pem_pkcs8().map_err(tls_error)
}

/// On Windows and Apple systems native-tls takes the key as unencrypted PKCS#8 PEM as it is.
#[cfg(any(target_os = "windows", target_vendor = "apple"))]
fn pkcs8_key(key: &[u8], password: Option<&str>) -> Result<Vec<u8>> {
    if password.is_some() {
        return Err(Error::Tls {
            message: "encrypted client keys need OpenSSL: give an unencrypted PKCS#8 key".into(),
        });
    }
    Ok(key.to_vec())
}

/// Runs the TLS handshake on a connected (blocking) TCP stream, each wait bounded by
/// `socket_timeout` and the whole by the open's `deadline`, as are the waits of the AMQP
/// handshake that follows (see `bounded`).
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
        let key = pkcs8_key(key, options.key_password.as_deref())?;
        builder.identity(native_tls::Identity::from_pkcs8(cert, &key).map_err(tls_error)?);
    }
    let version = |v: TlsVersion| match v {
        TlsVersion::Tls12 => native_tls::Protocol::Tlsv12,
        TlsVersion::Tls13 => native_tls::Protocol::Tlsv13,
    };
    if let Some(min) = options.min_tls {
        builder.min_protocol_version(Some(version(min)));
    }
    if let Some(max) = options.max_tls {
        builder.max_protocol_version(Some(version(max)));
    }
    builder.danger_accept_invalid_certs(options.skip_verify);
    builder.danger_accept_invalid_hostnames(options.skip_hostname);
    let connector = builder.build().map_err(tls_error)?;
    let name = options.server_hostname.as_deref().unwrap_or(&params.host);
    if name.contains('\0') {
        // The TLS library would panic on it (a C string); `validate` refuses it earlier.
        return Err(Error::InvalidArgument(format!(
            "the TLS server name {name:?} contains a NUL byte"
        )));
    }
    let tcp = Bounded::new(tcp, params.socket_timeout, deadline);
    match connector.connect(name, tcp) {
        Ok(stream) => Ok(Stream::Tls(Box::new(stream))),
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

#[cfg(all(test, not(any(target_os = "windows", target_vendor = "apple"))))]
mod tests {
    use openssl::ec::{EcGroup, EcKey};
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::rsa::Rsa;
    use openssl::symm::Cipher;

    use super::*;

    /// The key `pkcs8_key` made, parsed back: unencrypted PKCS#8 PEM of the same key.
    fn same_key(out: &[u8], original: &PKey<openssl::pkey::Private>) {
        assert!(out.starts_with(b"-----BEGIN PRIVATE KEY-----"));
        let back = PKey::private_key_from_pem(out).unwrap();
        assert!(back.public_eq(original));
    }

    fn tls_message(result: Result<Vec<u8>>) -> String {
        match result {
            Err(Error::Tls { message }) => message,
            other => panic!("expected Error::Tls, got {other:?}"),
        }
    }

    #[test]
    fn pkcs1_sec1_and_pkcs8_keys_become_pkcs8() {
        let rsa = Rsa::generate(2048).unwrap();
        let pkcs1 = rsa.private_key_to_pem().unwrap();
        assert!(pkcs1.starts_with(b"-----BEGIN RSA PRIVATE KEY-----"));
        let rsa_key = PKey::from_rsa(rsa).unwrap();
        same_key(&pkcs8_key(&pkcs1, None).unwrap(), &rsa_key);
        let pkcs8 = rsa_key.private_key_to_pem_pkcs8().unwrap();
        same_key(&pkcs8_key(&pkcs8, None).unwrap(), &rsa_key);
        // A password given for an unencrypted key is not used.
        same_key(&pkcs8_key(&pkcs8, Some("unused")).unwrap(), &rsa_key);

        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let ec = EcKey::generate(&group).unwrap();
        let sec1 = ec.private_key_to_pem().unwrap();
        assert!(sec1.starts_with(b"-----BEGIN EC PRIVATE KEY-----"));
        same_key(
            &pkcs8_key(&sec1, None).unwrap(),
            &PKey::from_ec_key(ec).unwrap(),
        );
    }

    #[test]
    fn encrypted_keys_need_their_password() {
        let rsa = Rsa::generate(2048).unwrap();
        let traditional = rsa
            .private_key_to_pem_passphrase(Cipher::aes_128_cbc(), b"s3cret")
            .unwrap();
        let key = PKey::from_rsa(rsa).unwrap();
        let pkcs8 = key
            .private_key_to_pem_pkcs8_passphrase(Cipher::aes_256_cbc(), b"s3cret")
            .unwrap();
        assert!(pkcs8.starts_with(b"-----BEGIN ENCRYPTED PRIVATE KEY-----"));
        for encrypted in [&traditional, &pkcs8] {
            same_key(&pkcs8_key(encrypted, Some("s3cret")).unwrap(), &key);
            let missing = tls_message(pkcs8_key(encrypted, None));
            assert!(missing.contains("no password was given"), "{missing}");
            let wrong = tls_message(pkcs8_key(encrypted, Some("guess")));
            assert!(wrong.contains("wrong password"), "{wrong}");
            // A password OpenSSL cannot take (NUL, longer than its buffer) is an error too.
            let nul = tls_message(pkcs8_key(encrypted, Some("s3\0cret")));
            assert!(nul.contains("wrong password"), "{nul}");
            let long = "x".repeat(4096);
            let long = tls_message(pkcs8_key(encrypted, Some(&long)));
            assert!(long.contains("wrong password"), "{long}");
        }
    }

    #[test]
    fn a_key_that_is_not_pem_is_a_tls_error() {
        let message = tls_message(pkcs8_key(b"not a key", None));
        assert!(message.contains("reading the client key"), "{message}");
    }
}
