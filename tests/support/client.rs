//! Small HTTP clients for tests: HTTP/1.1, HTTP/2 prior knowledge, and raw sockets.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response read whole.
#[derive(Debug)]
pub struct TestResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl TestResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The tests' HTTP client (a keep-alive pool; HTTP/1.1 or HTTP/2 prior knowledge).
pub type TestClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// An HTTP/1.1 client with a keep-alive pool.
pub fn http1() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 client with prior knowledge (h2c).
pub fn http2() -> TestClient {
    Client::builder(TokioExecutor::new()).http2_only(true).build_http()
}

/// Sends a request and reads the whole response.
pub async fn send(client: &TestClient, req: Request<Full<Bytes>>) -> Result<TestResponse, String> {
    let response = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| format!("{e:?}"))?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(TestResponse { status: parts.status, headers: parts.headers, body })
}

/// A request builder with a URL on `addr`.
pub fn req(method: Method, addr: SocketAddr, path: &str) -> http::request::Builder {
    Request::builder().method(method).uri(format!("http://{addr}{path}"))
}

/// GET over HTTP/1.1.
pub async fn get(addr: SocketAddr, path: &str) -> TestResponse {
    send(&http1(), req(Method::GET, addr, path).body(Full::default()).unwrap())
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// Writes raw bytes and reads what comes back until the peer closes or `wait` passes.
pub async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads one answer with a `Content-Length` off the stream.
pub async fn read_answer<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> String {
    let mut data = Vec::new();
    let mut byte = [0u8; 1];
    while !data.ends_with(b"\r\n\r\n") {
        assert_eq!(
            stream.read(&mut byte).await.unwrap(),
            1,
            "closed inside a head: {:?}",
            String::from_utf8_lossy(&data)
        );
        data.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&data).to_ascii_lowercase();
    let length: usize =
        head.lines().find_map(|l| l.strip_prefix("content-length: ")).map_or(0, |v| v.trim().parse().unwrap());
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.unwrap();
    data.extend_from_slice(&body);
    String::from_utf8_lossy(&data).into_owned()
}

/// The status code of a raw HTTP/1.x response, if there is one.
pub fn raw_status(response: &str) -> Option<u16> {
    response.split_whitespace().nth(1)?.parse().ok()
}

/// One HTTP/1.1 request whose answer may come before its body is all sent, as
/// servers answer an over-limit upload (413) and close. The body is written
/// beside the read, and a write cut off by the server's close is not an error:
/// a client such as hyper's would fail on the broken pipe, depending on how
/// much of the body the socket buffers took first.
pub async fn upload(
    addr: SocketAddr,
    method: &Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> TestResponse {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let body = body.to_vec();
    let sending = tokio::spawn(async move {
        let _ = writer.write_all(head.as_bytes()).await;
        let _ = writer.write_all(&body).await;
        writer
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        let mut chunk = [0u8; 16 * 1024];
        while let Ok(n @ 1..) = reader.read(&mut chunk).await {
            answer.extend_from_slice(&chunk[..n]);
            if let Some(response) = parse_whole(&answer) {
                return response;
            }
        }
        parse_whole(&answer)
            .unwrap_or_else(|| panic!("{method} {path}: no whole answer in {:?}", String::from_utf8_lossy(&answer)))
    });
    let response = read.await.unwrap_or_else(|_| panic!("{method} {path}: no answer within 20 s"));
    sending.abort();
    response
}

/// A final (non-1xx) response with a `Content-Length` body, once all of it is in `bytes`.
fn parse_whole(mut bytes: &[u8]) -> Option<TestResponse> {
    loop {
        let mut slots = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Response::new(&mut slots);
        let httparse::Status::Complete(head_len) = parsed.parse(bytes).ok()? else { return None };
        let status = StatusCode::from_u16(parsed.code?).ok()?;
        if status.is_informational() {
            bytes = &bytes[head_len..];
            continue;
        }
        let mut headers = HeaderMap::new();
        for h in parsed.headers.iter() {
            headers.append(
                http::HeaderName::from_bytes(h.name.as_bytes()).ok()?,
                http::HeaderValue::from_bytes(h.value).ok()?,
            );
        }
        let length: usize = headers.get(http::header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()?;
        let rest = &bytes[head_len..];
        return (rest.len() >= length).then(|| TestResponse {
            status,
            headers,
            body: Bytes::copy_from_slice(&rest[..length]),
        });
    }
}
