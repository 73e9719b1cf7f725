//! The change feed over HTTP: `GET /api/changes` for consumers that poll, `GET /api/stream`
//! (Server-Sent Events) for those that listen.

use std::time::Duration;

use axum::Extension;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::AppState;
use super::calls::Params;
use super::conn::Peer;
use super::error::ApiError;
use super::openapi::{ChangeFilters, ChangePage, ChangesLimit, ErrorBody};
use crate::feed::FeedReader;
use crate::feed::sse::{KEEP_ALIVE, RETRY_MILLIS};
use crate::model::change::{ChangeFilter, ChangeType};
use crate::model::phone::normalize_phone;

/// The filters of the stream and of `/api/changes`.
const FILTERS: &[&str] = &[
    "types",
    "call_id",
    "status",
    "phase",
    "direction",
    "hotline",
    "user_name",
    "transaction_id",
    "destination_number",
    "phone",
];

/// The parameters a request of the feed takes: `since`, `extra`, and the filters.
pub(crate) fn feed_params(extra: &[&'static str]) -> Vec<&'static str> {
    [&["since"], extra, FILTERS].concat()
}
/// Changes per page of `/api/changes` when `limit` is not given.
const DEFAULT_CHANGES_LIMIT: usize = 100;
/// An idle stream sends a comment this often.
const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(15);

/// The filters, with the meaning they have in `/api/calls`.
fn change_filter(params: &Params) -> Result<ChangeFilter, ApiError> {
    let types = params
        .get("types")
        .map(|list| {
            list.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(|t| {
                    ChangeType::parse(t).ok_or_else(|| {
                        ApiError::parameter(
                            "types",
                            format!(
                                "unknown type {t:?}; known: {}",
                                ChangeType::ALL.map(ChangeType::as_str).join(", ")
                            ),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    Ok(ChangeFilter {
        types,
        call_id: params.text("call_id"),
        status: params.get("status").map(str::to_lowercase),
        phase: params.phase()?,
        direction: params.direction()?,
        hotline: params.text("hotline"),
        user_name: params.text("user_name"),
        transaction_id: params.text("transaction_id"),
        destination_number: params.get("destination_number").map(normalize_phone),
        phone: params.get("phone").map(normalize_phone),
    })
}

/// A position in the feed: a non-negative integer.
fn position(name: &str, value: &str) -> Result<i64, ApiError> {
    value
        .trim()
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| ApiError::parameter(name, "must be a non-negative integer (a seq)"))
}

/// A start position the feed has not reached: the client's position comes from another database
/// (or one started again), and following it would skip every change up to there. Checked
/// against the store when the published head is behind it (another instance may have committed
/// it a moment ago).
async fn within_the_feed(state: &AppState, name: &str, position: i64) -> Result<(), ApiError> {
    if position <= state.feed.head() {
        return Ok(());
    }
    let last = state.feed.log().last_seq().await?;
    if position <= last {
        return Ok(());
    }
    Err(ApiError::parameter(
        name,
        format!(
            "{position} is beyond the newest change of this alohook ({last}): was the position \
             kept from another database? Start from 0 for everything, or from {last} for new \
             changes only"
        ),
    ))
}

/// `GET /api/changes?since=N&limit=L&…`: the changes after `since` (default 0), oldest first.
#[utoipa::path(get, path = "/changes", tag = "feed",
    params(ChangeFilters, ChangesLimit),
    responses((status = 200, body = ChangePage), (status = 400, description = "A parameter is wrong", body = ErrorBody)))]
pub async fn list_changes(
    State(state): State<AppState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let params = Params::new(query, &feed_params(&["limit"]))?;
    let filter = change_filter(&params)?;
    let limit = params.limit_or(DEFAULT_CHANGES_LIMIT)?;
    let since = params
        .get("since")
        .map(|s| position("since", s))
        .transpose()?
        .unwrap_or(0);
    within_the_feed(&state, "since", since).await?;
    let page = state
        .feed
        .log()
        .changes(since, &filter, limit, crate::store::PAGE_BYTES)
        .await?;
    let next_since = page.items.last().map_or(since, |c| c.seq);
    // The changes are JSON already: written as they are.
    let mut body =
        String::with_capacity(page.items.iter().map(|c| c.json().len() + 1).sum::<usize>() + 40);
    body.push_str("{\"items\":[");
    for (i, change) in page.items.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(change.json());
    }
    body.push_str(&format!("],\"next_since\":{next_since}}}"));
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response())
}

/// `GET /api/stream`: every matching change after the resume position, then live.
#[utoipa::path(get, path = "/stream", tag = "feed",
    description = "Server-Sent Events: each message is `id: <seq>`, `event: <type>`, `data: <change JSON>`; a comment every 15 s when idle. Resumes after `Last-Event-ID` (or `since`).",
    params(ChangeFilters,
        ("Last-Event-ID" = Option<i64>, Header, description = "The last `seq` received; wins over `since`")),
    responses((status = 200, description = "The live stream", content_type = "text/event-stream", body = String), (status = 400, description = "A parameter is wrong", body = ErrorBody)))]
pub async fn stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    peer: Option<Extension<ConnectInfo<Peer>>>,
    session: Option<Extension<crate::web::session::Session>>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let params = Params::new(query, &feed_params(&[]))?;
    let filter = change_filter(&params)?;
    // What an EventSource sends when it reconnects wins over the URL it was opened with.
    let last_event_id = headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::parameter("Last-Event-ID", "must be a seq"))
                .and_then(|v| position("Last-Event-ID", v))
        })
        .transpose()?;
    let since = params
        .get("since")
        .map(|s| position("since", s))
        .transpose()?;
    let start = match (last_event_id, since) {
        (Some(position), _) => {
            within_the_feed(&state, "Last-Event-ID", position).await?;
            position
        }
        (None, Some(position)) => {
            within_the_feed(&state, "since", position).await?;
            position
        }
        (None, None) => state.feed.head(),
    };
    let Ok(place) = state.streams.clone().try_acquire_owned() else {
        state.metrics.streams_refused.inc();
        tracing::warn!("a live stream was refused: --max-streams are open");
        return Err(ApiError::Busy(format!(
            "{} live streams are open, the most this alohook takes (--max-streams); retry later",
            state.max_streams
        )));
    };
    let open = OpenStream {
        reader: state.feed.reader(start, filter),
        stopping: state.stopping.clone(),
        _place: place,
        _listening: peer.map(|Extension(ConnectInfo(peer))| peer.streaming()),
        metrics: state.metrics.clone(),
        opened: false,
        session: session.map(|Extension(s)| SessionCheck {
            id: s.id(),
            store: state.store.clone(),
            checked: tokio::time::Instant::now(),
        }),
    };
    state.metrics.streams.inc();
    let body = futures_util::stream::unfold(open, |mut open| async move {
        let chunk = open.next_chunk().await?;
        Some((Ok::<_, std::convert::Infallible>(chunk), open))
    });
    Ok((
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            // nginx would otherwise hold the stream back in its buffers.
            (
                header::HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            ),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

/// A stream being answered, and what it holds while open.
struct OpenStream {
    reader: FeedReader,
    stopping: tokio::sync::watch::Receiver<bool>,
    _place: tokio::sync::OwnedSemaphorePermit,
    _listening: Option<super::conn::Streaming>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    opened: bool,
    /// A stream opened with the dashboard's session: it ends once the session signs out.
    session: Option<SessionCheck>,
}

/// How often a stream opened with a session checks that the session was not signed out.
const SESSION_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

struct SessionCheck {
    id: String,
    store: std::sync::Arc<dyn crate::store::Store>,
    checked: tokio::time::Instant,
}

impl SessionCheck {
    /// Whether the session was signed out (checked at most every [`SESSION_CHECK_EVERY`]; a
    /// store that cannot say lets the stream go on).
    async fn ended(&mut self) -> bool {
        if self.checked.elapsed() < SESSION_CHECK_EVERY {
            return false;
        }
        self.checked = tokio::time::Instant::now();
        matches!(self.store.session_ended(&self.id).await, Ok(true))
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.metrics.streams.dec();
    }
}

impl OpenStream {
    /// The next bytes to send: the retry hint first, then changes as they come (a page of them
    /// at once: one write, and one chunk for the client to read), or a keep-alive comment when
    /// there were none for a while; `None` to end the stream (shutdown, or the store failed: the
    /// client resumes from the last `id` it got).
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if !self.opened {
            self.opened = true;
            // The position the stream starts after, as an id without data: EventSource does not
            // dispatch it but resumes from it, so a reconnect before the first change misses
            // nothing either.
            return Some(Bytes::from(format!(
                "retry: {RETRY_MILLIS}\nid: {}\n\n",
                self.reader.position()
            )));
        }
        if *self.stopping.borrow() {
            return None;
        }
        if let Some(check) = &mut self.session
            && check.ended().await
        {
            return None;
        }
        let check_due = async {
            match &self.session {
                Some(check) => tokio::time::sleep_until(check.checked + SESSION_CHECK_EVERY).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // A quiet stream of a session still checks it (and sends nothing then).
            _ = check_due => Some(Bytes::new()),
            _ = self.stopping.changed() => None,
            next = self.reader.next() => match next {
                Ok(changes) => {
                    // Each change's message is rendered once for all streams; a page of them is
                    // put together here (a copy costs less than a write and a chunk per change).
                    let size = changes.iter().map(|c| c.message().len()).sum();
                    let mut page = bytes::BytesMut::with_capacity(size);
                    for change in &changes {
                        page.extend_from_slice(&change.message());
                    }
                    Some(page.freeze())
                }
                Err(error) => {
                    tracing::warn!(%error, position = self.reader.position(), "ending a live stream: the feed cannot be read; the client resumes from its last id");
                    None
                }
            },
            _ = tokio::time::sleep(KEEP_ALIVE_EVERY) => Some(Bytes::from_static(KEEP_ALIVE.as_bytes())),
        }
    }
}
