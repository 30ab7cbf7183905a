//! The agent configuration's parsing and validation, by example.

use std::net::{IpAddr, SocketAddr};

use super::*;
use crate::probe::proxy::ProxyKind;

const VALID: &str = r#"
agent_id = "fra-1"
region = "eu-central"
labels = { provider = "lab" }
source_ip = "127.0.2.1"

[collector]
endpoint = "http://127.0.0.1:7400"
token = "vantage_test"

[dns]
resolvers = ["tcp://127.0.0.1:5353"]

[[check]]
name = "shop"
url = "https://shop.test/health"
interval = "30s"
timeout = "5s"
expected_status = [200, 204]
"#;

fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
    AgentConfig::parse(Path::new("agent.toml"), text)
}

fn error(text: &str) -> String {
    parse(text)
        .expect_err("config should be rejected")
        .to_string()
}

#[test]
fn valid_config_parses_with_defaults() {
    let c = parse(VALID).unwrap();
    let check = &c.checks[0];
    assert_eq!(c.agent_id.as_str(), "fra-1");
    assert_eq!(c.source_ip, Some("127.0.2.1".parse().unwrap()));
    assert_eq!(
        c.dns.resolvers,
        vec![ResolverSpec::Tcp("127.0.0.1:5353".parse().unwrap())]
    );
    assert_eq!(check.ip_family, IpFamily::Any);
    assert_eq!(check.dial, Dial::First);
    assert_eq!(check.follow_redirects, 0);
    assert_eq!(check.body_hash_bytes, 65536);
    assert!(c.probe_header);
    assert!(c.vantages.is_empty());
    assert_eq!(check.interval, Duration::from_secs(30));
    assert_eq!(check.http_version, HttpVersion::Auto);
    assert_eq!(check.method, Method::Get);
    assert!(check.expects(204));
    assert!(!check.expects(301));
    assert_eq!(c.collector.batch_size, 500);
}

#[test]
fn unknown_key_names_file_line_and_key() {
    let text = VALID.replace("interval = \"30s\"", "intervall = \"30s\"");
    let e = error(&text);
    assert!(e.starts_with("agent.toml:17:"), "{e}");
    assert!(e.contains("unknown field `intervall`"), "{e}");
    assert!(e.contains("check[0]"), "{e}");
}

#[test]
fn bad_url_names_line_and_key() {
    let text = VALID.replace("https://shop.test/health", "ftp://shop.test/");
    let e = error(&text);
    assert!(e.starts_with("agent.toml:16:"), "{e}");
    assert!(e.contains("check[0].url"), "{e}");
    assert!(e.contains("expected scheme http or https"), "{e}");
}

#[test]
fn bad_interval_names_line_and_key() {
    let text = VALID.replace("\"30s\"", "\"thirty seconds\"");
    let e = error(&text);
    assert!(e.starts_with("agent.toml:17:"), "{e}");
    assert!(e.contains("check[0].interval"), "{e}");
}

#[test]
fn token_goes_in_plaintext_only_to_loopback_unless_insecure() {
    for loopback in [
        "http://127.0.0.1:7400",
        "http://[::1]:7400",
        "http://localhost:7400",
    ] {
        let text = VALID.replace("http://127.0.0.1:7400", loopback);
        assert!(parse(&text).is_ok(), "{loopback} is loopback");
    }
    for remote in ["http://10.0.0.5:7400", "http://collector.example.net:7400"] {
        let text = VALID.replace("http://127.0.0.1:7400", remote);
        let e = error(&text);
        assert!(e.contains("collector.endpoint"), "{e}");
        assert!(e.contains("plaintext to a non-loopback host"), "{e}");
        let insecure = text.replace(
            "token = \"vantage_test\"",
            "token = \"vantage_test\"\ninsecure = true",
        );
        let c = parse(&insecure).expect("insecure = true allows it");
        let endpoint = c.collector.all_endpoints()[0];
        assert!(endpoint.plaintext_beyond_loopback() && c.collector.insecure);
    }
    let tls = VALID.replace(
        "http://127.0.0.1:7400",
        "https://collector.example.net:7400",
    );
    let tls = parse(&tls).unwrap();
    assert!(!tls.collector.all_endpoints()[0].plaintext_beyond_loopback());
}

#[test]
fn several_collectors_are_a_list_checked_one_by_one() {
    let two = VALID.replace(
        "endpoint = \"http://127.0.0.1:7400\"",
        "endpoints = [\"http://127.0.0.1:7400\", \"https://collector-b.example.net:7400\"]",
    );
    let c = parse(&two).expect("a list of collectors");
    let endpoints: Vec<&str> = c
        .collector
        .all_endpoints()
        .iter()
        .map(|e| e.as_str())
        .collect();
    assert_eq!(
        endpoints,
        [
            "http://127.0.0.1:7400/",
            "https://collector-b.example.net:7400/"
        ]
    );
    // Each is checked, and named by its place in the list.
    let plaintext = two.replace("https://collector-b", "http://collector-b");
    let e = error(&plaintext);
    assert!(e.contains("collector.endpoints[1]"), "{e}");
    assert!(e.contains("plaintext to a non-loopback host"), "{e}");
    // One of endpoint or endpoints, not both, not neither.
    let both = two.replace(
        "endpoints = [",
        "endpoint = \"http://127.0.0.1:7400\"\nendpoints = [",
    );
    assert!(
        error(&both).contains("exactly one of endpoint"),
        "{}",
        error(&both)
    );
    let neither = VALID.replace("endpoint = \"http://127.0.0.1:7400\"\n", "");
    assert!(
        error(&neither).contains("exactly one of endpoint"),
        "{}",
        error(&neither)
    );
}

#[test]
fn exactly_one_token_source_is_required() {
    let none = VALID.replace("token = \"vantage_test\"\n", "");
    assert!(error(&none).contains("exactly one of token or token_file"));
    let both = VALID.replace(
        "token = \"vantage_test\"",
        "token = \"a\"\ntoken_file = \"/etc/vantage/token\"",
    );
    assert!(error(&both).contains("exactly one of token or token_file"));
}

#[test]
fn an_empty_or_blank_token_is_refused_at_check_config() {
    for blank in ["\"\"", "\"   \""] {
        let text = VALID.replace("token = \"vantage_test\"", &format!("token = {blank}"));
        let message = error(&text);
        assert!(
            message.contains("collector.token: expected the token"),
            "{message}"
        );
    }
}

#[test]
fn timeout_longer_than_interval_is_rejected() {
    let text = VALID.replace("timeout = \"5s\"", "timeout = \"60s\"");
    let e = error(&text);
    assert!(e.contains("check[0].timeout"), "{e}");
    assert!(e.contains("at most the interval"), "{e}");
}

#[test]
fn bad_resolver_says_what_is_expected() {
    let text = VALID.replace("tcp://127.0.0.1:5353", "dns.example");
    let e = error(&text);
    assert!(e.starts_with("agent.toml:12:"), "{e}");
    assert!(e.contains("dns.resolvers"), "{e}");
    assert!(e.contains("expected `system`"), "{e}");
}

#[test]
fn duplicate_check_names_are_rejected() {
    let dup = format!("{VALID}\n[[check]]\nname = \"shop\"\nurl = \"http://a.test/\"\n");
    let e = error(&dup);
    assert!(e.contains("check[1].name"), "{e}");
    assert!(e.contains("duplicate check name"), "{e}");
}

#[test]
fn empty_region_is_rejected() {
    let e = error(&VALID.replace("\"eu-central\"", "\"  \""));
    assert!(e.contains("region"), "{e}");
    assert!(e.contains("non-empty"), "{e}");
}

#[test]
fn proxy_url_keeps_credentials_out_of_its_display() {
    let p = ProxyUrl::try_from("socks5://bob:p%40ss@127.0.0.9:1081".to_owned()).unwrap();
    assert_eq!(p.kind, ProxyKind::Socks5);
    assert_eq!(p.credentials, Some(("bob".into(), "p@ss".into())));
    assert_eq!(p.redacted(), "socks5://127.0.0.9:1081");
    assert_eq!(format!("{p:?}"), "socks5://127.0.0.9:1081");
    assert_eq!(p.with_credentials(), "socks5://bob:p%40ss@127.0.0.9:1081");
    let http = ProxyUrl::try_from("http://[::1]".to_owned()).unwrap();
    assert_eq!((http.kind, http.port), (ProxyKind::Http, 80));
    assert_eq!(http.redacted(), "http://[::1]:80");
}

#[test]
fn bad_proxy_scheme_says_what_is_expected() {
    let text = format!("{VALID}\n[[vantage]]\nname = \"p\"\nproxy = \"ftp://127.0.0.1:21\"\n");
    let e = error(&text);
    assert!(e.contains("vantage[0].proxy"), "{e}");
    assert!(e.contains("expected http://, https:// or socks5://"), "{e}");
}

#[test]
fn check_naming_an_unknown_vantage_is_rejected() {
    let text = VALID.replace(
        "expected_status = [200, 204]",
        "expected_status = [200, 204]\nvantages = [\"mars\"]",
    );
    let e = error(&format!("{text}\n[[vantage]]\nname = \"earth\"\n"));
    assert!(e.contains("check[0].vantages"), "{e}");
    assert!(e.contains("unknown vantage \"mars\""), "{e}");
}

#[test]
fn duplicate_vantage_names_are_rejected() {
    let text = format!("{VALID}\n[[vantage]]\nname = \"a\"\n[[vantage]]\nname = \"a\"\n");
    let e = error(&text);
    assert!(e.contains("vantage[1].name"), "{e}");
}

#[test]
fn check_options_parse_and_invalid_header_is_rejected() {
    let text = VALID.replace(
        "expected_status = [200, 204]",
        "ip_family = \"v6\"\ndial = \"each\"\nfollow_redirects = 3\nhttp_version = \"2\"\nheaders = { \"X-A\" = \"b\" }",
    );
    let c = parse(&text).unwrap();
    let check = &c.checks[0];
    assert_eq!((check.ip_family, check.dial), (IpFamily::V6, Dial::Each));
    assert_eq!(
        (check.follow_redirects, check.http_version),
        (3, HttpVersion::Http2)
    );
    let bad = text.replace("\"X-A\" = \"b\"", "\"bad header\" = \"b\"");
    let e = error(&bad);
    assert!(e.contains("check[0].headers.bad header"), "{e}");
    let family = text.replace("\"v6\"", "\"v5\"");
    assert!(error(&family).contains("check[0].ip_family"));
}

proptest::proptest! {
    #[test]
    fn resolver_spec_round_trips(ip in proptest::prelude::any::<std::net::Ipv4Addr>(), port in 1u16.., tcp: bool) {
        let addr = SocketAddr::new(IpAddr::V4(ip), port);
        let spec = if tcp { ResolverSpec::Tcp(addr) } else { ResolverSpec::Udp(addr) };
        proptest::prop_assert_eq!(spec.to_string().parse::<ResolverSpec>().unwrap(), spec);
    }

}

/// Accepted once, then a panic at run time (a zero-period interval).
#[test]
fn zero_and_huge_durations_are_refused_at_the_key_line() {
    for (extra, at, key) in [
        (
            "[dns]\nidentity_interval = \"0s\"\n",
            "dns.identity_interval",
        ),
        ("[dns]\ntimeout = \"0s\"\n", "dns.timeout"),
        (
            "[[vantage]]\nname = \"a\"\nip_echo_interval = \"0s\"\n",
            "vantage[0].ip_echo_interval",
        ),
        ("[spool]\nmax_age = \"100000000years\"\n", "spool.max_age"),
        ("[spool]\nsync_interval = \"0s\"\n", "spool.sync_interval"),
    ]
    .map(|(extra, key)| (extra, extra.lines().count(), key))
    {
        // The extra table replaces VALID's [dns] where both have one.
        let text = VALID.replace("[dns]\nresolvers = [\"tcp://127.0.0.1:5353\"]\n", "") + extra;
        let e = error(&text);
        let line = text.lines().count() - extra.lines().count() + at;
        assert!(e.contains(&format!("agent.toml:{line}:")), "{extra}: {e}");
        assert!(e.contains(key), "{extra}: {e}");
        assert!(e.contains("expected between"), "{extra}: {e}");
    }
}

#[test]
fn a_rule_about_two_keys_points_at_the_second() {
    let text = VALID.replace("timeout = \"5s\"", "timeout = \"50s\"");
    let e = error(&text);
    let line = text.lines().position(|l| l.starts_with("timeout")).unwrap() + 1;
    assert!(e.contains(&format!("agent.toml:{line}:")), "{e}");
    assert!(e.contains("check[0].timeout"), "{e}");
}

#[test]
fn a_token_file_others_may_read_is_refused_with_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("agent.token");
    std::fs::write(&token, "vantage_secret\n").unwrap();
    let text = VALID.replace(
        "token = \"vantage_test\"",
        &format!("token_file = {:?}", token.display().to_string()),
    );
    let config = parse(&text).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = config.collector.load_token().unwrap_err();
    assert!(e.contains("mode 0644"), "{e}");
    assert!(e.contains("chmod 600"), "{e}");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(config.collector.load_token().unwrap(), "vantage_secret");
}

#[test]
fn path_settings_out_of_range_are_refused_at_their_key() {
    for (setting, key, expected) in [
        (
            "max_hops = 0",
            "path.max_hops",
            "0 is out of range: expected 1 to 64 hops",
        ),
        (
            "probes_per_hop = 11",
            "path.probes_per_hop",
            "expected 1 to 10",
        ),
        (
            "hop_timeout = \"0s\"",
            "path.hop_timeout",
            "expected 10ms to 60s",
        ),
        (
            "hop_timeout = \"5s\"\nmax_duration = \"1s\"",
            "path.max_duration",
            "expected at least hop_timeout, at most 10m",
        ),
    ] {
        let text = format!("{VALID}\n[path]\n{setting}\n");
        let e = error(&text);
        let line = text
            .lines()
            .position(|l| l.starts_with(key.trim_start_matches("path.")))
            .unwrap()
            + 1;
        assert!(e.contains(&format!("agent.toml:{line}:")), "{setting}: {e}");
        assert!(e.contains(key) && e.contains(expected), "{setting}: {e}");
    }
    let e = error(&format!("{VALID}\n[path]\nprotocol = \"icmp\"\n"));
    assert!(e.contains("path.protocol") && e.contains("udp"), "{e}");
    let c = parse(&format!(
        "{VALID}\n[path]\nprotocol = \"tcp\"\nmax_hops = 12\n"
    ))
    .unwrap();
    assert_eq!(c.path.protocol, crate::probe::path::PathProtocol::Tcp);
    assert_eq!(c.path.max_hops, 12);
}
