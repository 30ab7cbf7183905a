//! The HTTP side's server: HTTP/1 with a header-read timeout (a slowloris
//! client is closed after it), HTTP/2 with bounded streams and resets,
//! each request marking its connection busy in its [`super::Gate`] until
//! its response has been sent, and bounded in time as a whole.

use std::convert::Infallible;
use std::io;
use std::time::Duration;

use axum::response::IntoResponse as _;
use futures_util::{Stream, StreamExt as _};
use http_body_util::BodyExt as _;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tonic::transport::server::Connected as _;

use super::BoundedIo;

/// Streams one HTTP/2 connection may have open at once.
const MAX_STREAMS: u32 = 16;
/// Streams an HTTP/2 client may reset before the server has answered them
/// ("rapid reset") before the connection is closed.
const MAX_PENDING_RESETS: usize = 16;
/// The largest request header block.
const MAX_HEADER_BYTES: u32 = 16 * 1024;

/// How the HTTP listener bounds each connection and request.
#[derive(Debug, Clone, Copy)]
pub struct HttpBounds {
    /// An HTTP/1 request's headers must arrive within this.
    pub header_read_timeout: Duration,
    /// A request must be answered within this (503 otherwise).
    pub request_timeout: Duration,
}

/// Serves `router` on `incoming` until it ends (at shutdown), with a
/// graceful end for requests in flight.
pub async fn serve_http(
    incoming: impl Stream<Item = io::Result<BoundedIo>> + Send + 'static,
    router: axum::Router,
    bounds: HttpBounds,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(bounds.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
        .max_local_error_reset_streams(MAX_PENDING_RESETS)
        .max_header_list_size(MAX_HEADER_BYTES);
    let mut incoming = std::pin::pin!(incoming);
    while let Some(accepted) = incoming.next().await {
        let Ok(io) = accepted else { continue };
        // The peer's address, for the pages' access rule.
        let peer = io.connect_info().remote_addr();
        let (gate, conn) = (io.gate(), io.conn());
        let router = router.clone();
        let service = hyper::service::service_fn(
            move |mut request: axum::extract::Request<hyper::body::Incoming>| {
                if let Some(peer) = peer {
                    request
                        .extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                }
                // Busy from the request until its body is sent: the guard
                // lives in the response body, dropped with it.
                let busy = gate.busy(&conn);
                let answer = tower::ServiceExt::oneshot(router.clone(), request);
                async move {
                    let response = match tokio::time::timeout(bounds.request_timeout, answer).await
                    {
                        Ok(Ok(response)) => response,
                        Ok(Err(never)) => match never {},
                        Err(_) => timed_out(bounds.request_timeout),
                    };
                    Ok::<_, Infallible>(response.map(move |body| {
                        body.map_frame(move |frame| {
                            let _held = &busy;
                            frame
                        })
                    }))
                }
            },
        );
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        let connection = graceful.watch(connection.into_owned());
        tokio::spawn(async move {
            // A client that goes away or times out is not an error here.
            let _ = connection.await;
        });
    }
    // `incoming` ends at shutdown: let requests in flight finish.
    graceful.shutdown().await;
}

fn timed_out(limit: Duration) -> axum::response::Response {
    metrics::counter!("vantage_http_requests_timed_out_total").increment(1);
    (
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "The request took longer than {} s; try again later.\n",
            limit.as_secs()
        ),
    )
        .into_response()
}
