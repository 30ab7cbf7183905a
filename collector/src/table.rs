//! Plain-text tables for what the CLI prints: columns padded to their
//! widest cell (the header's included), two spaces apart, no trailing
//! blanks.

use std::fmt::Write as _;

/// `header`, then each of `rows`, one line each; a row shorter than the
/// header leaves its last columns blank.
pub fn aligned<S: AsRef<str>>(header: &[S], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .chain([header[i].as_ref().chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        cells
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = String::new();
    let _ = writeln!(out, "{}", line(&mut header.iter().map(AsRef::as_ref)));
    for row in rows {
        let mut cells = (0..header.len()).map(|i| row.get(i).map_or("", String::as_str));
        let _ = writeln!(out, "{}", line(&mut cells));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_are_padded_to_their_widest_cell() {
        let out = super::aligned(
            &["a", "bb", "c"],
            &[vec!["xxx".into(), "y".into(), "z".into()], vec!["1".into()]],
        );
        assert_eq!(out, "a    bb  c\nxxx  y   z\n1\n");
    }
}
