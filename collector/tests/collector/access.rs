//! Who reads the pages, with real processes: a real nginx reverse proxy
//! in front of the collector, and a dual-stack listener read over IPv4.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use sqlx::PgPool;

use crate::process::{start_collector, start_collector_listening, terminate};

/// A real nginx on loopback proxying to `upstream`, adding
/// `X-Forwarded-For` as a reverse proxy should.
struct Nginx {
    child: Child,
    addr: SocketAddr,
}

impl Nginx {
    fn start(dir: &Path, upstream: SocketAddr) -> Self {
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let addr = SocketAddr::new(loopback, vantage_testkit::free_port(loopback).unwrap());
        let prefix = tempfile::tempdir_in(dir).unwrap().keep();
        let conf = prefix.join("nginx.conf");
        let p = prefix.display();
        std::fs::write(
            &conf,
            format!(
                "daemon off;\nmaster_process off;\npid {p}/nginx.pid;\nerror_log {p}/error.log;\n\
                 events {{ worker_connections 64; }}\n\
                 http {{\n access_log off;\n client_body_temp_path {p}/body;\n\
                 proxy_temp_path {p}/proxy;\n fastcgi_temp_path {p}/fastcgi;\n\
                 uwsgi_temp_path {p}/uwsgi;\n scgi_temp_path {p}/scgi;\n\
                 server {{\n  listen {addr};\n  location / {{\n   proxy_pass http://{upstream};\n\
                 proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n  }}\n }}\n}}\n"
            ),
        )
        .unwrap();
        let child = Command::new("nginx")
            .arg("-e")
            .arg(prefix.join("error.log"))
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf)
            .spawn()
            .expect("nginx is installed (apt install nginx; .ci/run does)");
        assert!(
            vantage_testkit::wait_until_listening(addr, Duration::from_secs(10)),
            "nginx did not listen: {}",
            std::fs::read_to_string(prefix.join("error.log")).unwrap_or_default()
        );
        Self { child, addr }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn get(url: &str, forwarded_for: Option<&str>) -> (u16, String) {
    vantage_service::install_crypto_provider();
    let mut request = reqwest::Client::new().get(url);
    if let Some(value) = forwarded_for {
        request = request.header("x-forwarded-for", value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// Without a token, a request through a proxy that is not trusted is
/// refused, saying why, though the proxy itself is on loopback; listed in
/// `[ui] trusted_proxies`, the proxy's `X-Forwarded-For` names the reader.
#[sqlx::test(migrations = false)]
async fn a_reverse_proxy_on_the_same_host_does_not_make_every_reader_local(pool: PgPool) {
    vantage_collector::store::Store::new(pool.clone())
        .migrate()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (mut plain, http) = start_collector(&pool, dir.path(), "plain", "");
    let proxy = Nginx::start(dir.path(), http);
    let (status, body) = get(&format!("http://{}/", proxy.addr), None).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("not in [ui] trusted_proxies"), "{body}");
    assert_eq!(get(&format!("http://{http}/"), None).await.0, 200);
    // Health stays open to the proxy.
    assert_eq!(
        get(&format!("http://{}/healthz", proxy.addr), None).await.0,
        200
    );
    drop(proxy);
    assert!(terminate(&mut plain.0, Duration::from_secs(15)).success());

    let (mut trusting, http) = start_collector(
        &pool,
        dir.path(),
        "trusting",
        "[ui]\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
    );
    let proxy = Nginx::start(dir.path(), http);
    let (status, body) = get(&format!("http://{}/", proxy.addr), None).await;
    assert_eq!(status, 200, "a reader on the proxy's host: {body}");
    // A reader the proxies say is elsewhere: nginx appends its client's
    // address (this test's, 127.0.0.1, itself in the trusted range) to
    // what the client sent, and the rightmost untrusted hop, 192.0.2.7,
    // is the reader.
    let (status, body) = get(&format!("http://{}/", proxy.addr), Some("192.0.2.7")).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("answer loopback only"), "{body}");
    drop(proxy);
    let (status, body) = get(&format!("http://{http}/"), Some("192.0.2.7")).await;
    assert_eq!(
        status, 403,
        "from the trusted proxy's address, the forwarded reader decides: {body}"
    );
    assert!(terminate(&mut trusting.0, Duration::from_secs(15)).success());
}

/// On a dual-stack listener (`[::]:port`), a local IPv4 reader arrives as
/// `::ffff:127.0.0.1`: loopback all the same.
#[sqlx::test(migrations = false)]
async fn a_local_ipv4_reader_of_a_dual_stack_listener_is_loopback(pool: PgPool) {
    vantage_collector::store::Store::new(pool.clone())
        .migrate()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let grpc = SocketAddr::new(loopback, vantage_testkit::free_port(loopback).unwrap());
    let port = vantage_testkit::free_port(loopback).unwrap();
    let (mut child, _) = start_collector_listening(
        &pool,
        dir.path(),
        "collector",
        grpc,
        SocketAddr::new(IpAddr::from([0u16; 8]), port),
        "",
        &[],
    );
    let (status, body) = get(&format!("http://127.0.0.1:{port}/"), None).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(&format!("http://[::1]:{port}/"), None).await;
    assert_eq!(status, 200, "{body}");
    assert!(terminate(&mut child.0, Duration::from_secs(15)).success());
}
