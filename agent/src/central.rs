//! Checks the collector assigns to this agent: the set as last received,
//! kept in a file next to the spool (so the agent goes on running it while
//! the collector is unreachable, across its own restarts), the pushed
//! changes applied to it, and its merge with the config's own checks.

use std::collections::{BTreeMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vantage_proto::v1 as pb;

use crate::config::CheckConfig;

/// One assigned check as received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assigned {
    /// The set's version in which this check last changed.
    pub version: u64,
    /// Its keys, as a `[[check]]` table (TOML).
    pub definition_toml: String,
}

/// The assigned set, as persisted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignedSet {
    /// The collector's set version it was computed from; 0: none yet.
    pub version: u64,
    pub checks: BTreeMap<String, Assigned>,
}

/// The assigned checks and where they are kept.
#[derive(Debug)]
pub struct CentralChecks {
    path: Option<PathBuf>,
    set: AssignedSet,
}

/// The file next to the spool `spool` that holds its agent's assigned
/// checks.
pub fn file_beside(spool: &Path) -> PathBuf {
    let mut name = spool.file_name().unwrap_or_default().to_os_string();
    name.push(".checks.json");
    spool.with_file_name(name)
}

impl CentralChecks {
    /// The set kept at `path` (none yet: empty). An unreadable or corrupt
    /// file is logged at ERROR and the agent starts without assigned
    /// checks until the collector sends them again. `None`: kept in
    /// memory only (an agent without a spool file).
    pub fn open(path: Option<PathBuf>) -> Self {
        let set = match &path {
            None => AssignedSet::default(),
            Some(path) => match std::fs::read(path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => AssignedSet::default(),
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "Cannot read the checks last assigned by the collector; running without them until it sends them again.");
                    AssignedSet::default()
                }
                Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                    tracing::error!(path = %path.display(), error = %e, "The file of checks last assigned by the collector is corrupt; running without them until it sends them again.");
                    AssignedSet::default()
                }),
            },
        };
        if !set.checks.is_empty() {
            tracing::info!(
                version = set.version,
                checks = set.checks.len(),
                "Running the checks the collector last assigned."
            );
        }
        Self { path, set }
    }

    pub fn set(&self) -> &AssignedSet {
        &self.set
    }

    /// Applies a pushed set (whole, or changes) and keeps it on disk.
    /// Whether the set changed.
    pub fn apply(&mut self, pushed: pb::CheckSet) -> bool {
        let mut set = if pushed.full {
            AssignedSet::default()
        } else {
            self.set.clone()
        };
        set.version = pushed.version;
        for name in pushed.removed {
            set.checks.remove(&name);
        }
        for check in pushed.checks {
            set.checks.insert(
                check.name,
                Assigned {
                    version: check.version,
                    definition_toml: check.definition_toml,
                },
            );
        }
        let changed = set.checks != self.set.checks;
        self.set = set;
        if let Err(e) = self.persist() {
            tracing::error!(
                error = %e,
                "Cannot keep the assigned checks on disk; after a restart without the collector they will not run."
            );
        }
        changed
    }

    /// Writes the set to a temporary file, syncs it and renames it over
    /// the old one: a crash leaves the old set or the new one.
    fn persist(&self) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut file = tempfile::NamedTempFile::new_in(dir)?;
        file.write_all(&serde_json::to_vec_pretty(&self.set)?)?;
        file.as_file().sync_all()?;
        file.persist(path).map_err(|e| e.error)?;
        Ok(())
    }

    /// The checks to run: the config's own, then the assigned ones that
    /// are valid here; and the assigned ones left out, with why. An
    /// assigned check whose name a local check has, or whose definition
    /// this agent cannot run (a vantage it lacks), is left out and logged
    /// at ERROR.
    pub fn merged(
        &self,
        local: &[Arc<CheckConfig>],
        vantage_names: &HashSet<&str>,
    ) -> (Vec<Arc<CheckConfig>>, BTreeMap<String, String>) {
        let mut out: Vec<Arc<CheckConfig>> = local.to_vec();
        let mut refused = BTreeMap::new();
        let local_names: HashSet<&str> = local.iter().map(|c| c.name.get_ref().as_str()).collect();
        for (name, assigned) in &self.set.checks {
            if local_names.contains(name.as_str()) {
                tracing::error!(
                    check = %name,
                    "The collector assigns a check whose name a [[check]] of this agent's config has; the local one runs. Rename one of them."
                );
                refused.insert(
                    name.clone(),
                    "a [[check]] of the agent's own config has this name; the local one runs"
                        .to_owned(),
                );
                continue;
            }
            let what = format!(
                "check {name:?} from the collector (version {})",
                assigned.version
            );
            match CheckConfig::from_table_text(&what, &assigned.definition_toml, vantage_names) {
                Ok(mut check) if check.name.get_ref().as_str() == name => {
                    check.origin.central_version = Some(assigned.version);
                    out.push(Arc::new(check));
                }
                Ok(check) => {
                    tracing::error!(
                        check = %name,
                        named = %check.name.get_ref(),
                        "An assigned check's definition names another check; it is left out."
                    );
                    refused.insert(
                        name.clone(),
                        format!(
                            "its definition names another check, {:?}",
                            check.name.get_ref().as_str()
                        ),
                    );
                }
                Err(error) => {
                    tracing::error!(
                        check = %name,
                        %error,
                        "Cannot run a check the collector assigned; it is left out."
                    );
                    refused.insert(name.clone(), error);
                }
            }
        }
        (out, refused)
    }

    /// What this agent made of the set it holds, for the collector: each
    /// assigned check running, or refused with why (`refused`: those the
    /// merge and the scheduler left out).
    pub fn report(&self, refused: &BTreeMap<String, String>) -> pb::ChecksApplied {
        pb::ChecksApplied {
            set_version: self.set.version,
            checks: self
                .set
                .checks
                .iter()
                .map(|(name, assigned)| pb::CheckState {
                    name: name.clone(),
                    version: assigned.version,
                    refused: refused.get(name).cloned().unwrap_or_default(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, version: u64, url: &str) -> pb::AssignedCheck {
        pb::AssignedCheck {
            name: name.into(),
            version,
            definition_toml: format!("name = {name:?}\nurl = {url:?}\ninterval = \"30s\"\n"),
        }
    }

    #[test]
    fn a_full_set_replaces_and_changes_add_and_remove_and_both_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = file_beside(&dir.path().join("spool.redb"));
        assert_eq!(path, dir.path().join("spool.redb.checks.json"));
        let mut central = CentralChecks::open(Some(path.clone()));
        assert!(central.set().checks.is_empty());
        assert!(central.apply(pb::CheckSet {
            version: 3,
            full: true,
            checks: vec![check("a", 1, "http://a/"), check("b", 3, "http://b/")],
            removed: vec![],
        }));
        assert!(central.apply(pb::CheckSet {
            version: 4,
            full: false,
            checks: vec![check("c", 4, "http://c/")],
            removed: vec!["a".into()],
        }));
        let reopened = CentralChecks::open(Some(path.clone()));
        assert_eq!(reopened.set().version, 4);
        let names: Vec<&str> = reopened.set().checks.keys().map(String::as_str).collect();
        assert_eq!(names, ["b", "c"]);
        // The same again changes nothing.
        let mut again = reopened;
        assert!(!again.apply(pb::CheckSet {
            version: 5,
            full: true,
            checks: vec![check("b", 3, "http://b/"), check("c", 4, "http://c/")],
            removed: vec![],
        }));
    }

    #[test]
    fn a_corrupt_file_starts_empty_instead_of_failing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.checks.json");
        std::fs::write(&path, b"{not json").unwrap();
        assert!(CentralChecks::open(Some(path)).set().checks.is_empty());
    }

    #[test]
    fn merged_keeps_local_checks_and_leaves_out_collisions_and_invalid_ones() {
        let mut central = CentralChecks::open(None);
        let mut bad = check("bad", 2, "http://x/");
        bad.definition_toml.push_str("vantages = [\"mars\"]\n");
        central.apply(pb::CheckSet {
            version: 2,
            full: true,
            checks: vec![
                check("mine", 1, "http://central/"),
                check("theirs", 2, "http://t/"),
                bad,
            ],
            removed: vec![],
        });
        let local = CheckConfig::from_table_text(
            "local",
            "name = \"mine\"\nurl = \"http://local/\"\n",
            &HashSet::from(["direct"]),
        )
        .unwrap();
        let (merged, refused) = central.merged(&[Arc::new(local)], &HashSet::from(["direct"]));
        let got: Vec<(&str, &str, Option<u64>)> = merged
            .iter()
            .map(|c| {
                (
                    c.name.get_ref().as_str(),
                    c.url.url().as_str(),
                    c.origin.central_version,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("mine", "http://local/", None),
                ("theirs", "http://t/", Some(2))
            ]
        );
        let report = central.report(&refused);
        let states: Vec<(&str, u64, bool)> = report
            .checks
            .iter()
            .map(|c| (c.name.as_str(), c.version, c.refused.is_empty()))
            .collect();
        assert_eq!(report.set_version, 2);
        assert_eq!(
            states,
            [("bad", 2, false), ("mine", 1, false), ("theirs", 2, true)]
        );
        assert!(
            report.checks[0].refused.contains("mars"),
            "{:?}",
            report.checks[0]
        );
    }
}
