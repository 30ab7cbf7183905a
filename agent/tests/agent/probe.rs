//! The HTTP probe against a real DNS server and real HTTP servers.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use vantage_agent::AgentConfig;
use vantage_agent::config::{CheckConfig, ResolverSpec};
use vantage_agent::probe::{DnsResolver, HttpProber, Outcome};
use vantage_testkit::{DnsServer, Target};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A check parsed from real config text, as the agent would load it.
fn check(url: &str, timeout_ms: u64) -> CheckConfig {
    let text = format!(
        "agent_id = \"t\"\nregion = \"r\"\n[collector]\nendpoint = \"http://127.0.0.1:1\"\n\
         [[check]]\nname = \"c\"\nurl = \"{url}\"\ninterval = \"10s\"\ntimeout = \"{timeout_ms}ms\"\n"
    );
    AgentConfig::parse(Path::new("test.toml"), &text)
        .expect("test config is valid")
        .checks
        .remove(0)
}

fn prober(dns: &DnsServer, source_ip: Option<IpAddr>) -> HttpProber {
    let resolver = DnsResolver::new(
        &ResolverSpec::Udp(dns.addr()),
        Duration::from_secs(2),
        source_ip,
    )
    .unwrap();
    HttpProber::new(resolver, source_ip)
}

#[tokio::test]
async fn healthy_target_records_status_addresses_and_ordered_timings() {
    let target = Target::start(LOOPBACK, None).await.unwrap();
    let dns = DnsServer::start(LOOPBACK, &[("shop.test", target.addr().ip())])
        .await
        .unwrap();
    let url = format!("http://shop.test:{}/health", target.addr().port());

    let r = prober(&dns, None).probe(&check(&url, 2000)).await;

    assert_eq!(r.outcome, Outcome::Ok, "{}", r.message);
    assert_eq!(r.http_status, Some(200));
    assert_eq!(r.http_version.as_deref(), Some("HTTP/1.1"));
    assert_eq!(r.resolver, format!("udp://{}", dns.addr()));
    assert_eq!(r.resolved.len(), 1);
    assert_eq!(r.resolved[0].ip, target.addr().ip());
    assert_eq!(r.resolved[0].ttl_seconds, vantage_testkit::RECORD_TTL);
    assert_eq!(r.dialed, Some(target.addr()));
    assert_eq!(
        r.headers.get("server").map(String::as_str),
        Some("vantage-testkit")
    );
    let t = r.timings;
    let (dns_t, ttfb, total) = (t.dns.unwrap(), t.ttfb.unwrap(), t.total.unwrap());
    assert!(dns_t > Duration::ZERO && ttfb > Duration::ZERO);
    assert!(
        dns_t + ttfb <= total,
        "dns {dns_t:?} + ttfb {ttfb:?} > total {total:?}"
    );
    // Not measurable separately by this probe: unset, never zero.
    assert_eq!(t.connect, None);
    assert_eq!(t.tls, None);
    assert_eq!(target.counts(), (1, 0));
}

#[tokio::test]
async fn source_in_failing_range_gets_502_from_nginx() {
    let target = Target::start(LOOPBACK, Some("127.0.2.0/24".parse().unwrap()))
        .await
        .unwrap();
    let dns = DnsServer::start(LOOPBACK, &[("shop.test", target.addr().ip())])
        .await
        .unwrap();
    let url = format!("http://shop.test:{}/", target.addr().port());
    let check = check(&url, 2000);

    let from_failing = prober(&dns, Some("127.0.2.1".parse().unwrap()))
        .probe(&check)
        .await;
    let from_healthy = prober(&dns, Some("127.0.1.1".parse().unwrap()))
        .probe(&check)
        .await;

    assert_eq!(from_failing.outcome, Outcome::Http);
    assert_eq!(from_failing.http_status, Some(502));
    assert_eq!(from_failing.message, "unexpected status 502");
    assert_eq!(from_failing.local_ip, Some("127.0.2.1".parse().unwrap()));
    assert!(from_failing.headers["server"].starts_with("nginx"));
    assert_eq!(from_healthy.outcome, Outcome::Ok);
    assert_eq!(target.counts(), (2, 1));
}

#[tokio::test]
async fn tcp_resolver_answers_too() {
    let target = Target::start(LOOPBACK, None).await.unwrap();
    let dns = DnsServer::start(LOOPBACK, &[("shop.test", target.addr().ip())])
        .await
        .unwrap();
    let resolver =
        DnsResolver::new(&ResolverSpec::Tcp(dns.addr()), Duration::from_secs(2), None).unwrap();
    let url = format!("http://shop.test:{}/", target.addr().port());
    let r = HttpProber::new(resolver, None)
        .probe(&check(&url, 2000))
        .await;
    assert_eq!(r.outcome, Outcome::Ok, "{}", r.message);
    assert_eq!(r.resolver, format!("tcp://{}", dns.addr()));
}

#[tokio::test]
async fn nxdomain_is_a_dns_failure_with_lookup_time() {
    let dns = DnsServer::start(LOOPBACK, &[("shop.test", LOOPBACK)])
        .await
        .unwrap();
    let r = prober(&dns, None)
        .probe(&check("http://missing.test/", 2000))
        .await;
    assert_eq!(r.outcome, Outcome::Dns);
    assert!(r.message.contains("missing.test"), "{}", r.message);
    assert!(
        r.message.to_lowercase().contains("nxdomain") || r.message.contains("no records"),
        "{}",
        r.message
    );
    assert!(r.timings.dns.is_some());
    assert_eq!(r.dialed, None);
    assert_eq!(r.http_status, None);
}

#[tokio::test]
async fn refused_connection_is_a_connect_failure() {
    let dns = DnsServer::start(LOOPBACK, &[("shop.test", LOOPBACK)])
        .await
        .unwrap();
    // A port that was just free and has nobody listening.
    let port = std::net::TcpListener::bind((LOOPBACK, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let r = prober(&dns, None)
        .probe(&check(&format!("http://shop.test:{port}/"), 2000))
        .await;
    assert_eq!(r.outcome, Outcome::Connect, "{}", r.message);
    assert_eq!(r.dialed, Some(SocketAddr::new(LOOPBACK, port)));
    assert!(r.timings.total.is_some());
}

#[tokio::test]
async fn silent_server_is_a_timeout_within_the_check_timeout() {
    let dns = DnsServer::start(LOOPBACK, &[("shop.test", LOOPBACK)])
        .await
        .unwrap();
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind((LOOPBACK, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let r = prober(&dns, None)
        .probe(&check(&format!("http://shop.test:{port}/"), 300))
        .await;
    holder.abort();
    assert_eq!(r.outcome, Outcome::Timeout, "{}", r.message);
    let total = r.timings.total.unwrap();
    assert!(total >= Duration::from_millis(300), "{total:?}");
    assert_eq!(r.http_status, None);
}

#[tokio::test]
async fn literal_ip_url_skips_dns() {
    let target = Target::start(LOOPBACK, None).await.unwrap();
    let dns = DnsServer::start(LOOPBACK, &[]).await.unwrap();
    let r = prober(&dns, None)
        .probe(&check(&format!("http://{}/", target.addr()), 2000))
        .await;
    assert_eq!(r.outcome, Outcome::Ok, "{}", r.message);
    assert_eq!(r.resolver, "literal");
    assert!(r.resolved.is_empty());
    assert_eq!(r.timings.dns, None);
    assert_eq!(r.dialed, Some(target.addr()));
}
