//! The call object as the API shows it: the same JSON in `GET /api/calls/{id}`, in the listing,
//! and in every change of the feed (which keeps it as it was when the change was committed).

use jiff::tz::TimeZone;
use serde::Serialize;

use super::merge::{CallRecord, Phase};
use super::time::{format_local, format_utc_micros};

/// The call object of the API: exactly these fields, absent values as `null`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CallView {
    pub call_id: String,
    pub call_status: Option<String>,
    pub phase: &'static str,
    pub direction: Option<String>,
    pub caller_number: Option<String>,
    pub destination_number: Option<String>,
    pub hotline: Option<String>,
    pub user_name: Option<String>,
    pub transaction_id: Option<String>,
    pub object_id: Option<i64>,
    pub start_time: Option<String>,
    pub answer_time: Option<String>,
    pub end_time: Option<String>,
    pub hangup_by: Option<String>,
    pub total_duration: Option<i64>,
    pub holding_duration: Option<i64>,
    pub ring_seconds: Option<i64>,
    pub talk_seconds: Option<i64>,
    pub recording_url: Option<String>,
    pub event_count: i64,
    pub first_received_at: String,
    pub last_received_at: String,
}

impl CallView {
    /// The view of `record` in `phase`.
    pub fn of(record: CallRecord, phase: Phase, tz: &TimeZone) -> Self {
        let r = &record;
        let ring_seconds = r.ring_seconds();
        let talk_seconds = r.talk_seconds();
        let local = |t: Option<i64>| t.map(|s| format_local(s, tz));
        let (event_count, first, last) = (
            record.event_count,
            record.first_received_at,
            record.last_received_at,
        );
        let f = record.fields;
        CallView {
            call_id: f.call_id.unwrap_or_default(),
            call_status: f.call_status,
            phase: phase.as_str(),
            direction: f.direction,
            caller_number: f.caller_number,
            destination_number: f.destination_number,
            hotline: f.hotline,
            user_name: f.user_name,
            transaction_id: f.transaction_id,
            object_id: f.object_id,
            start_time: local(f.start_time),
            answer_time: local(f.answer_time),
            end_time: local(f.end_time),
            hangup_by: f.hangup_by,
            total_duration: f.total_duration,
            holding_duration: f.holding_duration,
            ring_seconds,
            talk_seconds,
            recording_url: f.recording_url,
            event_count,
            first_received_at: format_utc_micros(first),
            last_received_at: format_utc_micros(last),
        }
    }
}
