//! The IP-to-ASN table: parsing the common tab-separated format
//! (`first_ip  last_ip  asn  country  name`, as published by iptoasn.com
//! and others) and looking addresses up in memory.
//!
//! Ranges are arbitrary inclusive address ranges, not CIDR blocks, so the
//! table is two sorted vectors (IPv4, IPv6) searched by binary search.

use std::net::IpAddr;
use std::path::Path;

/// One network: its ASN, country and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsnEntry {
    pub asn: u32,
    pub country: String,
    pub name: String,
}

impl AsnEntry {
    /// How the `asn` dimension names it: `AS64500 EXAMPLE-NET`.
    pub fn label(&self) -> String {
        if self.name.is_empty() {
            format!("AS{}", self.asn)
        } else {
            format!("AS{} {}", self.asn, self.name)
        }
    }
}

/// One line of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsnRange {
    pub first: IpAddr,
    pub last: IpAddr,
    pub entry: AsnEntry,
}

/// A line of an ASN file that is not what the format expects.
#[derive(Debug, thiserror::Error)]
pub enum AsnParseError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}:{line}: field {field}: {problem}")]
    Line {
        file: String,
        line: usize,
        field: &'static str,
        problem: String,
    },
}

/// Reads and parses an ASN file.
pub fn read_file(path: &Path) -> Result<Vec<AsnRange>, AsnParseError> {
    let text = std::fs::read_to_string(path).map_err(|source| AsnParseError::Read {
        file: path.display().to_string(),
        source,
    })?;
    parse(&path.display().to_string(), &text)
}

/// Parses the text of an ASN file; `file` names it in errors. Blank lines
/// and lines starting with `#` are skipped; ASN 0 ("not routed") ranges
/// are kept out of the table.
pub fn parse(file: &str, text: &str) -> Result<Vec<AsnRange>, AsnParseError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |field: &'static str, problem: String| AsnParseError::Line {
            file: file.to_owned(),
            line: line_no,
            field,
            problem,
        };
        let mut fields = line.split('\t');
        let mut next = |field: &'static str| {
            fields.next().map(str::trim).ok_or_else(|| {
                err(
                    field,
                    "missing: expected 5 tab-separated fields (first_ip, last_ip, asn, country, name)"
                        .into(),
                )
            })
        };
        let (first, last, asn, country, name) = (
            next("first_ip")?,
            next("last_ip")?,
            next("asn")?,
            next("country")?,
            next("name")?,
        );
        let ip = |field: &'static str, v: &str| {
            v.parse::<IpAddr>()
                .map_err(|_| err(field, format!("{v:?} is not an IP address")))
        };
        let (first, last) = (ip("first_ip", first)?, ip("last_ip", last)?);
        if first.is_ipv4() != last.is_ipv4() {
            return Err(err(
                "last_ip",
                "expected the same address family as first_ip".into(),
            ));
        }
        if key(first) > key(last) {
            return Err(err("last_ip", format!("{last} is below first_ip {first}")));
        }
        let asn: u32 = asn
            .trim_start_matches("AS")
            .parse()
            .map_err(|_| err("asn", format!("{asn:?} is not an AS number")))?;
        if asn == 0 {
            continue;
        }
        out.push(AsnRange {
            first,
            last,
            entry: AsnEntry {
                asn,
                country: country.to_owned(),
                name: name.to_owned(),
            },
        });
    }
    Ok(out)
}

/// An address as a number comparable within its family.
fn key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The table in memory.
#[derive(Debug, Clone, Default)]
pub struct AsnTable {
    /// (first, last, entry index), sorted by first; one vector per family.
    v4: Vec<(u128, u128, usize)>,
    v6: Vec<(u128, u128, usize)>,
    entries: Vec<AsnEntry>,
}

impl AsnTable {
    pub fn new(ranges: Vec<AsnRange>) -> Self {
        let mut table = Self::default();
        for r in ranges {
            let i = table.entries.len();
            let row = (key(r.first), key(r.last), i);
            if r.first.is_ipv4() {
                table.v4.push(row);
            } else {
                table.v6.push(row);
            }
            table.entries.push(r.entry);
        }
        table.v4.sort_unstable();
        table.v6.sort_unstable();
        table
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The network `ip` belongs to. Overlapping ranges: the one starting
    /// last (the most specific, in practice) wins.
    pub fn lookup(&self, ip: IpAddr) -> Option<&AsnEntry> {
        let ranges = if ip.is_ipv4() { &self.v4 } else { &self.v6 };
        let k = key(ip);
        let after = ranges.partition_point(|(first, _, _)| *first <= k);
        ranges[..after]
            .iter()
            .rev()
            .take(8)
            .find(|(_, last, _)| *last >= k)
            .map(|(_, _, i)| &self.entries[*i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "# first\tlast\tasn\tcountry\tname\n\
        1.0.0.0\t1.0.0.255\t13335\tUS\tCLOUDFLARENET\n\
        1.0.1.0\t1.0.3.255\t0\tNone\tNot routed\n\
        203.0.113.0\t203.0.113.255\t64500\tZZ\tEXAMPLE-VPN\n\
        2001:db8::\t2001:db8:ffff:ffff:ffff:ffff:ffff:ffff\t64501\tZZ\tEXAMPLE-V6\n";

    #[test]
    fn parses_and_looks_up_both_families() {
        let table = AsnTable::new(parse("sample.tsv", SAMPLE).unwrap());
        assert_eq!(table.len(), 3, "the not-routed range is skipped");
        let at = |ip: &str| table.lookup(ip.parse().unwrap()).map(AsnEntry::label);
        assert_eq!(at("1.0.0.7").as_deref(), Some("AS13335 CLOUDFLARENET"));
        assert_eq!(at("203.0.113.255").as_deref(), Some("AS64500 EXAMPLE-VPN"));
        assert_eq!(at("2001:db8:5::1").as_deref(), Some("AS64501 EXAMPLE-V6"));
        assert_eq!(at("1.0.2.1"), None);
        assert_eq!(at("9.9.9.9"), None);
        assert_eq!(at("0.0.0.1"), None);
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let e = parse(
            "asn.tsv",
            "1.0.0.0\t1.0.0.255\t13335\tUS\tX\n1.0.1.0\tbogus\t1\tUS\tY\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("asn.tsv:2: field last_ip:"), "{e}");
        let e = parse("asn.tsv", "1.0.0.0\t1.0.0.255\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("asn.tsv:1: field asn: missing"), "{e}");
        let e = parse("asn.tsv", "1.0.0.9\t1.0.0.1\t5\tUS\tX\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("is below first_ip"), "{e}");
        let e = parse("asn.tsv", "1.0.0.0\t1.0.0.255\tASx\tUS\tX\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("field asn"), "{e}");
        let e = parse("asn.tsv", "1.0.0.0\t::1\t5\tUS\tX\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("same address family"), "{e}");
    }
}
