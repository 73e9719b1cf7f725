//! Exports: calls and callback items as CSV or JSON Lines, a page at a time, so that a million
//! rows stream through a few pages of memory. The API (`/api/export/…`) and the command line
//! (`alohook export …`) write the same bytes.

use bytes::Bytes;
use jiff::tz::TimeZone;
use serde::Serialize;
use serde_json::Value;

use crate::model::view::CallView;
use crate::report::callbacks::{Item, ItemView};
use crate::store::callbacks::{CallbackCursor, CallbackFilter};
use crate::store::{CallCursor, CallFilter, Store, StoreError};

/// Rows read from the store at a time.
pub const PAGE_ROWS: usize = 1000;

/// The columns of a calls export, in order: the call object's fields.
pub const CALL_COLUMNS: &[&str] = &[
    "call_id",
    "call_status",
    "phase",
    "direction",
    "caller_number",
    "destination_number",
    "hotline",
    "user_name",
    "transaction_id",
    "object_id",
    "start_time",
    "answer_time",
    "end_time",
    "hangup_by",
    "total_duration",
    "holding_duration",
    "ring_seconds",
    "talk_seconds",
    "recording_url",
    "event_count",
    "first_received_at",
    "last_received_at",
];

/// The columns of a callbacks export, in order: the item's fields (`hotlines` joined by `;`).
/// New columns go at the end, so that a sheet reading columns by position keeps working.
pub const CALLBACK_COLUMNS: &[&str] = &[
    "id",
    "phone",
    "phone_as_sent",
    "reachable",
    "state",
    "missed_count",
    "first_missed_at",
    "last_missed_at",
    "last_missed_call_id",
    "hotlines",
    "attempts",
    "last_attempt_at",
    "age_seconds",
    "closed_at",
    "closed_by_call_id",
    "closed_reason",
    "note",
    "closed_by",
];

/// The byte order mark that makes Excel read a CSV file as UTF-8 (Vietnamese names).
pub const BOM: &[u8] = b"\xEF\xBB\xBF";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Jsonl,
}

impl Format {
    pub fn parse(text: &str) -> Option<Format> {
        match text {
            "csv" => Some(Format::Csv),
            "jsonl" => Some(Format::Jsonl),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Csv => "text/csv; charset=utf-8",
            Format::Jsonl => "application/jsonl; charset=utf-8",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Jsonl => "jsonl",
        }
    }
}

/// A cell as a spreadsheet may run it as a formula (`=`, `+`, `-`, `@`, a tab or a carriage
/// return first) is neutralised with a leading `'`, as OWASP advises: `+84901234567` is shown as
/// `'+84901234567`, never evaluated.
pub fn neutralise(cell: &str) -> std::borrow::Cow<'_, str> {
    match cell.as_bytes().first() {
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r') => format!("'{cell}").into(),
        _ => cell.into(),
    }
}

fn cell(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(";"),
        other => other.to_string(),
    }
}

/// Writes rows of one kind in one format.
pub struct Renderer {
    format: Format,
    columns: &'static [&'static str],
}

impl Renderer {
    pub fn new(format: Format, columns: &'static [&'static str]) -> Self {
        Renderer { format, columns }
    }

    fn csv_writer() -> csv::Writer<Vec<u8>> {
        csv::WriterBuilder::new()
            .terminator(csv::Terminator::CRLF)
            .from_writer(Vec::new())
    }

    fn csv_record(writer: &mut csv::Writer<Vec<u8>>, cells: impl IntoIterator<Item = String>) {
        let cells: Vec<String> = cells
            .into_iter()
            .map(|c| neutralise(&c).into_owned())
            .collect();
        // Writing to memory cannot fail.
        let _ = writer.write_record(&cells);
    }

    fn csv_line(&self, cells: impl IntoIterator<Item = String>) -> Vec<u8> {
        let mut writer = Self::csv_writer();
        Self::csv_record(&mut writer, cells);
        writer.into_inner().unwrap_or_default()
    }

    /// What comes before the rows: the CSV header (after a BOM when asked), nothing for JSON
    /// Lines.
    pub fn head(&self, bom: bool) -> Bytes {
        match self.format {
            Format::Csv => {
                let mut out = if bom { BOM.to_vec() } else { Vec::new() };
                out.extend(self.csv_line(self.columns.iter().map(|c| c.to_string())));
                out.into()
            }
            Format::Jsonl => Bytes::new(),
        }
    }

    /// The rows of `views`, one chunk.
    pub fn rows<T: Serialize>(&self, views: &[T]) -> Bytes {
        match self.format {
            Format::Jsonl => {
                let mut out = Vec::with_capacity(views.len() * 512);
                for view in views {
                    // Serialising to memory cannot fail.
                    let _ = serde_json::to_writer(&mut out, view);
                    out.push(b'\n');
                }
                out.into()
            }
            Format::Csv => {
                let mut writer = Self::csv_writer();
                for view in views {
                    let value = serde_json::to_value(view).unwrap_or(Value::Null);
                    Self::csv_record(
                        &mut writer,
                        self.columns
                            .iter()
                            .map(|c| cell(value.get(c).unwrap_or(&Value::Null))),
                    );
                }
                writer.into_inner().unwrap_or_default().into()
            }
        }
    }
}

/// What is exported, with its filters.
#[derive(Debug, Clone)]
pub enum Export {
    Calls(CallFilter),
    Callbacks(CallbackFilter),
}

impl Export {
    pub fn columns(&self) -> &'static [&'static str] {
        match self {
            Export::Calls(_) => CALL_COLUMNS,
            Export::Callbacks(_) => CALLBACK_COLUMNS,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Export::Calls(_) => "calls",
            Export::Callbacks(_) => "callbacks",
        }
    }
}

/// Where an export is: the next page to read.
enum Position {
    Calls(Option<CallCursor>),
    Callbacks(Option<CallbackCursor>),
    Done,
}

/// Reads an export a page at a time and renders each page as one chunk.
pub struct Pages {
    export: Export,
    renderer: Renderer,
    position: Position,
    tz: TimeZone,
}

impl Pages {
    pub fn new(export: Export, format: Format, tz: TimeZone) -> Self {
        let renderer = Renderer::new(format, export.columns());
        let position = match export {
            Export::Calls(_) => Position::Calls(None),
            Export::Callbacks(_) => Position::Callbacks(None),
        };
        Pages {
            export,
            renderer,
            position,
            tz,
        }
    }

    pub fn head(&self, bom: bool) -> Bytes {
        self.renderer.head(bom)
    }

    /// The next page's rows and how many there were; `None` after the last.
    pub async fn next(&mut self, store: &dyn Store) -> Result<Option<(Bytes, usize)>, StoreError> {
        match (&self.export, &self.position) {
            (_, Position::Done) => Ok(None),
            (Export::Calls(filter), Position::Calls(cursor)) => {
                let page = store.calls(filter, PAGE_ROWS, *cursor).await?;
                let views: Vec<CallView> = page
                    .items
                    .into_iter()
                    .map(|c| CallView::of(c.record, c.phase, &self.tz))
                    .collect();
                self.position = page
                    .next
                    .map_or(Position::Done, |c| Position::Calls(Some(c)));
                Ok(Some((self.renderer.rows(&views), views.len())))
            }
            (Export::Callbacks(filter), Position::Callbacks(cursor)) => {
                let page = store.callbacks(filter, PAGE_ROWS, cursor.clone()).await?;
                let now = jiff::Timestamp::now().as_second();
                let views: Vec<ItemView> = page
                    .items
                    .into_iter()
                    .map(|i: Item| ItemView::of(i, &self.tz, now))
                    .collect();
                self.position = page
                    .next
                    .map_or(Position::Done, |c| Position::Callbacks(Some(c)));
                Ok(Some((self.renderer.rows(&views), views.len())))
            }
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formulas_are_neutralised() {
        for dangerous in ["=1+1", "+84901234567", "-5", "@SUM(A1)", "\tx", "\rx"] {
            assert!(neutralise(dangerous).starts_with('\''), "{dangerous:?}");
        }
        for safe in ["0901234567", "Nguyễn Văn An", "", "a=b"] {
            assert_eq!(neutralise(safe), safe);
        }
    }

    #[test]
    fn csv_is_rfc_4180_with_a_header_and_an_optional_bom() {
        #[derive(Serialize)]
        struct Row {
            a: &'static str,
            b: Option<i64>,
            c: Vec<&'static str>,
        }
        const COLUMNS: &[&str] = &["a", "b", "c"];
        let r = Renderer::new(Format::Csv, COLUMNS);
        assert_eq!(&r.head(false)[..], b"a,b,c\r\n");
        assert_eq!(&r.head(true)[..], b"\xEF\xBB\xBFa,b,c\r\n");
        let rows = r.rows(&[
            Row {
                a: "say \"hi\", then\nleave",
                b: Some(3),
                c: vec!["H1", "H2"],
            },
            Row {
                a: "=HYPERLINK(\"x\")",
                b: None,
                c: vec![],
            },
        ]);
        assert_eq!(
            std::str::from_utf8(&rows).unwrap(),
            "\"say \"\"hi\"\", then\nleave\",3,H1;H2\r\n\"'=HYPERLINK(\"\"x\"\")\",,\r\n"
        );
        let jsonl = Renderer::new(Format::Jsonl, COLUMNS).rows(&[Row {
            a: "x",
            b: None,
            c: vec![],
        }]);
        assert_eq!(&jsonl[..], b"{\"a\":\"x\",\"b\":null,\"c\":[]}\n");
    }
}
