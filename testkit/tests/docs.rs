//! The documentation holds together: every link in `README.md` and `docs/`
//! names a file that exists and, with `#…`, a heading that file has (as
//! GitHub derives heading anchors); every page of `docs/` is reachable from
//! the README; the README stays a five-minute read; and every key the
//! example configurations under `deploy/` show, set or commented out, is in
//! the configuration reference.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};

/// The README's budget: what a newcomer reads before choosing where to go.
const README_MAX_LINES: usize = 250;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit lives in the workspace")
        .to_path_buf()
}

/// One Markdown file as GitHub renders it: the anchors of its headings and
/// the links it makes, each with its line.
struct Doc {
    anchors: HashSet<String>,
    links: Vec<(usize, String)>,
}

fn markdown_options() -> Options {
    Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset].matches('\n').count() + 1
}

/// GitHub's heading anchor: lower case, punctuation other than `-` and `_`
/// dropped, spaces to `-`; a repeated heading gets `-1`, `-2`, ….
fn anchor_of(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn read_doc(path: &Path) -> Doc {
    let text = fs::read_to_string(path)
        .unwrap_or_else(|err| panic!("{}: cannot read: {err}", path.display()));
    let mut anchors = HashSet::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut links = Vec::new();
    let mut heading: Option<String> = None;
    for (event, range) in Parser::new_ext(&text, markdown_options()).into_offset_iter() {
        match event {
            Event::Start(Tag::Heading { .. }) => heading = Some(String::new()),
            Event::Text(t) | Event::Code(t) => {
                if let Some(h) = heading.as_mut() {
                    h.push_str(&t);
                }
            }
            Event::End(TagEnd::Heading(_)) => {
                if let Some(h) = heading.take() {
                    let base = anchor_of(&h);
                    let n = seen.entry(base.clone()).or_insert(0);
                    anchors.insert(if *n == 0 {
                        base.clone()
                    } else {
                        format!("{base}-{n}")
                    });
                    *n += 1;
                }
            }
            Event::Start(Tag::Link { dest_url, .. } | Tag::Image { dest_url, .. }) => {
                links.push((line_of(&text, range.start), dest_url.to_string()));
            }
            _ => {}
        }
    }
    Doc { anchors, links }
}

fn markdown_files(root: &Path) -> Vec<PathBuf> {
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = fs::read_dir(root.join("docs"))
        .expect("docs/ exists")
        .map(|entry| entry.expect("docs/ is readable").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Where a link goes when it stays in the repository: the file (None for
/// the linking file itself) and the anchor. None for links that leave it.
fn local_target(from: &Path, dest: &str) -> Option<(Option<PathBuf>, Option<String>)> {
    if dest.contains("://") || dest.starts_with("mailto:") {
        return None;
    }
    let (file, anchor) = match dest.split_once('#') {
        Some((file, anchor)) => (file, Some(anchor.to_string())),
        None => (dest, None),
    };
    let file =
        (!file.is_empty()).then(|| from.parent().expect("a file has a directory").join(file));
    Some((file, anchor))
}

/// Every broken link of the given files, worded as `file:line: …`.
fn broken_links(root: &Path, files: &[PathBuf]) -> Vec<String> {
    let docs: HashMap<PathBuf, Doc> = files.iter().map(|f| (f.clone(), read_doc(f))).collect();
    let mut broken = Vec::new();
    for file in files {
        for (line, dest) in &docs[file].links {
            let Some((target, anchor)) = local_target(file, dest) else {
                continue;
            };
            let target = target.unwrap_or_else(|| file.clone());
            let at = format!("{}:{line}: link `{dest}`", relative(root, file));
            if !target.exists() {
                broken.push(format!("{at}: no file {}", relative(root, &target)));
                continue;
            }
            let Some(anchor) = anchor else { continue };
            if target.extension().is_none_or(|e| e != "md") {
                broken.push(format!("{at}: an anchor into a file that is not Markdown"));
                continue;
            }
            let target_doc = match docs.get(&target) {
                Some(doc) => doc,
                None => &read_doc(&target),
            };
            if !target_doc.anchors.contains(&anchor) {
                broken.push(format!(
                    "{at}: {} has no heading whose anchor is `{anchor}`",
                    relative(root, &target)
                ));
            }
        }
    }
    broken
}

#[test]
fn every_link_in_the_docs_names_a_file_and_heading_that_exist() {
    let root = repo_root();
    let files = markdown_files(&root);
    assert!(files.len() > 5, "README.md and docs/*.md: {files:?}");
    let broken = broken_links(&root, &files);
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn a_broken_link_is_reported_with_its_file_and_line() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let a = dir.path().join("a.md");
    let b = dir.path().join("b.md");
    fs::write(
        &a,
        "# Top\n\nSee [b](b.md#the-part), [gone](c.md), [missing](b.md#nowhere),\n\
         [here](#top) and [there](#elsewhere).\n",
    )
    .expect("write a.md");
    fs::write(&b, "# B\n\n## The part\n").expect("write b.md");
    let broken = broken_links(dir.path(), &[a, b]);
    assert_eq!(
        broken,
        [
            "a.md:3: link `c.md`: no file c.md",
            "a.md:3: link `b.md#nowhere`: b.md has no heading whose anchor is `nowhere`",
            "a.md:4: link `#elsewhere`: a.md has no heading whose anchor is `elsewhere`",
        ]
    );
}

#[test]
fn heading_anchors_are_githubs() {
    assert_eq!(
        anchor_of("Scaling: one node's limits, and the path beyond"),
        "scaling-one-nodes-limits-and-the-path-beyond"
    );
    assert_eq!(
        anchor_of("Agent (deploy/agent.example.toml)"),
        "agent-deployagentexampletoml"
    );
    assert_eq!(
        anchor_of("Pages: sinks, retries, silences"),
        "pages-sinks-retries-silences"
    );
}

#[test]
fn every_page_of_docs_is_reachable_from_the_readme() {
    let root = repo_root();
    let files = markdown_files(&root);
    let mut reached: BTreeSet<PathBuf> = BTreeSet::new();
    let mut todo = vec![root.join("README.md")];
    while let Some(file) = todo.pop() {
        if !reached.insert(file.clone()) {
            continue;
        }
        for (_, dest) in read_doc(&file).links {
            if let Some((Some(target), _)) = local_target(&file, &dest) {
                let target = target.canonicalize().unwrap_or(target);
                if target.extension().is_some_and(|e| e == "md") && target.exists() {
                    todo.push(target);
                }
            }
        }
    }
    let reached: BTreeSet<PathBuf> = reached
        .into_iter()
        .map(|p| p.canonicalize().unwrap_or(p))
        .collect();
    let unreached: Vec<String> = files
        .iter()
        .filter(|f| !reached.contains(&f.canonicalize().expect("listed files exist")))
        .map(|f| relative(&root, f))
        .collect();
    assert!(
        unreached.is_empty(),
        "not linked from README.md, directly or through another page: {unreached:?}"
    );
}

#[test]
fn the_readme_is_a_five_minute_read() {
    let readme = fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let lines = readme.lines().count();
    assert!(
        lines <= README_MAX_LINES,
        "README.md has {lines} lines; at most {README_MAX_LINES}: move the detail to docs/"
    );
}

/// The keys an example configuration shows, set or commented out
/// (`# key = value`), as dotted paths (`collector.endpoint`,
/// `check.path_interval`), each with its line.
fn example_keys(text: &str) -> Vec<(usize, String)> {
    let mut table = String::new();
    let mut keys = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let line = match line.strip_prefix('#') {
            Some(rest) => rest.trim_start(),
            None => line,
        };
        if let Some(header) = line.strip_prefix('[') {
            let header = header.trim_start_matches('[');
            if let Some(end) = header.find(']') {
                let name = &header[..end];
                if is_key_path(name) {
                    table = name.to_string();
                }
            }
            continue;
        }
        let Some((key, _)) = line.split_once(" = ") else {
            continue;
        };
        if !is_key_path(key) {
            continue;
        }
        let path = if table.is_empty() {
            key.to_string()
        } else {
            format!("{table}.{key}")
        };
        keys.push((n + 1, path));
    }
    keys
}

/// A bare TOML key path as the examples write them: lower case, digits,
/// `_` and dots. Prose in comments ("Every 30 s …") is not one.
fn is_key_path(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|part| {
            !part.is_empty()
                && part.starts_with(|c: char| c.is_ascii_lowercase())
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
}

/// The keys a reference table names in its first column: `` `a.b` ``,
/// `` `[[check]] name` ``, and shorthands after a first full key in the
/// same cell (`` `collector.token` / `token_file` `` is `collector.token`
/// and `collector.token_file`).
fn reference_keys(markdown: &str, section: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut in_section = false;
    let mut heading: Option<String> = None;
    let mut cell = 0;
    let mut in_row = false;
    let mut prefix = String::new();
    for event in Parser::new_ext(markdown, markdown_options()) {
        match event {
            Event::Start(Tag::Heading { .. }) => heading = Some(String::new()),
            Event::End(TagEnd::Heading(_)) => {
                if let Some(h) = heading.take() {
                    in_section = h.contains(section);
                }
            }
            Event::Text(t) if heading.is_some() => heading.as_mut().expect("some").push_str(&t),
            Event::Code(t) if heading.is_some() => heading.as_mut().expect("some").push_str(&t),
            Event::Start(Tag::TableRow) => {
                in_row = true;
                cell = 0;
                prefix.clear();
            }
            Event::End(TagEnd::TableRow) => in_row = false,
            Event::End(TagEnd::TableCell) => cell += 1,
            Event::Code(code) if in_section && in_row && cell == 0 => {
                let code = code.trim();
                let (table, key) = match code.strip_prefix("[[") {
                    Some(rest) => match rest.split_once("]]") {
                        Some((table, key)) => (Some(table), key.trim()),
                        None => continue,
                    },
                    None => (None, code),
                };
                if let Some(table) = table {
                    prefix = format!("{table}.");
                }
                let full = match table {
                    None if key.contains('.') || prefix.is_empty() => key.to_string(),
                    _ => format!("{prefix}{key}"),
                };
                if let Some((parent, _)) = full.rsplit_once('.') {
                    prefix = format!("{parent}.");
                }
                keys.insert(full);
            }
            _ => {}
        }
    }
    keys
}

/// A key is documented when it or a table above it is (`labels` covers
/// `labels.provider`, whose names are the user's).
fn undocumented(keys: &[(usize, String)], documented: &BTreeSet<String>) -> Vec<(usize, String)> {
    keys.iter()
        .filter(|(_, key)| {
            let mut path = key.as_str();
            loop {
                if documented.contains(path) {
                    return false;
                }
                match path.rsplit_once('.') {
                    Some((parent, _)) => path = parent,
                    None => return true,
                }
            }
        })
        .cloned()
        .collect()
}

#[test]
fn every_key_of_the_example_configs_is_in_the_reference() {
    let root = repo_root();
    let reference =
        fs::read_to_string(root.join("docs/configuration.md")).expect("docs/configuration.md");
    let mut missing = Vec::new();
    for example in ["deploy/agent.example.toml", "deploy/collector.example.toml"] {
        let text = fs::read_to_string(root.join(example)).expect("example config");
        let keys = example_keys(&text);
        assert!(keys.len() > 20, "{example}: only {} keys read", keys.len());
        let documented = reference_keys(&reference, example);
        assert!(
            documented.len() > 20,
            "docs/configuration.md: no reference table under a heading naming {example}"
        );
        for (line, key) in undocumented(&keys, &documented) {
            missing.push(format!(
                "{example}:{line}: `{key}` is not in docs/configuration.md"
            ));
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn the_key_reader_reads_tables_comments_and_shorthands() {
    let example = "agent_id = \"a\"\n# Every 30 s = a round\n[collector]\n# token_file = \"/t\"\n\
                   [[check]]\nname = \"x\"\n# [[detector.check]]\n# statuses = [502]\n";
    assert_eq!(
        example_keys(example),
        [
            (1, "agent_id".to_string()),
            (4, "collector.token_file".to_string()),
            (6, "check.name".to_string()),
            (8, "detector.check.statuses".to_string()),
        ]
    );
    let reference = "## Agent (`x.toml`)\n\n| key | meaning |\n| --- | --- |\n\
                     | `agent_id` | id |\n| `collector.token` / `token_file` | token |\n\
                     | `[[check]] name`, `url` | check |\n| `[[detector.check]] statuses` | s |\n";
    let documented = reference_keys(reference, "x.toml");
    assert_eq!(
        documented.iter().map(String::as_str).collect::<Vec<_>>(),
        [
            "agent_id",
            "check.name",
            "check.url",
            "collector.token",
            "collector.token_file",
            "detector.check.statuses",
        ]
    );
    let keys = [
        (1, "labels.provider".to_string()),
        (2, "spool.path".to_string()),
    ];
    let documented: BTreeSet<String> = ["labels".to_string()].into();
    assert_eq!(
        undocumented(&keys, &documented),
        [(2, "spool.path".to_string())]
    );
}
