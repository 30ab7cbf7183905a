//! The Grafana dashboard (`deploy/grafana/vantage.json`) on Grafana's
//! PostgreSQL data source: every panel's SQL and every variable's query,
//! with Grafana's macros and the dashboard's variables expanded as Grafana
//! expands them, runs against a migrated database holding results, and the
//! panels over the roll-up return rows.

use chrono::{DateTime, Duration, Utc};
use serde_json::Value;
use sqlx::{Column as _, PgPool, Row as _};
use vantage_collector::store::Store;

const DASHBOARD: &str = include_str!("../../../deploy/grafana/vantage.json");

/// The arguments of the macro call that starts at `text` (after its
/// name), split at top-level commas, and the rest after `)`.
fn call_args(text: &str) -> (Vec<String>, &str) {
    let mut depth = 0;
    let mut args = vec![String::new()];
    for (i, c) in text.char_indices() {
        match c {
            '(' if depth == 0 => depth = 1,
            '(' => {
                depth += 1;
                args.last_mut().unwrap().push(c);
            }
            ')' if depth == 1 => {
                let args = args.into_iter().map(|a| a.trim().to_owned()).collect();
                return (args, &text[i + 1..]);
            }
            ')' => {
                depth -= 1;
                args.last_mut().unwrap().push(c);
            }
            ',' if depth == 1 => args.push(String::new()),
            _ => args.last_mut().unwrap().push(c),
        }
    }
    panic!("unclosed macro call: {text}");
}

/// Seconds of a Grafana interval: `$__interval` (one minute here), `5m`.
fn seconds(interval: &str) -> i64 {
    let interval = interval.trim_matches('\'');
    if interval == "$__interval" {
        return 60;
    }
    let (n, unit) = interval.split_at(interval.len() - 1);
    let n: i64 = n
        .parse()
        .unwrap_or_else(|_| panic!("interval {interval:?}"));
    n * match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => panic!("interval {interval:?}"),
    }
}

/// `sql` as Grafana sends it for the range `[from, to]`, with the
/// dashboard's variables at `vars`.
fn expand(sql: &str, from: DateTime<Utc>, to: DateTime<Utc>, vars: &[(&str, &str)]) -> String {
    let mut out = String::new();
    let mut rest = sql;
    while let Some(at) = rest.find("$__") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 3..];
        let name_len = after
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(after.len());
        let (name, tail) = after.split_at(name_len);
        let (args, tail) = call_args(tail);
        let time = |t: DateTime<Utc>| format!("'{}'", t.to_rfc3339());
        match name {
            "timeFilter" => {
                out.push_str(&format!(
                    "{} BETWEEN {} AND {}",
                    args[0],
                    time(from),
                    time(to)
                ));
            }
            "timeGroup" | "timeGroupAlias" => {
                let s = seconds(&args[1]);
                out.push_str(&format!("floor(extract(epoch from {})/{s})*{s}", args[0]));
                if name == "timeGroupAlias" {
                    out.push_str(" AS \"time\"");
                }
            }
            other => panic!("macro $__{other} is not one this test (or Grafana) expands"),
        }
        rest = tail;
    }
    out.push_str(rest);
    for (name, value) in vars {
        out = out.replace(&format!("${name}"), value);
    }
    assert!(!out.contains('$'), "unexpanded variable in {out}");
    out
}

async fn seed(pool: &PgPool) {
    let store = Store::new(pool.clone());
    store.migrate().await.unwrap();
    store
        .ensure_partitions_around(Utc::now(), 1, 1)
        .await
        .unwrap();
    let now = Utc::now() - Duration::minutes(3);
    for (seq, (region, egress, status)) in [
        ("eu", "127.0.1.1", 200),
        ("us", "127.0.2.1", 502),
        ("us", "127.0.2.2", 502),
        ("ap", "127.0.3.1", 200),
    ]
    .into_iter()
    .enumerate()
    {
        sqlx::query(
            "INSERT INTO probe_results (agent_id, region, seq, started_at, check_name, url, method,
                 outcome, message, http_status, egress_ip, resolver, dialed_ip, dialed_port,
                 dns_us, connect_us, ttfb_us, total_us, vantage)
             VALUES ($1, $2, $3, $4, 'shop', 'http://shop.test/', 'GET', $5, '', $6,
                     $7::inet, 'udp://127.0.0.53:53', '127.0.0.10', 80, 300, 500, 4000, 6000,
                     'direct')",
        )
        .bind(format!("agent-{seq}"))
        .bind(region)
        .bind(i64::try_from(seq).unwrap() + 1)
        .bind(now)
        .bind(if status == 200 { "ok" } else { "http" })
        .bind(status)
        .bind(egress)
        .execute(pool)
        .await
        .unwrap();
    }
    store
        .roll_up(now - Duration::minutes(1), now + Duration::minutes(1))
        .await
        .unwrap();
}

#[sqlx::test(migrations = false)]
async fn every_panel_query_runs_against_a_migrated_database(pool: PgPool) {
    seed(&pool).await;
    let dashboard: Value = serde_json::from_str(DASHBOARD).unwrap();
    let (from, to) = (Utc::now() - Duration::hours(6), Utc::now());
    // Multi-value variables as Grafana formats them for SQL: quoted, comma
    // separated.
    let vars = [
        ("target", "'http://shop.test/','http://other.test/'"),
        ("statuses", "'502','504'"),
    ];
    let mut queries: Vec<(String, String)> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["type"] == "query")
        .map(|v| {
            (
                format!("variable {}", v["name"]),
                v["query"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 5);
    for panel in panels {
        assert_eq!(
            panel["datasource"]["type"], "grafana-postgresql-datasource",
            "{}",
            panel["title"]
        );
        for target in panel["targets"].as_array().unwrap() {
            queries.push((
                panel["title"].as_str().unwrap().to_owned(),
                target["rawSql"].as_str().unwrap().to_owned(),
            ));
        }
    }
    for (what, sql) in queries {
        let sql = expand(&sql, from, to, &vars);
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .fetch_all(&pool)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}\n{sql}"));
        if sql.contains("probe_rollups") {
            assert!(!rows.is_empty(), "{what}: no rows\n{sql}");
        }
        if what == "Failure rate by region" {
            let us = rows
                .iter()
                .find(|r| r.get::<String, _>("metric") == "us")
                .unwrap();
            assert_eq!(us.get::<f64, _>("value"), 1.0, "both us probes got 502");
            assert_eq!(us.columns()[0].name(), "time");
        }
    }
}
