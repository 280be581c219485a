//! Output: a table (or `key: value` lines) for people, one JSON object per line with
//! `--json`.

use std::io::Write;

use crate::fail::Failure;

/// Writes to stdout. A closed stdout (`| head`) stops the tool quietly.
pub(crate) struct Printer {
    pub(crate) json: bool,
}

impl Printer {
    pub(crate) fn new(json: bool) -> Printer {
        Printer { json }
    }

    /// Writes `text` and a newline, and flushes (a stream's items appear as they come).
    pub(crate) fn line(&mut self, text: &str) -> Result<(), Failure> {
        let mut out = std::io::stdout().lock();
        match writeln!(out, "{text}").and_then(|()| out.flush()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(Failure::quiet()),
            Err(e) => Err(Failure::new(1, format!("cannot write to stdout: {e}"))),
        }
    }

    /// One JSON value on one line.
    pub(crate) fn json_line(&mut self, value: &serde_json::Value) -> Result<(), Failure> {
        self.line(&value.to_string())
    }

    /// A table: a header row, then rows, columns padded to their widest cell (the last
    /// column is not padded).
    pub(crate) fn table(&mut self, header: &[&str], rows: &[Vec<String>]) -> Result<(), Failure> {
        let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
        for row in rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let render = |cells: &mut dyn Iterator<Item = &str>| {
            let mut line = String::new();
            for (i, cell) in cells.enumerate() {
                if i + 1 < widths.len() {
                    line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
                } else {
                    line.push_str(cell);
                }
            }
            line.trim_end().to_owned()
        };
        self.line(&render(&mut header.iter().copied()))?;
        for row in rows {
            self.line(&render(&mut row.iter().map(String::as_str)))?;
        }
        Ok(())
    }

    /// `key: value` lines, the values aligned.
    pub(crate) fn fields(&mut self, fields: &[(&str, String)]) -> Result<(), Failure> {
        let width = fields.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
        for (key, value) in fields {
            self.line(&format!("{:<width$} {value}", format!("{key}:")))?;
        }
        Ok(())
    }
}
