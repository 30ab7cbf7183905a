//! How a result and a gap are stored: a result's bytes behind a CRC-32
//! and its start time; a gap as its encoded protobuf.

use super::*;

/// A loss, as the spool records it before it is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// 0: unknown; the reporter replaces it with the collector's last
    /// committed sequence number + 1 (a spool lost whole).
    pub first_seq: u64,
    pub last_seq: u64,
    pub count: Option<u64>,
    pub reason: &'static str,
    pub detected_at_us: i64,
}

impl Gap {
    pub(super) fn new(
        first_seq: u64,
        last_seq: u64,
        count: Option<u64>,
        reason: &'static str,
    ) -> Self {
        Self {
            first_seq,
            last_seq,
            count,
            reason,
            detected_at_us: now_us(),
        }
    }

    pub fn to_proto(&self) -> pb::Gap {
        pb::Gap {
            first_seq: self.first_seq,
            last_seq: self.last_seq,
            count: self.count,
            reason: self.reason.to_owned(),
            detected_at: Some(prost_types::Timestamp {
                seconds: self.detected_at_us.div_euclid(1_000_000),
                nanos: i32::try_from(self.detected_at_us.rem_euclid(1_000_000) * 1000).unwrap_or(0),
            }),
        }
    }

    pub(super) fn encode(&self) -> Vec<u8> {
        self.to_proto().encode_to_vec()
    }

    pub(super) fn decode(bytes: &[u8]) -> Option<Self> {
        let g = pb::Gap::decode(bytes).ok()?;
        let reason = pb::GapReason::from_text(&g.reason)?.text();
        let at = g.detected_at.unwrap_or_default();
        Some(Self {
            first_seq: g.first_seq,
            last_seq: g.last_seq,
            count: g.count,
            reason,
            detected_at_us: at.seconds * 1_000_000 + i64::from(at.nanos / 1000),
        })
    }
}

/// One result as stored: its sequence number and its checked bytes.
#[derive(Debug, Clone)]
pub struct Record {
    pub seq: u64,
    pub(super) bytes: Vec<u8>,
}

impl Record {
    /// Encodes a result for the spool.
    pub fn new(result: &pb::ProbeResult) -> Self {
        let started_us = result
            .started_at
            .map_or(0, |t| t.seconds * 1_000_000 + i64::from(t.nanos / 1000));
        let mut bytes = Vec::with_capacity(HEADER + result.encoded_len());
        bytes.extend_from_slice(&[0; 4]);
        bytes.extend_from_slice(&started_us.to_le_bytes());
        result.encode(&mut bytes).unwrap_or_default();
        let crc = crc32fast::hash(&bytes[4..]);
        bytes[..4].copy_from_slice(&crc.to_le_bytes());
        Self {
            seq: result.seq,
            bytes,
        }
    }

    pub(super) fn started_us(bytes: &[u8]) -> i64 {
        bytes
            .get(4..HEADER)
            .and_then(|b| b.try_into().ok())
            .map_or(0, i64::from_le_bytes)
    }

    /// The result, if the bytes are intact.
    pub(super) fn decode(bytes: &[u8]) -> Option<pb::ProbeResult> {
        let crc = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?);
        if bytes.len() < HEADER || crc32fast::hash(&bytes[4..]) != crc {
            return None;
        }
        pb::ProbeResult::decode(&bytes[HEADER..]).ok()
    }
}
