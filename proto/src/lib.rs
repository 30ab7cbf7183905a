//! The wire contract between agents and the collector (`vantage.v1`).
//!
//! The generated types, and how a client presents its credential; each
//! side converts the types to its own domain types at the gRPC boundary.

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Generated from `proto/vantage/v1/vantage.proto`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("vantage.v1");
}

/// The metadata key carrying an agent's token.
pub const AUTHORIZATION: &str = "authorization";

/// Metadata key of the status a refused stream ends with, naming the batch
/// at fault, so the agent quarantines exactly that one.
pub const BATCH_ID_METADATA: &str = "vantage-batch-id";

/// How far above the clock (in Unix microseconds) an agent's sequence
/// numbers may run. Agents number from the clock (one number per result,
/// restarting at the clock's microsecond), so a real agent stays within
/// seconds of it; 10^12 (11.6 days' worth) leaves room for any clock error
/// and still ends a million times below the top of the range. A seq
/// beyond it is refused by the collector, and an agent told of one at
/// hello does not continue above it: one forged result cannot use up an
/// agent's sequence space.
pub const MAX_SEQ_LEAD: u64 = 1_000_000_000_000;

/// The highest plausible sequence number at Unix time `now_us` (in
/// microseconds), allowing `clock_ahead_us` of clock difference.
pub fn plausible_seq_ceiling(now_us: u64, clock_ahead_us: u64) -> u64 {
    now_us
        .saturating_add(clock_ahead_us)
        .saturating_add(MAX_SEQ_LEAD)
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Debug, Clone)]
pub struct BearerToken(MetadataValue<Ascii>);

/// The token cannot travel in gRPC metadata.
#[derive(Debug, thiserror::Error)]
#[error("the token is not printable ASCII")]
pub struct InvalidToken;

impl BearerToken {
    pub fn new(token: &str) -> Result<Self, InvalidToken> {
        format!("Bearer {token}")
            .parse()
            .map(Self)
            .map_err(|_| InvalidToken)
    }
}

impl Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert(AUTHORIZATION, self.0.clone());
        Ok(request)
    }
}

/// An ingest client on `channel` presenting `token` on every call.
pub type AuthenticatedClient =
    v1::ingest_client::IngestClient<InterceptedService<Channel, BearerToken>>;

/// An ingest client on `channel` that presents `token`.
pub fn authenticated_client(
    channel: Channel,
    token: &str,
) -> Result<AuthenticatedClient, InvalidToken> {
    Ok(v1::ingest_client::IngestClient::with_interceptor(
        channel,
        BearerToken::new(token)?,
    ))
}
