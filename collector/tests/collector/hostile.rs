//! Hostile clients on real sockets against the real collector process:
//! idle connections, truncated handshakes, stalled and compressed-flag
//! messages, too many streams per agent, slowloris on the HTTP port. Each
//! is closed or refused within its bound, and a real agent still delivers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Bytes, Frame};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use vantage_proto::v1 as pb;

use crate::process::{Collector, start_collector, start_collector_at, terminate};
use crate::{result, try_open_stream};

const BOUNDS: &str = "[ingest]\nhandshake_timeout = \"2s\"\nmessage_stall_timeout = \"2s\"\n";

/// A collector process with short bounds, its gRPC address and a token
/// for `agent-a`.
async fn collector(pool: &PgPool, dir: &std::path::Path) -> (Collector, SocketAddr, String) {
    let store = vantage_collector::store::Store::new(pool.clone());
    store.migrate().await.unwrap();
    let token = vantage_collector::enrol::enrol(&store, "agent-a", "eu-west")
        .await
        .unwrap();
    let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
    let grpc = SocketAddr::new(loopback, vantage_testkit::free_port(loopback).unwrap());
    let (child, _) = start_collector_at(pool, dir, "collector", grpc, BOUNDS, &[]);
    (child, grpc, token)
}

/// Stops the collector with SIGTERM; it must exit cleanly.
fn stop(child: &mut Collector, dir: &std::path::Path) {
    let status = terminate(&mut child.0, Duration::from_secs(15));
    assert!(
        status.success(),
        "{status}: {}",
        std::fs::read_to_string(dir.join("collector.log")).unwrap_or_default()
    );
}

/// Whether the collector closes `stream` within `within` (EOF or reset).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // Server SETTINGS or GOAWAY frames: keep reading.
            Ok(Ok(_)) => {}
        }
    }
}

async fn delivers(grpc: SocketAddr, token: &str, seq: u64) {
    let mut agent = try_open_stream(grpc, token, "agent-a").await.unwrap();
    delivers_on(&mut agent, seq).await;
}

/// One result with sequence number `seq` is stored and acked on `agent`.
async fn delivers_on(agent: &mut crate::RawStream, seq: u64) {
    agent.send_batch(1, vec![result(seq, 200)]).await;
    let ack = agent.next_ack(Duration::from_secs(10)).await.unwrap();
    assert_eq!(ack.inserted, 1);
}

#[sqlx::test(migrations = false)]
async fn a_thousand_idle_connections_do_not_stop_an_agent_and_are_closed(pool: PgPool) {
    // The test's own side needs a descriptor per connection too.
    rlimit::increase_nofile_limit(u64::MAX).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (mut child, grpc, token) = collector(&pool, dir.path()).await;
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(TcpStream::connect(grpc).await.unwrap());
    }
    // A truncated HTTP/2 preface is no better than silence.
    let mut truncated = TcpStream::connect(grpc).await.unwrap();
    truncated.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    // A real agent still gets in and delivers while they are held.
    delivers(grpc, &token, 1).await;
    // Each is closed within the 2 s handshake timeout (and some slack).
    let closed = futures_util::future::join_all(
        idle.iter_mut()
            .chain(std::iter::once(&mut truncated))
            .map(|s| closed_within(s, Duration::from_secs(10))),
    )
    .await;
    assert_eq!(closed.iter().filter(|c| **c).count(), 1001);
    delivers(grpc, &token, 2).await;
    stop(&mut child, dir.path());
}

/// Beyond a source's cap on connections without an authenticated stream,
/// its oldest are evicted for its new ones (logged once, not once per
/// connection), long before the handshake timeout; the agent already
/// connected from the same address keeps its place and delivers, and
/// `/healthz` keeps answering.
#[sqlx::test(migrations = false)]
async fn beyond_a_sources_cap_its_oldest_tokenless_connections_make_room(pool: PgPool) {
    let store = vantage_collector::store::Store::new(pool.clone());
    store.migrate().await.unwrap();
    let token = vantage_collector::enrol::enrol(&store, "agent-a", "eu-west")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
    let grpc = SocketAddr::new(loopback, vantage_testkit::free_port(loopback).unwrap());
    let (mut child, http) = start_collector_at(
        &pool,
        dir.path(),
        "collector",
        grpc,
        "[ingest]\nmax_connections = 50\nmax_unauthenticated_per_source = 16\n\
         handshake_timeout = \"30s\"\n",
        &[],
    );
    let mut agent = try_open_stream(grpc, &token, "agent-a").await.unwrap();
    let mut flood = Vec::new();
    for _ in 0..200 {
        flood.push(TcpStream::connect(grpc).await.unwrap());
    }
    // The newest 16 are held; the rest were evicted as they came.
    let closed = futures_util::future::join_all(
        flood
            .iter_mut()
            .map(|s| closed_within(s, Duration::from_secs(3))),
    )
    .await;
    assert_eq!(closed.iter().filter(|c| **c).count(), 184);
    assert!(closed[184..].iter().all(|c| !c), "the newest are held");
    delivers_on(&mut agent, 1).await;
    vantage_service::install_crypto_provider();
    let health = reqwest::get(format!("http://{http}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    drop(flood);
    drop(agent);
    stop(&mut child, dir.path());
    let log = std::fs::read_to_string(dir.path().join("collector.log")).unwrap();
    assert_eq!(
        log.matches("one source holds 16, the most allowed per source")
            .count(),
        1,
        "logged once a minute, not per connection: {log}"
    );
}

/// A raw HTTP/2 gRPC call: the request body's sender and the response.
async fn raw_call(
    grpc: SocketAddr,
    token: &str,
) -> (
    mpsc::Sender<Result<Frame<Bytes>, Infallible>>,
    hyper::Response<hyper::body::Incoming>,
) {
    let tcp = TcpStream::connect(grpc).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(connection);
    let (body, rx) = mpsc::channel(8);
    let hello = pb::AgentMessage {
        body: Some(pb::agent_message::Body::Hello(pb::Hello {
            agent_id: "agent-a".into(),
            region: "ignored".into(),
            labels: Default::default(),
            version: "raw".into(),
            ..Default::default()
        })),
    };
    body.send(Ok(Frame::data(grpc_frame(0, &hello.encode_to_vec()))))
        .await
        .unwrap();
    let request = http::Request::post(format!("http://{grpc}/vantage.v1.Ingest/Stream"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {token}"))
        .body(StreamBody::new(ReceiverStream::new(rx)))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    (body, response)
}

/// A gRPC length-prefixed message.
fn grpc_frame(flag: u8, message: &[u8]) -> Bytes {
    let mut framed = vec![flag];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(message);
    Bytes::from(framed)
}

/// The call's final status (code, message), from the trailers.
async fn final_status(response: hyper::Response<hyper::body::Incoming>) -> (String, String) {
    let collected = tokio::time::timeout(Duration::from_secs(20), response.into_body().collect())
        .await
        .expect("the collector ends the call")
        .unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let text = |name: &str| {
        trailers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    (text("grpc-status"), percent_decode(&text("grpc-message")))
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

#[sqlx::test(migrations = false)]
async fn a_stalled_message_ends_its_stream_and_a_compressed_flag_gets_a_status(pool: PgPool) {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, grpc, token) = collector(&pool, dir.path()).await;

    // Claims 15 MiB, sends 100 bytes, then nothing.
    let (body, response) = raw_call(grpc, &token).await;
    let mut partial = vec![0u8];
    partial.extend_from_slice(&(15u32 << 20).to_be_bytes());
    partial.extend_from_slice(&[0u8; 100]);
    body.send(Ok(Frame::data(Bytes::from(partial))))
        .await
        .unwrap();
    let (code, message) = final_status(response).await;
    assert_eq!(code, "8", "RESOURCE_EXHAUSTED: {message}");
    assert!(message.contains("message stalled"), "{message}");
    drop(body);

    // The compressed flag without an encoding: INTERNAL, as the gRPC spec
    // requires, with a message saying why (not a silent end, status 0).
    let (body, response) = raw_call(grpc, &token).await;
    body.send(Ok(Frame::data(grpc_frame(1, b"\x0a\x00"))))
        .await
        .unwrap();
    let (code, message) = final_status(response).await;
    assert_eq!(code, "13", "INTERNAL: {message}");
    assert!(message.contains("compressed-flag"), "{message}");
    drop(body);

    delivers(grpc, &token, 1).await;
    stop(&mut child, dir.path());
}

#[sqlx::test(migrations = false)]
async fn an_agent_identity_holds_at_most_its_streams(pool: PgPool) {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, grpc, token) = collector(&pool, dir.path()).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(try_open_stream(grpc, &token, "agent-a").await.unwrap());
    }
    let status = try_open_stream(grpc, &token, "agent-a")
        .await
        .err()
        .expect("a fifth stream is refused");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(
        status.message().contains("max_streams_per_agent"),
        "{status:?}"
    );
    // Closing one makes room.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match try_open_stream(grpc, &token, "agent-a").await {
            Ok(_) => break,
            Err(status) => assert!(Instant::now() < deadline, "{status:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop(&mut child, dir.path());
}

#[sqlx::test(migrations = false)]
async fn slowloris_on_the_http_port_is_closed_and_healthz_still_answers(pool: PgPool) {
    let dir = tempfile::tempdir().unwrap();
    let store = vantage_collector::store::Store::new(pool.clone());
    store.migrate().await.unwrap();
    let (mut child, http) = start_collector(&pool, dir.path(), "collector", "");
    let mut slow = Vec::new();
    for _ in 0..300 {
        let mut s = TcpStream::connect(http).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(s);
    }
    // Headers never finished: closed after the 10 s header-read timeout,
    // however slowly the client keeps trickling.
    let trickle = async {
        for _ in 0..6 {
            for s in &mut slow {
                let _ = s.write_all(b"X").await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    let healthy = async {
        vantage_service::install_crypto_provider();
        let response = reqwest::get(format!("http://{http}/healthz"))
            .await
            .unwrap();
        assert!(response.status().is_success() || response.status().as_u16() == 503);
    };
    tokio::join!(trickle, healthy);
    let closed = futures_util::future::join_all(
        slow.iter_mut()
            .map(|s| closed_within(s, Duration::from_secs(15))),
    )
    .await;
    assert_eq!(closed.iter().filter(|c| **c).count(), 300);
    stop(&mut child, dir.path());
}

/// A page that takes longer than the HTTP listener's 10 s idle timeout is
/// answered whole: a request being worked on is not an idle connection.
#[sqlx::test(migrations = false)]
async fn a_page_slower_than_the_idle_timeout_is_answered(pool: PgPool) {
    let dir = tempfile::tempdir().unwrap();
    vantage_collector::store::Store::new(pool.clone())
        .migrate()
        .await
        .unwrap();
    let (mut child, http) = crate::process::start_collector_env(
        &pool,
        dir.path(),
        "collector",
        "",
        &[("FAILPOINTS", "ui-index-delay=sleep(12000)")],
    );
    vantage_service::install_crypto_provider();
    let asked = Instant::now();
    let page = reqwest::Client::builder()
        .timeout(Duration::from_secs(40))
        .build()
        .unwrap()
        .get(format!("http://{http}/"))
        .send()
        .await
        .expect("the slow page is answered");
    let took = asked.elapsed();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("Incidents"));
    assert!(
        took >= Duration::from_secs(12),
        "the page was slow: {took:?}"
    );
    stop(&mut child, dir.path());
}

/// A client cycling bad tokens is refused before any lookup once its
/// address has opened its share of streams: the database answers at most
/// the burst, and an agent from another address still gets in at once.
#[sqlx::test(migrations = false)]
async fn a_client_cycling_bad_tokens_is_stopped_before_the_database(pool: PgPool) {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, grpc, token) = collector(&pool, dir.path()).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (mut unknown, mut exhausted) = (0, 0);
    for i in 0..200 {
        let value: tonic::metadata::MetadataValue<_> =
            format!("Bearer vantage_not-a-token-{i}").parse().unwrap();
        let mut client = pb::ingest_client::IngestClient::with_interceptor(
            channel.clone(),
            move |mut request: tonic::Request<()>| {
                request
                    .metadata_mut()
                    .insert("authorization", value.clone());
                Ok(request)
            },
        );
        let (_tx, rx) = mpsc::channel::<pb::AgentMessage>(1);
        match client.stream(ReceiverStream::new(rx)).await {
            Err(status) if status.code() == tonic::Code::Unauthenticated => unknown += 1,
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                assert!(status.message().contains("too many streams"), "{status:?}");
                exhausted += 1;
            }
            other => panic!("a bad token got {other:?}"),
        }
    }
    assert!(
        exhausted > 100,
        "refused before the lookup: {exhausted} of 200"
    );
    assert!(unknown <= 100, "looked up: {unknown} of 200");
    // An agent elsewhere is not held back by that address's attempts.
    let elsewhere = std::net::IpAddr::from([127, 0, 5, 1]);
    let mut agent =
        crate::try_open_stream_from(grpc, Some(elsewhere), &format!("Bearer {token}"), "agent-a")
            .await
            .expect("an agent from another address gets in");
    delivers_on(&mut agent, 1).await;
    drop(agent);
    stop(&mut child, dir.path());
}
