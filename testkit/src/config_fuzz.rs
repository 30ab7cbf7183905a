//! Configuration fuzzing shared by the agent's and the collector's tests:
//! mutations of a valid file (values that have broken parsers before,
//! deleted and duplicated lines, stray bytes, truncation) and what a
//! refusal must say. Each program's own test feeds them to its parser and
//! start-up checks; `VANTAGE_FUZZ_CASES` sets the cases per parser (CI:
//! 256; `bench/fuzz-config.sh` runs a longer campaign).

use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;
use vantage_service::config::ConfigError;

/// Values that have broken parsers and run-time arithmetic before.
pub const VALUES: &[&str] = &[
    "0",
    "-1",
    "1",
    "255",
    "256",
    "65536",
    "4294967296",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551615",
    "1e308",
    "nan",
    "inf",
    "-0.0",
    "0.5",
    "\"0s\"",
    "\"1ns\"",
    "\"1ms\"",
    "\"100000000years\"",
    "\"584942417355years\"",
    "\"1s\"",
    "\"\"",
    "\" \"",
    "\"x\"",
    "\"file:///etc/passwd\"",
    "\"http://\"",
    "\"postgres://u:p@h:99999/d\"",
    "\"whsec_\"",
    "true",
    "[]",
    "[0]",
    "{}",
    "1979-05-27T07:32:00Z",
];

#[derive(Debug, Clone)]
pub enum Mutation {
    /// The value of line `line` (mod the line count) becomes `VALUES[v]`.
    Value {
        line: usize,
        v: usize,
    },
    DeleteLine(usize),
    DuplicateLine(usize),
    /// Byte `at` (mod the length) becomes `byte` (often not UTF-8).
    Byte {
        at: usize,
        byte: u8,
    },
    Truncate(usize),
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        6 => (any::<usize>(), 0..VALUES.len()).prop_map(|(line, v)| Mutation::Value { line, v }),
        1 => any::<usize>().prop_map(Mutation::DeleteLine),
        1 => any::<usize>().prop_map(Mutation::DuplicateLine),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Byte { at, byte }),
        1 => any::<usize>().prop_map(Mutation::Truncate),
    ]
}

pub fn apply(base: &str, mutations: &[Mutation]) -> Vec<u8> {
    let mut lines: Vec<String> = base.lines().map(str::to_owned).collect();
    let mut bytes = None;
    for m in mutations {
        let n = lines.len().max(1);
        match *m {
            Mutation::Value { line, v } => {
                if let Some(l) = lines.get_mut(line % n)
                    && let Some((key, _)) = l.split_once(" = ")
                {
                    *l = format!("{key} = {}", VALUES[v]);
                }
            }
            Mutation::DeleteLine(i) if !lines.is_empty() => {
                lines.remove(i % n);
            }
            Mutation::DuplicateLine(i) if !lines.is_empty() => {
                let l = lines[i % n].clone();
                lines.insert(i % n, l);
            }
            Mutation::Byte { at, byte } => {
                let mut b = bytes
                    .take()
                    .unwrap_or_else(|| lines.join("\n").into_bytes());
                if !b.is_empty() {
                    let i = at % b.len();
                    b[i] = byte;
                }
                bytes = Some(b);
            }
            Mutation::Truncate(at) => {
                let mut b = bytes
                    .take()
                    .unwrap_or_else(|| lines.join("\n").into_bytes());
                b.truncate(at % (b.len() + 1));
                bytes = Some(b);
            }
            _ => {}
        }
    }
    bytes.unwrap_or_else(|| (lines.join("\n") + "\n").into_bytes())
}

/// An error must say where: the file, a line the file has, and a key.
pub fn assert_located(error: &ConfigError, path: &Path, text: &[u8]) {
    let lines = text.iter().filter(|&&b| b == b'\n').count() + 1;
    match error {
        ConfigError::Read { .. } => panic!("the file was written: {error}"),
        ConfigError::NotUtf8 { line, .. } => assert!(*line <= lines, "{error}"),
        ConfigError::Invalid {
            path: p,
            line,
            key,
            message,
            ..
        } => {
            assert_eq!(p, path);
            assert!((1..=lines).contains(line), "{error}");
            assert!(!key.is_empty() && !message.is_empty(), "{error}");
        }
    }
}

pub fn cases() -> u32 {
    std::env::var("VANTAGE_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(256)
}

/// A duration the run-time arithmetic (chrono from std, now minus it)
/// must survive.
pub fn arithmetic_survives(d: Duration) {
    let d = chrono::Duration::from_std(d).expect("a validated duration converts");
    let now = chrono::Utc::now();
    assert!(now.checked_sub_signed(d).is_some() && now.checked_add_signed(d).is_some());
}
