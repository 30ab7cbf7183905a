//! Detection and pages on Citus: the end-to-end test of one server (real
//! agents on two source ranges, a target failing for one, the detector,
//! webhooks for opening and resolution) with the results on two workers.

use super::citus_pool;

#[tokio::test]
async fn a_failing_prefix_opens_one_incident_pages_and_resolves_once() {
    crate::e2e::failing_prefix_opens_one_incident_and_resolves_once_on(
        citus_pool("e2e_failing_prefix").await,
    )
    .await;
}
