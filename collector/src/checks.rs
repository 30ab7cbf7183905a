//! Checks defined centrally: the file `check apply` reads (the agent's
//! `[[check]]` keys plus a `select` table), its validation with errors that
//! name file, line and key, and the difference from the stored set.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};
use vantage_check::CheckConfig;
use vantage_service::config::{ConfigError, Problem, parse_toml, read_config};

/// Which agents run a check: each non-empty list must match (an agent in
/// `agents`, of a region in `regions`, with every label in `labels`);
/// empty: every agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub regions: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// One check of the file, validated.
#[derive(Debug, Clone)]
pub struct CentralCheck {
    pub name: String,
    /// The `[[check]]` keys as written (without `select`), for the agents.
    pub definition: serde_json::Value,
    pub selector: Selector,
    pub check: CheckConfig,
}

/// What the agents, the regions and the labels of the fleet are: a
/// selector naming anything else selects nothing, which is a mistake.
#[derive(Debug, Clone, Default)]
pub struct Fleet {
    pub agents: HashSet<String>,
    pub regions: HashSet<String>,
    pub label_keys: HashSet<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckFile {
    #[serde(default, rename = "check")]
    checks: Vec<toml::Table>,
}

/// Reads and validates the check file at `path` against `fleet`.
pub fn read_file(path: &Path, fleet: &Fleet) -> Result<Vec<CentralCheck>, ConfigError> {
    let text = read_config(path)?;
    let file: CheckFile = parse_toml(path, &text)?;
    let located = |p: Problem| p.into_error(path, &text);
    let mut names = HashSet::new();
    let mut out = Vec::with_capacity(file.checks.len());
    for (i, mut table) in file.checks.into_iter().enumerate() {
        let prefix = format!("check[{i}]");
        let selector = match table.remove("select") {
            None => Selector::default(),
            Some(value) => serde_path_to_error::deserialize::<_, Selector>(value).map_err(|e| {
                located(Problem::new(
                    format!("{prefix}.select.{}", e.path()).trim_end_matches(".."),
                    e.into_inner().message().to_owned(),
                ))
            })?,
        };
        let definition = serde_json::to_value(&table).map_err(|e| {
            located(Problem::new(
                prefix.clone(),
                format!("cannot be stored: {e}"),
            ))
        })?;
        // Through TOML text again: the check's name is a spanned value,
        // which only the text deserializer provides (errors are located by
        // key in the file, not by the span).
        let snippet = toml::to_string(&table)
            .map_err(|e| located(Problem::new(prefix.clone(), format!("cannot be read: {e}"))))?;
        let parsed = toml::Deserializer::parse(&snippet)
            .map_err(|e| located(Problem::new(prefix.clone(), e.message().to_owned())))?;
        let check: CheckConfig = serde_path_to_error::deserialize(parsed).map_err(|e| {
            let key = vantage_service::config::written_key(format!("{prefix}.{}", e.path()));
            located(Problem::new(
                key.trim_end_matches(".."),
                e.into_inner().message().to_owned(),
            ))
        })?;
        let name = check.name.get_ref().as_str().to_owned();
        if !names.insert(name.clone()) {
            return Err(located(Problem::new(
                format!("{prefix}.name"),
                format!("duplicate check name {name:?}: expected unique names"),
            )));
        }
        check.validate(&prefix, None).map_err(located)?;
        check_selector(&prefix, &selector, fleet).map_err(located)?;
        out.push(CentralCheck {
            name,
            definition,
            selector,
            check,
        });
    }
    Ok(out)
}

fn check_selector(prefix: &str, selector: &Selector, fleet: &Fleet) -> Result<(), Problem> {
    let unknown = |field: &str, what: &str, value: &str| {
        Problem::new(
            format!("{prefix}.select.{field}"),
            format!("no enrolled agent has {what} {value:?}: expected one the fleet has"),
        )
    };
    if let Some(a) = selector.agents.iter().find(|a| !fleet.agents.contains(*a)) {
        return Err(unknown("agents", "the id", a));
    }
    if let Some(r) = selector
        .regions
        .iter()
        .find(|r| !fleet.regions.contains(*r))
    {
        return Err(unknown("regions", "the region", r));
    }
    if let Some(k) = selector
        .labels
        .keys()
        .find(|k| !fleet.label_keys.contains(*k))
    {
        return Err(unknown("labels", "the label", k));
    }
    Ok(())
}

/// How the stored set changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Added(String),
    /// The check and the keys (or `select`) that differ.
    Changed(String, Vec<String>),
    Removed(String),
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Added(name) => write!(f, "+ {name}"),
            Self::Changed(name, keys) => write!(f, "~ {name} ({})", keys.join(", ")),
            Self::Removed(name) => write!(f, "- {name}"),
        }
    }
}

/// The changes that turn `stored` (name → definition, selector) into `new`.
pub fn diff(
    stored: &BTreeMap<String, (serde_json::Value, Selector)>,
    new: &[CentralCheck],
) -> Vec<Change> {
    let mut changes = Vec::new();
    for check in new {
        match stored.get(&check.name) {
            None => changes.push(Change::Added(check.name.clone())),
            Some((definition, selector)) => {
                let empty = serde_json::Map::new();
                let old = definition.as_object().unwrap_or(&empty);
                let now = check.definition.as_object().unwrap_or(&empty);
                let mut keys: Vec<String> = old
                    .keys()
                    .chain(now.keys())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .filter(|k| old.get(*k) != now.get(*k))
                    .cloned()
                    .collect();
                if *selector != check.selector {
                    keys.push("select".into());
                }
                if !keys.is_empty() {
                    changes.push(Change::Changed(check.name.clone(), keys));
                }
            }
        }
    }
    let kept: HashSet<&str> = new.iter().map(|c| c.name.as_str()).collect();
    changes.extend(
        stored
            .keys()
            .filter(|name| !kept.contains(name.as_str()))
            .map(|name| Change::Removed(name.clone())),
    );
    changes
}
