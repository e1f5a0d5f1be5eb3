use super::*;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("qp-tls-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes a fresh self-signed pair for `127.0.0.1` into `dir`; returns the certificate DER.
fn write_pair(dir: &Path) -> Vec<u8> {
    let c = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    std::fs::write(dir.join("tls.crt"), c.cert.pem()).unwrap();
    std::fs::write(dir.join("tls.key"), c.key_pair.serialize_pem()).unwrap();
    c.cert.der().to_vec()
}

fn served(store: &CertStore) -> Vec<u8> {
    store.current.read().unwrap().cert[0].to_vec()
}

#[test]
fn enabled_only_when_both_files_exist() {
    let d = temp_dir("enabled");
    assert!(!enabled(&d).unwrap());
    std::fs::write(d.join("tls.crt"), "x").unwrap();
    assert!(!enabled(&d).unwrap(), "key missing");
    std::fs::write(d.join("tls.key"), "x").unwrap();
    assert!(enabled(&d).unwrap());
    assert!(!enabled(Path::new("/nonexistent/dir")).unwrap());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn reload_swaps_only_on_change_and_keeps_the_old_pair_on_error() {
    let d = temp_dir("reload");
    let first = write_pair(&d);
    let store = CertStore::load(&d, Arc::new(provider())).unwrap();
    assert_eq!(served(&store), first);
    assert!(!store.reload().unwrap(), "unchanged files: no swap");
    let second = write_pair(&d);
    assert!(store.reload().unwrap());
    assert_eq!(served(&store), second);
    std::fs::write(d.join("tls.key"), "garbage").unwrap();
    assert!(store.reload().is_err());
    assert_eq!(
        served(&store),
        second,
        "a bad pair keeps the old certificate"
    );
    std::fs::write(d.join("tls.crt"), "garbage").unwrap();
    assert!(CertStore::load(&d, Arc::new(provider())).is_err());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn versions_suites_and_curves_parse_like_knative() {
    assert_eq!(parse_version("", Version::Tls13), Ok(Version::Tls13));
    assert_eq!(parse_version("1.2", Version::Tls13), Ok(Version::Tls12));
    assert!(parse_version("1.1", Version::Tls13).is_err());
    assert_eq!(
        parse_cipher_suites(
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"
        ),
        Ok(CipherSuites {
            tls12: Some(vec![
                CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
            ]),
            skipped: vec![],
        })
    );
    // Issue 14: Go's list holds the TLS 1.3 names (Go ignores them for 1.3), and CBC / RSA
    // key-exchange suites rustls lacks: accepted, the latter skipped.
    assert_eq!(
        parse_cipher_suites(
            "TLS_AES_128_GCM_SHA256,TLS_AES_256_GCM_SHA384,TLS_CHACHA20_POLY1305_SHA256"
        ),
        Ok(CipherSuites {
            tls12: Some(vec![]),
            skipped: vec![],
        })
    );
    assert_eq!(
        parse_cipher_suites("TLS_RSA_WITH_AES_128_CBC_SHA,TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"),
        Ok(CipherSuites {
            tls12: Some(vec![CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]),
            skipped: vec!["TLS_RSA_WITH_AES_128_CBC_SHA".into()],
        })
    );
    // Not in Go's `tls.CipherSuites()`: Knative refuses them too.
    for bad in [
        "TLS_RSA_WITH_RC4_128_SHA",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
        "TLS13_AES_128_GCM_SHA256",
        "nope",
    ] {
        assert!(parse_cipher_suites(bad).unwrap_err().contains(bad), "{bad}");
    }
    assert_eq!(parse_cipher_suites(""), Ok(CipherSuites::default()));
    assert_eq!(skipped_curves("X25519, P-521"), vec!["P-521".to_owned()]);
    assert_eq!(
        parse_curves("CurveP256,X25519,X25519MLKEM768,P-384"),
        Ok(vec![
            NamedGroup::secp256r1,
            NamedGroup::X25519,
            NamedGroup::secp384r1
        ])
    );
    assert!(parse_curves("brainpool").is_err());
}

#[test]
fn provider_keeps_tls13_suites_and_orders_groups() {
    let cfg = TlsConfig {
        cipher_suites: Some(vec![CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384]),
        curves: vec![NamedGroup::secp384r1, NamedGroup::X25519],
        ..TlsConfig::default()
    };
    let p = provider_for(&cfg);
    let tls12: Vec<_> = p
        .cipher_suites
        .iter()
        .filter(|s| s.version() == &rustls::version::TLS12)
        .map(|s| s.suite())
        .collect();
    assert_eq!(Some(tls12), cfg.cipher_suites);
    assert!(
        p.cipher_suites
            .iter()
            .any(|s| s.version() == &rustls::version::TLS13)
    );
    let groups: Vec<_> = p.kx_groups.iter().map(|g| g.name()).collect();
    assert_eq!(groups, cfg.curves);
}
