//! Reading and strictly parsing every Vantage TOML file, and errors that
//! name the file, the line and column, and the dotted key: for a value
//! serde refused, where the value is; for a rule that relates values
//! ([`Problem`]), where the key is written (or, when it is not written, the
//! table that lacks it).

use std::fmt::Display;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Units for the ranges of duration keys, shared by every config.
pub mod units {
    use std::time::Duration;

    pub const MS: Duration = Duration::from_millis(1);
    pub const SECOND: Duration = Duration::from_secs(1);
    pub const MINUTE: Duration = Duration::from_secs(60);
    pub const HOUR: Duration = Duration::from_secs(3600);
    pub const DAY: Duration = Duration::from_secs(24 * 3600);
    pub const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}:{line}: invalid UTF-8 at byte {offset} (line {line}, byte {column} of the line): \
         expected a UTF-8 text file"
    )]
    NotUtf8 {
        path: PathBuf,
        line: usize,
        column: usize,
        /// Offset of the first invalid byte in the file.
        offset: usize,
    },
    #[error("{path}:{line}:{column}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        /// Dotted path of the offending key, e.g. `check[0].interval`.
        key: String,
        message: String,
    },
}

/// A value that breaks a rule serde cannot see (a range, or a relation
/// between keys): the dotted key and what was expected. The error built
/// from it is located by looking the key up in the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
    /// Where to point instead of the key, when known (e.g. a duplicate
    /// name: the second one).
    pub span: Option<Range<usize>>,
}

impl Problem {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
            span: None,
        }
    }

    pub fn at(mut self, span: Range<usize>) -> Self {
        self.span = Some(span);
        self
    }

    /// The error in `path`, whose text is `text`.
    pub fn into_error(self, path: &Path, text: &str) -> ConfigError {
        ConfigError::at(path, text, self.span, self.key, self.message)
    }
}

/// `value` must lie in `min..=max`: a duration key's sensible range.
pub fn duration_within(
    key: impl Into<String>,
    value: Duration,
    min: Duration,
    max: Duration,
) -> Result<(), Problem> {
    if (min..=max).contains(&value) {
        return Ok(());
    }
    let show = |d: Duration| show_duration(d);
    Err(Problem::new(
        key,
        format!(
            "{} is out of range: expected between {} and {}",
            show(value),
            show(min),
            show(max)
        ),
    ))
}

/// A duration as a person writes one: whole years or days when it is a
/// multiple of them (humantime's year is 365.25 days, so it would write a
/// limit of 10 × 365 days as "9years 11months 27days …").
fn show_duration(d: Duration) -> String {
    use units::{DAY, YEAR};
    let secs = d.as_secs();
    if d.subsec_nanos() == 0 && secs > 0 {
        if secs.is_multiple_of(YEAR.as_secs()) {
            return format!("{}years", secs / YEAR.as_secs());
        }
        if secs.is_multiple_of(DAY.as_secs()) {
            return format!("{}days", secs / DAY.as_secs());
        }
    }
    humantime::format_duration(d).to_string()
}

/// `value` must lie in `min..=max`: a count's sensible range.
pub fn count_within<T: PartialOrd + Display>(
    key: impl Into<String>,
    value: T,
    min: T,
    max: T,
) -> Result<(), Problem> {
    if min <= value && value <= max {
        return Ok(());
    }
    Err(Problem::new(
        key,
        format!("{value} is out of range: expected between {min} and {max}"),
    ))
}

/// Reads a configuration file; the error names the path, and for bytes
/// that are not UTF-8, the line and byte offset of the first.
pub fn read_config(path: &Path) -> Result<String, ConfigError> {
    let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    String::from_utf8(bytes).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        let before = &e.as_bytes()[..offset];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |nl| nl + 1);
        ConfigError::NotUtf8 {
            path: path.to_owned(),
            line,
            column: offset - line_start + 1,
            offset,
        }
    })
}

/// Deserializes `text` strictly into `T`; errors name `path`, the line and
/// column, and the dotted key. Shared by every Vantage configuration file.
pub fn parse_toml<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
) -> Result<T, ConfigError> {
    let de = toml::Deserializer::parse(text).map_err(|e| {
        let key = e
            .span()
            .and_then(|span| key_at(text, span))
            .unwrap_or_else(|| "(document)".into());
        ConfigError::at(path, text, e.span(), key, e.message().to_owned())
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = written_key(e.path().to_string());
        let inner = e.into_inner();
        ConfigError::at(path, text, inner.span(), key, inner.message().to_owned())
    })
}

/// A key path as serde saw it, as it was written: a `Spanned` value's
/// inner field (`name.$__serde_spanned_private_value`) is not a key anyone
/// wrote.
pub fn written_key(path: String) -> String {
    path.replace(".$__serde_spanned_private_value", "")
}

/// The dotted key written at `span` of `text` (a parse error's, such as a
/// duplicate key): the key under the span, under the nearest table header
/// above it; `None` when the span holds no key.
fn key_at(text: &str, span: Range<usize>) -> Option<String> {
    let written = text.get(span.clone())?.trim();
    let bare = |s: &str| {
        !s.is_empty()
            && s.len() <= 100
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    };
    if !bare(written) {
        return None;
    }
    let header = text[..span.start].lines().rev().find_map(|line| {
        let line = line.trim();
        let name = line
            .strip_prefix("[[")
            .and_then(|l| l.strip_suffix("]]"))
            .or_else(|| line.strip_prefix('[').and_then(|l| l.strip_suffix(']')))?;
        Some(name.trim().to_owned())
    });
    Some(match header {
        Some(table) => format!("{table}.{written}"),
        None => written.to_owned(),
    })
}

/// A message with every value longer than [`MAX_SHOWN`] bytes cut short,
/// saying how long it was: an error never echoes a whole 70 KB value.
fn shortened(message: String) -> String {
    if message.len() <= MAX_SHOWN {
        return message;
    }
    let cut = |s: &str, keep: usize| {
        let mut end = keep.min(s.len());
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        end
    };
    // Keep the start (what is wrong) and the end (what was expected).
    let head = cut(&message, MAX_SHOWN / 2);
    let mut tail_start = message.len().saturating_sub(MAX_SHOWN / 4);
    while !message.is_char_boundary(tail_start) {
        tail_start += 1;
    }
    format!(
        "{} … ({} bytes cut) … {}",
        &message[..head],
        tail_start - head,
        &message[tail_start..]
    )
}

/// The longest message a configuration error shows whole.
const MAX_SHOWN: usize = 400;

impl ConfigError {
    /// An `Invalid` error located at byte range `span` of `text`, or, when
    /// there is none, where `key` is written in `text` (see [`locate`]).
    pub fn at(
        path: &Path,
        text: &str,
        span: Option<Range<usize>>,
        key: String,
        message: String,
    ) -> Self {
        let offset = span.or_else(|| locate(text, &key)).map_or(0, |s| s.start);
        let (line, column) = line_col(text, offset);
        Self::Invalid {
            path: path.to_owned(),
            line,
            column,
            key,
            message: shortened(message),
        }
    }
}

/// Where the dotted `key` (`a.b`, `check[2].timeout`) is written in
/// `text`: the key itself, else the nearest written table on its path
/// (a rule about a key left at its default points at the table that
/// lacks it). `None` for a document that does not parse or a key with no
/// written ancestor.
pub fn locate(text: &str, key: &str) -> Option<Range<usize>> {
    let root = toml::de::DeTable::parse(text).ok()?;
    let mut table = root.get_ref();
    let mut found = None;
    let mut segments = key_segments(key).into_iter().peekable();
    while let Some(Segment::Key(name)) = segments.next() {
        let Some((written, value)) = table.get_key_value(name) else {
            break;
        };
        found = Some(written.span());
        let mut value = value;
        while let Some(Segment::Index(i)) = segments.peek() {
            let Some(element) = value.get_ref().as_array().and_then(|a| a.get(*i)) else {
                return found;
            };
            value = element;
            found = Some(value.span());
            segments.next();
        }
        match value.get_ref().as_table() {
            Some(inner) => table = inner,
            None => break,
        }
    }
    found
}

enum Segment<'k> {
    Key(&'k str),
    Index(usize),
}

/// `check[2].headers.x` → `check`, 2, `headers`, `x`.
fn key_segments(key: &str) -> Vec<Segment<'_>> {
    let mut segments = Vec::new();
    for part in key.split('.') {
        let (name, mut rest) = part.split_once('[').map_or((part, ""), |(n, r)| (n, r));
        segments.push(Segment::Key(name));
        while let Some((index, after)) = rest.split_once(']') {
            match index.parse() {
                Ok(i) => segments.push(Segment::Index(i)),
                Err(_) => return segments,
            }
            rest = after.strip_prefix('[').unwrap_or(after);
        }
    }
    segments
}

/// 1-based line and column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

/// Reads a file that holds a secret (a token, an `Authorization` header):
/// refused when group or others may read it, as ssh refuses such a key,
/// since anyone on the host could use the secret. `key` names the setting
/// in the errors, which never show the file's contents.
pub fn read_secret_file(key: &str, path: &Path) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read {key} {shown}: {e}"))?;
    let mode = file
        .metadata()
        .map_err(|e| format!("cannot read {key} {shown}: {e}"))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "{key} {shown} may be read by group or others (mode {:04o}): run `chmod 600 {shown}` \
             (and chown it to the agent's user)",
            mode & 0o7777
        ));
    }
    std::io::read_to_string(file).map_err(|e| format!("cannot read {key} {shown}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_of(text: &str, key: &str) -> Option<usize> {
        locate(text, key).map(|s| line_col(text, s.start).0)
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Doc {
        #[serde(default)]
        a: Option<u32>,
        #[serde(default)]
        name: Option<toml::Spanned<u32>>,
        #[serde(default)]
        detector: Option<toml::Table>,
    }

    fn parse_error(text: &str) -> String {
        parse_toml::<Doc>(Path::new("c.toml"), text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_duplicate_key_is_named_with_its_table() {
        let e = parse_error("a = 1\n[detector]\nwindow = 1\nwindow = 2\n");
        assert!(e.starts_with("c.toml:4:1: detector.window: "), "{e}");
        let e = parse_error("a = 1\na = 2\n");
        assert!(e.starts_with("c.toml:2:1: a: "), "{e}");
    }

    #[test]
    fn a_spanned_value_is_named_by_its_key() {
        let e = parse_error("name = \"x\"\n");
        assert!(e.contains(": name: "), "{e}");
        assert!(!e.contains("serde_spanned"), "{e}");
    }

    #[test]
    fn a_huge_value_is_not_echoed_whole() {
        let e = parse_error(&format!("a = \"{}\"\n", "x".repeat(70_000)));
        assert!(e.len() < 1000, "{} bytes", e.len());
        assert!(e.contains("bytes cut"), "{e}");
    }

    #[test]
    fn limits_in_years_and_days_are_shown_as_written() {
        let e = duration_within("retention", units::YEAR * 11, units::DAY, units::YEAR * 10)
            .unwrap_err();
        assert!(e.message.contains("and 10years"), "{}", e.message);
        assert!(
            e.message.starts_with("11years is out of range"),
            "{}",
            e.message
        );
        assert_eq!(show_duration(Duration::from_secs(90)), "1m 30s");
    }

    #[test]
    fn keys_are_found_on_their_line() {
        let text = "a = 1\n[detector]\nwindow = \"5m\"\n\n[[check]]\nname = \"x\"\n\
                    [[check]]\nname = \"y\"\ntimeout = \"1s\"\n[check.headers]\nx = \"1\"\n";
        assert_eq!(line_of(text, "a"), Some(1));
        assert_eq!(line_of(text, "detector.window"), Some(3));
        assert_eq!(line_of(text, "check[1].timeout"), Some(9));
        assert_eq!(line_of(text, "check[1].headers.x"), Some(11));
        // Not written: the table that lacks it.
        assert_eq!(line_of(text, "detector.interval"), Some(2));
        assert_eq!(line_of(text, "check[0].timeout"), Some(5));
        assert_eq!(line_of(text, "spool.path"), None);
    }

    #[test]
    fn bytes_that_are_not_utf8_are_located() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, b"a = 1\nb = \"x\xff\"\n").unwrap();
        let e = read_config(&path).unwrap_err().to_string();
        assert!(e.contains("agent.toml:2:"), "{e}");
        assert!(e.contains("byte 12"), "{e}");
        assert!(e.contains("byte 7 of the line"), "{e}");
        assert_eq!(e.matches("UTF-8").count(), 2, "{e}");
    }

    proptest::proptest! {
        #[test]
        fn line_col_points_inside_the_text(text in "[a-z\n]{0,40}", offset in 0usize..50) {
            let (line, col) = line_col(&text, offset);
            proptest::prop_assert!(line >= 1 && col >= 1);
            proptest::prop_assert!(line <= text.matches('\n').count() + 1);
        }
    }
}
