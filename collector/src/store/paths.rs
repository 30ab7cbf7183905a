//! Path traces (`path_results`, `path_hops`): stored with the batch of the
//! result they follow, in its transaction (a resend stores nothing twice),
//! and read back per probe request for `probe --path` and the incident
//! pages.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};

use super::{Store, StoreError, StoredResult};

vocabulary! {
    /// How a trace probed its hops (`path_results.protocol`).
    pub enum PathProtocol {
        /// UDP datagrams, as `tracepath` (the one that measures the path MTU).
        Udp = "udp",
        /// TCP SYNs to the target port, as `traceroute -T`.
        Tcp = "tcp",
    }
}

/// One trace as stored (see `migrations/*_path_results.sql`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPath {
    pub protocol: PathProtocol,
    pub source_ip: Option<IpAddr>,
    pub destination_ip: Option<IpAddr>,
    pub destination_port: Option<i32>,
    pub via_proxy: bool,
    pub end_reason: &'static str,
    pub error: Option<String>,
    pub path_mtu: Option<i32>,
    pub mtu_from: Option<IpAddr>,
    pub black_hole_after_ttl: Option<i16>,
    pub black_hole_largest_passed: Option<i32>,
    pub black_hole_smallest_lost: Option<i32>,
    pub port_answered_at: Option<i16>,
    pub port_reached: bool,
    pub port_rtt_us: Option<i64>,
    pub port_error: Option<String>,
    pub duration_us: i64,
    pub probes: Vec<StoredPathProbe>,
}

/// One probe of a trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPathProbe {
    pub ttl: i16,
    pub address: Option<IpAddr>,
    pub rtt_us: Option<i64>,
    pub reply: Option<&'static str>,
    pub size: i32,
}

impl StoredPath {
    /// The TTL the destination answered at.
    pub fn hop_count(&self) -> Option<i16> {
        (self.end_reason == "reached")
            .then(|| self.probes.iter().map(|p| p.ttl).max())
            .flatten()
    }
}

/// Stores the traces of `results` (those that carry one); a trace already
/// stored (a resend) is skipped.
pub(super) async fn insert(
    tx: &mut Transaction<'_, Postgres>,
    agent_id: &str,
    results: &[StoredResult],
) -> Result<(), StoreError> {
    let traced: Vec<(&StoredResult, &StoredPath)> = results
        .iter()
        .filter_map(|r| r.path.as_deref().map(|p| (r, p)))
        .collect();
    if traced.is_empty() {
        return Ok(());
    }
    let col = |f: &dyn Fn(&StoredResult, &StoredPath) -> Option<i64>| -> Vec<Option<i64>> {
        traced.iter().map(|(r, p)| f(r, p)).collect()
    };
    sqlx::query(
        "INSERT INTO path_results (agent_id, seq, started_at, request_id, vantage, check_name,
             protocol, source_ip, destination_ip, destination_port, via_proxy, end_reason, error,
             hop_count, path_mtu, mtu_from, black_hole_after_ttl, black_hole_largest_passed,
             black_hole_smallest_lost, port_answered_at, port_reached, port_rtt_us, port_error,
             duration_us)
         SELECT $1, * FROM UNNEST($2::bigint[], $3::timestamptz[], $4::bigint[], $5::text[],
             $6::text[], $7::text[], $8::inet[], $9::inet[], $10::bigint[], $11::bool[],
             $12::text[], $13::text[], $14::bigint[], $15::bigint[], $16::inet[], $17::bigint[],
             $18::bigint[], $19::bigint[], $20::bigint[], $21::bool[], $22::bigint[],
             $23::text[], $24::bigint[])
         ON CONFLICT DO NOTHING",
    )
    .bind(agent_id)
    .bind(col(&|r, _| Some(r.seq)))
    .bind(
        traced
            .iter()
            .map(|(r, _)| r.started_at)
            .collect::<Vec<DateTime<Utc>>>(),
    )
    .bind(col(&|r, _| r.request_id))
    .bind(
        traced
            .iter()
            .map(|(r, _)| r.vantage.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        traced
            .iter()
            .map(|(r, _)| r.check.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        traced
            .iter()
            .map(|(_, p)| p.protocol.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(traced.iter().map(|(_, p)| p.source_ip).collect::<Vec<_>>())
    .bind(
        traced
            .iter()
            .map(|(_, p)| p.destination_ip)
            .collect::<Vec<_>>(),
    )
    .bind(col(&|_, p| p.destination_port.map(i64::from)))
    .bind(traced.iter().map(|(_, p)| p.via_proxy).collect::<Vec<_>>())
    .bind(traced.iter().map(|(_, p)| p.end_reason).collect::<Vec<_>>())
    .bind(
        traced
            .iter()
            .map(|(_, p)| p.error.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(col(&|_, p| p.hop_count().map(i64::from)))
    .bind(col(&|_, p| p.path_mtu.map(i64::from)))
    .bind(traced.iter().map(|(_, p)| p.mtu_from).collect::<Vec<_>>())
    .bind(col(&|_, p| p.black_hole_after_ttl.map(i64::from)))
    .bind(col(&|_, p| p.black_hole_largest_passed.map(i64::from)))
    .bind(col(&|_, p| p.black_hole_smallest_lost.map(i64::from)))
    .bind(col(&|_, p| p.port_answered_at.map(i64::from)))
    .bind(
        traced
            .iter()
            .map(|(_, p)| p.port_reached)
            .collect::<Vec<_>>(),
    )
    .bind(col(&|_, p| p.port_rtt_us))
    .bind(
        traced
            .iter()
            .map(|(_, p)| p.port_error.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(col(&|_, p| Some(p.duration_us)))
    .execute(&mut **tx)
    .await?;

    // The probes: their place in their hop is their order among the
    // trace's probes of that TTL.
    let mut rows: Vec<(i64, DateTime<Utc>, i16, i16, &StoredPathProbe)> = Vec::new();
    for (r, p) in &traced {
        let mut place: Vec<(i16, i16)> = Vec::new();
        for probe in &p.probes {
            let n = match place.iter_mut().find(|(ttl, _)| *ttl == probe.ttl) {
                Some((_, n)) => {
                    *n += 1;
                    *n
                }
                None => {
                    place.push((probe.ttl, 0));
                    0
                }
            };
            rows.push((r.seq, r.started_at, probe.ttl, n, probe));
        }
    }
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO path_hops (agent_id, seq, started_at, ttl, probe, address, rtt_us, reply,
                                size)
         SELECT $1, * FROM UNNEST($2::bigint[], $3::timestamptz[], $4::smallint[],
                                  $5::smallint[], $6::inet[], $7::bigint[], $8::text[],
                                  $9::int[])
         ON CONFLICT DO NOTHING",
    )
    .bind(agent_id)
    .bind(rows.iter().map(|r| r.0).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.1).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.2).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.3).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.4.address).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.4.rtt_us).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.4.reply).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.4.size).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// One hop of a trace as people read it: the address most of its probes
/// heard from (`None`: none answered) and the best RTT, microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathHop {
    pub ttl: i16,
    pub address: Option<IpAddr>,
    pub best_rtt_us: Option<i64>,
}

/// A stored trace with the result it follows, as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct TracedPath {
    pub agent_id: String,
    pub vantage: String,
    pub seq: i64,
    pub started_at: DateTime<Utc>,
    /// The outcome of the probe the trace follows.
    pub outcome: String,
    pub http_status: Option<i16>,
    pub path: StoredPath,
}

impl TracedPath {
    /// Whether the probe it follows failed.
    pub fn failing(&self) -> bool {
        self.outcome != "ok"
    }

    /// Each TTL's answering address (the most frequent, then the first)
    /// and its best RTT.
    pub fn hops(&self) -> Vec<PathHop> {
        let last = self.path.probes.iter().map(|p| p.ttl).max().unwrap_or(0);
        (1..=last)
            .map(|ttl| {
                let of_hop: Vec<&StoredPathProbe> =
                    self.path.probes.iter().filter(|p| p.ttl == ttl).collect();
                let mut counts: Vec<(IpAddr, usize)> = Vec::new();
                for a in of_hop.iter().filter_map(|p| p.address) {
                    match counts.iter_mut().find(|(x, _)| *x == a) {
                        Some((_, n)) => *n += 1,
                        None => counts.push((a, 1)),
                    }
                }
                let top = counts.iter().map(|(_, n)| *n).max().unwrap_or(0);
                let address = counts.iter().find(|(_, n)| *n == top).map(|(a, _)| *a);
                let best_rtt_us = of_hop.iter().filter_map(|p| p.rtt_us).min();
                PathHop {
                    ttl,
                    address,
                    best_rtt_us,
                }
            })
            .collect()
    }
}

/// A `path_hops` row: the trace's key, then ttl, address, rtt_us, reply,
/// size.
type HopRow = (
    String,
    i64,
    DateTime<Utc>,
    i16,
    Option<IpAddr>,
    Option<i64>,
    Option<String>,
    i32,
);

impl Store {
    /// The traces that followed the probes of requests `ids`, with their
    /// probes, by agent and vantage.
    pub async fn request_paths(&self, ids: &[i64]) -> Result<Vec<TracedPath>, StoreError> {
        let rows: Vec<sqlx::postgres::PgRow> = sqlx::query(
            "SELECT p.agent_id, p.vantage, p.seq, p.started_at, r.outcome, r.http_status,
                    p.protocol, p.source_ip, p.destination_ip, p.destination_port, p.via_proxy,
                    p.end_reason, p.error, p.path_mtu, p.mtu_from, p.black_hole_after_ttl,
                    p.black_hole_largest_passed, p.black_hole_smallest_lost, p.port_answered_at,
                    p.port_reached, p.port_rtt_us, p.port_error, p.duration_us
             FROM path_results p
             JOIN probe_results r USING (agent_id, seq, started_at)
             WHERE p.request_id = ANY($1)
             ORDER BY p.agent_id, p.vantage, p.started_at, p.seq",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push(traced_path(&row)?);
        }
        if out.is_empty() {
            return Ok(out);
        }
        let hops: Vec<HopRow> = sqlx::query_as(
            "SELECT h.agent_id, h.seq, h.started_at, h.ttl, h.address, h.rtt_us, h.reply,
                        h.size
                 FROM path_hops h JOIN path_results p USING (agent_id, seq, started_at)
                 WHERE p.request_id = ANY($1)
                 ORDER BY h.agent_id, h.seq, h.started_at, h.ttl, h.probe",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        // Each trace's place by its key: the probes come in trace order,
        // but a scan per probe would be quadratic on a busy page.
        let place: std::collections::HashMap<(String, i64, DateTime<Utc>), usize> = out
            .iter()
            .enumerate()
            .map(|(i, t)| ((t.agent_id.clone(), t.seq, t.started_at), i))
            .collect();
        for (agent_id, seq, started_at, ttl, address, rtt_us, reply, size) in hops {
            if let Some(&i) = place.get(&(agent_id, seq, started_at)) {
                out[i].path.probes.push(StoredPathProbe {
                    ttl,
                    address,
                    rtt_us,
                    reply: reply.as_deref().and_then(hop_reply_text),
                    size,
                });
            }
        }
        Ok(out)
    }
}

fn traced_path(row: &sqlx::postgres::PgRow) -> Result<TracedPath, StoreError> {
    use sqlx::Row;
    let end: String = row.try_get("end_reason")?;
    let protocol: String = row.try_get("protocol")?;
    Ok(TracedPath {
        agent_id: row.try_get("agent_id")?,
        vantage: row.try_get("vantage")?,
        seq: row.try_get("seq")?,
        started_at: row.try_get("started_at")?,
        outcome: row.try_get("outcome")?,
        http_status: row.try_get("http_status")?,
        path: StoredPath {
            // The CHECK allows nothing else.
            protocol: PathProtocol::parse(&protocol).unwrap_or(PathProtocol::Udp),
            source_ip: row.try_get("source_ip")?,
            destination_ip: row.try_get("destination_ip")?,
            destination_port: row.try_get("destination_port")?,
            via_proxy: row.try_get("via_proxy")?,
            end_reason: vantage_proto::v1::PathEnd::from_text(&end)
                .map_or("error", vantage_proto::v1::PathEnd::text),
            error: row.try_get("error")?,
            path_mtu: row.try_get("path_mtu")?,
            mtu_from: row.try_get("mtu_from")?,
            black_hole_after_ttl: row.try_get("black_hole_after_ttl")?,
            black_hole_largest_passed: row.try_get("black_hole_largest_passed")?,
            black_hole_smallest_lost: row.try_get("black_hole_smallest_lost")?,
            port_answered_at: row.try_get("port_answered_at")?,
            port_reached: row.try_get("port_reached")?,
            port_rtt_us: row.try_get("port_rtt_us")?,
            port_error: row.try_get("port_error")?,
            duration_us: row.try_get("duration_us")?,
            probes: Vec::new(),
        },
    })
}

fn hop_reply_text(text: &str) -> Option<&'static str> {
    vantage_proto::v1::HopReply::from_text(text).map(vantage_proto::v1::HopReply::text)
}
