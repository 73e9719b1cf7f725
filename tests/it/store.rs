use std::sync::Arc;

use alohook::model::{CallRecord, FinalStatuses, ParsedEvent, parse_body};
use alohook::store::MergeSettings;
use alohook::store::postgres::PgStore;
use alohook::store::sqlite::SqliteStore;
use alohook::store::{Incoming, Outcome, RejectedBody, Store};
use jiff::tz::TimeZone;
use serde_json::{Value, json};

use crate::on_every_backend;
use crate::support::*;

async fn open(db: &Db) -> Arc<dyn Store> {
    match db.database() {
        Some(url) => Arc::new(PgStore::open(&url, MergeSettings::default()).await.unwrap()),
        None => Arc::new(
            SqliteStore::open(&db.path().join("alohook.db"), MergeSettings::default()).unwrap(),
        ),
    }
}

fn parse(body: &Value) -> ParsedEvent {
    parse_body(
        body.to_string().as_bytes(),
        &TimeZone::fixed(jiff::tz::offset(7)),
    )
    .unwrap()
}

fn event(body: &Value, received_at: i64) -> Incoming {
    Incoming::Event {
        event: Box::new(parse(body)),
        received_at,
    }
}

fn ringing(call_id: &str) -> Value {
    json!({"call_id": call_id, "call_status": "ringing", "direction": "inbound",
           "caller_number": "0389123456", "hotline": "1900", "starttime": "2024-01-13 15:00:30",
           "eventType": "call"})
}

/// What merging `events` (event id, body) in any order must give.
fn reference(call_id: &str, events: &[(i64, &Value)], received_at: i64) -> CallRecord {
    let finals = FinalStatuses::default();
    let (first, rest) = events.split_first().unwrap();
    let first = parse(first.1);
    let mut record = CallRecord::from_event(
        call_id,
        &first.fields,
        first.source_key(&finals),
        received_at,
    );
    for (_, body) in rest {
        let event = parse(body);
        record.merge(&event.fields, event.source_key(&finals), received_at);
    }
    record
}

fn stored_id(outcome: &Outcome) -> i64 {
    match outcome {
        Outcome::Stored { event_id } => *event_id,
        other => panic!("expected a new event, got {other:?}"),
    }
}

on_every_backend! {
    /// One batch holding a call's whole life, a resend of one of its events, a bad body and an
    /// event of another type; then a batch of resends only.
    async fn one_batch_of_every_kind(db) {
        let store = open(&db).await;
        let (ring, talk, end) = (ringing("B1"), in_progress("B1"), ended("B1"));
        let other = json!({"call_id": "B1", "eventType": "survey", "score": 5});
        let outcomes = store
            .commit(vec![
                event(&ring, 10),
                event(&talk, 11),
                event(&end, 12),
                event(&end, 13),
                Incoming::Rejected(RejectedBody {
                    reason: "invalid_json",
                    detail: "not JSON".into(),
                    body: b"{".to_vec(),
                    received_at: 14,
                }),
                event(&other, 15),
            ])
            .await
            .unwrap();
        assert_eq!(outcomes.len(), 6);
        let ids: Vec<i64> = outcomes[..3].iter().map(stored_id).collect();
        assert!(ids[0] < ids[1] && ids[1] < ids[2], "ids follow arrival: {ids:?}");
        assert_eq!(outcomes[3], Outcome::Duplicate { event_id: ids[2] });
        assert!(matches!(outcomes[4], Outcome::Quarantined { .. }));
        stored_id(&outcomes[5]);

        let call = store.call("B1").await.unwrap().unwrap();
        let expected = reference("B1", &[(ids[0], &ring), (ids[1], &talk), (ids[2], &end)], 10);
        assert_eq!(call.record.fields, expected.fields);
        assert_eq!(call.record.sources, expected.sources);
        assert_eq!(call.record.event_count, 3, "the survey is not a call event");
        assert_eq!((call.record.first_received_at, call.record.last_received_at), (10, 12));

        // Resends only: the first event twice in one batch, the last once.
        let outcomes = store
            .commit(vec![event(&ring, 20), event(&end, 21), event(&ring, 22)])
            .await
            .unwrap();
        assert_eq!(
            outcomes,
            vec![
                Outcome::Duplicate { event_id: ids[0] },
                Outcome::Duplicate { event_id: ids[2] },
                Outcome::Duplicate { event_id: ids[0] },
            ]
        );
        let events = store.call_events("B1").await.unwrap().unwrap();
        let deliveries: Vec<(i64, i64)> =
            events.iter().map(|e| (e.event_id, e.deliveries)).collect();
        assert_eq!(deliveries[..3], [(ids[0], 3), (ids[1], 1), (ids[2], 3)]);
        assert_eq!(store.call("B1").await.unwrap().unwrap().record.event_count, 3);
    }

    /// Many calls in one batch, some new and some known, each with several events.
    async fn a_batch_of_many_calls(db) {
        let store = open(&db).await;
        let first: Vec<Incoming> = (0..50).map(|i| event(&ringing(&format!("M{i}")), 1)).collect();
        let first_ids: Vec<i64> = store.commit(first).await.unwrap().iter().map(stored_id).collect();
        let mut second = Vec::new();
        for i in 0..100 {
            let id = format!("M{i}");
            second.push(event(&in_progress(&id), 2));
            second.push(event(&ended(&id), 3));
        }
        let ids: Vec<i64> = store.commit(second).await.unwrap().iter().map(stored_id).collect();
        for i in 0..100 {
            let id = format!("M{i}");
            let (talk, end) = (in_progress(&id), ended(&id));
            let ring = ringing(&id);
            let mut events = vec![(ids[2 * i], &talk), (ids[2 * i + 1], &end)];
            if i < 50 {
                events.insert(0, (first_ids[i], &ring));
            }
            let call = store.call(&id).await.unwrap().unwrap();
            let expected = reference(&id, &events, 1);
            assert_eq!(call.record.fields, expected.fields, "{id}");
            assert_eq!(call.record.sources, expected.sources, "{id}");
            assert_eq!(call.record.event_count, events.len() as i64, "{id}");
        }
    }
}

/// Two instances take turns with one call's events. Each writer caches the call it wrote, and
/// each cached record goes stale when the other merges; the row's event count must catch that,
/// or an instance would write its stale record over the other's merge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(postgres_tests),
    ignore = "set ALOHOOK_TEST_POSTGRES_URL to run it"
)]
async fn instances_never_write_over_each_others_merges() {
    let db = Db::postgres().await;
    let url = db.database().unwrap();
    let a = PgStore::open(&url, MergeSettings::default()).await.unwrap();
    let b = PgStore::open(&url, MergeSettings::default()).await.unwrap();
    let bodies = [
        ringing("S1"),
        json!({"call_id": "S1", "call_status": "ringing", "destination_number": "101",
               "eventType": "call"}),
        in_progress("S1"),
        json!({"call_id": "S1", "call_status": "answered",
               "recording_url": "https://media.example.invalid/r.mp3",
               "eventType": "call"}),
        ended("S1"),
    ];
    let mut merged = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        let store = if i % 2 == 0 { &a } else { &b };
        let outcome = store.commit(vec![event(body, 5)]).await.unwrap();
        merged.push((stored_id(&outcome[0]), body));
        let call = a.call("S1").await.unwrap().unwrap();
        let expected = reference("S1", &merged, 5);
        assert_eq!(call.record.fields, expected.fields, "after event {i}");
        assert_eq!(call.record.sources, expected.sources, "after event {i}");
        assert_eq!(call.record.event_count, i as i64 + 1);
    }
    drop((a, b));
    db.cleanup().await;
}
