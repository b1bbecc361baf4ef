//! The benchmark upstream: answers fast and always the same.
//!
//! - `GET /1m`: 1 MiB of zeros
//! - `GET /slow...`: waits 2 s, then the small answer (a slow shadow)
//! - `POST` anything: reads the whole body, answers `{"ok":true}`
//! - anything else: a 64-byte JSON answer
//!
//! `bench-upstream ADDR THREADS [slow]` (`slow`: every answer waits 2 s); HTTP/1.1 with keep-alive (and h2c).

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

const SMALL: &[u8] = b"{\"id\":7,\"name\":\"bench\",\"items\":[1,2,3],\"ok\":true,\"pad\":\"xxxxx\"}\n";

async fn answer(req: Request<Incoming>, big: Bytes, slow: bool) -> Result<Response<Full<Bytes>>, Infallible> {
    let json = |body: Bytes| {
        Response::builder().header("content-type", "application/json").body(Full::new(body)).unwrap()
    };
    if req.method() == Method::POST || req.method() == Method::PUT {
        let mut body = req.into_body();
        while let Some(frame) = body.frame().await {
            if frame.is_err() {
                break;
            }
        }
        return Ok(json(Bytes::from_static(b"{\"ok\":true}")));
    }
    let path = req.uri().path();
    if path == "/1m" {
        return Ok(Response::builder().header("content-type", "application/octet-stream").body(Full::new(big)).unwrap());
    }
    if slow || path.starts_with("/slow") {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    Ok(json(Bytes::from_static(SMALL)))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:18000".into());
    let threads: usize = args.next().and_then(|t| t.parse().ok()).unwrap_or(1);
    let slow = args.next().as_deref() == Some("slow");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build().unwrap();
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
        eprintln!("bench-upstream listening on {addr} with {threads} threads");
        let big = Bytes::from(vec![0u8; 1 << 20]);
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            let big = big.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| answer(req, big.clone(), slow));
                let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
}
