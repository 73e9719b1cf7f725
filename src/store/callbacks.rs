//! The callback worklist in the store: what both backends read to recompute a number's items,
//! how they compare them with the stored ones, and the listing's query.

use std::collections::BTreeMap;

use super::{Column, RowColumns, Statement, StoreError};
use crate::model::phone::normalize_phone;
use crate::model::{CallRecord, FinalStatuses, Phase};
use crate::report::callbacks::{Item, ManualClose, NumberCall, Role, worklist};
use crate::report::stats::is_answered;

/// The key in `alohook_meta` saying the worklist holds every stored call (it is built from the
/// calls once, at the first start after the migration that adds it, and rebuilt with every
/// recomputation of the call records).
pub const CALLBACKS_BUILT_KEY: &str = "callbacks_built";
/// Marks the worklist built.
pub const MARK_CALLBACKS_BUILT: &str = "INSERT INTO alohook_meta (key, value) \
    VALUES ('callbacks_built', '1') ON CONFLICT (key) DO UPDATE SET value = excluded.value";

/// The columns [`read_number_call`] reads, in its order.
macro_rules! number_call_columns {
    () => {
        "SELECT call_id, caller_number, direction, phase, call_status, hotline, start_time, \
         answer_time, caller_norm FROM calls"
    };
}

/// A number's calls: the number (`caller_norm`).
pub const NUMBER_CALLS: &str = concat!(number_call_columns!(), " WHERE caller_norm = ?");
/// Every call with a number, number by number (rebuilding the whole worklist).
pub const ALL_NUMBER_CALLS: &str = concat!(
    number_call_columns!(),
    " WHERE caller_norm IS NOT NULL AND caller_norm <> '' ORDER BY caller_norm"
);
/// Every close by hand.
pub const ALL_CLOSES: &str =
    "SELECT item_id, at, note, phone, closed_by FROM callback_closes ORDER BY at, id";
/// A number's closes by hand: the number.
pub const NUMBER_CLOSES: &str = "SELECT item_id, at, note, phone, closed_by FROM callback_closes WHERE phone = ? ORDER BY at, id";
/// A number's stored items: the number.
pub const NUMBER_ITEMS: &str = "SELECT id, body, phone FROM callbacks WHERE phone = ?";

/// Removing an item: its id, for each.
pub const DELETE_ITEM: [&str; 2] = [
    "DELETE FROM callback_hotlines WHERE item_id = ?",
    "DELETE FROM callbacks WHERE id = ?",
];
/// One hotline row: hotline, open, first_missed_at, item id.
pub const DELETE_HOTLINE: &str = "DELETE FROM callback_hotlines WHERE hotline = ? AND open = ? \
    AND first_missed_at = ? AND item_id = ?";
/// Writing an item: id, phone, open, first_missed_at, body. An item's id is made from its
/// number, so a stored item keeps its phone and SET does not name it (SQLite rewrites the
/// entries of every index holding a column named in SET).
pub const UPSERT_ITEM: &str = "INSERT INTO callbacks (id, phone, open, first_missed_at, body) \
    VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET \
    open = excluded.open, first_missed_at = excluded.first_missed_at, body = excluded.body";
/// Writing a stored item whose state and first miss stay (a repeat miss, an attempt): only its
/// JSON, so that none of the listing's index entries is rewritten: body, id.
pub const UPDATE_ITEM_BODY: &str = "UPDATE callbacks SET body = ? WHERE id = ?";
/// One hotline row of an item: hotline, open, first_missed_at, item id.
pub const INSERT_HOTLINE: &str = "INSERT INTO callback_hotlines \
    (hotline, open, first_missed_at, item_id) VALUES (?, ?, ?, ?) \
    ON CONFLICT (hotline, open, first_missed_at, item_id) DO NOTHING";
/// A close by hand: phone, item id, at, note, by.
pub const INSERT_CLOSE: &str =
    "INSERT INTO callback_closes (phone, item_id, at, note, closed_by) VALUES (?, ?, ?, ?, ?)";
/// An item by id.
pub const ITEM_BY_ID: &str = "SELECT body FROM callbacks WHERE id = ?";

/// The worklist's view of a call record.
pub fn number_call(record: &CallRecord, finals: &FinalStatuses) -> NumberCall {
    let f = &record.fields;
    NumberCall {
        call_id: f.call_id.clone().unwrap_or_default(),
        caller_number: f.caller_number.clone().unwrap_or_default(),
        direction: f.direction.clone(),
        ended: record.phase(finals) == Phase::Ended,
        answered: is_answered(f.answer_time, f.call_status.as_deref()),
        hotline: f.hotline.clone().filter(|h| !h.trim().is_empty()),
        start_time: f.start_time,
        answer_time: f.answer_time,
    }
}

/// Adds the numbers whose worklists a merge from `before` (`None`: a new call) to `after` may
/// change, each with whether a miss is involved (without one, a number with no items keeps
/// none). A merge that leaves what the worklist depends on as it was touches nothing: the
/// mid-call event of an answered call is its first effect, its final event changes none.
pub fn touched(
    before: Option<&CallRecord>,
    after: &CallRecord,
    finals: &FinalStatuses,
    phones: &mut BTreeMap<String, bool>,
) {
    let before = before.map(|r| number_call(r, finals));
    let after = number_call(after, finals);
    if before.as_ref().and_then(NumberCall::effect) == after.effect() {
        return;
    }
    for call in before.iter().chain([&after]) {
        if let Some(effect) = call.effect() {
            let phone = normalize_phone(&call.caller_number);
            if !phone.trim().is_empty() {
                *phones.entry(phone).or_default() |= effect.role == Role::Miss;
            }
        }
    }
}

/// When a close by hand of `item` made at `now` takes effect: now, or the item's last miss
/// when that is later (the PBX's clock ahead of this one, or a miss dated in the future), so
/// that the close always closes the item it was made on.
pub fn close_at(item: &Item, now: i64) -> i64 {
    now.max(item.last_missed_at)
}

/// A row of [`NUMBER_CALLS`], with its number.
pub fn read_number_call(row: &impl RowColumns) -> Result<(String, NumberCall), StoreError> {
    let answer_time = row.integer(7)?;
    let call_status = row.text(4)?;
    Ok((
        row.text(8)?.unwrap_or_default(),
        NumberCall {
            call_id: row.required_text(0)?,
            caller_number: row.text(1)?.unwrap_or_default(),
            direction: row.text(2)?,
            ended: row.required_text(3)? == Phase::Ended.as_str(),
            answered: is_answered(answer_time, call_status.as_deref()),
            hotline: row.text(5)?.filter(|h| !h.trim().is_empty()),
            start_time: row.integer(6)?,
            answer_time,
        },
    ))
}

/// A row of [`NUMBER_CLOSES`], with its number.
pub fn read_close(row: &impl RowColumns) -> Result<(String, ManualClose), StoreError> {
    Ok((
        row.required_text(3)?,
        ManualClose {
            item_id: row.required_text(0)?,
            at: row.required_integer(1)?,
            note: row.text(2)?,
            by: row.text(4)?,
        },
    ))
}

/// A stored item's JSON.
pub fn parse_item(body: &str) -> Result<Item, StoreError> {
    serde_json::from_str(body).map_err(|e| StoreError::Corrupt(format!("a callback item: {e}")))
}

/// What to write for one number: the items to remove, those to write (new or changed), and
/// the rows of `callback_hotlines` that change with them. An item's hotlines rarely change when
/// the item does (a repeat miss on the same hotline, a close): only the rows that differ are
/// written, not all of the item's again.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Refresh {
    pub delete: Vec<String>,
    /// Items that are new, or whose state or first miss changed.
    pub upsert: Vec<Item>,
    /// Stored items of which only the JSON changes: the same state and first miss (a repeat
    /// miss, an attempt, another hotline).
    pub rewrite_body: Vec<Item>,
    /// Items whose hotline rows all go, found by item id (no index: a read of the table):
    /// those whose stored JSON did not parse, so what their rows are is not known.
    pub clear_hotlines: Vec<String>,
    /// Rows to remove: of removed items, and those an item no longer has.
    pub remove_hotlines: Vec<HotlineRow>,
    /// Rows to add.
    pub add_hotlines: Vec<HotlineRow>,
}

/// A row of `callback_hotlines`: one per hotline of an item, keyed by the hotline, then the
/// item's state and first miss, so that the listing by hotline (and state) reads that hotline's
/// rows in the listing's order and nothing else; new items' rows go at the end of their
/// hotline's open rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HotlineRow {
    pub hotline: String,
    pub open: bool,
    pub first_missed_at: i64,
    pub item_id: String,
}

impl HotlineRow {
    /// The rows of `item`.
    pub fn of(item: &Item) -> Vec<HotlineRow> {
        item.hotlines
            .iter()
            .map(|h| HotlineRow {
                hotline: h.clone(),
                open: item.open,
                first_missed_at: item.first_missed_at,
                item_id: item.id.clone(),
            })
            .collect()
    }

    /// The arguments of [`INSERT_HOTLINE`] and [`DELETE_HOTLINE`].
    pub fn args(&self) -> [Column; 4] {
        [
            Column::Text(Some(self.hotline.clone())),
            Column::Integer(Some(i64::from(self.open))),
            Column::Integer(Some(self.first_missed_at)),
            Column::Text(Some(self.item_id.clone())),
        ]
    }
}

impl Refresh {
    /// Adds what turns `stored` (id, JSON) into the items `calls` and `closes` give `phone`.
    pub fn plan(
        &mut self,
        phone: &str,
        calls: &[NumberCall],
        closes: &[ManualClose],
        stored: &[(String, String)],
    ) {
        let items = worklist(phone, calls, closes);
        let stored: std::collections::HashMap<&str, &str> = stored
            .iter()
            .map(|(id, body)| (id.as_str(), body.as_str()))
            .collect();
        for (id, body) in &stored {
            if !items.iter().any(|i| i.id == *id) {
                self.delete.push(id.to_string());
                match parse_item(body) {
                    Ok(old) => self.remove_hotlines.extend(HotlineRow::of(&old)),
                    Err(_) => self.clear_hotlines.push(id.to_string()),
                }
            }
        }
        for item in items {
            let old = stored.get(item.id.as_str()).map(|body| parse_item(body));
            let mut body_only = false;
            let old_rows: Vec<HotlineRow> = match &old {
                Some(Ok(old)) if *old == item => continue,
                Some(Ok(old)) => {
                    body_only =
                        old.open == item.open && old.first_missed_at == item.first_missed_at;
                    HotlineRow::of(old)
                }
                None => Vec::new(),
                Some(Err(_)) => {
                    self.clear_hotlines.push(item.id.clone());
                    Vec::new()
                }
            };
            let new_rows = HotlineRow::of(&item);
            for row in &old_rows {
                if !new_rows.contains(row) {
                    self.remove_hotlines.push(row.clone());
                }
            }
            for row in new_rows {
                if !old_rows.contains(&row) {
                    self.add_hotlines.push(row);
                }
            }
            if body_only {
                self.rewrite_body.push(item);
            } else {
                self.upsert.push(item);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.delete.is_empty() && self.upsert.is_empty() && self.rewrite_body.is_empty()
    }
}

/// The arguments of [`UPSERT_ITEM`] for `item`.
pub fn upsert_args(item: &Item) -> Vec<Column> {
    vec![
        Column::Text(Some(item.id.clone())),
        Column::Text(Some(item.phone.clone())),
        Column::Integer(Some(i64::from(item.open))),
        Column::Integer(Some(item.first_missed_at)),
        Column::Text(Some(
            serde_json::to_string(item).expect("an item serialises"),
        )),
    ]
}

/// The listing's filters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallbackFilter {
    /// `Some(true)`: open only; `Some(false)`: closed only; `None`: all.
    pub open: Option<bool>,
    pub hotline: Option<String>,
    /// The item's number, in its normal form (`caller_norm`).
    pub phone: Option<String>,
    /// On `first_missed_at`, Unix seconds, inclusive.
    pub from: Option<i64>,
    pub to: Option<i64>,
    /// Newest first missed first, instead of oldest.
    pub newest_first: bool,
}

/// A position in the listing: after the item with this first miss and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackCursor {
    pub first_missed_at: i64,
    pub id: String,
}

#[derive(Debug, Clone)]
pub struct CallbackPage {
    pub items: Vec<Item>,
    pub next: Option<CallbackCursor>,
}

/// The listing: `limit + 1` items, so that the caller knows whether a next page exists.
///
/// Items are in the order of (`first_missed_at`, `id`), which the index by state gives within
/// one state, and the hotline rows within one hotline and state. Without a state
/// (`state=all`), the open and the closed items are read each in that order, `limit + 1` of
/// each at most, and merged: there is no index by first miss alone, which every new item would
/// cost ingest one more index entry to keep. A number's items (`phone`) are few: read by the
/// index by phone and sorted.
pub fn list_query(
    filter: &CallbackFilter,
    cursor: Option<&CallbackCursor>,
    limit: usize,
) -> Statement {
    let order = if filter.newest_first { "DESC" } else { "ASC" };
    let rows = Column::Integer(Some(limit as i64 + 1));
    match filter.open {
        open if open.is_some() || filter.phone.is_some() => {
            let part = list_part(filter, open, cursor);
            let mut args = part.args;
            args.push(rows);
            Statement {
                sql: format!(
                    "{} ORDER BY {} {order}, {} {order} LIMIT ?",
                    part.sql, part.key.0, part.key.1
                ),
                args,
            }
        }
        _ => {
            let open = list_part(filter, Some(true), cursor);
            let closed = list_part(filter, Some(false), cursor);
            let each = |key: (&str, &str)| {
                format!("ORDER BY {} {order}, {} {order} LIMIT ?", key.0, key.1)
            };
            let mut args = open.args;
            args.push(rows.clone());
            args.extend(closed.args);
            args.push(rows.clone());
            args.push(rows);
            Statement {
                sql: format!(
                    "SELECT body FROM (\
                     SELECT * FROM ({} {}) AS open_items \
                     UNION ALL \
                     SELECT * FROM ({} {}) AS closed_items\
                     ) AS items {}",
                    open.sql,
                    each(open.key),
                    closed.sql,
                    each(closed.key),
                    each(("first_missed_at", "id"))
                ),
                args,
            }
        }
    }
}

/// The listing's `SELECT body, first_missed_at, id … WHERE …` of the items in one state
/// (`None`: either), and the two columns that order it.
struct ListPart {
    sql: String,
    args: Vec<Column>,
    key: (&'static str, &'static str),
}

fn list_part(
    filter: &CallbackFilter,
    open: Option<bool>,
    cursor: Option<&CallbackCursor>,
) -> ListPart {
    let mut terms: Vec<&str> = Vec::new();
    let mut args = Vec::new();
    // By hotline (and not by number): the hotline's rows, in order, each with its item.
    let by_hotline = filter.hotline.is_some() && filter.phone.is_none();
    let (from, columns, open_column, key) = if by_hotline {
        (
            "callback_hotlines h JOIN callbacks c ON c.id = h.item_id",
            "c.body AS body, h.first_missed_at AS first_missed_at, h.item_id AS id",
            "h.open",
            ("h.first_missed_at", "h.item_id"),
        )
    } else {
        (
            "callbacks c",
            "c.body AS body, c.first_missed_at AS first_missed_at, c.id AS id",
            "c.open",
            ("c.first_missed_at", "c.id"),
        )
    };
    let open_term = format!("{open_column} = ?");
    let (from_term, to_term) = (format!("{} >= ?", key.0), format!("{} <= ?", key.0));
    let after = format!(
        "({}, {}) {} (?, ?)",
        key.0,
        key.1,
        if filter.newest_first { "<" } else { ">" }
    );
    if let Some(hotline) = &filter.hotline {
        if by_hotline {
            terms.push("h.hotline = ?");
        } else {
            terms.push(
                "EXISTS (SELECT 1 FROM callback_hotlines h WHERE h.item_id = c.id \
                 AND h.hotline = ?)",
            );
        }
        args.push(Column::Text(Some(hotline.clone())));
    }
    if let Some(open) = open {
        terms.push(&open_term);
        args.push(Column::Integer(Some(i64::from(open))));
    }
    if let Some(phone) = &filter.phone {
        terms.push("c.phone = ?");
        args.push(Column::Text(Some(phone.clone())));
    }
    if let Some(from) = filter.from {
        terms.push(&from_term);
        args.push(Column::Integer(Some(from)));
    }
    if let Some(to) = filter.to {
        terms.push(&to_term);
        args.push(Column::Integer(Some(to)));
    }
    if let Some(c) = cursor {
        terms.push(&after);
        args.push(Column::Integer(Some(c.first_missed_at)));
        args.push(Column::Text(Some(c.id.clone())));
    }
    let where_sql = if terms.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", terms.join(" AND "))
    };
    ListPart {
        sql: format!("SELECT {columns} FROM {from}{where_sql}"),
        args,
        key,
    }
}

/// The page from the rows of [`list_query`] (`limit + 1` at most).
pub fn page(mut items: Vec<Item>, limit: usize) -> CallbackPage {
    let next = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|i| CallbackCursor {
            first_missed_at: i.first_missed_at,
            id: i.id.clone(),
        })
    } else {
        None
    };
    CallbackPage { items, next }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::callbacks::item_id;

    const PHONE: &str = "+84901111111";

    fn call(id: &str, start: i64, hotline: &str, answered: bool) -> NumberCall {
        NumberCall {
            call_id: id.into(),
            caller_number: "0901111111".into(),
            direction: Some("inbound".into()),
            ended: true,
            answered,
            hotline: Some(hotline.into()),
            start_time: Some(start),
            answer_time: answered.then_some(start + 5),
        }
    }

    fn miss(id: &str, start: i64, hotline: &str) -> NumberCall {
        call(id, start, hotline, false)
    }

    /// The rows the calls' items are stored as.
    fn stored(calls: &[NumberCall]) -> Vec<(String, String)> {
        worklist(PHONE, calls, &[])
            .iter()
            .map(|i| (i.id.clone(), serde_json::to_string(i).unwrap()))
            .collect()
    }

    fn plan(calls: &[NumberCall], stored: &[(String, String)]) -> Refresh {
        let mut refresh = Refresh::default();
        refresh.plan(PHONE, calls, &[], stored);
        refresh
    }

    /// A row of an open item first missed at 100.
    fn row(hotline: &str, id: &str) -> HotlineRow {
        HotlineRow {
            hotline: hotline.to_string(),
            open: true,
            first_missed_at: 100,
            item_id: id.to_string(),
        }
    }

    #[test]
    fn only_the_hotline_rows_that_change_are_written() {
        let one = [miss("a1", 100, "H1")];
        let id = item_id(PHONE, "a1");
        // A new item: its rows.
        let r = plan(&one, &[]);
        assert_eq!(r.upsert.len(), 1);
        assert_eq!(r.add_hotlines, [row("H1", &id)]);
        assert!(r.remove_hotlines.is_empty() && r.clear_hotlines.is_empty());
        // Unchanged: nothing at all.
        assert_eq!(plan(&one, &stored(&one)), Refresh::default());
        // A repeat miss on the same hotline: the item changes, its rows do not, nor its state
        // or first miss (only its JSON is written).
        let two = [miss("a1", 100, "H1"), miss("a2", 200, "H1")];
        let r = plan(&two, &stored(&one));
        assert_eq!(
            (r.rewrite_body.len(), r.rewrite_body[0].missed_count),
            (1, 2)
        );
        assert!(r.upsert.is_empty());
        assert!(r.add_hotlines.is_empty() && r.remove_hotlines.is_empty());
        assert!(r.clear_hotlines.is_empty() && r.delete.is_empty());
        // One on another hotline: its row is added; gone again (a resend that corrects it, a
        // recomputation), its row goes.
        let other = [miss("a1", 100, "H1"), miss("a2", 200, "H2")];
        let r = plan(&other, &stored(&one));
        assert_eq!(r.add_hotlines, [row("H2", &id)]);
        assert!(r.remove_hotlines.is_empty());
        let r = plan(&one, &stored(&other));
        assert_eq!(r.remove_hotlines, [row("H2", &id)]);
        assert!(r.add_hotlines.is_empty() && r.clear_hotlines.is_empty());
        assert_eq!((r.rewrite_body.len(), r.upsert.len()), (1, 0));
        // A miss that arrives late and starts first: the item's first miss moves (the listing's
        // order), so all of it is written.
        let earlier = [miss("a0", 50, "H1"), miss("a1", 100, "H1")];
        let r = plan(&earlier, &stored(&one));
        assert_eq!(r.delete, [id.as_str()]);
        assert_eq!((r.upsert.len(), r.rewrite_body.len()), (1, 0));
        assert_eq!(r.remove_hotlines, [row("H1", &id)]);
        let first = HotlineRow {
            first_missed_at: 50,
            ..row("H1", &item_id(PHONE, "a0"))
        };
        assert_eq!(r.add_hotlines, [first]);
        // A call-back closes it: its state changes.
        let closed = [miss("a1", 100, "H1"), call("b1", 300, "H1", true)];
        let r = plan(&closed, &stored(&one));
        assert_eq!((r.upsert.len(), r.rewrite_body.len()), (1, 0));
        assert!(!r.upsert[0].open);
        // Its hotline rows move from the open ones to the closed ones.
        assert_eq!(r.remove_hotlines, [row("H1", &id)]);
        assert_eq!(
            r.add_hotlines,
            [HotlineRow {
                open: false,
                ..row("H1", &id)
            }]
        );
        assert!(r.clear_hotlines.is_empty());
        // An item that goes (its miss turned out answered): all its rows, by hotline.
        let answered = [call("a1", 100, "H1", true)];
        let r = plan(&answered, &stored(&other));
        assert_eq!(r.delete, [id.as_str()]);
        assert_eq!(r.remove_hotlines, [row("H1", &id), row("H2", &id)]);
        assert!(r.upsert.is_empty() && r.add_hotlines.is_empty() && r.clear_hotlines.is_empty());
        // One whose JSON does not parse: by item id.
        let r = plan(&answered, &[(id.clone(), "{not json".into())]);
        assert_eq!(r.delete, [id.as_str()]);
        assert_eq!(r.clear_hotlines, [id.as_str()]);
        assert!(r.remove_hotlines.is_empty());
        // A stored item whose JSON does not parse: what its rows are is not known, so all go and
        // all are written again.
        let r = plan(&two, &[(id.clone(), "{not json".into())]);
        assert_eq!(r.clear_hotlines, [id.as_str()]);
        assert_eq!(r.add_hotlines, [row("H1", &id)]);
        assert_eq!(r.upsert.len(), 1);
    }
}
