//! TLS with rustls: termination on the listener (TLS 1.2 and 1.3, ALPN `h2`
//! and `http/1.1`, several certificates chosen by SNI), certificates that
//! rotate without a restart, and client settings for `https://` upstreams
//! (webpki roots, or a private CA; optional client certificate for mTLS).
//!
//! Rotation: the directories of the certificate files are watched like the
//! config (cert-manager and Kubernetes Secrets update by the same `..data`
//! symlink swap) and re-read on any event and on a slow timer. A new set is
//! used by the next handshake; open connections keep theirs. A broken,
//! expired or mismatched certificate is rejected, logged and counted, and
//! the old one stays.
//!
//! `strangler_tls_cert_not_after_seconds{cert,name}` is each served
//! certificate's expiry (unix seconds; `cert` the file, `name` its first
//! name), set at load and at each applied rotation; a certificate no longer
//! served (its name changed) loses its series.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::RecursiveMode;
use notify_debouncer_full::{new_debouncer, DebounceEventResult};
use prometheus::{IntCounterVec, IntGaugeVec};
use rustls::crypto::ring as provider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::config::{RawCertPair, RawTls, RawUpstreamTls};

/// A certificate or key that cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{file}: {message}")]
pub struct TlsError {
    pub file: String,
    pub message: String,
}

fn err(file: &Path, message: impl Into<String>) -> TlsError {
    TlsError { file: file.display().to_string(), message: message.into() }
}

/// A loaded certificate chain with its key and the names it serves.
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    /// Lower-case DNS names from the leaf's SANs (`*.example.com` allowed).
    pub names: Vec<String>,
    pub not_after: String,
    /// The end of the leaf's validity, in seconds since the epoch.
    pub not_after_unix: i64,
}

/// Reads and checks one certificate chain and its private key: PEM, a key
/// that matches the certificate, and a leaf that is valid now.
pub fn load_pair(pair: &RawCertPair) -> Result<LoadedCert, TlsError> {
    let (cert_path, key_path) = (Path::new(&pair.cert), Path::new(&pair.key));
    let pem = std::fs::read(cert_path).map_err(|e| err(cert_path, format!("cannot read: {e}")))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| err(cert_path, format!("not a PEM certificate: {e:?}")))?;
    let leaf = chain.first().ok_or_else(|| err(cert_path, "holds no certificate"))?;
    let key_pem = std::fs::read(key_path).map_err(|e| err(key_path, format!("cannot read: {e}")))?;
    let key =
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| err(key_path, format!("not a PEM private key: {e:?}")))?;
    let signing_key = provider::sign::any_supported_type(&key)
        .map_err(|e| err(key_path, format!("unsupported private key (RSA or ECDSA expected): {e}")))?;
    let (names, not_after, not_after_unix) = inspect_leaf(leaf).map_err(|m| err(cert_path, m))?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(|e| err(key_path, format!("the key does not match the certificate: {e}")))?;
    Ok(LoadedCert { key: Arc::new(certified), names, not_after, not_after_unix })
}

/// SAN DNS names (or the CN when there are none) and the end of validity
/// (text, unix seconds) of a leaf.
fn inspect_leaf(der: &CertificateDer<'_>) -> Result<(Vec<String>, String, i64), String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der.as_ref()).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let validity = cert.validity();
    if !validity.is_valid() {
        return Err(format!(
            "the certificate is not valid now (valid from {} to {})",
            validity.not_before.to_rfc2822().unwrap_or_default(),
            validity.not_after.to_rfc2822().unwrap_or_default()
        ));
    }
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => vec![],
    };
    if names.is_empty() {
        names.extend(
            cert.subject().iter_common_name().filter_map(|cn| cn.as_str().ok()).map(|s| s.to_ascii_lowercase()),
        );
    }
    Ok((names, validity.not_after.to_rfc2822().unwrap_or_default(), validity.not_after.timestamp()))
}

/// The certificates in force: the default, then the others by name.
struct CertSet {
    default: Arc<CertifiedKey>,
    by_name: Vec<(Vec<String>, Arc<CertifiedKey>)>,
    /// Per certificate: the labels of its expiry series and its expiry.
    expiry: Vec<([String; 2], i64)>,
}

impl CertSet {
    fn for_name(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let Some(sni) = sni.map(|s| s.to_ascii_lowercase()) else { return self.default.clone() };
        self.by_name
            .iter()
            .find(|(names, _)| names.iter().any(|n| name_matches(n, &sni)))
            .map_or_else(|| self.default.clone(), |(_, key)| key.clone())
    }
}

/// `*.example.com` matches exactly one label: `a.example.com`, not `a.b.example.com`.
fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => name.split_once('.').is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => pattern == name,
    }
}

/// Picks the certificate for each handshake; swapped whole on rotation.
pub struct CertResolver {
    pairs: Vec<RawCertPair>,
    set: ArcSwap<CertSet>,
    hash: Mutex<String>,
    reloads: IntCounterVec,
    not_after: IntGaugeVec,
}

impl std::fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertResolver").field("pairs", &self.pairs.len()).finish()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.set.load().for_name(hello.server_name()))
    }
}

impl CertResolver {
    /// Loads every certificate of the `tls` section; the first is the default.
    pub fn load(tls: &RawTls, metrics: &crate::metrics::Metrics) -> Result<Arc<CertResolver>, TlsError> {
        let pairs = tls.pairs();
        let (set, hash) = load_set(&pairs)?;
        let reloads = metrics.register(
            IntCounterVec::new(
                prometheus::Opts::new(
                    "strangler_tls_reloads_total",
                    "Certificate reloads by result (success, failure).",
                ),
                &["result"],
            )
            .unwrap(),
        );
        let not_after = metrics.register(
            IntGaugeVec::new(
                prometheus::Opts::new(
                    "strangler_tls_cert_not_after_seconds",
                    "When each served certificate expires (unix seconds), by file and first name.",
                ),
                &["cert", "name"],
            )
            .unwrap(),
        );
        publish_expiry(&not_after, &[], &set.expiry);
        Ok(Arc::new(CertResolver {
            pairs,
            set: ArcSwap::from_pointee(set),
            hash: Mutex::new(hash),
            reloads,
            not_after,
        }))
    }

    /// Re-reads the certificate files; swaps them in when they changed and are valid.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let current = self.hash.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if files_hash(&self.pairs) == current {
            return Ok(false);
        }
        match load_set(&self.pairs) {
            Ok((set, hash)) => {
                let set = Arc::new(set);
                let old = self.set.swap(set.clone());
                publish_expiry(&self.not_after, &old.expiry, &set.expiry);
                *self.hash.lock().unwrap_or_else(|e| e.into_inner()) = hash;
                self.reloads.with_label_values(&["success"]).inc();
                tracing::info!("TLS certificates reloaded");
                Ok(true)
            }
            Err(e) => {
                self.reloads.with_label_values(&["failure"]).inc();
                tracing::error!(error = %e, "new TLS certificate rejected; the previous one stays");
                // Remember the broken content so that it is not retried (and logged) every poll.
                *self.hash.lock().unwrap_or_else(|e| e.into_inner()) = files_hash(&self.pairs);
                Err(e)
            }
        }
    }

    /// The rustls server settings: TLS 1.2 and 1.3, ALPN h2 and http/1.1.
    pub fn server_config(self: &Arc<Self>) -> Arc<rustls::ServerConfig> {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("ring supports TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// Watches the certificate files' directories and polls as a safety net.
    pub fn watch(self: &Arc<Self>, poll_interval: Duration) -> Option<impl Drop> {
        let resolver = self.clone();
        let trigger = Arc::new(tokio::sync::Notify::new());
        let notify = trigger.clone();
        let mut debouncer = new_debouncer(Duration::from_millis(150), None, move |r: DebounceEventResult| {
            if r.is_ok() {
                notify.notify_one();
            }
        })
        .ok()?;
        let mut dirs: Vec<PathBuf> = self
            .pairs
            .iter()
            .flat_map(|p| [&p.cert, &p.key])
            .filter_map(|f| {
                Path::new(f)
                    .parent()
                    .map(|d| if d.as_os_str().is_empty() { PathBuf::from(".") } else { d.to_path_buf() })
            })
            .collect();
        dirs.sort();
        dirs.dedup();
        for dir in &dirs {
            if let Err(e) = debouncer.watch(dir, RecursiveMode::NonRecursive) {
                tracing::warn!(error = %e, dir = %dir.display(), "cannot watch the certificate directory; relying on the poll timer");
            }
        }
        tokio::spawn(async move {
            let mut poll = tokio::time::interval(poll_interval);
            poll.tick().await;
            loop {
                tokio::select! {
                    _ = trigger.notified() => {}
                    _ = poll.tick() => {}
                }
                let r = resolver.clone();
                let _ = tokio::task::spawn_blocking(move || r.reload()).await;
            }
        });
        Some(debouncer)
    }
}

/// Sets the expiry series of the certificates served now and deletes those
/// of certificates served before and not any more.
fn publish_expiry(gauge: &IntGaugeVec, before: &[([String; 2], i64)], now: &[([String; 2], i64)]) {
    for (labels, _) in before {
        if !now.iter().any(|(l, _)| l == labels) {
            let _ = gauge.remove_label_values(&[&labels[0], &labels[1]]);
        }
    }
    for (labels, not_after) in now {
        gauge.with_label_values(&[&labels[0], &labels[1]]).set(*not_after);
    }
}

fn load_set(pairs: &[RawCertPair]) -> Result<(CertSet, String), TlsError> {
    let hash = files_hash(pairs);
    let mut loaded = pairs.iter().map(load_pair).collect::<Result<Vec<_>, _>>()?;
    let expiry = pairs
        .iter()
        .zip(&loaded)
        .map(|(pair, c)| ([pair.cert.clone(), c.names.first().cloned().unwrap_or_default()], c.not_after_unix))
        .collect();
    let first = loaded.remove(0);
    let mut by_name = vec![(first.names, first.key.clone())];
    by_name.extend(loaded.into_iter().map(|c| (c.names, c.key)));
    Ok((CertSet { default: first.key, by_name, expiry }, hash))
}

fn files_hash(pairs: &[RawCertPair]) -> String {
    let mut h = Sha256::new();
    for p in pairs {
        for f in [&p.cert, &p.key] {
            h.update(std::fs::read(f).unwrap_or_default());
            h.update([0]);
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The rustls client settings for one upstream: webpki roots, or only the
/// given private CA; an optional client certificate (mTLS).
pub fn client_config(tls: Option<&RawUpstreamTls>) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    match tls.and_then(|t| t.ca.as_deref()) {
        Some(ca) => {
            let path = Path::new(ca);
            let pem = std::fs::read(path).map_err(|e| err(path, format!("cannot read: {e}")))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| err(path, format!("not a PEM certificate: {e:?}")))?;
                roots.add(cert).map_err(|e| err(path, format!("not a usable CA certificate: {e}")))?;
            }
            if roots.is_empty() {
                return Err(err(path, "holds no certificate"));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(provider::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots);
    let config = match tls.and_then(|t| t.cert.as_ref().zip(t.key.as_ref())) {
        Some((cert, key)) => {
            let loaded = load_pair(&RawCertPair { cert: cert.clone(), key: key.clone() })?;
            let key_path = Path::new(key);
            let key_pem = std::fs::read(key_path).map_err(|e| err(key_path, format!("cannot read: {e}")))?;
            let key = PrivateKeyDer::from_pem_slice(&key_pem)
                .map_err(|e| err(key_path, format!("not a PEM private key: {e:?}")))?;
            builder
                .with_client_auth_cert(loaded.key.cert.clone(), key)
                .map_err(|e| err(Path::new(cert), format!("unusable client certificate: {e}")))?
        }
        None => builder.with_no_client_auth(),
    };
    // ALPN (http/1.1) is set by the connector.
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_names_match_one_label() {
        assert!(name_matches("*.example.com", "a.example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(name_matches("api.example.com", "api.example.com"));
    }
}
