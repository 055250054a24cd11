//! Text for people: aligned tables and the small formatting helpers they share. Plain code, pure:
//! everything here takes the API's answers and returns a `String`.

pub mod definitions;
pub mod operations;
pub mod sagas;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;

/// Columns are separated by this.
const GAP: &str = "  ";
/// What an absent value shows as.
pub const NONE: &str = "-";

/// A table: a header row and rows of cells, each column as wide as its widest cell.
#[derive(Debug, Clone)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; control characters in cells become spaces, so a cell cannot break the table.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells.iter().map(|c| one_line(c)).collect());
    }

    pub fn render(&self) -> String {
        let columns = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(width(cell));
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, width) in widths.iter().enumerate() {
                let cell = row.get(i).map_or("", String::as_str);
                if i > 0 {
                    line.push_str(GAP);
                }
                line.push_str(cell);
                if i + 1 < columns {
                    line.extend(std::iter::repeat_n(
                        ' ',
                        width.saturating_sub(self::width(cell)),
                    ));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Display width, counted in characters (the API's text is mostly ASCII).
fn width(s: &str) -> usize {
    s.chars().count()
}

/// At most `max` characters, the last one `…` when something was cut.
pub fn truncate(s: &str, max: usize) -> String {
    if width(s) <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Control characters (newlines, escapes from a worker's message) as spaces.
pub fn one_line(s: &str) -> String {
    crate::error::one_line(s)
}

pub fn or_none(s: Option<&str>) -> String {
    s.map_or_else(|| NONE.to_owned(), str::to_owned)
}

/// A timestamp to the second, in UTC: `2026-01-31T12:00:05Z`.
pub fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A timestamp to the millisecond, in UTC.
pub fn time_ms(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A signed offset such as `+0.012s`, `+2m05.300s` or `+1h02m05s`.
pub fn offset(d: chrono::TimeDelta) -> String {
    let ms = d.num_milliseconds();
    let sign = if ms < 0 { '-' } else { '+' };
    let ms = ms.unsigned_abs();
    let (h, m, s, frac) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    if h > 0 {
        format!("{sign}{h}h{m:02}m{s:02}s")
    } else if m > 0 {
        format!("{sign}{m}m{s:02}.{frac:03}s")
    } else {
        format!("{sign}{s}.{frac:03}s")
    }
}

/// JSON on one line, at most `max` characters.
pub fn compact(v: &Value, max: usize) -> String {
    truncate(&v.to_string(), max)
}

/// A short summary of a history entry's `data`: `key=value` pairs of an object (nested values as
/// compact JSON), nothing for `null` or `{}`.
pub fn summary(v: &Value, max: usize) -> String {
    let text = match v {
        Value::Null => String::new(),
        Value::Object(m) => m
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| format!("{k}={}", scalar(v)))
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    };
    truncate(&one_line(&text), max)
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) if !s.is_empty() && !s.contains(char::is_whitespace) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn tables_align_and_cells_stay_on_one_line() {
        let mut t = Table::new(&["ID", "STATE", "REASON"]);
        t.row(vec!["a".into(), "running".into(), "-".into()]);
        t.row(vec!["bbbb".into(), "x".into(), "two\nlines".into()]);
        assert_eq!(
            t.render(),
            "ID    STATE    REASON\na     running  -\nbbbb  x        two lines\n"
        );
    }

    #[test]
    fn truncation_marks_the_cut() {
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abcd", 4), "abcd");
        assert_eq!(truncate("ééééé", 3), "éé…");
    }

    #[test]
    fn offsets() {
        let ms = chrono::TimeDelta::milliseconds;
        assert_eq!(offset(ms(0)), "+0.000s");
        assert_eq!(offset(ms(12)), "+0.012s");
        assert_eq!(offset(ms(125_300)), "+2m05.300s");
        assert_eq!(offset(ms(3_725_000)), "+1h02m05s");
        assert_eq!(offset(ms(-5)), "-0.005s");
    }

    #[test]
    fn summaries() {
        assert_eq!(summary(&json!(null), 60), "");
        assert_eq!(summary(&json!({}), 60), "");
        assert_eq!(
            summary(
                &json!({ "code": "card_declined", "message": "no funds", "n": 2, "x": null }),
                60
            ),
            "code=card_declined message=\"no funds\" n=2"
        );
        assert_eq!(
            summary(&json!({ "output": { "a": [1] } }), 60),
            "output={\"a\":[1]}"
        );
        assert_eq!(summary(&json!("text"), 60), "\"text\"");
        assert_eq!(summary(&json!({ "k": "v".repeat(100) }), 10), "k=vvvvvvv…");
    }
}
