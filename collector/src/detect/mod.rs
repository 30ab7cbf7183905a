//! The pure detection core: window cells in, a plan out. It groups the
//! window's probes by every dimension ([`dimensions`], [`population`]),
//! tests and explains them ([`decision`]: the statistics, explaining
//! away), matches what it finds to what earlier passes tracked
//! ([`track`]) under the hysteresis of [`lifecycle`], and writes the
//! records a page shows ([`explain`]); [`plan`] is the pass. No I/O, no
//! clock, no database: the detector's actor ([`crate::detector`]) reads
//! the cells, runs [`plan::plan`] and has the store apply the plan; the
//! simulator ([`simulate`], tests and benchmarks only) drives the same
//! pass over a simulated fleet.
//!
//! Nothing here imports the store, the actor or the control plane (a test
//! holds this): the store knows these types, never the other way round.

pub mod asn;
pub mod cells;
pub mod decision;
pub mod dimensions;
pub mod explain;
pub mod lifecycle;
pub mod pattern;
pub mod plan;
pub mod population;
pub mod records;
pub mod settings;
#[cfg(any(test, feature = "simulate"))]
pub mod simulate;
pub mod track;

pub use pattern::{CONNECTION_OUTCOMES, Pattern};
pub use settings::DetectorSettings;

#[cfg(test)]
mod boundary {
    //! The core's one-way boundary, checked on its sources.

    use std::path::Path;

    /// Every `crate::` path a core file names stays in `crate::detect`.
    #[test]
    fn the_core_imports_neither_the_store_nor_the_actor() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/detect");
        let mut files = vec![root];
        let mut offending = Vec::new();
        while let Some(path) = files.pop() {
            if path.is_dir() {
                for entry in std::fs::read_dir(&path).expect("read src/detect") {
                    files.push(entry.expect("dir entry").path());
                }
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read a core file");
            // Spelt in two so that this file does not find itself.
            let needle = concat!("crate", "::");
            for (n, line) in text.lines().enumerate() {
                if line.trim_start().starts_with("//") {
                    // Doc links name the actor; they link, they import nothing.
                    continue;
                }
                let mut rest = line;
                while let Some(at) = rest.find(needle) {
                    let after = &rest[at + needle.len()..];
                    if !after.starts_with("detect::") && !after.starts_with("detect}") {
                        offending.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                    }
                    rest = after;
                }
            }
        }
        assert!(offending.is_empty(), "{}", offending.join("\n"));
    }
}
