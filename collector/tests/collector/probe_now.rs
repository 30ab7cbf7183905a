//! `vantage-collector probe`, with real processes: the connected agents
//! probe now from the vantages `--from` names, the results print side by
//! side and are stored as one-off results the detector does not count.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use sqlx::PgPool;
use vantage_testkit::{DnsServer, Target};

use crate::rig::Fleet;

const VANTAGES: &str = "[[vantage]]\nname = \"direct\"\nsource_ip = \"127.0.2.1\"\n\
                        [[vantage]]\nname = \"vpn\"\nsource_ip = \"127.0.3.1\"\nregion = \"us-vpn\"\n";

/// The line of the table that starts with `vantage`.
fn row<'a>(out: &'a str, vantage: &str) -> Vec<&'a str> {
    out.lines()
        .filter(|l| l.starts_with(&format!("{vantage} ")))
        .collect()
}

#[sqlx::test(migrations = false)]
async fn probe_asks_the_chosen_vantages_and_prints_them_side_by_side(pool: PgPool) {
    probe_asks_the_chosen_vantages_and_prints_them_side_by_side_on(pool).await;
}

/// [`probe_asks_the_chosen_vantages_and_prints_them_side_by_side`] on the database of `pool` (also run on Citus).
pub async fn probe_asks_the_chosen_vantages_and_prints_them_side_by_side_on(pool: PgPool) {
    let fleet = Fleet::start(pool, &[("fra-1", "eu-west"), ("iad-1", "us-east")], "").await;
    // The site answers 502 to the VPN's range only.
    fleet
        .target
        .set_failing(Some("127.0.3.0/24".parse().unwrap()));
    let _fra = fleet.start_agent("fra-1", "source_ip = \"127.0.1.1\"", "");
    let _iad = fleet.start_agent("iad-1", VANTAGES, "");
    fleet
        .wait_for(
            "both agents connected",
            "SELECT count(*) FROM agents WHERE 'probe_requests' = ANY(capabilities)",
            2,
            Duration::from_secs(20),
        )
        .await;
    let url = fleet.url("/checkout");
    let (code, out, err) = fleet.cli(&["probe", &url]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.starts_with(&format!(
            "Probe 1 of {url}: 3 results from 3 vantages of 2 agents."
        )),
        "{out}"
    );
    let header = out.lines().nth(1).unwrap();
    for column in [
        "vantage", "region", "egress", "resolver", "answer", "dialled", "status", "gateway", "ttfb",
    ] {
        assert!(header.contains(column), "{header}");
    }
    let target = fleet.target.addr();
    let fra = row(&out, "fra-1/direct");
    assert_eq!(fra.len(), 1, "{out}");
    assert!(
        fra[0].contains("200 ok") && fra[0].contains(&target.to_string()),
        "{out}"
    );
    assert!(
        fra[0].contains(&format!("udp://{}", fleet.dns.addr())),
        "{out}"
    );
    let vpn = row(&out, "iad-1/vpn");
    assert!(
        vpn[0].contains("us-vpn") && vpn[0].contains("502 http"),
        "{out}"
    );
    assert!(row(&out, "iad-1/direct")[0].contains("200 ok"), "{out}");

    // Only the vantages of one region (a vantage's own, here).
    let (code, out, _) = fleet.cli(&["probe", &url, "--from", "region=us-vpn"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("1 results from 1 vantages of 1 agents"),
        "{out}"
    );
    assert_eq!(row(&out, "iad-1/vpn").len(), 1, "{out}");

    // Another resolver, whose answer has a second address that fails for
    // everyone: dialling each shows which address the 502 follows.
    let port = target.port();
    let second = Target::start_at(
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), port),
        Some("0.0.0.0/0".parse().unwrap()),
    )
    .await
    .unwrap();
    let stale = DnsServer::start(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        &[
            ("shop.test", IpAddr::V4(Ipv4Addr::LOCALHOST)),
            ("shop.test", second.addr().ip()),
        ],
    )
    .await
    .unwrap();
    let resolver = format!("udp://{}", stale.addr());
    let (code, out, err) = fleet
        .cli(&[
            "probe",
            &url,
            "--from",
            "agent=fra-1",
            "--resolver",
            &resolver,
            "--dial",
            "each",
        ])
        .await;
    assert_eq!(code, 0, "{out}\n{err}");
    let fra = row(&out, "fra-1/direct");
    assert_eq!(fra.len(), 2, "one row per address: {out}");
    assert!(
        fra.iter()
            .all(|l| l.contains(&resolver) && l.contains("127.0.0.1,127.0.0.2")),
        "{out}"
    );
    assert!(
        fra.iter()
            .any(|l| l.contains(&format!("127.0.0.1:{port}")) && l.contains("200 ok")),
        "{out}"
    );
    assert!(
        fra.iter()
            .any(|l| l.contains(&format!("127.0.0.2:{port}")) && l.contains("502 http")),
        "{out}"
    );

    // Stored, marked as one-off, not in the detector's statistics.
    let stored: Vec<(String, Option<i64>)> = sqlx::query_as(
        "SELECT p.purpose, r.request_id FROM probe_results r
         JOIN probe_requests p ON p.id = r.request_id ORDER BY r.request_id",
    )
    .fetch_all(&fleet.pool)
    .await
    .unwrap();
    assert_eq!(stored.len(), 3 + 1 + 2);
    assert!(stored.iter().all(|(purpose, _)| purpose == "manual"));
    // Not in the detector's cells.
    let counted: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM detector_cells c JOIN detector_cell_keys k ON k.id = c.key_id
         WHERE k.check_name = 'probe'",
    )
    .fetch_one(&fleet.pool)
    .await
    .unwrap();
    assert_eq!(counted, 0);

    // Nobody there: said plainly, non-zero.
    let (code, out, err) = fleet.cli(&["probe", &url, "--from", "region=mars"]).await;
    assert_ne!(code, 0);
    assert!(out.contains("No connected agent matched"), "{out}");
    assert!(err.contains("not every agent asked answered"), "{err}");
    // Bad options name the option.
    let (code, _, err) = fleet.cli(&["probe", &url, "--from", "country=de"]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("--from \"country=de\": expected region=NAME, agent=ID or vantage=NAME"),
        "{err}"
    );
}

/// Waits until the fleet's one agent has said hello, announcing that it
/// traces paths.
async fn wait_for_tracing_agent(fleet: &Fleet) {
    fleet
        .wait_for(
            "the agent connected, able to trace",
            "SELECT count(*) FROM agents WHERE 'path_probes' = ANY(capabilities)",
            1,
            Duration::from_secs(20),
        )
        .await;
}

/// `probe --path`: each vantage traces its path to the address its probe
/// dialled; the traces are stored with the results (`path_results`,
/// `path_hops`, the `path_divergence` view) and printed side by side with
/// the one-line reading. On loopback every path is one hop, so the
/// failing vantage's path shares no hop the healthy ones avoid.
#[sqlx::test(migrations = false)]
async fn probe_path_traces_each_vantage_and_stores_the_paths(pool: PgPool) {
    let fleet = Fleet::start(pool, &[("iad-1", "us-east")], "").await;
    fleet
        .target
        .set_failing(Some("127.0.3.0/24".parse().unwrap()));
    let _iad = fleet.start_agent("iad-1", VANTAGES, "");
    wait_for_tracing_agent(&fleet).await;
    let url = fleet.url("/checkout");
    let (code, out, err) = fleet.cli(&["probe", &url, "--path"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let target = fleet.target.addr().ip().to_string();
    let paths = out
        .split("Paths:\n")
        .nth(1)
        .unwrap_or_else(|| panic!("{out}"));
    let mut lines = paths.lines();
    let header = lines.next().unwrap();
    assert!(
        header.contains("iad-1/direct (200 ok)") && header.contains("iad-1/vpn (502 http)"),
        "{out}"
    );
    let first_hop = lines.next().unwrap();
    assert_eq!(
        first_hop.matches(&format!(" 1 {target} ")).count(),
        2,
        "{out}"
    );
    assert!(paths.contains("reached in 1 hops"), "{out}");
    assert!(
        out.contains(
            "Where: the failing vantage's path shares no hop that the healthy paths avoid."
        ),
        "{out}"
    );

    // Stored: one trace per result, linked to it and to the request, its
    // probes in path_hops.
    let pool = &fleet.pool;
    type TraceRow = (String, String, String, Option<i16>, bool, Option<String>);
    let rows: Vec<TraceRow> = sqlx::query_as(
        "SELECT p.vantage, p.end_reason, host(p.source_ip), p.hop_count, p.port_reached,
                host(p.destination_ip)
         FROM path_results p JOIN probe_results r USING (agent_id, seq, started_at)
         WHERE p.request_id = 1 AND r.request_id = 1 ORDER BY p.vantage",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            (
                "direct".into(),
                "reached".into(),
                "127.0.2.1".into(),
                Some(1),
                true,
                Some(target.clone())
            ),
            (
                "vpn".into(),
                "reached".into(),
                "127.0.3.1".into(),
                Some(1),
                true,
                Some(target.clone())
            ),
        ]
    );
    let hops: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM path_hops WHERE reply = 'port_unreachable' AND host(address) = $1",
    )
    .bind(&target)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(hops, 6, "three probes of hop 1 from each vantage");
    let divergence: Vec<(String, i64, i64, i64, i64, bool)> = sqlx::query_as(
        "SELECT host(address), failing_through, failing_traces, healthy_through, healthy_traces,
                divergent
         FROM path_divergence WHERE request_id = 1",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(divergence, vec![(target.clone(), 1, 1, 1, 1, false)]);
}

/// A vantage behind a forward proxy can trace only as far as its proxy:
/// the trace goes there and says so. A name that does not resolve leaves
/// nothing to trace: the trace says why instead of failing the probe.
#[sqlx::test(migrations = false)]
async fn probe_path_stops_at_a_proxy_and_names_what_it_could_not_trace(pool: PgPool) {
    use vantage_testkit::{ForwardProxy, ProxyKind};
    let fleet = Fleet::start(pool, &[("iad-1", "us-east")], "").await;
    let proxy = ForwardProxy::start(
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 63)),
        ProxyKind::Http {
            credentials: None,
            refuse_with: None,
        },
    )
    .await
    .unwrap();
    let vantages = format!(
        "[[vantage]]\nname = \"direct\"\nsource_ip = \"127.0.2.1\"\n\
         [[vantage]]\nname = \"proxied\"\nsource_ip = \"127.0.4.1\"\nproxy = \"http://{}\"\n",
        proxy.addr()
    );
    let _iad = fleet.start_agent("iad-1", &vantages, "");
    wait_for_tracing_agent(&fleet).await;
    let (code, out, err) = fleet.cli(&["probe", &fleet.url("/"), "--path"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("traced to the vantage's proxy only"), "{out}");
    let rows: Vec<(String, bool, Option<String>, Option<i32>)> = sqlx::query_as(
        "SELECT vantage, via_proxy, host(destination_ip), destination_port FROM path_results
         ORDER BY vantage",
    )
    .fetch_all(&fleet.pool)
    .await
    .unwrap();
    let target = fleet.target.addr();
    assert_eq!(
        rows,
        vec![
            (
                "direct".into(),
                false,
                Some(target.ip().to_string()),
                Some(i32::from(target.port()))
            ),
            (
                "proxied".into(),
                true,
                Some(proxy.addr().ip().to_string()),
                Some(i32::from(proxy.addr().port()))
            ),
        ]
    );

    // A name nobody answers for: the probe fails on DNS; the trace is an
    // error that says why.
    let (code, out, err) = fleet
        .cli(&[
            "probe",
            "http://missing.test/",
            "--path",
            "--from",
            "vantage=direct",
        ])
        .await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("error: the probe dialled no address: the name did not resolve"),
        "{out}"
    );
    let (end, error): (String, String) =
        sqlx::query_as("SELECT end_reason, error FROM path_results WHERE request_id = 2")
            .fetch_one(&fleet.pool)
            .await
            .unwrap();
    assert_eq!(end, "error");
    assert!(
        error.starts_with("the probe dialled no address: the name did not resolve"),
        "{error}"
    );
}

/// A check's `path_interval`: the scheduled rounds trace at most that
/// often per vantage (the first round does), not every round.
#[sqlx::test(migrations = false)]
async fn path_interval_traces_scheduled_rounds_at_most_that_often(pool: PgPool) {
    let fleet = Fleet::start(pool, &[("iad-1", "us-east")], "").await;
    let check = format!(
        "[[check]]\nname = \"shop\"\nurl = \"{}\"\ninterval = \"500ms\"\ntimeout = \"400ms\"\n\
         path_interval = \"1h\"\n",
        fleet.url("/")
    );
    let _iad = fleet.start_agent("iad-1", VANTAGES, &check);
    fleet
        .wait_for(
            "several rounds from both vantages",
            "SELECT count(*) FROM probe_results WHERE check_name = 'shop'",
            8,
            Duration::from_secs(20),
        )
        .await;
    let traced: Vec<(String, i64, Option<i64>)> = sqlx::query_as(
        "SELECT vantage, count(*), min(request_id) FROM path_results WHERE check_name = 'shop'
         GROUP BY vantage ORDER BY vantage",
    )
    .fetch_all(&fleet.pool)
    .await
    .unwrap();
    assert_eq!(
        traced,
        vec![("direct".into(), 1, None), ("vpn".into(), 1, None)],
        "one trace per vantage in the hour, on schedule"
    );
}
