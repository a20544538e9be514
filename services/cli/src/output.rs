//! Printing: aligned tables for people, JSON and YAML for scripts.

use serde::Serialize;

use crate::args::Format;

/// A table: a header and rows of cells, printed with columns aligned like kubectl's.
pub struct Table {
    pub header: Vec<&'static str>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: Vec<&'static str>) -> Self {
        Table {
            header,
            rows: Vec::new(),
        }
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.len()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let line = |cells: Vec<String>| {
            let mut out = String::new();
            for (i, cell) in cells.iter().enumerate() {
                if i + 1 == cells.len() {
                    out.push_str(cell);
                } else {
                    out.push_str(&format!("{cell:<width$}   ", width = widths[i]));
                }
            }
            out.trim_end().to_owned() + "\n"
        };
        let mut out = line(self.header.iter().map(|h| (*h).to_owned()).collect());
        for row in &self.rows {
            out.push_str(&line(row.clone()));
        }
        out
    }
}

/// Prints `items` as JSON or YAML, or `table` for people.
pub fn print<T: Serialize>(format: Format, items: &T, table: impl FnOnce() -> Table) {
    match format {
        Format::Table => print!("{}", table().render()),
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(items).expect("output serializes")
        ),
        Format::Yaml => print!(
            "{}",
            serde_yaml_ng::to_string(items).expect("output serializes")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align() {
        let mut t = Table::new(vec!["NAME", "STATUS"]);
        t.rows.push(vec!["copenhagen-1".into(), "deployed".into()]);
        t.rows.push(vec!["a".into(), "failed".into()]);
        assert_eq!(
            t.render(),
            "NAME           STATUS\ncopenhagen-1   deployed\na              failed\n"
        );
    }
}
