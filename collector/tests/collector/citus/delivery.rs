//! The delivery guarantees on Citus: the same real-process fault tests as
//! on one server (`faults`), with the results distributed over two
//! workers: 0 lost outside recorded gaps, 0 duplicated.

use super::citus_pool;

#[tokio::test]
async fn collector_killed_mid_stream_loses_and_duplicates_nothing() {
    crate::faults::collector_killed_mid_stream_on(citus_pool("faults_collector_kill").await).await;
}

#[tokio::test]
async fn agent_killed_at_random_moments_loses_and_duplicates_nothing() {
    crate::faults::agent_killed_at_random_moments_on(citus_pool("faults_agent_kill").await).await;
}
