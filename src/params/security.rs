//! Credentials (SASL PLAIN and EXTERNAL) and TLS options, with secrets kept out of `Debug`.

use std::fmt;

use crate::error::{Error, Result};

/// User name and password for SASL PLAIN (pika's `PlainCredentials`).
///
/// The password never appears in `Debug` output. Build it with [`new`](Self::new) (or
/// `default()` for `guest` / `guest`); it may gain fields, so it cannot be built or matched
/// field by field.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PlainCredentials {
    username: String,
    password: String,
}

impl PlainCredentials {
    /// Credentials for `username` with `password`.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        PlainCredentials {
            username: username.into(),
            password: password.into(),
        }
    }

    /// The user name.
    pub fn username(&self) -> &str {
        &self.username
    }

    pub(crate) fn password(&self) -> &str {
        &self.password
    }
}

impl Default for PlainCredentials {
    /// `guest` / `guest`, as pika.
    fn default() -> Self {
        PlainCredentials::new("guest", "guest")
    }
}

impl fmt::Debug for PlainCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlainCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// SASL EXTERNAL: the broker authenticates the client by its TLS client certificate (pika's
/// `ExternalCredentials`; needs RabbitMQ's `rabbitmq_auth_mechanism_ssl` plugin).
///
/// Build it with [`new`](Self::new) or `default()`; it may gain fields (an authorization
/// identity), so it cannot be built as a literal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExternalCredentials {}

impl ExternalCredentials {
    /// SASL EXTERNAL credentials.
    pub fn new() -> Self {
        ExternalCredentials {}
    }
}

/// How the connection authenticates. More mechanisms may be added, so a `match` needs a
/// wildcard arm.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Credentials {
    /// User name and password (SASL PLAIN).
    Plain(PlainCredentials),
    /// The TLS client certificate (SASL EXTERNAL).
    External(ExternalCredentials),
}

impl From<PlainCredentials> for Credentials {
    fn from(c: PlainCredentials) -> Self {
        Credentials::Plain(c)
    }
}

impl From<ExternalCredentials> for Credentials {
    fn from(c: ExternalCredentials) -> Self {
        Credentials::External(c)
    }
}

/// A TLS protocol version, for [`SslOptions::with_min_tls_version`] and
/// [`SslOptions::with_max_tls_version`]. TLS 1.0 and 1.1 are not offered (RFC 8996 deprecates
/// them, and native-tls connects with TLS 1.2 or later by default).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum TlsVersion {
    /// TLS 1.2.
    Tls12,
    /// TLS 1.3 (not on Apple systems, whose TLS library has no TLS 1.3 for clients).
    Tls13,
}

impl TlsVersion {
    /// How RabbitMQ names it (`ssl_protocol` of `rabbitmqctl list_connections`).
    fn name(self) -> &'static str {
        match self {
            TlsVersion::Tls12 => "tlsv1.2",
            TlsVersion::Tls13 => "tlsv1.3",
        }
    }
}

/// TLS settings (pika's `SSLOptions`). Certificates are verified against the system's roots
/// plus [`with_ca_certificate_pem`](Self::with_ca_certificate_pem), and the broker's name
/// against the host (or [`with_server_hostname`](Self::with_server_hostname)), unless
/// explicitly turned off. Secrets (the client key and its password) never appear in `Debug`
/// output.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SslOptions {
    pub(crate) ca_pem: Vec<Vec<u8>>,
    pub(crate) identity: Option<(Vec<u8>, Vec<u8>)>,
    pub(crate) key_password: Option<String>,
    pub(crate) server_hostname: Option<String>,
    pub(crate) skip_verify: bool,
    pub(crate) skip_hostname: bool,
    pub(crate) min_tls: Option<TlsVersion>,
    pub(crate) max_tls: Option<TlsVersion>,
}

impl std::fmt::Debug for SslOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SslOptions")
            .field("ca_certificates", &self.ca_pem.len())
            .field("client_certificate", &self.identity.is_some())
            .field(
                "client_key_password",
                &self.key_password.as_ref().map(|_| "<redacted>"),
            )
            .field("server_hostname", &self.server_hostname)
            .field("verify_certificate", &!self.skip_verify)
            .field("verify_hostname", &!self.skip_hostname)
            .field("min_tls_version", &self.min_tls)
            .field("max_tls_version", &self.max_tls)
            .finish()
    }
}

impl SslOptions {
    /// TLS with the system's trusted roots, full verification and the TLS library's versions
    /// (TLS 1.2 and later).
    pub fn new() -> Self {
        SslOptions::default()
    }

    /// Also trusts the CA certificate(s) in this PEM text (pika's `cadata` / `ca_data`).
    pub fn with_ca_certificate_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem.push(pem.into());
        self
    }

    /// Also trusts the CA certificate(s) in this PEM file (pika's `cafile` / `ca_certs`).
    pub fn with_ca_file(self, path: impl AsRef<std::path::Path>) -> Result<Self> {
        Ok(self.with_ca_certificate_pem(read_file("CA file", path.as_ref())?))
    }

    /// Also trusts every CA certificate in the PEM files of this directory (pika's `capath` /
    /// `ca_path`), symbolic links such as `c_rehash`'s hash names included; files without a
    /// certificate are skipped. An unreadable directory, or one with no certificate, is an
    /// error.
    pub fn with_ca_path(mut self, dir: impl AsRef<std::path::Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let entries = std::fs::read_dir(dir)
            .map_err(|e| Error::io(format!("reading the CA directory {}", dir.display()), &e))?;
        let mut paths = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| {
                Error::io(format!("reading the CA directory {}", dir.display()), &e)
            })?;
            if entry.path().is_file() {
                paths.push(entry.path());
            }
        }
        // In name order, so a failure is the same on every run.
        paths.sort();
        let mut found = 0;
        for path in paths {
            let pem = read_file("CA file", &path)?;
            if pem.windows(CERTIFICATE.len()).any(|w| w == CERTIFICATE) {
                self.ca_pem.push(pem);
                found += 1;
            }
        }
        if found == 0 {
            return Err(Error::InvalidArgument(format!(
                "no PEM certificate in the CA directory {}",
                dir.display()
            )));
        }
        Ok(self)
    }

    /// Presents this client certificate (PEM) with its private key (PEM), for mutual TLS and
    /// SASL EXTERNAL (pika's `certfile` / `keyfile`). On Linux and the BSDs (OpenSSL) the key
    /// may be PKCS#8 (`BEGIN PRIVATE KEY`), PKCS#1 (`BEGIN RSA PRIVATE KEY`) or SEC1
    /// (`BEGIN EC PRIVATE KEY`), and encrypted (give its
    /// [`with_client_key_password`](Self::with_client_key_password)); on Windows and Apple
    /// systems it must be unencrypted PKCS#8.
    pub fn with_client_certificate_pem(
        mut self,
        cert: impl Into<Vec<u8>>,
        key: impl Into<Vec<u8>>,
    ) -> Self {
        self.identity = Some((cert.into(), key.into()));
        self
    }

    /// Like [`with_client_certificate_pem`](Self::with_client_certificate_pem), from files;
    /// on OpenSSL both may be one file holding the certificate and the key (as Python's
    /// `load_cert_chain(certfile)` reads it).
    pub fn with_client_certificate_files(
        self,
        cert: impl AsRef<std::path::Path>,
        key: impl AsRef<std::path::Path>,
    ) -> Result<Self> {
        let cert = read_file("certificate file", cert.as_ref())?;
        let key = read_file("key file", key.as_ref())?;
        Ok(self.with_client_certificate_pem(cert, key))
    }

    /// The password of an encrypted client key (pika's `password` of `ssl_options`, as in
    /// Python's `load_cert_chain`). It never appears in `Debug` output. Without it an
    /// encrypted key is an [`Error::Tls`] naming the missing password, never a prompt.
    pub fn with_client_key_password(mut self, password: impl Into<String>) -> Self {
        self.key_password = Some(password.into());
        self
    }

    /// The name to send (SNI) and verify the broker's certificate against. Defaults to the
    /// connection's host.
    pub fn with_server_hostname(mut self, name: impl Into<String>) -> Self {
        self.server_hostname = Some(name.into());
        self
    }

    /// Turns certificate verification off (`false`): any certificate is accepted. Only for
    /// tests; defaults to `true`.
    pub fn with_verify_certificate(mut self, verify: bool) -> Self {
        self.skip_verify = !verify;
        self
    }

    /// Turns host name verification off (`false`) while still checking the chain. Defaults to
    /// `true`.
    pub fn with_verify_hostname(mut self, verify: bool) -> Self {
        self.skip_hostname = !verify;
        self
    }

    /// The oldest TLS version to accept. Defaults to the TLS library's (TLS 1.2).
    pub fn with_min_tls_version(mut self, version: TlsVersion) -> Self {
        self.min_tls = Some(version);
        self
    }

    /// The newest TLS version to offer. Defaults to the newest the TLS library has. A URL's
    /// `'protocol': ssl.PROTOCOL_TLSv1_2` sets both this and the minimum to TLS 1.2, as Python
    /// does.
    pub fn with_max_tls_version(mut self, version: TlsVersion) -> Self {
        self.max_tls = Some(version);
        self
    }

    /// Checks that the TLS versions leave something to connect with and that the server name
    /// can be handed to the TLS library (no NUL byte).
    pub(crate) fn validate(&self) -> Result<()> {
        if self
            .server_hostname
            .as_deref()
            .is_some_and(|name| name.contains('\0'))
        {
            // The TLS library would panic on it (a C string).
            return Err(Error::InvalidArgument(
                "ssl_options: server_hostname contains a NUL byte".into(),
            ));
        }
        match (self.min_tls, self.max_tls) {
            (Some(min), Some(max)) if min > max => Err(Error::InvalidArgument(format!(
                "ssl_options: the minimum TLS version ({}) is newer than the maximum ({})",
                min.name(),
                max.name()
            ))),
            _ => Ok(()),
        }
    }
}

/// What starts a PEM certificate.
const CERTIFICATE: &[u8] = b"-----BEGIN CERTIFICATE-----";

/// The largest certificate or key file read: PEM bundles are kilobytes; a path to a device or
/// a pipe (`/dev/zero`) must not be read for ever.
const MAX_PEM_FILE: u64 = 16 * 1024 * 1024;

fn read_file(what: &str, path: &std::path::Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let context = || format!("reading the {what} {}", path.display());
    // Looked at before it is opened: opening a pipe waits for a writer.
    let meta = std::fs::metadata(path).map_err(|e| Error::io(context(), &e))?;
    if !meta.is_file() {
        return Err(Error::InvalidArgument(format!(
            "the {what} {} is not a regular file",
            path.display()
        )));
    }
    let file = std::fs::File::open(path).map_err(|e| Error::io(context(), &e))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(context(), &e))?;
    if bytes.len() as u64 > MAX_PEM_FILE {
        return Err(Error::InvalidArgument(format!(
            "the {what} {} is larger than {MAX_PEM_FILE} bytes",
            path.display()
        )));
    }
    Ok(bytes)
}
