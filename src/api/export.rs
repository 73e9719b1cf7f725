//! `GET /api/export/calls` and `GET /api/export/callbacks`: the whole result of a filter as
//! CSV or JSON Lines, streamed a page at a time (memory stays flat whatever its size).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::callbacks::callback_filter;
use super::calls::{CALL_FILTERS, Params, call_filter};
use super::error::ApiError;
use super::openapi::{CallFilters, CallbackFilters, ErrorBody, ExportFormat};
use crate::report::export::{Export, Format, Pages};

/// Pages rendered ahead of the client: how far reading the store may run ahead of the network.
const PAGES_AHEAD: usize = 2;

/// Exports streamed at once; one more is answered 503 with Retry-After. Each reads the store a
/// page at a time for as long as its download lasts, beside the API's reads.
pub const EXPORTS_AT_ONCE: usize = 4;

/// `format` (`csv` by default, or `jsonl`) and `bom` (`true` puts a UTF-8 byte order mark before
/// a CSV, for Excel).
fn format_and_bom(params: &Params) -> Result<(Format, bool), ApiError> {
    let format = match params.get("format") {
        None => Format::Csv,
        Some(f) => Format::parse(f)
            .ok_or_else(|| ApiError::parameter("format", "must be one of csv, jsonl"))?,
    };
    let bom = match params.get("bom") {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(ApiError::parameter("bom", "must be true or false")),
    };
    Ok((format, bom))
}

/// `GET /api/export/calls?format=csv|jsonl&bom=true&<any /api/calls filter>`.
#[utoipa::path(get, path = "/export/calls", tag = "figures",
    description = "Every call the filters select, streamed (no limit). CSV columns in the README's fixed order.",
    params(CallFilters, ExportFormat),
    responses((status = 200, description = "CSV (`text/csv`) or JSON Lines (`application/jsonl`), one call per row or line",
            content((String = "text/csv"), (String = "application/jsonl"))), (status = 400, description = "A parameter is wrong", body = ErrorBody)))]
pub async fn calls(
    State(state): State<AppState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let known: Vec<&str> = CALL_FILTERS
        .iter()
        .chain(&["format", "bom"])
        .copied()
        .collect();
    let params = Params::new(query, &known)?;
    let (format, bom) = format_and_bom(&params)?;
    let filter = call_filter(&params, &state.tz)?;
    stream(state, Export::Calls(filter), format, bom)
}

/// The parameters of `GET /api/export/callbacks`.
pub(crate) const CALLBACK_PARAMS: &[&str] = &[
    "format", "bom", "state", "hotline", "phone", "from", "to", "sort",
];

/// `GET /api/export/callbacks?format&bom&state&hotline&from&to&sort`.
#[utoipa::path(get, path = "/export/callbacks", tag = "figures",
    description = "Every callback item the filters select, streamed (no limit).",
    params(CallbackFilters, ExportFormat),
    responses((status = 200, description = "CSV (`text/csv`) or JSON Lines (`application/jsonl`), one item per row or line",
            content((String = "text/csv"), (String = "application/jsonl"))), (status = 400, description = "A parameter is wrong", body = ErrorBody)))]
pub async fn callbacks(
    State(state): State<AppState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let params = Params::new(query, CALLBACK_PARAMS)?;
    let (format, bom) = format_and_bom(&params)?;
    let filter = callback_filter(&params, &state.tz)?;
    stream(state, Export::Callbacks(filter), format, bom)
}

/// The response: the head now, then each page as the client takes it. A store error part-way,
/// or alohook shutting down, cuts the response short (the client sees an incomplete body, never
/// a silently short file that ends cleanly).
fn stream(
    state: AppState,
    export: Export,
    format: Format,
    bom: bool,
) -> Result<Response, ApiError> {
    let Ok(place) = state.exports.clone().try_acquire_owned() else {
        return Err(ApiError::Busy(format!(
            "{EXPORTS_AT_ONCE} exports are being streamed; try again when one is done"
        )));
    };
    let name = export.name();
    let mut stopping = state.stopping.clone();
    let mut pages = Pages::new(export, format, state.tz.clone());
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(PAGES_AHEAD);
    let head = pages.head(bom);
    tokio::spawn(async move {
        let _place = place;
        if !head.is_empty() && tx.send(Ok(head)).await.is_err() {
            return;
        }
        loop {
            if *stopping.borrow_and_update() {
                let _ = tx
                    .send(Err(std::io::Error::other("alohook is shutting down")))
                    .await;
                return;
            }
            let chunk = match pages.next(state.store.as_ref()).await {
                Ok(Some((chunk, _))) => Ok(chunk),
                Ok(None) => return,
                Err(error) => {
                    tracing::warn!(%error, export = name, "an export stopped part-way");
                    Err(std::io::Error::other(error.to_string()))
                }
            };
            let failed = chunk.is_err();
            // The client went away: stop reading.
            if tx.send(chunk).await.is_err() || failed {
                return;
            }
        }
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    Ok((
        [
            (header::CONTENT_TYPE, format.content_type().to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}.{}\"", format.extension()),
            ),
        ],
        axum::body::Body::from_stream(body),
    )
        .into_response())
}
