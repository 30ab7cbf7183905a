//! The probe options a check adds to what it asks and accepts, against
//! real local servers: a certificate accepted unverified (and recorded),
//! the TLS server name and `Host` of a site reached by address, body
//! patterns, headers from a private file, and certificate problems in
//! words.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use vantage_agent::probe::{Outcome, ProbeResult};
use vantage_agent::{AgentConfig, App};
use vantage_testkit::{Behaviour, Delays, DnsServer, Leaf, ScriptedSite, TestCa};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

fn config(dns: SocketAddr, check: &str) -> AgentConfig {
    let text = format!(
        "agent_id = \"options-test\"\nregion = \"r\"\n\
         [collector]\nendpoint = \"http://127.0.0.1:1\"\ntoken = \"t\"\n\
         [dns]\nresolvers = [\"udp://{dns}\"]\nidentity_queries = []\n\
         [[check]]\nname = \"c\"\ninterval = \"10s\"\ntimeout = \"5s\"\n{check}\n"
    );
    AgentConfig::parse(Path::new("test.toml"), &text).expect("test config is valid")
}

async fn one(config: AgentConfig) -> ProbeResult {
    let app = App::build(config).expect("agent builds");
    let mut results = app.probe_once("c").await;
    assert_eq!(results.len(), 1, "{results:#?}");
    results.remove(0)
}

fn page(status: u16, body: &[u8]) -> Behaviour {
    Behaviour::Respond {
        status,
        headers: vec![("content-type".into(), "text/plain".into())],
        body: body.to_vec(),
    }
}

/// A site presenting `leaf`, `shop.test` naming it, and a file with the
/// CA's certificate.
struct Site {
    site: ScriptedSite,
    dns: DnsServer,
    ca_file: tempfile::NamedTempFile,
}

async fn site(ca: &TestCa, leaf: Leaf, behaviour: Behaviour) -> Site {
    let site = ScriptedSite::start(LOOPBACK, Some(leaf), Delays::default(), behaviour)
        .await
        .unwrap();
    let dns = DnsServer::start(LOOPBACK, &[("shop.test", LOOPBACK)])
        .await
        .unwrap();
    let ca_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca_file.path(), ca.pem()).unwrap();
    Site { site, dns, ca_file }
}

impl Site {
    fn url(&self, host: &str) -> String {
        format!(
            "url = \"https://{host}:{}/health\"",
            self.site.addr().port()
        )
    }

    fn ca(&self) -> String {
        format!("ca_file = \"{}\"", self.ca_file.path().display())
    }
}

#[tokio::test]
async fn an_unverified_certificate_is_accepted_when_asked_and_every_result_says_so() {
    let ca = TestCa::new().unwrap();
    let s = site(
        &ca,
        ca.leaf(&["shop.test"], YEAR).unwrap(),
        page(200, b"ok"),
    )
    .await;

    // Without the CA: refused, in words that say what to do.
    let refused = one(config(s.dns.addr(), &s.url("shop.test"))).await;
    assert_eq!(refused.outcome, Outcome::Tls, "{}", refused.message);
    assert!(
        refused
            .message
            .contains("not signed by a trusted certificate authority")
            && refused.message.contains("tls_insecure_skip_verify"),
        "{}",
        refused.message
    );
    assert!(!refused.tls_insecure);
    assert_eq!(s.site.requests(), 0);

    let r = one(config(
        s.dns.addr(),
        &format!("{}\ntls_insecure_skip_verify = true", s.url("shop.test")),
    ))
    .await;
    assert_eq!(r.outcome, Outcome::Ok, "{}", r.message);
    assert!(
        r.tls_insecure,
        "the result records the unverified handshake"
    );
    let tls = r.tls.as_ref().expect("the handshake still ran");
    assert!(
        tls.cert
            .as_ref()
            .unwrap()
            .issuer
            .contains("Vantage Test CA")
    );
    assert!(r.timings.tls.is_some());
    assert_eq!(s.site.requests(), 1);

    // With the CA the same site verifies, and the result says so.
    let verified = one(config(
        s.dns.addr(),
        &format!("{}\n{}", s.url("shop.test"), s.ca()),
    ))
    .await;
    assert_eq!(verified.outcome, Outcome::Ok, "{}", verified.message);
    assert!(!verified.tls_insecure);
}

#[tokio::test]
async fn a_ca_certificate_presented_as_the_sites_own_is_named_as_such() {
    let ca = TestCa::new().unwrap();
    let s = site(&ca, ca.as_leaf(), page(200, b"ok")).await;
    // rcgen's CA certificate names no host: verified against its own CA
    // file, the CA:TRUE is what webpki refuses first.
    let r = one(config(
        s.dns.addr(),
        &format!("{}\n{}", s.url("shop.test"), s.ca()),
    ))
    .await;
    assert_eq!(r.outcome, Outcome::Tls, "{}", r.message);
    assert!(
        r.message
            .contains("presents a CA certificate (CA:TRUE) as its own"),
        "{}",
        r.message
    );
    assert!(!r.message.contains("CaUsedAsEndEntity"), "{}", r.message);
    let insecure = one(config(
        s.dns.addr(),
        &format!("{}\ntls_insecure_skip_verify = true", s.url("shop.test")),
    ))
    .await;
    assert_eq!(insecure.outcome, Outcome::Ok, "{}", insecure.message);
}

#[tokio::test]
async fn a_site_reached_by_address_is_verified_and_asked_for_by_its_name() {
    let ca = TestCa::new().unwrap();
    let s = site(
        &ca,
        ca.leaf(&["shop.test"], YEAR).unwrap(),
        page(200, b"ok"),
    )
    .await;

    let by_address = one(config(
        s.dns.addr(),
        &format!("{}\n{}", s.url("127.0.0.1"), s.ca()),
    ))
    .await;
    assert_eq!(by_address.outcome, Outcome::Tls, "{}", by_address.message);
    assert!(
        by_address.message.contains("does not name 127.0.0.1")
            && by_address.message.contains("tls_server_name"),
        "{}",
        by_address.message
    );

    let named = one(config(
        s.dns.addr(),
        &format!(
            "{}\n{}\ntls_server_name = \"shop.test\"\nhost_header = \"shop.test\"",
            s.url("127.0.0.1"),
            s.ca()
        ),
    ))
    .await;
    assert_eq!(named.outcome, Outcome::Ok, "{}", named.message);
    assert!(
        named
            .tls
            .as_ref()
            .unwrap()
            .cert
            .as_ref()
            .unwrap()
            .subject
            .contains("shop.test")
    );
    let request = s.site.last_request().to_ascii_lowercase();
    assert!(request.contains("\r\nhost: shop.test\r\n"), "{request}");
    assert_eq!(
        named.dialed,
        Some(s.site.addr()),
        "still dialled by address"
    );
}

#[tokio::test]
async fn a_body_that_fails_its_patterns_is_a_body_match_failure() {
    let ca = TestCa::new().unwrap();
    let s = site(
        &ca,
        ca.leaf(&["shop.test"], YEAR).unwrap(),
        page(200, b"{\"status\": \"degraded\", \"db\": \"down\"}"),
    )
    .await;
    let with = |extra: &str| {
        config(
            s.dns.addr(),
            &format!("{}\n{}\n{extra}", s.url("shop.test"), s.ca()),
        )
    };

    let matched = one(with(
        "fail_if_body_matches = [\"\\\"db\\\": \\\"down\\\"\"]",
    ))
    .await;
    assert_eq!(matched.outcome, Outcome::BodyMatch, "{}", matched.message);
    assert!(
        matched.message.contains("matched fail_if_body_matches"),
        "{}",
        matched.message
    );
    assert_eq!(
        matched.http_status,
        Some(200),
        "the response is still recorded"
    );

    let missed = one(with(
        "fail_if_body_not_matches = [\"(?i)\\\"status\\\": \\\"ok\\\"\"]",
    ))
    .await;
    assert_eq!(missed.outcome, Outcome::BodyMatch, "{}", missed.message);
    assert!(
        missed
            .message
            .contains("did not match fail_if_body_not_matches"),
        "{}",
        missed.message
    );

    let fine = one(with(
        "fail_if_body_matches = [\"panic\"]\nfail_if_body_not_matches = [\"degraded\"]",
    ))
    .await;
    assert_eq!(fine.outcome, Outcome::Ok, "{}", fine.message);

    // Only the bytes read are matched: beyond body_hash_bytes is unseen.
    let unseen = one(with(
        "body_hash_bytes = 10\nfail_if_body_matches = [\"down\"]",
    ))
    .await;
    assert_eq!(unseen.outcome, Outcome::Ok, "{}", unseen.message);
}

#[tokio::test]
async fn an_unexpected_status_stays_an_http_failure_whatever_the_body() {
    let ca = TestCa::new().unwrap();
    let s = site(
        &ca,
        ca.leaf(&["shop.test"], YEAR).unwrap(),
        page(502, b"bad gateway"),
    )
    .await;
    let r = one(config(
        s.dns.addr(),
        &format!(
            "{}\n{}\nfail_if_body_not_matches = [\"healthy\"]",
            s.url("shop.test"),
            s.ca()
        ),
    ))
    .await;
    assert_eq!(r.outcome, Outcome::Http, "{}", r.message);
}

#[tokio::test]
async fn headers_come_from_a_private_file_read_at_every_probe() {
    let ca = TestCa::new().unwrap();
    let s = site(
        &ca,
        ca.leaf(&["shop.test"], YEAR).unwrap(),
        page(200, b"ok"),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shop.headers");
    std::fs::write(
        &file,
        "# rotated weekly\nAuthorization: Bearer first-secret\n",
    )
    .unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = config(
        s.dns.addr(),
        &format!(
            "{}\n{}\nheaders_file = \"{}\"",
            s.url("shop.test"),
            s.ca(),
            file.display()
        ),
    );
    let app = App::build(cfg.clone()).expect("agent builds");
    let r = app.probe_once("c").await.remove(0);
    assert_eq!(r.outcome, Outcome::Ok, "{}", r.message);
    assert!(
        s.site
            .last_request()
            .contains("authorization: Bearer first-secret"),
        "{}",
        s.site.last_request()
    );
    // A rotated secret is sent from the next probe on, without a reload.
    std::fs::write(&file, "Authorization: Bearer second-secret\n").unwrap();
    let r = app.probe_once("c").await.remove(0);
    assert_eq!(r.outcome, Outcome::Ok, "{}", r.message);
    assert!(s.site.last_request().contains("Bearer second-secret"));

    // A file others may read is refused at start, naming it, not its secret.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let error = App::check(&cfg).unwrap_err().to_string();
    assert!(
        error.contains("headers_file") && error.contains("chmod 600") && !error.contains("secret"),
        "{error}"
    );
    // ... and a probe meanwhile fails saying why, sending nothing.
    let before = s.site.requests();
    let r = app.probe_once("c").await.remove(0);
    assert_eq!(r.outcome, Outcome::Other, "{}", r.message);
    assert!(r.message.contains("headers_file"), "{}", r.message);
    assert_eq!(s.site.requests(), before);
}
