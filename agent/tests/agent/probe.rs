//! The probe against real local servers: DNS (with whoami names and NSID),
//! HTTP, HTTPS with a certificate made at test time, hostile servers and
//! forward proxies. Each test builds the agent from config text, as the
//! binary would, and runs one round of its check.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};
use vantage_agent::probe::{Outcome, ProbeResult};
use vantage_agent::{AgentConfig, App};
use vantage_testkit::{
    Behaviour, Delays, DnsServer, ForwardProxy, ProxyKind, ScriptedSite, Target, TestCa,
};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// An agent with one check named `c` (`check` holds its keys), the given
/// DNS server, identity learning off unless `top` turns it on, and extra
/// `tables` ([[vantage]] ...) at the end.
fn config(dns: SocketAddr, top: &str, check: &str, tables: &str) -> AgentConfig {
    let text = format!(
        "agent_id = \"probe-test\"\nregion = \"r\"\n{top}\n\
         [collector]\nendpoint = \"http://127.0.0.1:1\"\ntoken = \"t\"\n\
         [dns]\nresolvers = [\"udp://{dns}\"]\nidentity_queries = []\n\
         [[check]]\nname = \"c\"\ninterval = \"10s\"\n{check}\n{tables}\n"
    );
    AgentConfig::parse(Path::new("test.toml"), &text).expect("test config is valid")
}

async fn round(config: AgentConfig) -> Vec<ProbeResult> {
    let app = App::build(config).expect("agent builds");
    app.refresh_identities().await;
    app.probe_once("c").await
}

async fn one(config: AgentConfig) -> ProbeResult {
    let mut results = round(config).await;
    assert_eq!(results.len(), 1, "{results:#?}");
    results.remove(0)
}

/// A healthy target, and a DNS server answering `shop.test` with its
/// address.
async fn healthy_shop() -> (Target, DnsServer) {
    let target = Target::start(LOOPBACK, None).await.unwrap();
    let dns = DnsServer::start(LOOPBACK, &[("shop.test", LOOPBACK)])
        .await
        .unwrap();
    (target, dns)
}

/// The check line probing `target` as `shop.test`.
fn shop_check(target: &Target) -> String {
    format!("url = \"http://shop.test:{}/\"", target.addr().port())
}

fn ms(d: Option<Duration>) -> f64 {
    d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
}

#[tokio::test]
async fn healthy_target_records_status_addresses_and_every_phase() {
    let target = Target::start(LOOPBACK, None).await.unwrap();
    let dns = DnsServer::start(LOOPBACK, &[("shop.test", target.addr().ip())])
        .await
        .unwrap();
    let url = format!("http://shop.test:{}/health", target.addr().port());
    let check = format!("url = \"{url}\"\ntimeout = \"2s\"");

    let r = one(config(dns.addr(), "", &check, "")).await;

    assert_eq!(r.outcome, Outcome::Ok, "{}", r.message);
    assert_eq!(r.http_status, Some(200));
    assert_eq!(r.http_version.as_deref(), Some("HTTP/1.1"));
    assert_eq!(r.vantage, "direct");
    assert_eq!(r.resolver, format!("udp://{}", dns.addr()));
    assert_eq!(r.dns_rcode.as_deref(), Some("NOERROR"));
    assert_eq!(r.resolved.len(), 1);
    assert_eq!(r.resolved[0].ip, target.addr().ip());
    assert_eq!(r.resolved[0].ttl_seconds, vantage_testkit::RECORD_TTL);
    assert_eq!(r.dialed, Some(target.addr()));
    assert_eq!(r.local_ip, Some(LOOPBACK), "read from the socket");
    assert_eq!(
        r.headers.get("server").map(String::as_str),
        Some("vantage-testkit")
    );
    assert_eq!(r.gateway, None, "a 200 names no failing layer");
    let t = r.timings;
    for (name, phase) in [
        ("dns", t.dns),
        ("connect", t.connect),
        ("ttfb", t.ttfb),
        ("transfer", t.transfer),
    ] {
        assert!(phase.is_some(), "{name} not measured: {t:?}");
    }
    assert_eq!(t.tls, None, "no TLS on http://");
    assert_eq!(t.proxy, None, "no proxy");
    let sum = t.dns.unwrap() + t.connect.unwrap() + t.ttfb.unwrap() + t.transfer.unwrap();
    assert!(sum <= t.total.unwrap(), "phases {t:?} exceed the total");
    assert_eq!(r.body_bytes, Some(3));
    assert_eq!(
        r.body_sha256.as_deref(),
        Some(hex::encode(Sha256::digest(b"ok\n")).as_str())
    );
    assert!(!r.body_truncated);
    assert_eq!(target.counts(), (1, 0));
}

#[tokio::test]
async fn probe_identifies_itself_and_sends_extra_headers() {
    let site = ScriptedSite::start(LOOPBACK, None, Delays::default(), ok_page(b"hi".to_vec()))
        .await
        .unwrap();
    let dns = DnsServer::start(LOOPBACK, &[("shop.test", LOOPBACK)])
        .await
        .unwrap();
    let check = format!(
        "url = \"http://shop.test:{}/x?y=1\"\nheaders = {{ \"X-Canary\" = \"yes\" }}",
        site.addr().port()
    );
    let r = one(config(dns.addr(), "", &check, "")).await;
    assert_eq!(r.outcome, Outcome::Ok, "{}", r.message);
    let head = site.last_request().to_ascii_lowercase();
    assert!(head.starts_with("get /x?y=1 http/1.1\r\n"), "{head}");
    assert!(
        head.contains(&format!("host: shop.test:{}\r\n", site.addr().port())),
        "{head}"
    );
    assert!(
        head.contains(&format!(
            "user-agent: vantage-agent/{}\r\n",
            env!("CARGO_PKG_VERSION")
        )),
        "{head}"
    );
    assert!(
        head.contains(&format!("x-vantage-probe: probe-test/direct/{}\r\n", r.seq)),
        "{head}"
    );
    assert!(head.contains("x-canary: yes\r\n"), "{head}");

    // And it can be turned off.
    let quiet = one(config(dns.addr(), "probe_header = false", &check, "")).await;
    assert_eq!(quiet.outcome, Outcome::Ok);
    assert!(
        !site
            .last_request()
            .to_ascii_lowercase()
            .contains("x-vantage-probe")
    );
}

fn ok_page(body: Vec<u8>) -> Behaviour {
    Behaviour::Respond {
        status: 200,
        headers: vec![("content-type".into(), "text/plain".into())],
        body,
    }
}

#[tokio::test]
async fn each_vantage_probes_from_its_own_source_and_the_502_names_nginx() {
    let target = Target::start(LOOPBACK, Some("127.0.2.0/24".parse().unwrap()))
        .await
        .unwrap();
    let dns = DnsServer::start(LOOPBACK, &[("shop.test", target.addr().ip())])
        .await
        .unwrap();
    let check = shop_check(&target);
    let vantages = "[[vantage]]\nname = \"healthy\"\nsource_ip = \"127.0.1.1\"\n\
                    [[vantage]]\nname = \"vpn\"\nsource_ip = \"127.0.2.1\"\nregion = \"vpn-land\"\n";
    let results = round(config(dns.addr(), "", &check, vantages)).await;
    assert_eq!(results.len(), 2);
    let healthy = results.iter().find(|r| r.vantage == "healthy").unwrap();
    let vpn = results.iter().find(|r| r.vantage == "vpn").unwrap();
    assert_eq!(healthy.outcome, Outcome::Ok);
    assert_eq!(healthy.local_ip, Some("127.0.1.1".parse().unwrap()));
    assert_eq!(healthy.region, None);
    assert_eq!(vpn.outcome, Outcome::Http);
    assert_eq!(vpn.http_status, Some(502));
    assert_eq!(vpn.message, "unexpected status 502");
    assert_eq!(vpn.local_ip, Some("127.0.2.1".parse().unwrap()));
    assert_eq!(vpn.region.as_deref(), Some("vpn-land"));
    assert_eq!(vpn.gateway.as_deref(), Some("nginx"));
    assert_eq!(target.counts(), (2, 1));
}

#[tokio::test]
async fn several_resolvers_yield_one_result_each() {
    let target = Target::start(LOOPBACK, None).await.unwrap();
    let dns = DnsServer::start(LOOPBACK, &[("shop.test", target.addr().ip())])
        .await
        .unwrap();
    let check = format!(
        "url = \"http://shop.test:{}/\"\nresolvers = [\"udp://{dns}\", \"tcp://{dns}\"]",
        target.addr().port(),
        dns = dns.addr()
    );
    let results = round(config(dns.addr(), "", &check, "")).await;
    let resolvers: Vec<&str> = results.iter().map(|r| r.resolver.as_str()).collect();
    assert_eq!(
        resolvers,
        vec![
            format!("udp://{}", dns.addr()),
            format!("tcp://{}", dns.addr())
        ]
    );
    assert!(results.iter().all(|r| r.outcome == Outcome::Ok));
    assert!(results[0].seq < results[1].seq);
}

#[tokio::test]
async fn dial_each_isolates_the_bad_address_among_several_records() {
    let target = Target::start(LOOPBACK, None).await.unwrap();
    let port = target.addr().port();
    // 127.0.0.7 has the same port closed: one bad backend.
    let dns = DnsServer::start(
        LOOPBACK,
        &[
            ("shop.test", LOOPBACK),
            ("shop.test", "127.0.0.7".parse().unwrap()),
        ],
    )
    .await
    .unwrap();
    let url = format!("url = \"http://shop.test:{port}/\"");

    let first = round(config(dns.addr(), "", &url, "")).await;
    assert_eq!(first.len(), 1, "dial = first probes one address");
    assert_eq!(first[0].resolved.len(), 2);

    let each = round(config(
        dns.addr(),
        "",
        &format!("{url}\ndial = \"each\""),
        "",
    ))
    .await;
    assert_eq!(each.len(), 2);
    let good = each
        .iter()
        .find(|r| r.dialed == Some(target.addr()))
        .unwrap();
    let bad = each
        .iter()
        .find(|r| r.dialed == Some(SocketAddr::new("127.0.0.7".parse().unwrap(), port)))
        .unwrap();
    assert_eq!(good.outcome, Outcome::Ok, "{}", good.message);
    assert_eq!(bad.outcome, Outcome::Connect, "{}", bad.message);
    assert_eq!(good.resolved, bad.resolved, "both come from one lookup");
}

#[tokio::test]
async fn ip_family_chooses_the_records_asked_for() {
    let dns = DnsServer::start(
        LOOPBACK,
        &[
            ("shop.test", LOOPBACK),
            ("shop.test", "::1".parse().unwrap()),
        ],
    )
    .await
    .unwrap();
    let target = Target::start(LOOPBACK, None).await.unwrap();
    let url = shop_check(&target);
    let any = one(config(dns.addr(), "", &url, "")).await;
    assert_eq!(any.resolved.len(), 2, "{:?}", any.resolved);
    let v4 = one(config(
        dns.addr(),
        "",
        &format!("{url}\nip_family = \"v4\""),
        "",
    ))
    .await;
    assert_eq!(
        v4.resolved.iter().map(|a| a.ip).collect::<Vec<_>>(),
        vec![LOOPBACK]
    );
    let v6 = one(config(
        dns.addr(),
        "",
        &format!("{url}\nip_family = \"v6\""),
        "",
    ))
    .await;
    let v6_ip: IpAddr = "::1".parse().unwrap();
    assert_eq!(
        v6.resolved.iter().map(|a| a.ip).collect::<Vec<_>>(),
        vec![v6_ip]
    );
    assert_eq!(v6.dialed.map(|a| a.ip()), Some(v6_ip));
}

#[tokio::test]
async fn nxdomain_is_a_dns_failure_with_rcode_and_lookup_time() {
    let dns = DnsServer::start(LOOPBACK, &[("shop.test", LOOPBACK)])
        .await
        .unwrap();
    let r = one(config(dns.addr(), "", "url = \"http://missing.test/\"", "")).await;
    assert_eq!(r.outcome, Outcome::Dns);
    assert_eq!(r.dns_rcode.as_deref(), Some("NXDOMAIN"), "{}", r.message);
    assert!(r.message.contains("missing.test"), "{}", r.message);
    assert!(r.timings.dns.is_some());
    assert_eq!(r.dialed, None);
    assert_eq!(r.http_status, None);
}

#[tokio::test]
async fn resolver_identity_is_learned_from_whoami_names_and_nsid() {
    let (target, dns) = healthy_shop().await;
    // The vantage's DNS queries leave from 127.0.3.1: that is what the
    // resolver (here the server itself) is seen as by whoami names.
    let mut cfg = config(
        dns.addr(),
        "",
        &shop_check(&target),
        "[[vantage]]\nname = \"v\"\nsource_ip = \"127.0.3.1\"\n",
    );
    cfg.dns.identity_queries = vantage_agent::probe::identity::default_queries();
    let r = one(cfg).await;
    assert_eq!(r.outcome, Outcome::Ok, "{}", r.message);
    assert_eq!(
        r.resolver_identity.egress_ip,
        Some("127.0.3.1".parse().unwrap())
    );
    assert_eq!(
        r.resolver_identity.nsid.as_deref(),
        Some(vantage_testkit::NSID)
    );
    assert_eq!(r.resolver_identity.error, "");
}

#[tokio::test]
async fn unlearnable_resolver_identity_is_recorded_not_fatal() {
    let (target, dns) = healthy_shop().await;
    let mut cfg = config(dns.addr(), "", &shop_check(&target), "");
    cfg.dns.identity_queries = vec!["nobody.test TXT".parse().unwrap()];
    let r = one(cfg).await;
    assert_eq!(r.outcome, Outcome::Ok, "{}", r.message);
    assert_eq!(r.resolver_identity.egress_ip, None);
    assert!(
        r.resolver_identity.error.contains("nobody.test"),
        "{:?}",
        r.resolver_identity
    );
}

#[tokio::test]
async fn refused_connection_is_a_connect_failure() {
    let dns = DnsServer::start(LOOPBACK, &[("shop.test", LOOPBACK)])
        .await
        .unwrap();
    let port = vantage_testkit::free_port(LOOPBACK).unwrap();
    let r = one(config(
        dns.addr(),
        "",
        &format!("url = \"http://shop.test:{port}/\""),
        "",
    ))
    .await;
    assert_eq!(r.outcome, Outcome::Connect, "{}", r.message);
    assert_eq!(r.dialed, Some(SocketAddr::new(LOOPBACK, port)));
    assert!(r.timings.total.is_some());
    assert_eq!(r.timings.connect, None, "the connect never completed");
}

#[tokio::test]
async fn literal_ip_url_skips_dns() {
    let target = Target::start(LOOPBACK, None).await.unwrap();
    let dns = DnsServer::start(LOOPBACK, &[]).await.unwrap();
    let r = one(config(
        dns.addr(),
        "",
        &format!("url = \"http://{}/\"", target.addr()),
        "",
    ))
    .await;
    assert_eq!(r.outcome, Outcome::Ok, "{}", r.message);
    assert_eq!(r.resolver, "literal");
    assert!(r.resolved.is_empty());
    assert_eq!(r.timings.dns, None);
    assert_eq!(r.dialed, Some(target.addr()));
}

/// A TLS site for `shop.test` with the given delays and validity, the CA
/// file that trusts it, and a DNS server naming it.
struct TlsFixture {
    site: ScriptedSite,
    dns: DnsServer,
    ca_file: tempfile::NamedTempFile,
}

async fn tls_fixture(delays: Delays, valid_for: Duration, behaviour: Behaviour) -> TlsFixture {
    let ca = TestCa::new().unwrap();
    let leaf = ca.leaf(&["shop.test"], valid_for).unwrap();
    let site = ScriptedSite::start(LOOPBACK, Some(leaf), delays, behaviour)
        .await
        .unwrap();
    let dns = DnsServer::start(LOOPBACK, &[("shop.test", LOOPBACK)])
        .await
        .unwrap();
    let ca_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca_file.path(), ca.pem()).unwrap();
    TlsFixture { site, dns, ca_file }
}

impl TlsFixture {
    fn check(&self, extra: &str) -> String {
        format!(
            "url = \"https://shop.test:{}/page\"\ntimeout = \"5s\"\nca_file = \"{}\"\n{extra}",
            self.site.addr().port(),
            self.ca_file.path().display()
        )
    }
}

const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

#[tokio::test]
async fn each_phase_reflects_its_own_delay_and_only_its_own() {
    let delays = Delays {
        handshake: Duration::from_millis(150),
        headers: Duration::from_millis(200),
        body: Duration::from_millis(250),
    };
    let body = b"0123456789".repeat(100);
    let f = tls_fixture(delays, YEAR, ok_page(body.clone())).await;

    let r = one(config(f.dns.addr(), "", &f.check(""), "")).await;

    assert_eq!(r.outcome, Outcome::Ok, "{}", r.message);
    let t = r.timings;
    println!(
        "phases (ms): dns {:.2} connect {:.2} tls {:.2} ttfb {:.2} transfer {:.2} total {:.2}",
        ms(t.dns),
        ms(t.connect),
        ms(t.tls),
        ms(t.ttfb),
        ms(t.transfer),
        ms(t.total)
    );
    // Each delay lands in its phase (at least the delay) and in no other
    // (no phase holds a second delay: each is under its own delay plus 100
    // ms, less than the smallest other delay).
    let within = |phase: Option<Duration>, delay: u64| {
        let p = phase.unwrap();
        p >= Duration::from_millis(delay) && p < Duration::from_millis(delay + 100)
    };
    assert!(t.connect.unwrap() < Duration::from_millis(100), "{t:?}");
    assert!(within(t.tls, 150), "tls {t:?}");
    assert!(within(t.ttfb, 200), "ttfb {t:?}");
    assert!(within(t.transfer, 250), "transfer {t:?}");
    assert!(t.total.unwrap() >= Duration::from_millis(600), "{t:?}");

    let tls = r.tls.as_ref().expect("TLS details");
    assert_eq!(tls.version, "TLSv1.3");
    assert_eq!(tls.alpn.as_deref(), Some("http/1.1"));
    assert!(tls.cipher.starts_with("TLS13_"), "{}", tls.cipher);
    let cert = tls.cert.as_ref().expect("leaf certificate");
    assert!(cert.subject.contains("shop.test"), "{}", cert.subject);
    assert!(cert.issuer.contains("Vantage Test CA"), "{}", cert.issuer);
    let days_left = (cert.not_after - chrono::Utc::now()).num_days();
    assert!((360..=366).contains(&days_left), "{days_left}");
    assert_eq!(r.body_bytes, Some(1000));
    assert_eq!(r.body_sha256, Some(hex::encode(Sha256::digest(&body))));
    assert!(!r.body_truncated);
}

#[tokio::test]
async fn body_beyond_the_limit_is_not_read_and_is_marked_truncated() {
    let body = vec![b'a'; 10_000];
    let f = tls_fixture(Delays::default(), YEAR, ok_page(body.clone())).await;
    let r = one(config(
        f.dns.addr(),
        "",
        &f.check("body_hash_bytes = 4096"),
        "",
    ))
    .await;
    assert_eq!(r.outcome, Outcome::Ok, "{}", r.message);
    assert_eq!(r.body_bytes, Some(4096));
    assert_eq!(
        r.body_sha256,
        Some(hex::encode(Sha256::digest(&body[..4096])))
    );
    assert!(r.body_truncated);
}

#[tokio::test]
async fn certificate_expiring_within_the_threshold_is_its_own_failure() {
    let f = tls_fixture(
        Delays::default(),
        Duration::from_secs(2 * 86400),
        ok_page(b"x".to_vec()),
    )
    .await;
    let r = one(config(f.dns.addr(), "", &f.check(""), "")).await;
    assert_eq!(r.outcome, Outcome::CertExpiry, "{}", r.message);
    assert_eq!(r.http_status, Some(200), "the response is still recorded");
    assert!(r.message.contains("certificate expires"), "{}", r.message);
    // With the threshold off, the same site is fine.
    let off = one(config(
        f.dns.addr(),
        "",
        &f.check("cert_expiry_threshold = \"0s\""),
        "",
    ))
    .await;
    assert_eq!(off.outcome, Outcome::Ok, "{}", off.message);
}

#[tokio::test]
async fn untrusted_certificate_is_a_tls_failure() {
    let f = tls_fixture(Delays::default(), YEAR, ok_page(b"x".to_vec())).await;
    let check = format!("url = \"https://shop.test:{}/\"", f.site.addr().port());
    let r = one(config(f.dns.addr(), "", &check, "")).await;
    assert_eq!(r.outcome, Outcome::Tls, "{}", r.message);
    assert!(
        r.message.to_lowercase().contains("certificate"),
        "{}",
        r.message
    );
    assert_eq!(f.site.requests(), 0);
}

/// A hostile site on `shop.test` and the result of probing it with a 1 s
/// timeout.
async fn probe_hostile(behaviour: Behaviour, tls: bool) -> ProbeResult {
    let dns = DnsServer::start(LOOPBACK, &[("shop.test", LOOPBACK)])
        .await
        .unwrap();
    let site = ScriptedSite::start(LOOPBACK, None, Delays::default(), behaviour)
        .await
        .unwrap();
    let scheme = if tls { "https" } else { "http" };
    let check = format!(
        "url = \"{scheme}://shop.test:{}/\"\ntimeout = \"1s\"",
        site.addr().port()
    );
    one(config(dns.addr(), "", &check, "")).await
}

#[tokio::test]
async fn slowloris_headers_time_out_within_the_check_timeout() {
    let r = probe_hostile(Behaviour::SlowlorisHeaders, false).await;
    assert_eq!(r.outcome, Outcome::Timeout, "{}", r.message);
    assert!(
        r.message.contains("waiting for the response"),
        "{}",
        r.message
    );
    let total = r.timings.total.unwrap();
    assert!(
        total >= Duration::from_secs(1) && total < Duration::from_secs(3),
        "{total:?}"
    );
}

#[tokio::test]
async fn endless_body_is_read_only_up_to_the_limit() {
    let r = probe_hostile(Behaviour::EndlessBody, false).await;
    assert_eq!(r.outcome, Outcome::Ok, "{}", r.message);
    assert_eq!(r.body_bytes, Some(64 * 1024));
    assert!(r.body_truncated);
}

#[tokio::test]
async fn garbage_instead_of_http_is_a_protocol_failure() {
    let r = probe_hostile(Behaviour::Garbage, false).await;
    assert_eq!(r.outcome, Outcome::Protocol, "{}", r.message);
    assert_eq!(r.http_status, None);
}

#[tokio::test]
async fn oversized_headers_are_a_protocol_failure() {
    let r = probe_hostile(Behaviour::HugeHeaders, false).await;
    assert_eq!(r.outcome, Outcome::Protocol, "{}", r.message);
    assert!(r.message.contains("too large"), "{}", r.message);
}

#[tokio::test]
async fn tls_garbage_is_a_tls_failure() {
    let r = probe_hostile(Behaviour::TlsGarbage, true).await;
    assert_eq!(r.outcome, Outcome::Tls, "{}", r.message);
    assert!(r.timings.connect.is_some());
}

#[tokio::test]
async fn redirect_is_the_result_unless_following_is_enabled() {
    let dns = DnsServer::start(LOOPBACK, &[("shop.test", LOOPBACK), ("www.test", LOOPBACK)])
        .await
        .unwrap();
    let final_site = ScriptedSite::start(
        LOOPBACK,
        None,
        Delays::default(),
        ok_page(b"final".to_vec()),
    )
    .await
    .unwrap();
    let moved = Behaviour::Respond {
        status: 301,
        headers: vec![
            (
                "location".into(),
                format!("http://www.test:{}/landing", final_site.addr().port()),
            ),
            ("server".into(), "edge-redirector".into()),
        ],
        body: Vec::new(),
    };
    let first_site = ScriptedSite::start(LOOPBACK, None, Delays::default(), moved)
        .await
        .unwrap();
    let url = format!("url = \"http://shop.test:{}/\"", first_site.addr().port());

    let not_followed = one(config(dns.addr(), "", &url, "")).await;
    assert_eq!(not_followed.http_status, Some(301));
    assert_eq!(not_followed.outcome, Outcome::Ok);
    assert!(not_followed.hops.is_empty());
    assert_eq!(final_site.requests(), 0);

    let followed = one(config(
        dns.addr(),
        "",
        &format!("{url}\nfollow_redirects = 3"),
        "",
    ))
    .await;
    assert_eq!(followed.outcome, Outcome::Ok, "{}", followed.message);
    assert_eq!(followed.http_status, Some(200));
    assert_eq!(followed.dialed, Some(final_site.addr()));
    let statuses: Vec<Option<u16>> = followed.hops.iter().map(|h| h.status).collect();
    assert_eq!(statuses, vec![Some(301), Some(200)]);
    assert_eq!(followed.hops[0].dialed, Some(first_site.addr()));
    assert!(followed.hops[1].url.ends_with("/landing"));
    for hop in &followed.hops {
        assert!(
            hop.timings.connect.is_some() && hop.timings.ttfb.is_some(),
            "{hop:?}"
        );
        assert!(hop.timings.total.unwrap() <= followed.timings.total.unwrap());
    }
    // The top-level phases are the last hop's, not a sum over hops, and
    // nothing of the first response is left in the result.
    assert_eq!(followed.timings.connect, followed.hops[1].timings.connect);
    assert_eq!(
        not_followed.headers.get("server").map(String::as_str),
        Some("edge-redirector")
    );
    assert_ne!(
        followed.headers.get("server").map(String::as_str),
        Some("edge-redirector")
    );
}

#[tokio::test]
async fn http_connect_proxy_with_credentials_carries_the_probe() {
    let (target, dns) = healthy_shop().await;
    let creds = Some(("alice".to_owned(), "s3cr:t".to_owned()));
    let proxy = ForwardProxy::start(
        LOOPBACK,
        ProxyKind::Http {
            credentials: creds,
            refuse_with: None,
        },
    )
    .await
    .unwrap();
    let vantage = format!(
        "[[vantage]]\nname = \"via-proxy\"\nproxy = \"http://alice:s3cr%3At@{}\"\n",
        proxy.addr()
    );
    let check = shop_check(&target);
    let r = one(config(dns.addr(), "", &check, &vantage)).await;
    assert_eq!(r.outcome, Outcome::Ok, "{}", r.message);
    assert_eq!(r.vantage, "via-proxy");
    assert_eq!(
        r.proxy,
        Some(format!("http://{}", proxy.addr())),
        "no credentials"
    );
    assert_eq!(
        r.dialed,
        Some(target.addr()),
        "the tunnel goes to the resolved address"
    );
    assert!(r.timings.proxy.is_some() && r.timings.connect.is_some());
    assert_eq!(proxy.tunnels(), 1);
    // The target sees the proxy's address: the result names it.
    assert_eq!(r.proxy_ip, Some(proxy.addr().ip()));
    assert_eq!(
        r.interval,
        Some(Duration::from_secs(10)),
        "the check's round"
    );
}

#[tokio::test]
async fn proxy_refusing_the_tunnel_is_the_proxys_failure_not_the_sites() {
    let (target, dns) = healthy_shop().await;
    let proxy = ForwardProxy::start(
        LOOPBACK,
        ProxyKind::Http {
            credentials: None,
            refuse_with: Some(502),
        },
    )
    .await
    .unwrap();
    let vantage = format!(
        "[[vantage]]\nname = \"p\"\nproxy = \"http://{}\"\n",
        proxy.addr()
    );
    let check = shop_check(&target);
    let r = one(config(dns.addr(), "", &check, &vantage)).await;
    assert_eq!(r.outcome, Outcome::Proxy, "{}", r.message);
    assert_eq!(r.proxy_status, Some(502));
    assert_eq!(r.http_status, None, "the site never answered");
    assert_eq!(r.gateway.as_deref(), Some("forward-proxy"));
    assert_eq!(target.counts(), (0, 0));
}

#[tokio::test]
async fn proxy_rejecting_credentials_is_a_proxy_failure() {
    let dns = DnsServer::start(LOOPBACK, &[("shop.test", LOOPBACK)])
        .await
        .unwrap();
    let proxy = ForwardProxy::start(
        LOOPBACK,
        ProxyKind::Http {
            credentials: Some(("a".into(), "b".into())),
            refuse_with: None,
        },
    )
    .await
    .unwrap();
    let vantage = format!(
        "[[vantage]]\nname = \"p\"\nproxy = \"http://a:wrong@{}\"\n",
        proxy.addr()
    );
    let r = one(config(
        dns.addr(),
        "",
        "url = \"http://shop.test:9/\"",
        &vantage,
    ))
    .await;
    assert_eq!(r.outcome, Outcome::Proxy, "{}", r.message);
    assert_eq!(r.proxy_status, Some(407));
}

#[tokio::test]
async fn socks5_proxy_carries_https_probes_and_the_ip_echo() {
    let f = tls_fixture(Delays::default(), YEAR, ok_page(b"secure".to_vec())).await;
    let echo = Target::start(LOOPBACK, None).await.unwrap();
    let proxy = ForwardProxy::start(
        LOOPBACK,
        ProxyKind::Socks5 {
            credentials: Some(("bob".into(), "pw".into())),
        },
    )
    .await
    .unwrap();
    let vantage = format!(
        "[[vantage]]\nname = \"socks\"\nproxy = \"socks5://bob:pw@{}\"\n\
         ip_echo_url = \"http://{}/ip\"\n\
         [[vantage]]\nname = \"local\"\nsource_ip = \"127.0.4.1\"\nip_echo_url = \"http://{}/ip\"\n",
        proxy.addr(),
        echo.addr(),
        echo.addr()
    );
    let results = round(config(f.dns.addr(), "", &f.check(""), &vantage)).await;
    let socks = results.iter().find(|r| r.vantage == "socks").unwrap();
    assert_eq!(socks.outcome, Outcome::Ok, "{}", socks.message);
    assert_eq!(
        socks.tls.as_ref().map(|t| t.version.as_str()),
        Some("TLSv1.3")
    );
    assert_eq!(socks.proxy, Some(format!("socks5://{}", proxy.addr())));
    // The echo service saw the proxy's outgoing address, not ours.
    assert_eq!(socks.echo_ip, Some(LOOPBACK));
    let local = results.iter().find(|r| r.vantage == "local").unwrap();
    assert_eq!(local.echo_ip, Some("127.0.4.1".parse().unwrap()));
    assert!(
        proxy.tunnels() >= 2,
        "probe and echo both went through the proxy"
    );
}

#[tokio::test]
async fn site_502_behind_a_cdn_names_the_cdn_and_its_edge() {
    let page = "<html><body><center><h1>502 Bad Gateway</h1></center><hr><center>cloudflare</center></body></html>";
    let behaviour = Behaviour::Respond {
        status: 502,
        headers: vec![
            ("server".into(), "cloudflare".into()),
            ("cf-ray".into(), "8c1f2a3b4c5d6e7f-FRA".into()),
        ],
        body: page.as_bytes().to_vec(),
    };
    let f = tls_fixture(Delays::default(), YEAR, behaviour).await;
    let r = one(config(f.dns.addr(), "", &f.check(""), "")).await;
    assert_eq!(r.outcome, Outcome::Http);
    assert_eq!(r.http_status, Some(502));
    assert_eq!(r.gateway.as_deref(), Some("cloudflare"));
    assert_eq!(r.edge_location.as_deref(), Some("FRA"));
    assert_eq!(
        r.headers.get("cf-ray").map(String::as_str),
        Some("8c1f2a3b4c5d6e7f-FRA")
    );
}

/// The same local requests timed by curl and by the probe; both printed.
#[tokio::test]
async fn phases_agree_with_curl() {
    let delays = Delays {
        handshake: Duration::from_millis(100),
        headers: Duration::from_millis(150),
        body: Duration::from_millis(200),
    };
    let f = tls_fixture(delays, YEAR, ok_page(b"x".repeat(2000))).await;
    let port = f.site.addr().port();
    let r = one(config(f.dns.addr(), "", &f.check(""), "")).await;
    assert_eq!(r.outcome, Outcome::Ok, "{}", r.message);

    let output = tokio::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "--http1.1", "--cacert"])
        .arg(f.ca_file.path())
        .args(["--resolve", &format!("shop.test:{port}:127.0.0.1")])
        .args(["-w", "%{time_connect} %{time_appconnect} %{time_pretransfer} %{time_starttransfer} %{time_total}"])
        .arg(format!("https://shop.test:{port}/page"))
        .output()
        .await
        .expect("curl must be installed for this comparison");
    assert!(output.status.success(), "curl failed: {output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    let v: Vec<f64> = text
        .split_whitespace()
        .map(|s| s.parse::<f64>().unwrap() * 1000.0)
        .collect();
    let curl = [
        ("connect", v[0]),
        ("tls", v[1] - v[0]),
        ("ttfb", v[3] - v[2]),
        ("transfer", v[4] - v[3]),
    ];
    let t = r.timings;
    let ours = [ms(t.connect), ms(t.tls), ms(t.ttfb), ms(t.transfer)];
    println!("phase      curl (ms)  vantage (ms)  difference (ms)");
    for ((name, c), o) in curl.iter().zip(ours) {
        println!("{name:<10} {c:>9.2}  {o:>12.2}  {:>15.2}", o - c);
    }
    // The delays (100, 150, 200 ms) dominate; both clients must put each
    // in the same phase, to within 40 ms of each other.
    for ((name, c), o) in curl.iter().zip(ours) {
        assert!(
            (o - c).abs() < 40.0,
            "{name}: curl {c:.2} ms, vantage {o:.2} ms"
        );
    }
}
