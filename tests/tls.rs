//! TLS: termination with SNI and ALPN, live certificate rotation, refusal of
//! broken and expired certificates, https upstreams with a private CA and
//! mutual TLS, and the plain listener's redirect. Certificates are made in
//! the test with rcgen.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// A private CA that signs leaf certificates.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new() -> Ca {
        let mut params = CertificateParams::new(vec![]).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "strangler test CA");
        Ca { issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap() }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf for `names`; `expired` makes one that ended yesterday.
    fn leaf(&self, names: &[&str], expired: bool) -> (String, String) {
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn write(&self, dir: &Path, name: &str, pair: &(String, String)) -> (PathBuf, PathBuf) {
        let (cert, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        std::fs::write(&cert, &pair.0).unwrap();
        std::fs::write(&key, &pair.1).unwrap();
        (cert, key)
    }
}

/// Connects with TLS (SNI `name`, trusting `ca_pem`), sends `GET path` over
/// HTTP/1.1 or HTTP/2 (by ALPN), and returns status, body and the server's leaf.
async fn tls_get(
    addr: SocketAddr,
    name: &str,
    ca_pem: &str,
    path: &str,
    h2: bool,
) -> Result<(u16, String, CertificateDer<'static>), String> {
    let tls = tls_connect(addr, name, ca_pem, h2).await?;
    let (_, session) = tls.get_ref();
    let leaf = session.peer_certificates().unwrap()[0].clone().into_owned();
    assert_eq!(session.alpn_protocol(), Some(if h2 { &b"h2"[..] } else { &b"http/1.1"[..] }));
    let request = http::Request::get(format!("https://{name}{path}")).body(Empty::<Bytes>::new()).unwrap();
    let response = if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        sender.send_request(request).await.map_err(|e| e.to_string())?
    } else {
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut request = request;
        request.headers_mut().insert("host", name.parse().unwrap());
        sender.send_request(request).await.map_err(|e| e.to_string())?
    };
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned(), leaf))
}

/// A TLS connection trusting `ca_pem`, with SNI `name`, offering h2 or http/1.1.
async fn tls_connect(
    addr: SocketAddr,
    name: &str,
    ca_pem: &str,
    h2: bool,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile_like(ca_pem) {
        roots.add(cert).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = if h2 { vec![b"h2".to_vec()] } else { vec![b"http/1.1".to_vec()] };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    connector.connect(ServerName::try_from(name.to_string()).unwrap(), tcp).await.map_err(|e| e.to_string())
}

fn rustls_pemfile_like(pem: &str) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes()).map(|c| c.unwrap()).collect()
}

fn der_of(pem: &str) -> CertificateDer<'static> {
    rustls_pemfile_like(pem).remove(0)
}

fn tls_config(upstream: &TestUpstream, cert: &Path, key: &Path, extra: &str) -> String {
    format!(
        "listen: \"127.0.0.1:0\"\nadmin: \"127.0.0.1:0\"\ntls:\n  cert: {}\n  key: {}\n{extra}upstreams:\n  up:\n    targets: [\"{}\"]\nroutes:\n  - {{name: all, prefix: /, upstream: up}}\n",
        cert.display(),
        key.display(),
        upstream.url()
    )
}

#[tokio::test]
async fn terminates_tls_with_sni_and_alpn_and_rotates_certificates_live() {
    let up = TestUpstream::start("up", Behaviour::Echo).await;
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let a = ca.leaf(&["a.test"], false);
    let b = ca.leaf(&["*.b.test"], false);
    let (a_cert, a_key) = ca.write(dir.path(), "a", &a);
    let (b_cert, b_key) = ca.write(dir.path(), "b", &b);
    let extra = format!("  sni:\n    - {{cert: {}, key: {}}}\n", b_cert.display(), b_key.display());
    let config = ConfigDir::new(&tls_config(&up, &a_cert, &a_key, &extra));
    let proxy = BinaryProxy::start(&config.path(), &["--poll-interval", "500ms"]).await;

    let (status, body, leaf) = tls_get(proxy.addr, "a.test", &ca.pem(), "/x", false).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(leaf, der_of(&a.0));
    assert!(body.contains("\"x-forwarded-proto\":\"https\""), "{body}");
    let (status, _, leaf) = tls_get(proxy.addr, "api.b.test", &ca.pem(), "/y", true).await.unwrap();
    assert_eq!(status, 200, "HTTP/2 over ALPN");
    assert_eq!(leaf, der_of(&b.0), "SNI picks the wildcard certificate");

    // A name no certificate covers gets the default one, which the client refuses.
    let wrong = tls_get(proxy.addr, "c.test", &ca.pem(), "/", false).await;
    assert!(wrong.unwrap_err().contains("certificate"), "a wrong-SNI request must fail verification");

    // Rotation: a new certificate for a.test is used by the next handshake.
    let a2 = ca.leaf(&["a.test"], false);
    let tmp = dir.path().join("a.crt.new");
    std::fs::write(&tmp, &a2.0).unwrap();
    std::fs::write(dir.path().join("a.key.new"), &a2.1).unwrap();
    std::fs::rename(dir.path().join("a.key.new"), &a_key).unwrap();
    std::fs::rename(&tmp, &a_cert).unwrap();
    let mut rotated = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok((_, _, leaf)) = tls_get(proxy.addr, "a.test", &ca.pem(), "/", false).await {
            if leaf == der_of(&a2.0) {
                rotated = true;
                break;
            }
        }
    }
    assert!(rotated, "the rotated certificate was not picked up");

    // A broken new certificate is rejected and counted; the old one stays.
    std::fs::write(&a_cert, "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n").unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (_, _, leaf) = tls_get(proxy.addr, "a.test", &ca.pem(), "/", false).await.unwrap();
    assert_eq!(leaf, der_of(&a2.0));
    // An expired one too.
    let expired = ca.leaf(&["a.test"], true);
    std::fs::write(&a_key, &expired.1).unwrap();
    std::fs::write(&a_cert, &expired.0).unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (_, _, leaf) = tls_get(proxy.addr, "a.test", &ca.pem(), "/", false).await.unwrap();
    assert_eq!(leaf, der_of(&a2.0));
    let metrics = get(proxy.admin, "/metrics").await.text();
    assert!(metrics.contains("strangler_tls_reloads_total{result=\"failure\"}"), "{metrics}");
    assert!(proxy.log_text().contains("new TLS certificate rejected"));
}

#[test]
fn check_refuses_expired_and_mismatched_certificates() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let expired = ca.write(dir.path(), "expired", &ca.leaf(&["a.test"], true));
    let good = ca.leaf(&["a.test"], false);
    let other = ca.leaf(&["a.test"], false);
    let (cert, _) = ca.write(dir.path(), "good", &good);
    let (_, other_key) = ca.write(dir.path(), "other", &other);
    for (cert, key, expect) in [(&expired.0, &expired.1, "not valid now"), (&cert, &other_key, "does not match")] {
        let text = format!(
            "listen: \"127.0.0.1:0\"\ntls:\n  cert: {}\n  key: {}\nupstreams:\n  up:\n    targets: [\"http://127.0.0.1:1\"]\nroutes:\n  - {{name: all, prefix: /, upstream: up}}\n",
            cert.display(),
            key.display()
        );
        let config = ConfigDir::new(&text);
        let out = std::process::Command::new(binary()).arg("check").arg(config.path()).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{err}");
    }
}

/// A TLS upstream signed by `ca`, optionally demanding client certificates from `client_ca`.
async fn tls_upstream(ca: &Ca, client_ca: Option<&Ca>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use rustls::pki_types::pem::PemObject;
    let (cert, key) = ca.leaf(&["localhost"], false);
    let certs = rustls_pemfile_like(&cert);
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder =
        rustls::ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().unwrap();
    let config = match client_ca {
        Some(client_ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(der_of(&client_ca.pem())).unwrap();
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
            builder.with_client_cert_verifier(verifier).with_single_cert(certs, key).unwrap()
        }
        None => builder.with_no_client_auth().with_single_cert(certs, key).unwrap(),
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let sni_host =
                        req.headers().get("host").map(|h| h.to_str().unwrap_or("").to_string()).unwrap_or_default();
                    Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(Bytes::from(
                        format!("secure hello, host {sni_host}"),
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await;
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn https_upstreams_with_a_private_ca_and_mutual_tls() {
    let server_ca = Ca::new();
    let client_ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, server_ca.pem()).unwrap();
    let (client_cert, client_key) = client_ca.write(dir.path(), "client", &client_ca.leaf(&["strangler.test"], false));
    let (plain_addr, _t1) = tls_upstream(&server_ca, None).await;
    let (mtls_addr, _t2) = tls_upstream(&server_ca, Some(&client_ca)).await;
    let text = format!(
        "listen: \"127.0.0.1:0\"\nadmin: \"127.0.0.1:0\"\nupstreams:\n  private:\n    targets: [\"https://localhost:{p}\"]\n    tls: {{ ca: {ca} }}\n  public-roots:\n    targets: [\"https://localhost:{p}\"]\n  mtls:\n    targets: [\"https://localhost:{m}\"]\n    tls: {{ ca: {ca}, cert: {cc}, key: {ck} }}\n  mtls-without-cert:\n    targets: [\"https://localhost:{m}\"]\n    tls: {{ ca: {ca} }}\nroutes:\n  - {{name: a, prefix: /private, upstream: private}}\n  - {{name: b, prefix: /public, upstream: public-roots}}\n  - {{name: c, prefix: /mtls, upstream: mtls}}\n  - {{name: d, prefix: /nocert, upstream: mtls-without-cert}}\n",
        p = plain_addr.port(),
        m = mtls_addr.port(),
        ca = ca_file.display(),
        cc = client_cert.display(),
        ck = client_key.display(),
    );
    let proxy = TestProxy::start(&text).await;
    let r = get(proxy.addr, "/private").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().starts_with("secure hello"));
    assert_eq!(get(proxy.addr, "/public").await.status, 502, "the webpki roots do not trust a private CA");
    assert_eq!(get(proxy.addr, "/mtls").await.status, 200, "mutual TLS with the configured client certificate");
    assert_eq!(get(proxy.addr, "/nocert").await.status, 502, "the upstream demands a client certificate");
}

#[tokio::test]
async fn the_plain_listener_redirects_to_https() {
    let up = TestUpstream::start("up", Behaviour::Echo).await;
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = ca.write(dir.path(), "a", &ca.leaf(&["a.test"], false));
    let config =
        ConfigDir::new(&tls_config(&up, &cert, &key, "  plain_listen: \"127.0.0.1:0\"\n  redirect_https: true\n"));
    let proxy = BinaryProxy::start(&config.path(), &[]).await;
    proxy.wait_for_log("plain HTTP listener").await;
    let log = proxy.log_text();
    let plain: SocketAddr = log.split("plain=").nth(1).unwrap().split([' ', '"']).next().unwrap().parse().unwrap();
    let response = raw(
        plain,
        b"GET /shop?item=1 HTTP/1.1\r\nHost: a.test:80\r\nConnection: close\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(raw_status(&response), Some(308), "{response}");
    assert!(response.contains(&format!("location: https://a.test:{}/shop?item=1", proxy.addr.port())), "{response}");
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn rsa_certificates_are_served_too() {
    let up = TestUpstream::start("up", Behaviour::Echo).await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("rsa.crt"), dir.path().join("rsa.key"));
    // rcgen (with ring) cannot make RSA keys; openssl can.
    let status = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=rsa.test"])
        .args(["-addext", "subjectAltName=DNS:rsa.test", "-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl is installed (make system-deps)");
    assert!(status.success());
    let config = ConfigDir::new(&tls_config(&up, &cert, &key, ""));
    let proxy = BinaryProxy::start(&config.path(), &[]).await;
    let pem = std::fs::read_to_string(&cert).unwrap();
    let (status, _, leaf) = tls_get(proxy.addr, "rsa.test", &pem, "/", false).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(leaf, der_of(&pem));
}

/// The proxy terminating TLS for `a.test` (certified by `ca`) in front of an
/// echoing upstream, started with `args`; with the files it reads, which
/// must outlive it.
struct TlsFront {
    up: TestUpstream,
    ca: Ca,
    proxy: BinaryProxy,
    _files: (tempfile::TempDir, ConfigDir),
}

impl TlsFront {
    async fn start(args: &[&str]) -> TlsFront {
        let up = TestUpstream::start("up", Behaviour::Echo).await;
        let ca = Ca::new();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = ca.write(dir.path(), "a", &ca.leaf(&["a.test"], false));
        let config = ConfigDir::new(&tls_config(&up, &cert, &key, ""));
        let proxy = BinaryProxy::start(&config.path(), args).await;
        TlsFront { up, ca, proxy, _files: (dir, config) }
    }
}

#[tokio::test]
async fn tls_connections_idle_until_the_keepalive_timeout_but_a_slow_first_head_is_cut_off() {
    let TlsFront { up, ca, proxy, .. } =
        &TlsFront::start(&["--header-read-timeout", "500ms", "--keepalive-timeout", "2s"]).await;
    let ask = async |tls: &mut tokio_rustls::client::TlsStream<TcpStream>| {
        tls.write_all(b"GET /kept HTTP/1.1\r\nHost: a.test\r\n\r\n").await.unwrap();
        let answer = read_answer(tls).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    };

    // Idle between requests for twice the header timeout: still open.
    let mut kept = tls_connect(proxy.addr, "a.test", &ca.pem(), false).await.unwrap();
    ask(&mut kept).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let idle = Instant::now();
    ask(&mut kept).await;
    // Idle past the keep-alive timeout: closed.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), kept.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "an idle TLS connection outlived the keep-alive timeout");
    assert!(
        idle.elapsed() >= Duration::from_secs(2),
        "closed after {:?}, before the keep-alive timeout",
        idle.elapsed()
    );

    // A first head that never completes: cut off at the header timeout,
    // long before the keep-alive timeout.
    let mut slow = tls_connect(proxy.addr, "a.test", &ca.pem(), false).await.unwrap();
    let started = Instant::now();
    slow.write_all(b"GET /slow HTTP/1.1\r\nHost: a.test\r\n").await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut rest)).await;
    assert!(started.elapsed() < Duration::from_millis(1500), "a half-sent head held on for {:?}", started.elapsed());
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn a_version_naming_a_ca_file_that_is_not_there_yet_is_applied_once_the_file_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    let a = TestUpstream::start("a", Behaviour::Echo).await;
    let before = config(&[("a", &a.url())], "  - {name: all, prefix: /, upstream: a}\n");
    let proxy = TestProxy::start(&before).await;
    // As when Kubernetes updates the ConfigMap a moment before the Secret.
    let after = before.replace(
        "routes:\n",
        &format!(
            "  private:\n    targets: [\"https://localhost:1\"]\n    tls: {{ ca: {} }}\nroutes:\n  - {{name: p, prefix: /p, upstream: private}}\n",
            ca_path.display()
        ),
    );
    proxy.config.write_in_place(&after);
    let failures = || async {
        metric_sum(
            &get(proxy.admin, "/metrics").await.text(),
            "strangler_config_reloads_total",
            &[("result", "failure")],
        )
    };
    wait_for(Duration::from_secs(10), "the version to be refused for its missing CA file", || async {
        failures().await == 1.0
    })
    .await;
    std::fs::write(&ca_path, Ca::new().pem()).unwrap();
    proxy.wait_for_hash(&strangler::table::content_hash(&after)).await;
    assert_eq!(failures().await, 1.0, "the same failure, retried, is counted once");
}

#[tokio::test]
async fn tls_http1_serves_pipelined_and_large_heads_hands_a_body_to_hyper_and_closes_when_draining() {
    let TlsFront { up, ca, proxy, .. } = &TlsFront::start(&[]).await;
    let mut tls = tls_connect(proxy.addr, "a.test", &ca.pem(), false).await.unwrap();

    // Three requests in one write: the first exactly as long as a read's
    // first room (1 KiB), so that the rest waits decrypted in rustls, where
    // the socket does not show it; the second with a head larger than that
    // room. All answered, in order, each head whole upstream.
    let head = |path: &str, pad: usize| {
        let pad = if pad == 0 { String::new() } else { format!("X-Pad: {}\r\n", "p".repeat(pad)) };
        format!("GET {path} HTTP/1.1\r\nHost: a.test\r\n{pad}\r\n")
    };
    let one_pad = 1024 - head("/one", 1).len() + 1;
    let exact = head("/one", one_pad);
    assert_eq!(exact.len(), 1024);
    let pipelined = exact + &head("/two", 6000) + &head("/three", 0);
    tls.write_all(pipelined.as_bytes()).await.unwrap();
    for (path, pad) in [("/one", Some(one_pad)), ("/two", Some(6000)), ("/three", None)] {
        let answer = tokio::time::timeout(Duration::from_secs(5), read_answer(&mut tls)).await;
        let answer = answer.unwrap_or_else(|_| panic!("no answer to {path}"));
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let echo: serde_json::Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(echo["uri"], path);
        assert_eq!(echo["headers"]["x-forwarded-proto"], "https");
        assert_eq!(echo["headers"]["x-pad"].as_str().map(str::len), pad);
    }

    // A request with a body goes on to hyper over the same TLS connection,
    // and the one after it too.
    tls.write_all(b"POST /four HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n\r\nhello").await.unwrap();
    let answer = read_answer(&mut tls).await;
    assert!(answer.contains("\"body_length\":5"), "{answer}");
    tls.write_all(b"GET /five HTTP/1.1\r\nHost: a.test\r\n\r\n").await.unwrap();
    assert!(read_answer(&mut tls).await.contains("\"uri\":\"/five\""));
    assert_eq!(up.hits(), 5);

    // An idle TLS connection in our loop closes as soon as draining starts
    // (the keep-alive timeout is 75 s).
    let mut idle = tls_connect(proxy.addr, "a.test", &ca.pem(), false).await.unwrap();
    idle.write_all(b"GET /idle HTTP/1.1\r\nHost: a.test\r\n\r\n").await.unwrap();
    assert!(read_answer(&mut idle).await.starts_with("HTTP/1.1 200"));
    let draining = Instant::now();
    proxy.signal("TERM");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "an idle TLS connection stayed open while draining");
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    assert!(draining.elapsed() < Duration::from_secs(5));
}
