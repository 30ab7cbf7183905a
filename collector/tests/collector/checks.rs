//! Checks defined centrally, with the real binary: `check apply` makes a
//! file the whole set and prints what changed; `list`, `show`, `delete`;
//! bad input names file, line and key, and changes nothing.

use std::path::Path;
use std::process::Command;

use sqlx::PgPool;

use crate::database_url;

/// Runs `vantage-collector check ARGS`; (exit code, stdout, stderr).
fn check(pool: &PgPool, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vantage-collector"))
        .arg("check")
        .args(args)
        .env("DATABASE_URL", database_url(pool))
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn apply(pool: &PgPool, dir: &Path, text: &str) -> (i32, String, String) {
    let file = dir.join("checks.toml");
    std::fs::write(&file, text).unwrap();
    check(pool, &["apply", file.to_str().unwrap()])
}

const SET: &str = r#"[[check]]
name = "shop"
url = "https://shop.example.com/health"
interval = "30s"
timeout = "5s"

[[check]]
name = "api"
url = "https://api.example.com/"
[check.select]
regions = ["eu-west"]
"#;

#[sqlx::test(migrations = false)]
async fn the_file_is_the_whole_set_and_bad_input_changes_nothing(pool: PgPool) {
    the_file_is_the_whole_set_and_bad_input_changes_nothing_on(pool).await;
}

/// [`the_file_is_the_whole_set_and_bad_input_changes_nothing`] on the database of `pool` (also run on Citus).
pub async fn the_file_is_the_whole_set_and_bad_input_changes_nothing_on(pool: PgPool) {
    let store = vantage_collector::store::Store::new(pool.clone());
    store.migrate().await.unwrap();
    vantage_collector::enrol::enrol(&store, "fra-1", "eu-west")
        .await
        .unwrap();
    vantage_collector::enrol::enrol(&store, "iad-1", "us-east")
        .await
        .unwrap();
    sqlx::query("UPDATE agents SET labels = '{\"provider\": \"lab\"}' WHERE agent_id = 'fra-1'")
        .execute(&pool)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();

    let (code, out, err) = apply(&pool, dir.path(), SET);
    assert_eq!(code, 0, "{err}");
    // No agent is connected: nothing to wait for.
    assert_eq!(
        out,
        "+ shop\n+ api\nApplied: check set version 1, 2 checks.\n\
         No agent that takes central checks was seen in the last two minutes.\n"
    );
    let (_, out, _) = apply(&pool, dir.path(), SET);
    assert_eq!(out, "No changes; check set version 1.\n");

    // Changed, removed and added in one apply; a dry run first.
    let next = SET
        .replace("https://shop.example.com/health", "https://shop.example.com/ready")
        .replace(
            "[[check]]\nname = \"api\"\nurl = \"https://api.example.com/\"\n[check.select]\nregions = [\"eu-west\"]\n",
            "[[check]]\nname = \"home\"\nurl = \"https://example.com/\"\n[check.select]\nlabels = { provider = \"lab\" }\nagents = [\"fra-1\"]\n",
        );
    let file = dir.path().join("next.toml");
    std::fs::write(&file, &next).unwrap();
    let (_, out, _) = check(&pool, &["apply", "--dry-run", file.to_str().unwrap()]);
    assert_eq!(
        out,
        "~ shop (url)\n+ home\n- api\nDry run: nothing applied (check set version 1).\n"
    );
    let (code, out, err) = check(&pool, &["apply", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.ends_with(
            "Applied: check set version 2, 2 checks.\n\
             No agent that takes central checks was seen in the last two minutes.\n"
        ),
        "{out}"
    );

    let (_, list, _) = check(&pool, &["list"]);
    assert!(list.starts_with("check set version 2\n"), "{list}");
    assert!(list.contains("https://shop.example.com/ready"), "{list}");
    assert!(list.contains("all agents"), "{list}");
    // A check without `interval` shows the interval agents will use.
    assert!(
        list.lines()
            .any(|l| l.starts_with("home ") && l.contains(" 30s ")),
        "{list}"
    );
    assert!(list.contains("\"agents\":[\"fra-1\"]"), "{list}");
    assert!(!list.contains("api.example.com"), "{list}");
    let (_, shown, _) = check(&pool, &["show", "home"]);
    let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["version"], 2);
    assert_eq!(shown["definition"]["url"], "https://example.com/");
    assert_eq!(shown["select"]["labels"]["provider"], "lab");

    // Each is refused at its line, naming the key; nothing changes.
    for (bad, at, key) in [
        (format!("{next}retries = 3\n"), ":13:", "check[1]"),
        (
            format!("{next}[[check]]\nname = \"shop\"\nurl = \"https://x.test/\"\n"),
            ":14:",
            "check[2].name",
        ),
        (
            next.replace("provider = \"lab\"", "rack = \"b2\""),
            ":11:",
            "check[1].select.labels",
        ),
        (
            next.replace("agents = [\"fra-1\"]", "agents = [\"nobody\"]"),
            ":12:",
            "check[1].select.agents",
        ),
        (
            next.replace("timeout = \"5s\"", "timeout = \"50s\""),
            ":5:",
            "check[0].timeout",
        ),
        (
            next.replace(
                "url = \"https://example.com/\"",
                "url = \"ftp://example.com/\"",
            ),
            ":9:",
            "check[1].url",
        ),
    ] {
        let (code, out, err) = apply(&pool, dir.path(), &bad);
        assert_eq!(code, 1, "{bad}: {out}");
        assert!(err.contains(&format!("checks.toml{at}")), "{bad}: {err}");
        assert!(err.contains(key), "{bad}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let (_, after, _) = check(&pool, &["list"]);
    assert_eq!(after, list, "a refused file changes nothing");

    let (_, out, _) = check(&pool, &["delete", "home"]);
    assert_eq!(out, "- home\nDeleted: check set version 3.\n");
    let (code, _, err) = check(&pool, &["delete", "home"]);
    assert_eq!(code, 1);
    assert!(err.contains("no check named \"home\""), "{err}");
}
