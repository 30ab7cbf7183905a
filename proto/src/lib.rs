//! The wire contract between agents and the collector (`vantage.v1`).
//!
//! Only generated types live here; each side converts them to its own
//! domain types at the gRPC boundary.

/// Generated from `proto/vantage/v1/vantage.proto`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("vantage.v1");
}
