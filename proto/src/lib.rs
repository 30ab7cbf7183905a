//! The wire contract between agents and the collector (`vantage.v1`).
//!
//! The generated types, and how a client presents its credential; each
//! side converts the types to its own domain types at the gRPC boundary.

use std::sync::OnceLock;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Generated from `proto/vantage/v1/vantage.proto`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("vantage.v1");
}

impl v1::GapReason {
    /// The text form `Gap.reason` and `delivery_gaps.reason` carry: the
    /// enum's name without its prefix, in lower case (`spool_full`).
    pub fn text(self) -> &'static str {
        text_of(gap_reason_texts(), self)
    }

    /// The reason whose text form is `text`.
    pub fn from_text(text: &str) -> Option<Self> {
        from_text(gap_reason_texts(), text)
    }

    /// Every reason, in declaration order.
    pub fn all() -> impl Iterator<Item = Self> {
        gap_reason_texts().iter().map(|(r, _)| *r)
    }

    /// Whether an agent records it (the others are the collector's own
    /// refusals, which an agent never sends).
    pub fn recorded_by_agent(self) -> bool {
        !matches!(
            self,
            Self::TimestampSkew | Self::ImplausibleSeq | Self::Cardinality
        )
    }
}

impl v1::Outcome {
    /// The text form `probe_results.outcome` stores and every query, page
    /// and view shows: the enum's name without its prefix, in lower case
    /// (`cert_expiry`).
    pub fn text(self) -> &'static str {
        text_of(outcome_texts(), self)
    }

    /// The outcome whose text form is `text`.
    pub fn from_text(text: &str) -> Option<Self> {
        from_text(outcome_texts(), text)
    }

    /// Every outcome but `UNSPECIFIED`, in declaration order.
    pub fn all() -> impl Iterator<Item = Self> {
        outcome_texts().iter().map(|(o, _)| *o)
    }
}

impl v1::Capability {
    /// The text form the agents table lists (`probe_requests`).
    pub fn text(self) -> &'static str {
        static TEXTS: OnceLock<Vec<(v1::Capability, String)>> = OnceLock::new();
        text_of(
            TEXTS.get_or_init(|| {
                texts(
                    "CAPABILITY_",
                    v1::Capability::try_from,
                    v1::Capability::as_str_name,
                )
            }),
            self,
        )
    }
}

impl v1::PathEnd {
    /// The text form `path_results.end_reason` stores (`max_hops`).
    pub fn text(self) -> &'static str {
        text_of(path_end_texts(), self)
    }

    pub fn from_text(text: &str) -> Option<Self> {
        from_text(path_end_texts(), text)
    }

    /// Every end but `UNSPECIFIED`, in declaration order.
    pub fn all() -> impl Iterator<Item = Self> {
        path_end_texts().iter().map(|(e, _)| *e)
    }
}

impl v1::HopReply {
    /// The text form `path_hops.reply` stores (`time_exceeded`); no
    /// answer is NULL there.
    pub fn text(self) -> &'static str {
        text_of(hop_reply_texts(), self)
    }

    pub fn from_text(text: &str) -> Option<Self> {
        from_text(hop_reply_texts(), text)
    }

    /// Every reply but `UNSPECIFIED` (no answer), in declaration order.
    pub fn all() -> impl Iterator<Item = Self> {
        hop_reply_texts().iter().map(|(r, _)| *r)
    }
}

fn path_end_texts() -> &'static [(v1::PathEnd, String)] {
    static TEXTS: OnceLock<Vec<(v1::PathEnd, String)>> = OnceLock::new();
    TEXTS.get_or_init(|| texts("PATH_END_", v1::PathEnd::try_from, v1::PathEnd::as_str_name))
}

fn hop_reply_texts() -> &'static [(v1::HopReply, String)] {
    static TEXTS: OnceLock<Vec<(v1::HopReply, String)>> = OnceLock::new();
    TEXTS.get_or_init(|| {
        texts(
            "HOP_REPLY_",
            v1::HopReply::try_from,
            v1::HopReply::as_str_name,
        )
    })
}

fn gap_reason_texts() -> &'static [(v1::GapReason, String)] {
    static TEXTS: OnceLock<Vec<(v1::GapReason, String)>> = OnceLock::new();
    TEXTS.get_or_init(|| {
        texts(
            "GAP_REASON_",
            v1::GapReason::try_from,
            v1::GapReason::as_str_name,
        )
    })
}

fn outcome_texts() -> &'static [(v1::Outcome, String)] {
    static TEXTS: OnceLock<Vec<(v1::Outcome, String)>> = OnceLock::new();
    TEXTS.get_or_init(|| texts("OUTCOME_", v1::Outcome::try_from, v1::Outcome::as_str_name))
}

/// Every declared value of a generated enum (but its zero, UNSPECIFIED)
/// and its text form, derived once from the generated code, so the .proto
/// file is the only list.
fn texts<E: Copy>(
    prefix: &str,
    from_number: impl Fn(i32) -> Result<E, prost::UnknownEnumValue>,
    name: impl Fn(&E) -> &'static str,
) -> Vec<(E, String)> {
    (1..i32::from(u8::MAX))
        .filter_map(|n| from_number(n).ok())
        .map(|value| {
            let name = name(&value);
            let text = name.strip_prefix(prefix).unwrap_or(name).to_lowercase();
            (value, text)
        })
        .collect()
}

fn text_of<E: PartialEq>(texts: &'static [(E, String)], value: E) -> &'static str {
    texts
        .iter()
        .find(|(v, _)| *v == value)
        .map_or("unspecified", |(_, text)| text.as_str())
}

fn from_text<E: Copy>(texts: &[(E, String)], text: &str) -> Option<E> {
    texts.iter().find(|(_, t)| t == text).map(|(v, _)| *v)
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

#[cfg(test)]
mod tests {
    use super::v1::GapReason;

    #[test]
    fn gap_reasons_have_their_text_form_both_ways() {
        assert_eq!(GapReason::SpoolFull.text(), "spool_full");
        assert_eq!(GapReason::ImplausibleSeq.text(), "implausible_seq");
        assert_eq!(
            GapReason::from_text("agent_crash"),
            Some(GapReason::AgentCrash)
        );
        assert_eq!(GapReason::from_text("unspecified"), None);
        assert_eq!(GapReason::from_text("nonsense"), None);
        assert_eq!(GapReason::all().count(), 10);
        assert!(GapReason::all().all(|r| GapReason::from_text(r.text()) == Some(r)));
    }
}
