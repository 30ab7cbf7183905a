//! What operators do, on Citus: `check apply` (the file is the whole set,
//! bad input changes nothing), `probe` from the chosen vantages, and the
//! incident pages (rendered in Chromium, their numbers compared with the
//! database's).

use super::citus_pool;

#[tokio::test]
async fn check_apply_takes_the_file_as_the_whole_set() {
    crate::checks::the_file_is_the_whole_set_and_bad_input_changes_nothing_on(
        citus_pool("check_apply").await,
    )
    .await;
}

#[tokio::test]
async fn probe_asks_the_chosen_vantages() {
    crate::probe_now::probe_asks_the_chosen_vantages_and_prints_them_side_by_side_on(
        citus_pool("probe_now").await,
    )
    .await;
}

#[tokio::test]
async fn incident_pages_show_the_databases_numbers() {
    crate::ui::incident_pages_load_clean_in_chromium_and_show_the_databases_numbers_on(
        citus_pool("incident_pages").await,
    )
    .await;
}
