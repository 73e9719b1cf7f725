//! How the call listing reads the store, whatever the filter, in bounded work.
//!
//! The listing is ordered by `(sort_key, seq)` descending, and every indexed column has an index
//! `(column, sort_key, seq)`, so a filter on one indexed column is a walk down one index that
//! stops after the page. Three kinds of filter are not, and at 10 million calls they read
//! millions of rows for one page:
//!
//! - an OR (`phone` is caller *or* destination; `agent` is user name *or*, without one, the
//!   destination extension): the planner fetches and sorts every match. Each alternative is
//!   read as its own index walk instead, and the walks are merged (a `UNION` of ordered,
//!   limited reads).
//! - a column without an index beside an indexed one (`status=missed&direction=outbound`): the
//!   walk reads every row of the indexed value to find the rare ones. Each walk examines at
//!   most `budget` index entries (the *window*); a page that the windows could not fill ends
//!   with a cursor at the deepest position every walk has covered, so the client goes on from
//!   there: a page may hold fewer items than `limit`, even none, and still have a
//!   `next_cursor`. Only its absence means the end.
//! - a time range (`from`/`to` select by the call's start time, the listing orders by the
//!   start time of its first event): the range is also given to the index walk as a range of
//!   `sort_key`, which is the start time for nearly every call; the few calls whose start time
//!   changed after they were first seen (`sort_key <> start_time`, a partial index of their
//!   own) are walked separately.
//!
//! [`ListPlan`] says what to run; [`ListPlan::page`] makes the page of what it read. Both
//! backends run the same SQL (`?` placeholders, which PostgreSQL's side numbers).
//!
//! The window is found first, as a position (`LIMIT 1 OFFSET budget - 1` of the walk's index:
//! read from the index alone), and the rows are then read down to it: a range both databases
//! walk in order and stop in after `limit + 1` matches.

use super::{CALL_COLUMNS, CallCursor, CallFilter, CallPage, Column, Pager, Statement, StoredCall};
use crate::model::phone::normalize_phone;

/// Index entries one walk of a listing may examine per request: bounds the work of one page
/// (a few tens of milliseconds) whatever the filter and the store's size.
pub const SCAN_BUDGET: usize = 5_000;

/// The order of the listing.
const ORDER: &str = "ORDER BY sort_key DESC, seq DESC";

/// The calls whose start time is not their sort key (it changed after they were first seen):
/// the condition of the `calls_moved` partial index, written the same way.
const MOVED: &str = "start_time IS NOT NULL AND sort_key <> start_time";

/// One condition and its arguments.
#[derive(Debug, Clone)]
struct Term {
    sql: String,
    args: Vec<Column>,
}

impl Term {
    fn new(sql: &str, args: Vec<Column>) -> Self {
        Term {
            sql: sql.to_string(),
            args,
        }
    }

    fn text(sql: &str, value: &str) -> Self {
        Term::new(sql, vec![Column::Text(Some(value.to_string()))])
    }

    fn integer(sql: &str, value: i64) -> Self {
        Term::new(sql, vec![Column::Integer(Some(value))])
    }

    /// The same condition in a form no index serves (`col || '' = ?`, `col + 0 >= ?`), for the
    /// conditions checked on rows: the database then walks the index the plan chose, not
    /// another one that a condition of the same shape would offer (whatever its statistics say,
    /// or before there are any).
    fn unindexed(&self) -> Term {
        Term {
            sql: unindexed_sql(&self.sql),
            args: self.args.clone(),
        }
    }
}

/// `sql` (`col = ?`, `col >= ?`, `col <= ?`) in a form no index serves (`col || '' = ?`,
/// `col + 0 >= ?`); any other condition as it is.
pub(crate) fn unindexed_sql(sql: &str) -> String {
    match sql.split_once(' ') {
        Some((column, rest)) if is_column(column) && rest == "= ?" => {
            format!("{column} || '' = ?")
        }
        Some((column, rest)) if is_column(column) && (rest == ">= ?" || rest == "<= ?") => {
            format!("{column} + 0 {rest}")
        }
        _ => sql.to_string(),
    }
}

fn is_column(word: &str) -> bool {
    !word.is_empty() && word.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
}

/// How good an index a condition has for the walk: lower is better (fewer rows per value).
/// `None`: no `(column, sort_key, seq)` index.
fn rank(sql: &str) -> Option<u8> {
    const RANKED: [&str; 6] = [
        "caller_norm = ?",
        "destination_norm = ?",
        "user_name = ?",
        "hotline = ?",
        "status_norm = ?",
        "phase = ?",
    ];
    RANKED.iter().position(|r| *r == sql).map(|p| p as u8)
}

/// One alternative of the filter: conditions that all hold.
#[derive(Debug, Clone, Default)]
struct Branch {
    terms: Vec<Term>,
}

/// One walk down one index.
#[derive(Debug, Clone)]
struct Walk {
    /// The condition the walk's index serves (every condition, for a walk by transaction id).
    index: Vec<Term>,
    /// Rows before this position (exclusive): the cursor, and `to`.
    upper: Option<(i64, i64)>,
    /// Rows from this position (inclusive): `from`.
    lower: Option<(i64, i64)>,
    /// The conditions checked on the rows.
    rest: Vec<Term>,
    /// Whether the walk's work is bounded by a window: it is when rows are checked for more than
    /// the index says (every entry examined might not match).
    windowed: bool,
}

impl Walk {
    /// The walk's conditions, with `lower` as its lower bound: each side of the range a single
    /// row value (given two lower bounds, a database takes one for the walk and checks the other
    /// on every entry, which walked the whole range again on every page).
    fn terms(&self, lower: Option<(i64, i64)>) -> Vec<Term> {
        let mut terms = self.index.clone();
        let bound = |sql: &str, (k, s): (i64, i64)| {
            Term::new(
                sql,
                vec![Column::Integer(Some(k)), Column::Integer(Some(s))],
            )
        };
        if let Some(upper) = self.upper {
            terms.push(bound("(sort_key, seq) < (?, ?)", upper));
        }
        if let Some(lower) = lower {
            terms.push(bound("(sort_key, seq) >= (?, ?)", lower));
        }
        terms
    }

    /// `WHERE …` of `terms` (empty when there are none), its arguments added to `args`.
    fn where_sql<'a>(terms: impl IntoIterator<Item = &'a Term>, args: &mut Vec<Column>) -> String {
        let mut sqls = Vec::new();
        for term in terms {
            sqls.push(term.sql.as_str());
            args.extend(term.args.iter().cloned());
        }
        if sqls.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", sqls.join(" AND "))
        }
    }
}

/// What a listing request runs: first, for each windowed walk, where its window ends
/// ([`ListPlan::window_ends`]); then the page's rows down to the shallowest end
/// ([`ListPlan::rows`]); then [`ListPlan::page`].
#[derive(Debug, Clone)]
pub struct ListPlan {
    walks: Vec<Walk>,
    limit: usize,
    budget: usize,
}

/// The plan for the page of `filter` after `cursor`: `limit` items, each walk examining at most
/// `budget` index entries.
pub fn plan(
    filter: &CallFilter,
    cursor: Option<CallCursor>,
    limit: usize,
    budget: usize,
) -> ListPlan {
    let mut times = Vec::new();
    if let Some(from) = filter.from {
        times.push(Term::integer("start_time >= ?", from));
    }
    if let Some(to) = filter.to {
        times.push(Term::integer("start_time <= ?", to));
    }
    let cursor = cursor.map(|c| (c.sort_key, c.seq));
    // `sort_key <= to` and `sort_key >= from` as row values: before (to + 1, MIN), from (from, MIN).
    let before_to = filter
        .to
        .and_then(|to| to.checked_add(1))
        .map(|next| (next, i64::MIN));
    let upper = match (cursor, before_to) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let lower = filter.from.map(|from| (from, i64::MIN));
    let mut walks = Vec::new();
    for branch in branches(filter) {
        if times.is_empty() {
            walks.push(walk(branch.terms, cursor, None));
            continue;
        }
        // Calls whose sort key is their start time, by a range of sort keys...
        let mut terms = branch.terms.clone();
        terms.extend(times.iter().cloned());
        let mut in_range = walk(terms.clone(), upper, lower);
        if filter.to.is_some() && before_to.is_none() {
            // `to` is the last second there is: no bound.
            in_range.upper = cursor;
        }
        walks.push(in_range);
        // ...and the few whose start time moved, by an index of their own.
        terms.push(Term::new(MOVED, vec![]));
        walks.push(walk(terms, cursor, None));
    }
    ListPlan {
        walks,
        limit,
        // An OFFSET the databases take.
        budget: budget.clamp(1, i64::MAX as usize),
    }
}

/// The walk for `terms`: down the best index they have (the listing's own when none), between
/// `lower` and `upper`, the other terms checked on the rows.
fn walk(mut terms: Vec<Term>, upper: Option<(i64, i64)>, lower: Option<(i64, i64)>) -> Walk {
    // A transaction id names a call or two: its index finds them, nothing to bound, and the
    // other conditions are checked on those rows (in a form no other index serves).
    if let Some(i) = terms.iter().position(|t| t.sql == "transaction_id = ?") {
        let index = vec![terms.remove(i)];
        return Walk {
            index,
            upper,
            lower,
            rest: terms.iter().map(Term::unindexed).collect(),
            windowed: false,
        };
    }
    let mut index = Vec::new();
    if let Some(i) = terms.iter().position(|t| t.sql == MOVED) {
        index.push(terms.remove(i));
    } else if let Some((i, _)) = terms
        .iter()
        .enumerate()
        .filter_map(|(i, t)| Some((i, rank(&t.sql)?)))
        .min_by_key(|(_, r)| *r)
    {
        index.push(terms.remove(i));
    }
    Walk {
        windowed: !terms.is_empty(),
        index,
        upper,
        lower,
        rest: terms.iter().map(Term::unindexed).collect(),
    }
}

impl ListPlan {
    /// For each windowed walk, the position of the last index entry its window examines: a row
    /// `(sort_key, seq)`, or none when the walk has fewer entries than the budget.
    pub fn window_ends(&self) -> Vec<Statement> {
        self.walks
            .iter()
            .filter(|w| w.windowed)
            .map(|w| {
                let mut args = Vec::new();
                let where_sql = Walk::where_sql(&w.terms(w.lower), &mut args);
                args.push(Column::Integer(Some(self.budget as i64 - 1)));
                Statement {
                    sql: format!(
                        "SELECT sort_key, seq FROM calls {where_sql} {ORDER} LIMIT 1 OFFSET ?"
                    ),
                    args,
                }
            })
            .collect()
    }

    /// The shallowest of the window ends read: rows below it may have unread rows of that walk
    /// before them, so the page stops there.
    pub fn cutoff(ends: &[Option<CallCursor>]) -> Option<CallCursor> {
        ends.iter().flatten().copied().max_by_key(position)
    }

    /// The page's rows, in order, `limit + 1` at most, none below `cutoff`.
    pub fn rows(&self, cutoff: Option<CallCursor>) -> Statement {
        let cutoff = cutoff.map(|c| (c.sort_key, c.seq));
        let limit = Column::Integer(Some(self.limit as i64 + 1));
        let mut args = Vec::new();
        let mut selects = Vec::new();
        for (i, w) in self.walks.iter().enumerate() {
            let lower = match (w.lower, cutoff) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            if w.windowed {
                // The walk's index entries first, at most a window of them (there are no more
                // above the cutoff), then the other conditions on those rows. Written this way,
                // the database has no choice to make: given every condition at once it guesses
                // how many rows match from its statistics, and where it guesses badly (the moved
                // calls' `sort_key <> start_time`, which it takes for nearly every row) it scans
                // the whole table instead (1 s at 10 million calls).
                let inner = Walk::where_sql(&w.terms(lower), &mut args);
                args.push(Column::Integer(Some(self.budget as i64)));
                let rest = Walk::where_sql(&w.rest, &mut args);
                args.push(limit.clone());
                selects.push(format!(
                    "SELECT {CALL_COLUMNS} FROM (SELECT * FROM calls {inner} {ORDER} LIMIT ?) \
                     AS window{i} {rest} {ORDER} LIMIT ?"
                ));
                continue;
            }
            let terms = w.terms(lower).into_iter().chain(w.rest.iter().cloned());
            let terms: Vec<Term> = terms.collect();
            let where_sql = Walk::where_sql(&terms, &mut args);
            args.push(limit.clone());
            selects.push(format!(
                "SELECT {CALL_COLUMNS} FROM calls {where_sql} {ORDER} LIMIT ?"
            ));
        }
        if selects.len() == 1 {
            return Statement {
                sql: selects.remove(0),
                args,
            };
        }
        // Each walk ordered and limited on its own, then merged (UNION: a call two walks find
        // is listed once).
        let merged = selects
            .iter()
            .enumerate()
            .map(|(i, s)| format!("SELECT * FROM ({s}) AS w{i}"))
            .collect::<Vec<_>>()
            .join(" UNION ");
        args.push(limit);
        Statement {
            sql: format!("SELECT {CALL_COLUMNS} FROM ({merged}) AS u {ORDER} LIMIT ?"),
            args,
        }
    }

    /// The page of `rows` (as [`ListPlan::rows`] read them), given the `cutoff` they were read
    /// with: when the rows do not fill the page, it goes on below the cutoff.
    pub fn page(
        &self,
        rows: Vec<(i64, StoredCall)>,
        cutoff: Option<CallCursor>,
        size: impl Fn(&StoredCall) -> usize,
    ) -> CallPage {
        let mut pager = Pager::new(self.limit);
        for (seq, call) in rows {
            let bytes = size(&call);
            if !pager.push((seq, call), bytes) {
                break;
            }
        }
        let mut page = super::call_page(pager);
        if page.next.is_none() {
            page.next = cutoff;
        }
        page
    }
}

fn position(c: &CallCursor) -> (i64, i64) {
    (c.sort_key, c.seq)
}

/// The filter as alternatives (one unless it has `phone` or `agent`), each with every
/// condition but the time range.
fn branches(filter: &CallFilter) -> Vec<Branch> {
    let mut common = Vec::new();
    let mut text = |sql: &str, value: Option<String>| {
        if let Some(v) = value {
            common.push(Term::text(sql, &v));
        }
    };
    text(
        "status_norm = ?",
        filter.status.as_deref().map(str::to_lowercase),
    );
    text(
        "direction = ?",
        filter.direction.as_deref().map(str::to_lowercase),
    );
    text("hotline = ?", filter.hotline.clone());
    text("user_name = ?", filter.user_name.clone());
    text(
        "destination_norm = ?",
        filter.destination_number.as_deref().map(normalize_phone),
    );
    text("transaction_id = ?", filter.transaction_id.clone());
    text("phase = ?", filter.phase.map(|p| p.as_str().to_string()));
    let mut alternatives: Vec<Vec<Vec<Term>>> = Vec::new();
    if let Some(phone) = &filter.phone {
        alternatives.push(vec![
            vec![Term::text("caller_norm = ?", phone)],
            vec![Term::text("destination_norm = ?", phone)],
        ]);
    }
    if let Some(agent) = &filter.agent {
        alternatives.push(vec![
            vec![Term::text("user_name = ?", agent)],
            // `destination_norm` is the normal form of `destination_number`: equal numbers have
            // equal normal forms, so its index narrows and the exact comparison decides.
            vec![
                Term::text("destination_norm = ?", &normalize_phone(agent)),
                Term::text("destination_number = ?", agent),
                Term::new("(user_name IS NULL OR TRIM(user_name) = '')", vec![]),
            ],
        ]);
    }
    let mut out = vec![Branch { terms: common }];
    for choices in alternatives {
        out = out
            .iter()
            .flat_map(|b| {
                choices.iter().map(move |c| Branch {
                    terms: b.terms.iter().chain(c).cloned().collect(),
                })
            })
            .collect();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Option<String> {
        Some(s.to_string())
    }

    fn placeholders_match(st: &Statement) {
        assert_eq!(st.sql.matches('?').count(), st.args.len(), "{}", st.sql);
    }

    #[test]
    fn one_indexed_filter_is_one_walk_without_a_window() {
        let plan = plan(
            &CallFilter {
                status: text("Missed"),
                ..Default::default()
            },
            None,
            50,
            100,
        );
        assert!(plan.window_ends().is_empty());
        let rows = plan.rows(None);
        placeholders_match(&rows);
        assert!(rows.sql.contains("WHERE status_norm = ?"), "{}", rows.sql);
        assert_eq!(rows.args[0], Column::Text(text("missed")));
        assert_eq!(rows.args.last(), Some(&Column::Integer(Some(51))));
    }

    #[test]
    fn the_best_index_drives_and_the_rest_is_checked_on_rows() {
        let plan = plan(
            &CallFilter {
                status: text("missed"),
                hotline: text("1900"),
                direction: text("outbound"),
                ..Default::default()
            },
            Some(CallCursor {
                sort_key: 10,
                seq: 3,
            }),
            50,
            100,
        );
        let ends = plan.window_ends();
        assert_eq!(ends.len(), 1);
        placeholders_match(&ends[0]);
        assert!(
            ends[0]
                .sql
                .contains("WHERE hotline = ? AND (sort_key, seq) < (?, ?)"),
            "{}",
            ends[0].sql
        );
        assert_eq!(ends[0].args.last(), Some(&Column::Integer(Some(99))));
        let rows = plan.rows(Some(CallCursor {
            sort_key: 5,
            seq: 1,
        }));
        placeholders_match(&rows);
        assert!(rows.sql.contains("status_norm || '' = ?"), "{}", rows.sql);
        assert!(rows.sql.contains("direction || '' = ?"), "{}", rows.sql);
        assert!(
            rows.sql.contains("(sort_key, seq) >= (?, ?)"),
            "{}",
            rows.sql
        );
    }

    #[test]
    fn phone_and_agent_are_merged_walks_and_a_range_adds_the_moved_calls() {
        let plan = plan(
            &CallFilter {
                phone: text("+84901000001"),
                agent: text("101"),
                from: Some(100),
                ..Default::default()
            },
            None,
            20,
            100,
        );
        let rows = plan.rows(None);
        placeholders_match(&rows);
        // 2 alternatives × 2 alternatives × (range, moved).
        assert_eq!(rows.sql.matches(" UNION ").count(), 7, "{}", rows.sql);
        assert!(rows.sql.contains("(sort_key, seq) >= (?, ?)"));
        assert!(rows.sql.contains(MOVED));
        assert!(rows.sql.contains("start_time + 0 >= ?"));
        for end in plan.window_ends() {
            placeholders_match(&end);
        }
    }

    #[test]
    fn a_transaction_id_is_looked_up_by_its_index_without_a_window() {
        let plan = plan(
            &CallFilter {
                transaction_id: text("T1"),
                direction: text("inbound"),
                ..Default::default()
            },
            None,
            20,
            100,
        );
        assert!(plan.window_ends().is_empty());
        let rows = plan.rows(None);
        assert!(
            rows.sql.contains("WHERE transaction_id = ?"),
            "{}",
            rows.sql
        );
        // The other conditions in a form no index serves: the transaction id's index leads.
        assert!(rows.sql.contains("direction || '' = ?"), "{}", rows.sql);
    }

    /// Each side of a walk's range is one row value: a second lower bound (the range's `from`
    /// beside the cutoff) made the database walk from `from` on every page.
    #[test]
    fn a_range_and_a_cutoff_make_one_bound_on_each_side() {
        let plan = plan(
            &CallFilter {
                status: text("missed"),
                direction: text("outbound"),
                from: Some(100),
                to: Some(900),
                ..Default::default()
            },
            Some(CallCursor {
                sort_key: 800,
                seq: 5,
            }),
            10,
            50,
        );
        let rows = plan.rows(Some(CallCursor {
            sort_key: 300,
            seq: 7,
        }));
        placeholders_match(&rows);
        // Two walks (in range, moved), each with one upper and one lower bound.
        assert_eq!(
            rows.sql.matches("(sort_key, seq) >= (?, ?)").count(),
            2,
            "{}",
            rows.sql
        );
        assert_eq!(
            rows.sql.matches("(sort_key, seq) < (?, ?)").count(),
            2,
            "{}",
            rows.sql
        );
        assert!(!rows.sql.contains("sort_key >= ?"), "{}", rows.sql);
        assert!(!rows.sql.contains("sort_key <= ?"), "{}", rows.sql);
        // The cutoff (300, 7) wins over from (100, MIN); the cursor (800, 5) over to (901, MIN).
        let ints: Vec<i64> = rows
            .args
            .iter()
            .filter_map(|c| match c {
                Column::Integer(Some(i)) => Some(*i),
                _ => None,
            })
            .collect();
        // Then the window's size: the walk reads its index entries first, then checks the rest.
        assert_eq!(&ints[..6], &[800, 5, 300, 7, 50, 100], "{ints:?}");
        assert!(
            rows.sql.contains("LIMIT ?) AS window0 WHERE"),
            "{}",
            rows.sql
        );
        for end in plan.window_ends() {
            placeholders_match(&end);
            assert!(end.sql.matches("(sort_key, seq) >= (?, ?)").count() <= 1);
        }
    }

    #[test]
    fn the_cutoff_is_the_shallowest_window_end() {
        let c = |sort_key, seq| Some(CallCursor { sort_key, seq });
        assert_eq!(ListPlan::cutoff(&[None, None]), None);
        assert_eq!(
            ListPlan::cutoff(&[c(5, 1), None, c(7, 0), c(7, 2)]),
            c(7, 2)
        );
    }
}
