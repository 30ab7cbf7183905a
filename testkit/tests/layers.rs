//! Layers run one way: no two modules of a crate import each other, directly
//! or round a circle. Each source file of `agent/`, `collector/`, `check/`,
//! `service/` and `proto/` is read with `syn`; every path it names that
//! starts at `crate::`, `super::`, `self::` or a child module is resolved to
//! the module file defining it. A reference between two files counts as an
//! arrow between the modules that hold them directly under the modules'
//! common parent (`detect/plan/own.rs` naming `detect/confirm.rs` is
//! `detect::plan → detect::confirm`); a child naming its parent is not one
//! (the parent holds what its children share). Code under `#[cfg(test)]`
//! is left out: tests may reach anywhere. A circle among the arrows under
//! one parent fails the test, with the references that make it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use petgraph::algo::tarjan_scc;
use petgraph::graphmap::DiGraphMap;
use syn::visit::Visit;

/// A module's path below the crate root: `["detect", "plan"]`.
type ModPath = Vec<String>;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit lives in the workspace")
        .to_path_buf()
}

/// The crate's module files: `src/lib.rs` is `[]`, `src/a/mod.rs` and
/// `src/a.rs` are `["a"]`.
fn module_files(src: &Path) -> BTreeMap<ModPath, PathBuf> {
    let mut modules = BTreeMap::new();
    let mut todo = vec![src.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in fs::read_dir(&dir).expect("read a source directory") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                todo.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).expect("below src");
            let mut parts: ModPath = rel
                .iter()
                .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
                .collect();
            let last = parts.pop().expect("a file name");
            if !(last == "mod" || (parts.is_empty() && (last == "lib" || last == "main"))) {
                parts.push(last);
            }
            if parts.is_empty() && modules.contains_key(&parts) {
                continue; // lib.rs and main.rs: the library is the crate.
            }
            modules.insert(parts, path);
        }
    }
    modules
}

/// Every path a file names, resolved against the module it sits in.
struct References<'a> {
    modules: &'a BTreeMap<ModPath, PathBuf>,
    /// The module being read (the file's, then any inline `mod` in it).
    current: ModPath,
    found: BTreeSet<ModPath>,
    /// File modules declared `#[cfg(test)] mod name;`.
    test_files: BTreeSet<ModPath>,
}

impl References<'_> {
    fn resolve(&mut self, segments: &[String]) {
        let Some(first) = segments.first() else {
            return;
        };
        let mut path: ModPath = match first.as_str() {
            "crate" => Vec::new(),
            "self" => self.current.clone(),
            "super" => {
                let mut p = self.current.clone();
                p.pop();
                p
            }
            _ => {
                let mut child = self.current.clone();
                child.push(first.clone());
                if !self.modules.contains_key(&child) {
                    return; // another crate, a local name, a prelude item
                }
                self.current.clone()
            }
        };
        let rest = match first.as_str() {
            "crate" | "self" => &segments[1..],
            "super" => {
                let mut rest = &segments[1..];
                while rest.first().is_some_and(|s| s == "super") {
                    path.pop();
                    rest = &rest[1..];
                }
                rest
            }
            _ => segments,
        };
        for segment in rest {
            path.push(segment.clone());
            if !self.modules.contains_key(&path) {
                path.pop();
                break;
            }
        }
        self.found.insert(path);
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                prefix.push(n.ident.to_string());
                self.resolve(&prefix.clone());
                prefix.pop();
            }
            syn::UseTree::Rename(r) => {
                prefix.push(r.ident.to_string());
                self.resolve(&prefix.clone());
                prefix.pop();
            }
            syn::UseTree::Glob(_) => self.resolve(&prefix.clone()),
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix, t);
                }
            }
        }
    }
}

fn is_test_only(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.parse_args::<syn::Meta>().is_ok_and(|m| match m {
                syn::Meta::Path(p) => p.is_ident("test"),
                _ => false,
            })
    })
}

impl<'ast> Visit<'ast> for References<'_> {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs: &[syn::Attribute] = match item {
            syn::Item::Mod(m) => &m.attrs,
            syn::Item::Fn(f) => &f.attrs,
            syn::Item::Use(u) => &u.attrs,
            syn::Item::Impl(i) => &i.attrs,
            syn::Item::Struct(s) => &s.attrs,
            syn::Item::Enum(e) => &e.attrs,
            syn::Item::Const(c) => &c.attrs,
            syn::Item::Static(s) => &s.attrs,
            syn::Item::Type(t) => &t.attrs,
            syn::Item::Trait(t) => &t.attrs,
            syn::Item::Macro(m) => &m.attrs,
            _ => &[],
        };
        if is_test_only(attrs) {
            if let syn::Item::Mod(m) = item {
                let mut path = self.current.clone();
                path.push(m.ident.to_string());
                self.test_files.insert(path);
            }
            return;
        }
        syn::visit::visit_item(self, item);
    }

    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if m.content.is_some() {
            self.current.push(m.ident.to_string());
            syn::visit::visit_item_mod(self, m);
            self.current.pop();
        }
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &u.tree);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        if path.leading_colon.is_none() {
            let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
            if segments.len() > 1 {
                self.resolve(&segments);
            }
        }
        syn::visit::visit_path(self, path);
    }
}

/// The module file that defines `path` (the nearest known ancestor: an
/// inline module belongs to its file).
fn file_module(modules: &BTreeMap<ModPath, PathBuf>, path: &[String]) -> ModPath {
    let mut p = path.to_vec();
    while !modules.contains_key(&p) {
        p.pop();
    }
    p
}

/// Arrows between sibling modules, each with the file references behind it.
type Arrows = BTreeMap<(ModPath, ModPath), BTreeSet<String>>;

/// The arrows of one crate's production code.
fn arrows(src: &Path) -> Arrows {
    let modules = module_files(src);
    // Arrow between siblings → the file references behind it.
    let mut arrows = Arrows::new();
    let mut read = Vec::new();
    let mut test_files = BTreeSet::new();
    for (module, file) in &modules {
        let text = fs::read_to_string(file).expect("read a source file");
        let parsed = syn::parse_file(&text)
            .unwrap_or_else(|err| panic!("{}: does not parse: {err}", file.display()));
        let mut refs = References {
            modules: &modules,
            current: module.clone(),
            found: BTreeSet::new(),
            test_files: BTreeSet::new(),
        };
        refs.visit_file(&parsed);
        test_files.append(&mut refs.test_files);
        read.push((module, file, refs.found));
    }
    for (module, file, found) in read {
        if test_files.iter().any(|t| module.starts_with(t)) {
            continue;
        }
        for target in found {
            let target = file_module(&modules, &target);
            let common = module
                .iter()
                .zip(&target)
                .take_while(|(a, b)| a == b)
                .count();
            if common == module.len() || common == target.len() {
                continue; // the same file, or a parent and its child
            }
            let from = module[..=common].to_vec();
            let to = target[..=common].to_vec();
            let why = format!(
                "{} → {}",
                file.strip_prefix(src).expect("below src").display(),
                modules[&target]
                    .strip_prefix(src)
                    .expect("below src")
                    .display()
            );
            arrows.entry((from, to)).or_default().insert(why);
        }
    }
    arrows
}

/// The circles of one crate: each as the arrows' file references.
fn circles(src: &Path) -> Vec<String> {
    let arrows = arrows(src);
    let names: Vec<ModPath> = arrows
        .keys()
        .flat_map(|(a, b)| [a.clone(), b.clone()])
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let index = |p: &ModPath| names.iter().position(|n| n == p).expect("a module");
    let mut graph = DiGraphMap::<usize, ()>::new();
    for (from, to) in arrows.keys() {
        graph.add_edge(index(from), index(to), ());
    }
    let mut found = Vec::new();
    for scc in tarjan_scc(&graph) {
        if scc.len() < 2 {
            continue;
        }
        let members: BTreeSet<&ModPath> = scc.iter().map(|&i| &names[i]).collect();
        let mut lines = vec![format!(
            "circle: {}",
            members
                .iter()
                .map(|m| m.join("::"))
                .collect::<Vec<_>>()
                .join(", ")
        )];
        for ((from, to), why) in &arrows {
            if members.contains(from) && members.contains(to) {
                for w in why {
                    lines.push(format!("  {w}"));
                }
            }
        }
        found.push(lines.join("\n"));
    }
    found
}

#[test]
fn no_module_of_a_crate_imports_another_round_a_circle() {
    let root = repo_root();
    let mut all = Vec::new();
    for krate in [
        "agent",
        "collector",
        "check",
        "service",
        "proto",
        "demo",
        "testkit",
    ] {
        let src = root.join(krate).join("src");
        for circle in circles(&src) {
            all.push(format!("{krate}: {circle}"));
        }
    }
    assert!(all.is_empty(), "{}", all.join("\n"));
}

#[test]
fn a_circle_is_found_and_named_by_its_files() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let src = dir.path();
    fs::create_dir_all(src.join("a")).expect("mkdir");
    fs::write(src.join("lib.rs"), "mod a;\nmod b;\nmod c;\n").expect("write");
    fs::write(src.join("a/mod.rs"), "mod inner;\npub struct A;\n").expect("write");
    fs::write(src.join("a/inner.rs"), "use crate::b::B;\nuse super::A;\n").expect("write");
    fs::write(
        src.join("b.rs"),
        "pub struct B;\nfn f() -> crate::a::A { crate::a::A }\n#[cfg(test)]\nmod t { use crate::c::C; }\n#[cfg(test)]\nmod tests;\n",
    )
    .expect("write");
    fs::write(src.join("c.rs"), "pub struct C;\nuse crate::b::B;\n").expect("write");
    fs::create_dir_all(src.join("b")).expect("mkdir");
    fs::write(src.join("b/tests.rs"), "use crate::c::C;\n").expect("write");
    assert_eq!(
        circles(src),
        ["circle: a, b\n  a/inner.rs → b.rs\n  b.rs → a/mod.rs"]
    );
}

/// The arrows the layout forbids, as `(crate, from, to)`: the store knows
/// rows and plans, never the detector's actor; the pure detection core
/// knows nothing else of the collector; the probe knows checks, never the
/// agent's configuration or what runs it.
const FORBIDDEN: &[(&str, &str, &[&str])] = &[
    (
        "collector",
        "store",
        &["detector", "app", "alert", "ingest", "control", "ui"],
    ),
    (
        "collector",
        "detect",
        &[
            "store", "detector", "app", "alert", "ingest", "control", "ui", "config",
        ],
    ),
    (
        "agent",
        "probe",
        &[
            "config", "app", "schedule", "control", "report", "queue", "spool", "vantage",
        ],
    ),
];

#[test]
fn the_layers_the_layout_separates_do_not_reach_across() {
    let root = repo_root();
    let mut crossing = Vec::new();
    for (krate, from, to) in FORBIDDEN {
        let arrows = arrows(&root.join(krate).join("src"));
        for ((a, b), why) in &arrows {
            if a.first().is_some_and(|m| m == from)
                && b.first().is_some_and(|m| to.contains(&m.as_str()))
            {
                crossing.push(format!(
                    "{krate}: {} → {}: {why:?}",
                    a.join("::"),
                    b.join("::")
                ));
            }
        }
    }
    assert!(crossing.is_empty(), "{}", crossing.join("\n"));
}
