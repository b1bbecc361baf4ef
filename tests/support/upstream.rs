//! Real HTTP upstream servers for tests, whose behaviour can be changed mid-test.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::TcpListener;

type BoxBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// How a test upstream answers.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// 200 with a JSON echo of the request: name, method, uri, headers, body length.
    Echo,
    /// Wait, then echo.
    Slow(Duration),
    /// Answer with this status and a small JSON body.
    Status(u16),
    /// Stream `n` bytes of zeros in 64 KiB chunks.
    Download(u64),
    /// Answer 101 and echo every byte back (a minimal upgrade peer).
    UpgradeEcho,
    /// A fixed answer, optionally gzip-compressed and delayed.
    Fixed { status: u16, content_type: &'static str, body: String, gzip: bool, delay: Duration },
    /// JSON whose `nonce` changes on every request (a noisy field).
    Varying,
}

impl Behaviour {
    /// A JSON answer with status 200.
    pub fn json(body: serde_json::Value) -> Behaviour {
        Behaviour::Fixed {
            status: 200,
            content_type: "application/json",
            body: body.to_string(),
            gzip: false,
            delay: Duration::ZERO,
        }
    }
}

/// A running test upstream; stops when dropped.
pub struct TestUpstream {
    pub addr: SocketAddr,
    behaviour: Arc<Mutex<Behaviour>>,
    hits: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub body_bytes: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
    connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

/// One request as the upstream received it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub uri: String,
    pub headers: http::HeaderMap,
}

impl TestUpstream {
    pub async fn start(name: &str, behaviour: Behaviour) -> TestUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(listener, name, behaviour)
    }

    /// Starts on a listener the test already holds (to restart on the same port).
    pub fn start_on(listener: TcpListener, name: &str, behaviour: Behaviour) -> TestUpstream {
        let addr = listener.local_addr().unwrap();
        let behaviour = Arc::new(Mutex::new(behaviour));
        let hits = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let body_bytes = Arc::new(AtomicU64::new(0));
        let state = State {
            name: name.to_string(),
            behaviour: behaviour.clone(),
            hits: hits.clone(),
            seen: seen.clone(),
            body_bytes: body_bytes.clone(),
        };
        let connections = Arc::new(Mutex::new(Vec::new()));
        let conns = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let state = state.clone();
                let handle = tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(state.answer(req).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
                conns.lock().unwrap().push(handle.abort_handle());
            }
        });
        TestUpstream { addr, behaviour, hits, seen, body_bytes, task, connections }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// TCP connections accepted so far (to see keep-alive reuse).
    pub fn connections_accepted(&self) -> usize {
        self.connections.lock().unwrap().len()
    }

    pub fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }

    pub fn last_seen(&self) -> Seen {
        self.seen.lock().unwrap().last().cloned().expect("the upstream saw a request")
    }

    /// Dies: closes the listener and every open connection, as a killed process would.
    pub fn stop(&self) {
        self.task.abort();
        for conn in self.connections.lock().unwrap().drain(..) {
            conn.abort();
        }
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.stop();
    }
}

#[derive(Clone)]
struct State {
    name: String,
    behaviour: Arc<Mutex<Behaviour>>,
    hits: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    body_bytes: Arc<AtomicU64>,
}

impl State {
    async fn answer(&self, mut req: Request<Incoming>) -> Response<BoxBody> {
        self.hits.fetch_add(1, Ordering::SeqCst);
        let behaviour = self.behaviour.lock().unwrap().clone();
        self.seen.lock().unwrap().push(Seen { uri: req.uri().to_string(), headers: req.headers().clone() });
        if let Behaviour::UpgradeEcho = behaviour {
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(upgraded) = on_upgrade.await {
                    let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
            return Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "echo")
                .body(full(Bytes::new()))
                .unwrap();
        }
        let method = req.method().to_string();
        let uri = req.uri().to_string();
        let headers: serde_json::Map<String, serde_json::Value> =
            req.headers().iter().map(|(k, v)| (k.to_string(), json!(String::from_utf8_lossy(v.as_bytes())))).collect();
        // Read the whole body, counting bytes without keeping them.
        let mut body = req.into_body();
        let mut length = 0u64;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    if let Some(data) = frame.data_ref() {
                        length += data.len() as u64;
                    }
                }
                Err(_) => break,
            }
        }
        self.body_bytes.fetch_add(length, Ordering::SeqCst);
        let echo = || {
            let body =
                json!({"upstream": self.name, "method": method, "uri": uri, "headers": headers, "body_length": length});
            Response::builder()
                .header("content-type", "application/json")
                .header("x-upstream", self.name.as_str())
                .body(full(Bytes::from(body.to_string())))
                .unwrap()
        };
        match behaviour {
            Behaviour::Echo | Behaviour::UpgradeEcho => echo(),
            Behaviour::Slow(delay) => {
                tokio::time::sleep(delay).await;
                echo()
            }
            Behaviour::Status(code) => Response::builder()
                .status(code)
                .header("content-type", "application/json")
                .header("x-upstream", self.name.as_str())
                .body(full(Bytes::from(json!({"upstream": self.name, "status": code}).to_string())))
                .unwrap(),
            Behaviour::Fixed { status, content_type, body, gzip, delay } => {
                tokio::time::sleep(delay).await;
                let mut builder = Response::builder()
                    .status(status)
                    .header("content-type", content_type)
                    .header("x-upstream", self.name.as_str());
                let bytes = if gzip {
                    use std::io::Write;
                    builder = builder.header("content-encoding", "gzip");
                    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                    enc.write_all(body.as_bytes()).unwrap();
                    enc.finish().unwrap()
                } else {
                    body.into_bytes()
                };
                builder.body(full(Bytes::from(bytes))).unwrap()
            }
            Behaviour::Varying => {
                let n = self.hits.load(Ordering::SeqCst);
                let body = json!({"name": "stable", "nonce": format!("{}-{n}", self.name), "items": [1, 2]});
                Response::builder()
                    .header("content-type", "application/json")
                    .body(full(Bytes::from(body.to_string())))
                    .unwrap()
            }
            Behaviour::Download(n) => {
                let chunk = Bytes::from(vec![0u8; 64 * 1024]);
                let stream = futures_stream(n, chunk);
                Response::builder()
                    .header("content-length", n.to_string())
                    .body(BodyExt::boxed(StreamBody::new(stream)))
                    .unwrap()
            }
        }
    }
}

fn full(bytes: Bytes) -> BoxBody {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

fn futures_stream(
    total: u64,
    chunk: Bytes,
) -> impl futures_core::Stream<Item = Result<Frame<Bytes>, std::io::Error>> + Send + Sync {
    let mut sent = 0u64;
    let mut iter = std::iter::from_fn(move || {
        if sent >= total {
            return None;
        }
        let n = (total - sent).min(chunk.len() as u64) as usize;
        sent += n as u64;
        Some(Ok(Frame::data(chunk.slice(..n))))
    });
    StreamIter(std::iter::from_fn(move || iter.next()))
}

struct StreamIter<I>(I);

impl<I: Iterator + Unpin> futures_core::Stream for StreamIter<I> {
    type Item = I::Item;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<I::Item>> {
        std::task::Poll::Ready(self.0.next())
    }
}

/// Established TCP connections whose far end is `port` on this host: the
/// proxy's connections to an upstream listening there.
pub fn connections_to(port: u16) -> usize {
    let mut count = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(remote), Some(state)) = (fields.get(2), fields.get(3)) else { continue };
            let remote_port = remote.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            if remote_port == Some(port) && *state == "01" {
                count += 1;
            }
        }
    }
    count
}
