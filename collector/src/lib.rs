//! Vantage collector: ingests probe results over gRPC into PostgreSQL,
//! finds the dimension a 502 follows (region, egress prefix, network,
//! resolver, address, edge, ...) or that it is global, and pages on-call
//! (webhook, Slack, PagerDuty, Alertmanager) when an incident opens,
//! changes its explanation and resolves.
//!
//! - [`vocabulary`]: the text vocabularies the database's CHECKs hold, as enums.
//! - [`cli`]: the command line and what each command does.
//! - [`config`]: the TOML configuration.
//! - [`app`]: wiring; `Application::build` then `run(shutdown)`.
//! - [`auth`]: enrolment tokens and client certificates: who an agent is.
//! - [`checks`]: checks defined centrally (`check apply`): file and diff.
//! - [`control`]: what each connected agent is sent: its checks, probe
//!   requests; follows the database's control notices.
//! - [`enrol`]: `agent add`: a new token, its hash stored.
//! - [`ingest`]: the gRPC service (limits, ordered commits, ack after commit).
//! - [`metrics`]: the Prometheus recorder behind `GET /metrics`.
//! - [`wire`]: protobuf → domain conversion and validation, in one place.
//! - [`store`]: every SQL statement: migrations, partitions, inserts, counts.
//! - [`detect`]: the pure detection core: window cells in, a plan out
//!   (dimension table, decision, lifecycle, explanation and evidence).
//! - [`detector`]: the detector's actor: reads the window, runs the core,
//!   has the store apply the plan; its `[detector]` configuration.
//! - [`alert`]: sinks and their formats; delivery from the outbox, once
//!   per event and sink, retried until delivered or visibly expired.
//! - [`probe_now`]: `probe URL`: one-off probes from chosen agents, side by side.
//! - [`preflight`]: start-up's checks of a config, before any connection.
//! - [`reload`]: SIGHUP re-reads collector.toml; what changes live, what waits.
//! - [`silence`]: `silence add|list|expire`: pages held back, visibly.
//! - [`http`]: health and metrics; the incident pages merged in.
//! - [`ui`]: the read-only incident pages (HTML, inline SVG) and who may
//!   read them.
//! - [`listen`]: connections within bounds (caps, descriptors, timeouts).
//! - [`pg_tls`]: the database connection's TLS as libpq's `sslmode` means it.

#[macro_use]
mod vocabulary;

pub mod alert;
pub mod app;
pub mod auth;
pub mod checks;
pub mod cli;
pub mod config;
pub mod control;
pub mod detect;
pub mod detector;
pub mod enrol;
pub mod http;
pub mod ingest;
pub mod listen;
pub mod metrics;
pub mod path_evidence;
pub mod pg_tls;
pub mod pools;
pub mod preflight;
pub mod probe_now;
pub mod reload;
pub mod silence;
pub mod store;
pub mod table;
pub mod ui;
pub mod wire;

pub use app::Application;
pub use config::CollectorConfig;

/// The collector binary's global allocator; the benchmarks that measure
/// the collector in-process declare the same.
///
/// Ingest decodes and re-encodes about a megabyte per batch in many small
/// allocations: under glibc's malloc, `malloc`, `free`, their consolidation
/// and `memmove` took 65% of the process's samples (`perf`, ingest bench,
/// 2026-12-02).
pub type Allocator = mimalloc::MiMalloc;
