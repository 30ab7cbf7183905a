//! The one-command demonstration (`vantage-demo`), and the
//! [`Scenario`] it is built from, which the end-to-end tests reuse.
//! Everything real, everything on 127.0.0.0/8.
//!
//! - [`scenario`]: the running parts and how they are started.
//! - [`database`]: the demo's own PostgreSQL (or a throwaway database).
//! - [`story`]: what the demo does and prints.
//! - [`stop`]: the signals that end it early, each cleaned up after.

pub mod database;
pub mod scenario;
mod stop;
pub mod story;

pub use scenario::{
    AgentSpec, DEMO_ASN_TABLE, DEMO_SECRET, Scenario, ScenarioTiming, TARGET_HOST, demo_agents,
};
pub use story::run;
