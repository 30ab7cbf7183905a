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
