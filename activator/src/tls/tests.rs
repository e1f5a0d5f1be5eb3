#![allow(clippy::unwrap_used)]

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::{ClientConnection, ServerConnection};

use super::*;

/// A CA: (certificate, key).
fn ca() -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    (p.self_signed(&key).unwrap(), key)
}

/// A leaf for `sans` signed by `ca`, as a Secret's data (`tls.crt`, `tls.key`).
fn leaf(ca: &(rcgen::Certificate, KeyPair), sans: &[&str]) -> BTreeMap<String, Vec<u8>> {
    let key = KeyPair::generate().unwrap();
    let p =
        CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).unwrap();
    let cert = p.signed_by(&key, &ca.0, &ca.1).unwrap();
    BTreeMap::from([
        ("tls.crt".to_owned(), cert.pem().into_bytes()),
        ("tls.key".to_owned(), key.serialize_pem().into_bytes()),
    ])
}

fn pool(ca: &(rcgen::Certificate, KeyPair)) -> CaPool {
    CaPool::build(Some(ca.0.pem().as_bytes()), []).unwrap()
}

/// A TLS 1.3 handshake in memory: the activator's client config against a queue-proxy serving
/// `cert`. Returns the negotiated ALPN, or the first error.
fn handshake(
    verifier: &Arc<UpstreamVerifier>,
    cert: &Arc<ServingCert>,
    alpn: &[&[u8]],
) -> Result<Option<Vec<u8>>, rustls::Error> {
    let client = Arc::new(verifier.client_config(alpn).unwrap());
    let mut server_cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::clone(cert) as Arc<dyn ResolvesServerCert>);
    server_cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let mut c = ClientConnection::new(client, ServerName::try_from(SERVER_NAME).unwrap()).unwrap();
    let mut s = ServerConnection::new(Arc::new(server_cfg)).unwrap();
    for _ in 0..10 {
        let mut buf = Vec::new();
        c.write_tls(&mut buf).unwrap();
        s.read_tls(&mut buf.as_slice()).unwrap();
        s.process_new_packets()?;
        let mut buf = Vec::new();
        s.write_tls(&mut buf).unwrap();
        c.read_tls(&mut buf.as_slice()).unwrap();
        c.process_new_packets()?;
        if !c.is_handshaking() && !s.is_handshaking() {
            return Ok(c.alpn_protocol().map(<[u8]>::to_vec));
        }
    }
    panic!("handshake did not finish");
}

#[test]
fn queue_proxy_certificate_must_name_the_namespace() {
    let ca = ca();
    let v = Arc::new(UpstreamVerifier::new("Team-A", &pool(&ca)).unwrap());
    // Knative's queue-proxy certificates carry both names.
    let good = Arc::new(ServingCert::new(&leaf(&ca, &["kn-user-team-a", SERVER_NAME])).unwrap());
    assert_eq!(
        handshake(&v, &good, &[b"h2"]).unwrap().as_deref(),
        Some(&b"h2"[..])
    );
    assert_eq!(
        handshake(&v, &good, &[b"http/1.1"]).unwrap().as_deref(),
        Some(&b"http/1.1"[..])
    );
    // Another namespace's pod is refused, and so is a certificate without the dialled name.
    let other = Arc::new(ServingCert::new(&leaf(&ca, &["kn-user-team-b", SERVER_NAME])).unwrap());
    let e = handshake(&v, &other, &[b"h2"]).unwrap_err();
    assert!(e.to_string().contains("certificate"), "{e}");
    let no_dp = Arc::new(ServingCert::new(&leaf(&ca, &["kn-user-team-a"])).unwrap());
    assert!(handshake(&v, &no_dp, &[b"h2"]).is_err());
}

#[test]
fn ca_rotation_applies_to_the_next_handshake() {
    let (old, new) = (ca(), ca());
    let v = Arc::new(UpstreamVerifier::new("ns", &pool(&old)).unwrap());
    let served_by_new =
        Arc::new(ServingCert::new(&leaf(&new, &["kn-user-ns", SERVER_NAME])).unwrap());
    assert!(
        handshake(&v, &served_by_new, &[b"h2"]).is_err(),
        "unknown CA"
    );
    // During a rotation both CAs are trusted (the old in the Secret, the new in a bundle).
    let both = CaPool::build(Some(old.0.pem().as_bytes()), [new.0.pem().as_str()]).unwrap();
    assert_eq!(both.len(), 2);
    v.set_pool(&both).unwrap();
    assert!(handshake(&v, &served_by_new, &[b"h2"]).is_ok());
}

#[test]
fn ca_pool_sources() {
    let (a, b) = (ca(), ca());
    // Only the first PEM block of ca.crt counts, as in Knative.
    let two = format!("{}{}", a.0.pem(), b.0.pem());
    assert_eq!(CaPool::build(Some(two.as_bytes()), []).unwrap().len(), 1);
    // Bundles contribute every certificate.
    assert_eq!(CaPool::build(None, [two.as_str()]).unwrap().len(), 2);
    // A bad ca.crt is skipped, not fatal, when a bundle has roots; nothing at all is an error.
    assert_eq!(
        CaPool::build(Some(b"garbage"), [a.0.pem().as_str()])
            .unwrap()
            .len(),
        1
    );
    assert!(CaPool::build(Some(b"garbage"), []).is_err());
}

#[test]
fn serving_certificate_rotation_keeps_the_old_pair_on_a_bad_update() {
    let ca = ca();
    let v = Arc::new(UpstreamVerifier::new("ns", &pool(&ca)).unwrap());
    let cert = Arc::new(ServingCert::new(&leaf(&ca, &["kn-user-other", SERVER_NAME])).unwrap());
    assert!(handshake(&v, &cert, &[b"h2"]).is_err());
    cert.update(&leaf(&ca, &["kn-user-ns", SERVER_NAME]))
        .unwrap();
    assert!(handshake(&v, &cert, &[b"h2"]).is_ok());
    let mut bad = leaf(&ca, &["kn-user-other"]);
    bad.insert("tls.key".into(), b"not a key".to_vec());
    assert!(cert.update(&bad).is_err());
    assert!(
        handshake(&v, &cert, &[b"h2"]).is_ok(),
        "the old pair still serves"
    );
    assert_eq!(namespace_san("Default"), "kn-user-default");
}
