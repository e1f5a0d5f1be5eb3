//! Building blocks of system-internal TLS (activator.md §8.4), not yet wired into the listeners
//! or the upstream dial (the activator still refuses `system-internal-tls: enabled`; see
//! docs/activator.md): the trust and certificate rules, tested on their own.
//!
//! - [`CaPool`]: the roots for dialling queue-proxies: `ca.crt` of Secret `routing-serving-certs`
//!   (its first PEM block only, as Knative) plus every certificate of the ConfigMaps labelled
//!   [`TRUST_BUNDLE_LABEL`].
//! - [`UpstreamVerifier`]: a rustls verifier for one revision namespace: the chain must lead to
//!   the current pool for [`SERVER_NAME`], and the leaf must also name `kn-user-<namespace>`.
//!   The pool can be replaced while connections are dialled ([`UpstreamVerifier::set_pool`]),
//!   so a CA rotation needs no new clients.
//! - [`ServingCert`]: the HTTPS listener's certificate from the Secret's `tls.crt`/`tls.key`,
//!   swapped atomically; an unparsable update is refused and the old pair kept.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// The name the activator dials queue-proxies by (`ServerName` in Knative's TLS config).
pub const SERVER_NAME: &str = "data-plane.knative.dev";
/// Secret with the activator's serving pair and the CA (`SYSTEM_NAMESPACE`).
pub const ROUTING_SECRET: &str = "routing-serving-certs";
/// Label of ConfigMaps whose PEM values are extra trusted CAs (any label value).
pub const TRUST_BUNDLE_LABEL: &str = "networking.knative.dev/trust-bundle";

/// The SAN a queue-proxy of `namespace` must present: `kn-user-<lowercased namespace>`.
pub fn namespace_san(namespace: &str) -> String {
    format!("kn-user-{}", namespace.to_ascii_lowercase())
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS rule was not met; the message says which.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

// === impl CaPool ===

/// The roots for upstream TLS.
#[derive(Clone, Debug)]
pub struct CaPool {
    roots: Arc<RootCertStore>,
}

impl CaPool {
    /// From the Secret's `ca.crt` (first PEM block only; absent or unparsable: skipped with a
    /// log line) and the PEM values of the trust-bundle ConfigMaps (every certificate).
    ///
    /// # Errors
    /// No usable root at all (nothing could be verified).
    pub fn build<'a>(
        secret_ca: Option<&[u8]>,
        bundles: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, TlsError> {
        let mut roots = RootCertStore::empty();
        if let Some(pem) = secret_ca {
            match CertificateDer::from_pem_slice(pem) {
                Ok(c) => {
                    if let Err(e) = roots.add(c) {
                        tracing::warn!(error = %e, "routing-serving-certs ca.crt is not a usable CA");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "routing-serving-certs ca.crt is not PEM"),
            }
        }
        for bundle in bundles {
            let certs = CertificateDer::pem_slice_iter(bundle.as_bytes()).filter_map(Result::ok);
            let (added, ignored) = roots.add_parsable_certificates(certs);
            if ignored > 0 {
                tracing::warn!(
                    added,
                    ignored,
                    "trust bundle has certificates that are not CAs"
                );
            }
        }
        if roots.is_empty() {
            return Err(TlsError(
                "no CA in routing-serving-certs ca.crt nor in any trust bundle".into(),
            ));
        }
        Ok(Self {
            roots: Arc::new(roots),
        })
    }

    /// How many roots the pool holds.
    pub fn len(&self) -> usize {
        self.roots.len()
    }

    /// Whether the pool is empty (never, once built).
    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }

    fn verifier(&self) -> Result<Arc<WebPkiServerVerifier>, TlsError> {
        WebPkiServerVerifier::builder_with_provider(Arc::clone(&self.roots), provider())
            .build()
            .map_err(|e| TlsError(format!("verifier: {e}")))
    }
}

// === impl UpstreamVerifier ===

/// Verifies a queue-proxy's certificate for one namespace (see the module docs).
#[derive(Debug)]
pub struct UpstreamVerifier {
    inner: RwLock<Arc<WebPkiServerVerifier>>,
    san: ServerName<'static>,
}

impl UpstreamVerifier {
    /// For queue-proxies of `namespace`, trusting `pool`.
    ///
    /// # Errors
    /// A namespace that cannot be a DNS name, or a pool rustls refuses.
    pub fn new(namespace: &str, pool: &CaPool) -> Result<Self, TlsError> {
        let san = ServerName::try_from(namespace_san(namespace))
            .map_err(|e| TlsError(format!("namespace {namespace:?}: {e}")))?;
        Ok(Self {
            inner: RwLock::new(pool.verifier()?),
            san,
        })
    }

    /// Trusts `pool` from the next handshake on (CA rotation).
    ///
    /// # Errors
    /// A pool rustls refuses; the old one stays.
    pub fn set_pool(&self, pool: &CaPool) -> Result<(), TlsError> {
        let v = pool.verifier()?;
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = v;
        Ok(())
    }

    fn current(&self) -> Arc<WebPkiServerVerifier> {
        Arc::clone(&self.inner.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// A client configuration (TLS 1.3 only, as Knative's minimum) using this verifier, with
    /// `alpn` (`h2` for HTTP/2 upstreams, `http/1.1` otherwise).
    ///
    /// # Errors
    /// rustls refusing the protocol versions (not expected with the ring provider).
    pub fn client_config(
        self: &Arc<Self>,
        alpn: &[&[u8]],
    ) -> Result<rustls::ClientConfig, TlsError> {
        let mut c = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::clone(self) as Arc<dyn ServerCertVerifier>)
            .with_no_client_auth();
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(c)
    }
}

impl ServerCertVerifier for UpstreamVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let inner = self.current();
        // The chain, for the name dialled (data-plane.knative.dev) ...
        inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        // ... and the namespace's own SAN, so one tenant's pod cannot answer for another's.
        inner.verify_server_cert(end_entity, intermediates, &self.san, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

// === impl ServingCert ===

/// The HTTPS listener's certificate, swapped atomically when the Secret changes.
#[derive(Debug)]
pub struct ServingCert {
    current: RwLock<Arc<CertifiedKey>>,
}

/// Parses `tls.crt` (chain) and `tls.key` from a Secret's data.
fn certified_key(data: &BTreeMap<String, Vec<u8>>) -> Result<CertifiedKey, TlsError> {
    let crt = data
        .get("tls.crt")
        .ok_or_else(|| TlsError("tls.crt missing".into()))?;
    let key = data
        .get("tls.key")
        .ok_or_else(|| TlsError("tls.key missing".into()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(crt)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError(format!("tls.crt: {e}")))?;
    if chain.is_empty() {
        return Err(TlsError("tls.crt: no certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| TlsError(format!("tls.key: {e}")))?;
    CertifiedKey::from_der(chain, key, &provider())
        .map_err(|e| TlsError(format!("tls.crt/tls.key: {e}")))
}

impl ServingCert {
    /// From the Secret's data (`tls.crt`, `tls.key`).
    ///
    /// # Errors
    /// A missing or unparsable pair (fatal at start-up in Knative).
    pub fn new(data: &BTreeMap<String, Vec<u8>>) -> Result<Self, TlsError> {
        Ok(Self {
            current: RwLock::new(Arc::new(certified_key(data)?)),
        })
    }

    /// Swaps in the Secret's new pair.
    ///
    /// # Errors
    /// An unparsable pair; the old one keeps serving (Knative logs and keeps it too).
    pub fn update(&self, data: &BTreeMap<String, Vec<u8>>) -> Result<(), TlsError> {
        let k = certified_key(data)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(k);
        Ok(())
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.current.read().unwrap_or_else(|p| p.into_inner()),
        ))
    }
}

#[cfg(test)]
mod tests;
