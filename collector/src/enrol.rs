//! Enrolment: makes an agent's token and stores its hash.

use crate::auth;
use crate::store::{Store, StoreError};

/// Why an agent could not be enrolled.
#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    #[error(
        "invalid agent id {0:?}: expected 1-128 characters of letters, digits, '.', '_' or '-'"
    )]
    AgentId(String),
    #[error("invalid region {0:?}: expected 1-128 characters, no control characters")]
    Region(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Enrols `agent_id` in `region` and returns its new token (replacing any
/// earlier one, and lifting a revocation).
pub async fn enrol(store: &Store, agent_id: &str, region: &str) -> Result<String, EnrolError> {
    let id_ok = (1..=128).contains(&agent_id.len())
        && agent_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !id_ok {
        return Err(EnrolError::AgentId(agent_id.to_owned()));
    }
    if region.trim().is_empty() || region.len() > 128 || region.chars().any(char::is_control) {
        return Err(EnrolError::Region(region.to_owned()));
    }
    let token = auth::new_token();
    store
        .enrol_agent(agent_id, region, &auth::token_sha256(&token))
        .await?;
    Ok(token)
}
