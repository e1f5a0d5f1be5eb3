//! System-internal TLS on `QUEUE_SERVING_TLS_PORT` (contract §9).
//!
//! Enabled only when both `tls.crt` and `tls.key` exist in the certificate directory
//! (`/var/lib/knative/certs`, where the reconciler mounts Secret `serving-certs`). The pair is
//! loaded at start-up (a failure is fatal) and re-read every minute; when either file changed it
//! is re-parsed and swapped atomically, logging Knative's exact line [`RELOADED`]. A reload error
//! is logged and the old certificate stays. The same certificate answers every ClientHello.
//!
//! rustls with the `ring` provider: TLS 1.3 by default (`QUEUE_PROXY_TLS_MIN_VERSION=1.2`
//! allows 1.2), ALPN `h2` and `http/1.1`, no client authentication.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{CipherSuite, NamedGroup, ServerConfig};
use shared::http::server::{Handshaken, ServerOptions, serve_handshaken};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::Service;

/// Facts about a request's TLS connection, in its extensions (read by the request log).
#[derive(Clone, Debug)]
pub struct TlsInfo {
    /// The negotiated version's code point (`0x0304` = TLS 1.3).
    pub version: u16,
    /// The negotiated cipher suite's code point.
    pub cipher_suite: u16,
    /// The ALPN protocol, if any.
    pub alpn: String,
    /// The SNI server name, if any.
    pub server_name: String,
}

impl std::fmt::Display for TlsInfo {
    /// A brace-enclosed summary in the order of Go's `tls.ConnectionState` fields (Version,
    /// HandshakeComplete, DidResume, CipherSuite, NegotiatedProtocol, …, ServerName), so a
    /// template's `{{.Request.TLS}}` starts with `{` as Go's does (`TestTLSRequestLog` greps it).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{{{} true false {} {} true {}}}",
            self.version, self.cipher_suite, self.alpn, self.server_name
        )
    }
}

/// Where Knative mounts the system-internal certificate (`serving-certs`).
pub const CERT_DIR: &str = "/var/lib/knative/certs";
/// How often the certificate files are re-read (Knative's watcher: 1 min).
pub const RELOAD_PERIOD: Duration = Duration::from_secs(60);
/// Knative's log line on a reload; `TestTLSCertificateRotation` greps for it.
pub const RELOADED: &str = "Certificate and/or key have changed on disk and were reloaded.";

/// A TLS version bound (`QUEUE_PROXY_TLS_{MIN,MAX}_VERSION`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    /// `"1.2"`.
    Tls12,
    /// `"1.3"`.
    Tls13,
}

/// The TLS listener's settings from the environment.
#[derive(Clone, Debug)]
pub struct TlsConfig {
    /// Directory holding `tls.crt` and `tls.key` ([`CERT_DIR`]; ours: `QUEUE_TLS_CERT_DIR`).
    pub cert_dir: PathBuf,
    /// How often the files are re-read ([`RELOAD_PERIOD`]; ours: `QUEUE_TLS_RELOAD_SECONDS`).
    pub reload_period: Duration,
    /// Lowest version offered; Knative's default is TLS 1.3.
    pub min_version: Version,
    /// Highest version offered.
    pub max_version: Version,
    /// TLS 1.2 suites allowed (`QUEUE_PROXY_TLS_CIPHER_SUITES`); `None` = the provider's
    /// default. TLS 1.3 suites are not configurable (as in Go, which ignores their names here).
    pub cipher_suites: Option<Vec<CipherSuite>>,
    /// Suite and curve names Go accepts that this build cannot offer: warned once when the TLS
    /// listener starts.
    pub skipped: Vec<String>,
    /// A `QUEUE_PROXY_TLS_*` value Knative rejects. Knative reads these only when the
    /// certificate is mounted and then exits 1 ("Failed to read TLS configuration from
    /// environment"); without TLS the pod serves. So: fatal only when the TLS listener starts.
    pub env_error: Option<String>,
    /// Key-exchange groups in preference order (`QUEUE_PROXY_TLS_CURVE_PREFERENCES`); empty =
    /// the provider's default.
    pub curves: Vec<NamedGroup>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert_dir: PathBuf::from(CERT_DIR),
            reload_period: RELOAD_PERIOD,
            min_version: Version::Tls13,
            max_version: Version::Tls13,
            cipher_suites: None,
            curves: Vec::new(),
            skipped: Vec::new(),
            env_error: None,
        }
    }
}

/// Parses `"1.2"`/`"1.3"`; empty means `default`.
///
/// # Errors
/// Any other value.
pub fn parse_version(v: &str, default: Version) -> Result<Version, String> {
    match v {
        "" => Ok(default),
        "1.2" => Ok(Version::Tls12),
        "1.3" => Ok(Version::Tls13),
        other => Err(format!("unsupported TLS version {other:?}")),
    }
}

fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// Go's `tls.CipherSuites()` names that rustls does not implement (CBC and RSA key exchange):
/// Knative accepts them, we skip them with a warning.
const GO_SUITES_NOT_HERE: &[&str] = &[
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
];

/// Go's TLS 1.3 suite names: in `tls.CipherSuites()`, so accepted, but Go never applies
/// `CipherSuites` to TLS 1.3.
const GO_TLS13_SUITES: &[&str] = &[
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];

/// `QUEUE_PROXY_TLS_CIPHER_SUITES` parsed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CipherSuites {
    /// The TLS 1.2 suites to offer; `None` when the list names no suite at all (the default).
    pub tls12: Option<Vec<CipherSuite>>,
    /// Names Go accepts that this build cannot offer.
    pub skipped: Vec<String>,
}

/// Parses a comma-separated list of Go cipher-suite names (`tls.CipherSuites()` names, as
/// knative.dev/pkg/network/tls does).
///
/// # Errors
/// A name outside Go's list (Go's insecure suites, the short CHACHA20 constant names, typos):
/// Knative refuses those too.
pub fn parse_cipher_suites(csv: &str) -> Result<CipherSuites, String> {
    let supported: Vec<CipherSuite> = provider().cipher_suites.iter().map(|s| s.suite()).collect();
    let mut out = CipherSuites::default();
    for name in names(csv) {
        let tls12 = out.tls12.get_or_insert_with(Vec::new);
        if GO_TLS13_SUITES.contains(&name) {
            continue;
        }
        if GO_SUITES_NOT_HERE.contains(&name) {
            out.skipped.push(name.to_owned());
            continue;
        }
        let suite = supported
            .iter()
            .copied()
            .filter(|s| !format!("{s:?}").starts_with("TLS13_"))
            .find(|s| format!("{s:?}") == name)
            .ok_or_else(|| format!("unknown cipher suite {name:?}"))?;
        tls12.push(suite);
    }
    Ok(out)
}

/// Parses Go curve names; groups Go knows but this build lacks (`P-521`, `X25519MLKEM768`)
/// are skipped ([`skipped_curves`], warned at TLS start), as they only narrow the preference
/// list.
///
/// # Errors
/// A name Go does not know either.
pub fn parse_curves(csv: &str) -> Result<Vec<NamedGroup>, String> {
    let mut out = Vec::new();
    for name in names(csv) {
        match name {
            "X25519" => out.push(NamedGroup::X25519),
            "CurveP256" | "P-256" => out.push(NamedGroup::secp256r1),
            "CurveP384" | "P-384" => out.push(NamedGroup::secp384r1),
            n if GO_CURVES_NOT_HERE.contains(&n) => {}
            other => return Err(format!("unknown curve {other:?}")),
        }
    }
    Ok(out)
}

/// Curve names Go accepts that this build cannot offer (skipped, warned at TLS start).
const GO_CURVES_NOT_HERE: &[&str] = &["CurveP521", "P-521", "X25519MLKEM768"];

/// The names in `csv` that [`parse_curves`] skips.
pub fn skipped_curves(csv: &str) -> Vec<String> {
    names(csv)
        .filter(|n| GO_CURVES_NOT_HERE.contains(n))
        .map(str::to_owned)
        .collect()
}

fn names(csv: &str) -> impl Iterator<Item = &str> {
    csv.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// TLS start-up and reload failures.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Reading a certificate file failed for a reason other than "does not exist".
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The PEM certificate chain or key could not be parsed.
    #[error("parsing {path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// rustls refused the configuration (versions, suites or groups left nothing usable).
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// A `QUEUE_PROXY_TLS_*` value Knative rejects too ([`TlsConfig::env_error`]).
    #[error("Failed to read TLS configuration from environment: {0}")]
    Env(String),
}

/// True if both `tls.crt` and `tls.key` exist in `dir` (Knative's condition for serving TLS).
///
/// # Errors
/// A stat error other than "does not exist" (fatal in Knative too).
pub fn enabled(dir: &Path) -> Result<bool, TlsError> {
    let exists = |name: &str| {
        let path = dir.join(name);
        match std::fs::metadata(&path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(TlsError::Read { path, source }),
        }
    };
    Ok(exists("tls.crt")? && exists("tls.key")?)
}

// === impl CertStore ===

/// The served certificate, swapped atomically on reload.
#[derive(Debug)]
pub struct CertStore {
    dir: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// The file contents `current` was built from, to detect changes (Knative compares SHA-256
    /// hashes of the same bytes).
    files: Mutex<(Vec<u8>, Vec<u8>)>,
}

impl CertStore {
    /// Loads `tls.crt` and `tls.key` from `dir`.
    ///
    /// # Errors
    /// Unreadable or unparsable files.
    pub fn load(dir: &Path, provider: Arc<CryptoProvider>) -> Result<Self, TlsError> {
        let files = read_pair(dir)?;
        let key = certified_key(dir, &files, &provider)?;
        Ok(Self {
            dir: dir.to_owned(),
            provider,
            current: RwLock::new(Arc::new(key)),
            files: Mutex::new(files),
        })
    }

    /// Re-reads the files; if either changed, parses and swaps the pair. Returns whether it
    /// swapped.
    ///
    /// # Errors
    /// Unreadable or unparsable files; the old certificate stays.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let files = read_pair(&self.dir)?;
        let mut last = self.files.lock().unwrap_or_else(|p| p.into_inner());
        if *last == files {
            return Ok(false);
        }
        let key = certified_key(&self.dir, &files, &self.provider)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(key);
        *last = files;
        Ok(true)
    }

    /// Reloads every `period` until `shutdown`.
    pub async fn watch(self: Arc<Self>, period: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.reload() {
                Ok(true) => tracing::info!("{RELOADED}"),
                Ok(false) => {}
                Err(error) => tracing::error!(error = %error, "failed to reload certificate"),
            }
        }
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

fn read_pair(dir: &Path) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|source| TlsError::Read { path, source })
    };
    Ok((read("tls.crt")?, read("tls.key")?))
}

fn certified_key(
    dir: &Path,
    (crt, key): &(Vec<u8>, Vec<u8>),
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let parse = |name: &str, reason: String| TlsError::Parse {
        path: dir.join(name),
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(crt)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| parse("tls.crt", e.to_string()))?;
    if chain.is_empty() {
        return Err(parse("tls.crt", "no certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| parse("tls.key", e.to_string()))?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| parse("tls.key", e.to_string()))
}

/// The rustls server configuration for `cfg`, serving the certificate in `store`.
///
/// # Errors
/// Settings that leave no usable version, suite or group.
pub fn server_config(cfg: &TlsConfig, store: Arc<CertStore>) -> Result<ServerConfig, TlsError> {
    let provider = store.provider.clone();
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = [
        (Version::Tls12, &rustls::version::TLS12),
        (Version::Tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| (cfg.min_version..=cfg.max_version).contains(v))
    .map(|(_, p)| p)
    .collect();
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)?
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The crypto provider narrowed to `cfg`'s suites and groups; warns once about names Go accepts
/// that this build skips.
pub fn provider_for(cfg: &TlsConfig) -> CryptoProvider {
    for name in &cfg.skipped {
        tracing::warn!(
            name = %name,
            "TLS cipher suite or curve not supported by this build; skipped"
        );
    }
    let mut p = provider();
    if let Some(tls12) = &cfg.cipher_suites {
        p.cipher_suites
            .retain(|s| s.version() == &rustls::version::TLS13 || tls12.contains(&s.suite()));
    }
    if !cfg.curves.is_empty() {
        let all = std::mem::take(&mut p.kx_groups);
        p.kx_groups = cfg
            .curves
            .iter()
            .filter_map(|c| all.iter().find(|g| g.name() == *c).copied())
            .collect();
    }
    p
}

/// Serves `svc` over TLS on `listener` until `shutdown`, then waits for open connections as
/// [`shared::http::server::serve`] does: after the handshake (bounded by the header-read
/// timeout; HTTP/2 when ALPN chose `h2`) a connection takes exactly the plain port's path,
/// framing checks, exact header limits and graceful shutdown included.
pub async fn serve_tls<S, B>(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    svc: S,
    opts: ServerOptions,
    shutdown: CancellationToken,
) where
    S: Service<Request<Incoming>, Response = Response<B>, Error = std::convert::Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let handshake = move |stream| {
        let acceptor = acceptor.clone();
        async move {
            let tls = match acceptor.accept(stream).await {
                Ok(tls) => tls,
                Err(error) => {
                    tracing::debug!(error = %error, "TLS handshake failed");
                    return None;
                }
            };
            let (_, conn) = tls.get_ref();
            let tls_info = TlsInfo {
                version: conn.protocol_version().map_or(0, u16::from),
                cipher_suite: conn
                    .negotiated_cipher_suite()
                    .map_or(0, |s| u16::from(s.suite())),
                alpn: conn
                    .alpn_protocol()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .unwrap_or_default(),
                server_name: conn.server_name().unwrap_or_default().to_owned(),
            };
            let h2 = tls_info.alpn == "h2";
            let mut extensions = http::Extensions::new();
            extensions.insert(tls_info);
            Some(Handshaken {
                io: tls,
                h2,
                extensions,
            })
        }
    };
    serve_handshaken(listener, svc, opts, handshake, shutdown).await;
}

#[cfg(test)]
mod tests;
