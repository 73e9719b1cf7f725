use std::sync::Arc;

use alohook::model::change::ChangeFilter;
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
        let committed = store
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
        let outcomes = committed.outcomes;
        assert_eq!(outcomes.len(), 6);
        let ids: Vec<i64> = outcomes[..3].iter().map(stored_id).collect();
        assert!(ids[0] < ids[1] && ids[1] < ids[2], "ids follow arrival: {ids:?}");
        assert_eq!(outcomes[3], Outcome::Duplicate { event_id: ids[2] });
        assert!(matches!(outcomes[4], Outcome::Quarantined { .. }));
        let survey = stored_id(&outcomes[5]);

        // One change per new event, at consecutive positions from 1, each with the call as it
        // was right after its event; the commit reports what the feed holds.
        let changes = committed.changes;
        let kinds: Vec<(i64, i64, &str)> = changes
            .iter()
            .map(|c| (c.seq, c.event_id, c.kind.as_str()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (1, ids[0], "call.created"),
                (2, ids[1], "call.updated"),
                (3, ids[2], "call.ended"),
                (4, survey, "event.received"),
            ]
        );
        let counts: Vec<u64> = changes[..3]
            .iter()
            .map(|c| {
                let v: serde_json::Value = serde_json::from_str(c.json()).unwrap();
                v["call"]["event_count"].as_u64().unwrap()
            })
            .collect();
        assert_eq!(counts, vec![1, 2, 3]);
        let read = store
            .changes(0, &ChangeFilter::default(), 100, alohook::store::PAGE_BYTES)
            .await
            .unwrap();
        assert_eq!(read.items, changes);
        assert!(!read.more);
        assert_eq!(store.last_seq().await.unwrap(), 4);

        let call = store.call("B1").await.unwrap().unwrap();
        let expected = reference("B1", &[(ids[0], &ring), (ids[1], &talk), (ids[2], &end)], 10);
        assert_eq!(call.record.fields, expected.fields);
        assert_eq!(call.record.sources, expected.sources);
        assert_eq!(call.record.event_count, 3, "the survey is not a call event");
        assert_eq!((call.record.first_received_at, call.record.last_received_at), (10, 12));

        // Resends only: the first event twice in one batch, the last once. No change.
        let committed = store
            .commit(vec![event(&ring, 20), event(&end, 21), event(&ring, 22)])
            .await
            .unwrap();
        assert!(committed.changes.is_empty());
        assert_eq!(store.last_seq().await.unwrap(), 4);
        let outcomes = committed.outcomes;
        assert_eq!(
            outcomes,
            vec![
                Outcome::Duplicate { event_id: ids[0] },
                Outcome::Duplicate { event_id: ids[2] },
                Outcome::Duplicate { event_id: ids[0] },
            ]
        );
        let events = store.call_events("B1", None, 100).await.unwrap().unwrap();
        assert_eq!(events.next, None);
        let deliveries: Vec<(i64, i64)> =
            events.items.iter().map(|e| (e.event_id, e.deliveries)).collect();
        assert_eq!(deliveries[..3], [(ids[0], 3), (ids[1], 1), (ids[2], 3)]);
        assert_eq!(store.call("B1").await.unwrap().unwrap().record.event_count, 3);
    }

    /// Many calls in one batch, some new and some known, each with several events.
    async fn a_batch_of_many_calls(db) {
        let store = open(&db).await;
        let first: Vec<Incoming> = (0..50).map(|i| event(&ringing(&format!("M{i}")), 1)).collect();
        let first_ids: Vec<i64> = store.commit(first).await.unwrap().outcomes.iter().map(stored_id).collect();
        let mut second = Vec::new();
        for i in 0..100 {
            let id = format!("M{i}");
            second.push(event(&in_progress(&id), 2));
            second.push(event(&ended(&id), 3));
        }
        let ids: Vec<i64> = store.commit(second).await.unwrap().outcomes.iter().map(stored_id).collect();
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
        let outcome = store.commit(vec![event(body, 5)]).await.unwrap().outcomes;
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

async fn open_with(db: &Db, settings: MergeSettings) -> Result<Arc<dyn Store>, String> {
    match db.database() {
        Some(url) => PgStore::open(&url, settings)
            .await
            .map(|s| Arc::new(s) as Arc<dyn Store>)
            .map_err(|e| e.to_string()),
        None => SqliteStore::open(&db.path().join("alohook.db"), settings)
            .map(|s| Arc::new(s) as Arc<dyn Store>)
            .map_err(|e| e.to_string()),
    }
}

/// Runs SQL on the test's database, outside alohook: `sqlite` on SQLite, `postgres` on PostgreSQL.
pub async fn execute(db: &Db, sqlite: &str, postgres: &str) {
    match db.database() {
        Some(url) => {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            let task = tokio::spawn(connection);
            client.batch_execute(postgres).await.unwrap();
            drop(client);
            let _ = task.await;
        }
        None => {
            let conn = rusqlite::Connection::open(db.path().join("alohook.db")).unwrap();
            conn.busy_timeout(std::time::Duration::from_secs(5))
                .unwrap();
            conn.execute_batch(sqlite).unwrap();
        }
    }
}

/// A trigger that fails the insert of the call `poison`: a real failure inside the store's
/// transaction, after the batch's events were written.
pub const POISON_SQLITE: &str = "CREATE TRIGGER poison BEFORE INSERT ON calls \
    WHEN NEW.call_id = 'poison' BEGIN SELECT RAISE(ABORT, 'injected failure'); END;";
pub const POISON_POSTGRES: &str = "CREATE FUNCTION poison() RETURNS trigger AS $$ BEGIN \
    IF NEW.call_id = 'poison' THEN RAISE EXCEPTION 'injected failure'; END IF; RETURN NEW; \
    END $$ LANGUAGE plpgsql; CREATE TRIGGER poison BEFORE INSERT ON calls FOR EACH ROW \
    EXECUTE FUNCTION poison();";

fn with_finals(statuses: &[&str]) -> MergeSettings {
    MergeSettings {
        finals: FinalStatuses::new(statuses),
        ..MergeSettings::default()
    }
}

on_every_backend! {
    /// The phase (and which event wins) follows `--final-statuses`: records merged under another
    /// list are recomputed when the store opens.
    async fn records_follow_a_changed_final_status_list(db) {
        use alohook::model::Phase;
        use alohook::store::CallFilter;
        let store = open_with(&db, MergeSettings::default()).await.unwrap();
        let voicemail = json!({"call_id": "V1", "call_status": "voicemail",
            "starttime": "2025-11-25 09:00:00", "eventType": "call"});
        let late_ringing = json!({"call_id": "V1", "call_status": "ringing",
            "starttime": "2025-11-25 09:00:00", "hotline": "1900", "eventType": "call"});
        let missed = json!({"call_id": "M1", "call_status": "missed",
            "starttime": "2025-11-25 09:01:00", "eventType": "call"});
        store
            .commit(vec![event(&voicemail, 1), event(&late_ringing, 2), event(&missed, 3)])
            .await
            .unwrap();
        let v1 = store.call("V1").await.unwrap().unwrap();
        assert_eq!(v1.phase, Phase::Ringing);
        // Equal ranks: the event that knows more (the hotline) wins.
        assert_eq!(v1.record.fields.call_status.as_deref(), Some("ringing"));
        assert_eq!(store.call("M1").await.unwrap().unwrap().phase, Phase::Ended);
        drop(store);

        let store = open_with(&db, with_finals(&["voicemail"])).await.unwrap();
        let v1 = store.call("V1").await.unwrap().unwrap();
        assert_eq!(v1.phase, Phase::Ended);
        assert_eq!(v1.record.fields.call_status.as_deref(), Some("voicemail"));
        assert_eq!(v1.record.fields.hotline.as_deref(), Some("1900"));
        assert_eq!(v1.record.event_count, 2);
        assert_eq!(store.call("M1").await.unwrap().unwrap().phase, Phase::Ringing);
        let ended = store
            .calls(&CallFilter { phase: Some(Phase::Ended), ..CallFilter::default() }, 10, None)
            .await
            .unwrap();
        let ids: Vec<_> = ended.items.iter().map(|c| c.record.fields.call_id.clone().unwrap()).collect();
        assert_eq!(ids, ["V1"]);
        drop(store);

        // And back.
        let store = open_with(&db, MergeSettings::default()).await.unwrap();
        assert_eq!(store.call("V1").await.unwrap().unwrap().phase, Phase::Ringing);
        assert_eq!(store.call("M1").await.unwrap().unwrap().phase, Phase::Ended);
    }

    /// A database at a schema version this alohook does not know is refused, not used.
    async fn a_schema_newer_than_the_binary_is_refused(db) {
        drop(open_with(&db, MergeSettings::default()).await.unwrap());
        execute(
            &db,
            "PRAGMA user_version = 99",
            "INSERT INTO alohook_schema (version) VALUES (99)",
        )
        .await;
        let error = open_with(&db, MergeSettings::default()).await.err().expect("refused");
        assert!(error.contains("schema version 99") && error.contains("newer"), "{error}");
    }

    /// A failure inside the store's transaction, after some of the batch was written, keeps
    /// nothing of the batch.
    async fn a_failure_in_the_middle_of_a_batch_keeps_nothing(db) {
        let store = open(&db).await;
        execute(&db, POISON_SQLITE, POISON_POSTGRES).await;
        let good = ended("G1");
        let poison = ended("poison");
        let bad_body = Incoming::Rejected(RejectedBody {
            reason: "invalid_json",
            detail: "not JSON".into(),
            body: b"{".to_vec(),
            received_at: 1,
        });
        let result = store
            .commit(vec![event(&good, 1), bad_body, event(&poison, 2)])
            .await;
        let error = result.expect_err("the batch fails").to_string();
        assert!(error.contains("injected failure"), "{error}");
        assert!(store.call("G1").await.unwrap().is_none());
        assert!(store.rejected(10, None).await.unwrap().items.is_empty());
        // Nothing half-kept: the same event is new afterwards, and its call is whole.
        let outcomes = store.commit(vec![event(&good, 3)]).await.unwrap().outcomes;
        stored_id(&outcomes[0]);
        assert_eq!(store.call("G1").await.unwrap().unwrap().record.event_count, 1);
    }
}

/// The lock comes first: a second alohook on a running one's SQLite file changes nothing, not
/// even the schema (here an older one, as a running older binary would have).
#[tokio::test]
async fn a_second_sqlite_store_is_refused_before_it_touches_the_schema() {
    let db = Db::sqlite();
    let path = db.path().join("alohook.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(include_str!(
        "../../src/store/sqlite/migrations/0001_init.sql"
    ))
    .unwrap();
    conn.pragma_update(None, "user_version", 1).unwrap();
    drop(conn);
    // The running alohook's lock.
    let held = std::fs::File::create(db.path().join("alohook.db.lock")).unwrap();
    held.try_lock().unwrap();

    let Err(error) = SqliteStore::open(&path, MergeSettings::default()) else {
        panic!("a second store opened a locked database");
    };
    assert!(error.to_string().contains("another alohook"), "{error}");
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        version, 1,
        "the schema was migrated under the running alohook"
    );
    drop(held);
    drop(SqliteStore::open(&path, MergeSettings::default()).unwrap());
}

/// A batch is durable on commit whatever the server, role or database says about
/// `synchronous_commit`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(postgres_tests),
    ignore = "set ALOHOOK_TEST_POSTGRES_URL to run it"
)]
async fn batches_commit_durably_whatever_the_database_says() {
    let db = Db::postgres().await;
    let url = db.database().unwrap();
    let name = url.rsplit('/').next().unwrap().to_string();
    execute(
        &db,
        "",
        &format!("ALTER DATABASE {name} SET synchronous_commit = off"),
    )
    .await;
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let plain: String = client
        .query_one("SHOW synchronous_commit", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(plain, "off", "the database's own setting");
    let store = PgStore::open(&url, MergeSettings::default()).await.unwrap();
    assert_eq!(
        store.batch_setting("synchronous_commit").await.unwrap(),
        "on"
    );
    drop(store);
    // A stricter setting (waiting for synchronous standbys) is kept, never lowered to `on`.
    for strict in ["remote_write", "remote_apply"] {
        execute(
            &db,
            "",
            &format!("ALTER DATABASE {name} SET synchronous_commit = {strict}"),
        )
        .await;
        let store = PgStore::open(&url, MergeSettings::default()).await.unwrap();
        assert_eq!(
            store.batch_setting("synchronous_commit").await.unwrap(),
            strict
        );
    }
    drop(client);
    db.cleanup().await;
}

/// Two instances with different final-status lists: the records follow the one that opened
/// last, and the other refuses to write (its batches would merge under another list) rather than
/// mixing the two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(postgres_tests),
    ignore = "set ALOHOOK_TEST_POSTGRES_URL to run it"
)]
async fn instances_with_different_final_statuses_do_not_mix() {
    let db = Db::postgres().await;
    let url = db.database().unwrap();
    let a = PgStore::open(&url, MergeSettings::default()).await.unwrap();
    a.commit(vec![event(&ringing("D1"), 1)]).await.unwrap();
    let b = PgStore::open(&url, with_finals(&["ringing"]))
        .await
        .unwrap();
    let ended = |call: Option<alohook::store::StoredCall>| {
        call.unwrap().phase == alohook::model::Phase::Ended
    };
    assert!(ended(b.call("D1").await.unwrap()));
    // At once, within the second in which `a` does not look at the settings when a batch
    // begins: its next event of D1 (whose record it holds, merged under its old list) is
    // refused, and the recomputed record stays.
    let d1 = json!({"call_id": "D1", "call_status": "ringing", "hotline": "1901"});
    let error = a
        .commit(vec![event(&d1, 2)])
        .await
        .expect_err("the instance with the old list refuses to write")
        .to_string();
    assert!(error.contains("other merge settings"), "{error}");
    let d1_now = b.call("D1").await.unwrap();
    assert_eq!(d1_now.as_ref().unwrap().record.event_count, 1);
    assert!(ended(d1_now));
    // And from then on.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let error = a
        .commit(vec![event(&ringing("D2"), 2)])
        .await
        .expect_err("the instance with the old list refuses to write")
        .to_string();
    assert!(error.contains("other merge settings"), "{error}");
    assert!(b.call("D2").await.unwrap().is_none());
    b.commit(vec![event(&ringing("D2"), 3)]).await.unwrap();
    drop((a, b));
    db.cleanup().await;
}

/// A JSON event of call `call_id`, drawn from small domains so that sets of them tie on rank,
/// disagree on values, and hold final statuses without end times.
fn any_body(call_id: String) -> impl proptest::strategy::Strategy<Value = Value> {
    use proptest::prelude::*;
    let status = prop::sample::select(vec!["ringing", "answered", "missed", "busy", "talking"]);
    let time = |base: &'static str| {
        prop::option::of(prop::sample::select(vec![
            format!("2025-11-25 09:{base}:00"),
            format!("2025-11-25 09:{base}:07"),
        ]))
    };
    (
        status,
        time("00"),
        time("01"),
        time("05"),
        prop::option::of(prop::sample::select(vec!["101", "102"])),
        prop::option::of(prop::sample::select(vec!["agent", "customer"])),
    )
        .prop_map(move |(status, start, answer, end, destination, hangup)| {
            json!({"call_id": call_id, "call_status": status, "starttime": start,
                   "answertime": answer, "endtime": end, "destination_number": destination,
                   "hangup_by": hangup, "eventType": "call"})
        })
}

on_every_backend! {
    /// Random sets of one call's events stored through the real store, in a random order, cut
    /// into random batches, with resends (some in the same batch as their first delivery): the
    /// stored record is the merge of the distinct events, whatever the order and the batching.
    async fn any_order_and_batching_stores_one_record(db) {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};
        let store = open(&db).await;
        let handle = tokio::runtime::Handle::current();
        let mut runner = TestRunner::new(Config { cases: 48, ..Config::default() });
        let case = std::sync::atomic::AtomicUsize::new(0);
        let strategy = (0..1_000_000u32)
            .prop_flat_map(|n| {
                prop::collection::vec(any_body(format!("P{n}")), 1..6)
                    .prop_shuffle()
                    .prop_flat_map(|events| {
                        let len = events.len();
                        (
                            Just(events),
                            prop::collection::vec(0..len, 0..4),
                            prop::collection::vec(any::<bool>(), len + 4),
                        )
                    })
            });
        runner
            .run(&strategy, |(events, resends, cuts)| {
                let i = case.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let call_id = format!("P{i}");
                let events: Vec<Value> = events
                    .into_iter()
                    .map(|mut e| {
                        e["call_id"] = json!(call_id);
                        e
                    })
                    .collect();
                let mut arrivals: Vec<&Value> = events.iter().collect();
                for &r in &resends {
                    arrivals.push(&events[r]);
                }
                tokio::task::block_in_place(|| {
                    handle.block_on(async {
                        let mut batch = Vec::new();
                        for (n, body) in arrivals.iter().enumerate() {
                            batch.push(event(body, n as i64));
                            if cuts[n] {
                                store.commit(std::mem::take(&mut batch)).await.unwrap();
                            }
                        }
                        if !batch.is_empty() {
                            store.commit(batch).await.unwrap();
                        }
                    })
                });
                let stored = tokio::task::block_in_place(|| handle.block_on(store.call(&call_id)))
                    .unwrap()
                    .unwrap();
                let mut distinct: Vec<(i64, &Value)> = Vec::new();
                for e in &events {
                    if !distinct.iter().any(|(_, d)| parse(d).dedupe_key == parse(e).dedupe_key) {
                        distinct.push((0, e));
                    }
                }
                let expected = reference(&call_id, &distinct, 0);
                prop_assert_eq!(&stored.record.fields, &expected.fields);
                prop_assert_eq!(stored.record.sources, expected.sources);
                prop_assert_eq!(stored.record.event_count, distinct.len() as i64);
                Ok(())
            })
            .unwrap();
    }
}

/// A store of calls drawn from small domains (so that filters combine into rare and common
/// matches), some whose start time moved after they were first seen, some with none, some
/// with the agent only as an extension.
async fn fill_for_listing(store: &dyn Store, calls: usize, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut batch = Vec::new();
    for n in 0..calls {
        let call_id = format!("L{n:04}");
        let pick =
            |rng: &mut fastrand::Rng, options: &[&'static str]| options[rng.usize(..options.len())];
        let day = rng.u8(10..13);
        let start = format!("2025-11-{day} {:02}:{:02}:00", rng.u8(8..18), rng.u8(0..60));
        let mut body = json!({
            "call_id": call_id,
            "call_status": pick(&mut rng, &["answered", "missed", "MISSED", "busy", "ringing"]),
            "direction": pick(&mut rng, &["inbound", "outbound", "inbound"]),
            "caller_number": pick(&mut rng, &["0901000001", "+84901000002", "0901000003", "03899xxx", "101"]),
            "destination_number": pick(&mut rng, &["101", "102", "0901000001", ""]),
            "hotline": pick(&mut rng, &["1900", "1800", "1700", ""]),
            "userName": pick(&mut rng, &["an", "binh", "", " "]),
            "transactionID": format!("T{}", n % 7),
            "starttime": start,
            "eventType": "call",
        });
        match rng.u8(..10) {
            0 => body["starttime"] = json!(""),
            1 => {
                // First seen with one start time, then another: the call keeps its place in
                // the listing (its first start) and is found by its start time now.
                let mut later = body.clone();
                later["starttime"] = json!(format!("2025-11-{} 12:00:00", rng.u8(10..13)));
                later["call_status"] = json!("answered");
                batch.push(event(&body, n as i64));
                batch.push(event(&later, n as i64));
                continue;
            }
            _ => {}
        }
        batch.push(event(&body, n as i64));
    }
    for chunk in batch.chunks(64) {
        store.commit(chunk.to_vec()).await.unwrap();
    }
}

/// Every call id `filter` lists, page by page, and the most items a page held.
async fn list_all(
    store: &dyn Store,
    filter: &alohook::store::CallFilter,
    limit: usize,
    budget: usize,
) -> (Vec<String>, usize) {
    let (mut ids, mut most, mut cursor) = (Vec::new(), 0, None);
    for _ in 0..100_000 {
        let page = store
            .calls_within(filter, limit, cursor, budget)
            .await
            .unwrap();
        most = most.max(page.items.len());
        ids.extend(
            page.items
                .iter()
                .map(|c| c.record.fields.call_id.clone().unwrap()),
        );
        match page.next {
            Some(next) => cursor = Some(next),
            None => return (ids, most),
        }
    }
    panic!("the listing never ended");
}

/// Whether `call` matches `filter`, as the README defines each filter.
fn matches(call: &alohook::store::StoredCall, f: &alohook::store::CallFilter) -> bool {
    use alohook::model::phone::normalize_phone;
    let r = &call.record.fields;
    let eq = |value: &Option<String>, wanted: &Option<String>| wanted.is_none() || value == wanted;
    let norm = |n: &Option<String>| n.as_deref().map(normalize_phone);
    let no_user = r.user_name.as_deref().is_none_or(|u| u.trim().is_empty());
    (f.status.is_none() || r.call_status.as_deref().map(str::to_lowercase) == f.status)
        && eq(&r.direction, &f.direction)
        && eq(&r.hotline, &f.hotline)
        && eq(&r.user_name, &f.user_name)
        && (f.destination_number.is_none()
            || norm(&r.destination_number) == norm(&f.destination_number))
        && eq(&r.transaction_id, &f.transaction_id)
        && f.phase.is_none_or(|p| call.phase == p)
        && f.phone.as_ref().is_none_or(|p| {
            norm(&r.caller_number).as_ref() == Some(p)
                || norm(&r.destination_number).as_ref() == Some(p)
        })
        && f.agent.as_ref().is_none_or(|a| {
            r.user_name.as_ref() == Some(a) || (no_user && r.destination_number.as_ref() == Some(a))
        })
        && f.from
            .is_none_or(|from| r.start_time.is_some_and(|s| s >= from))
        && f.to.is_none_or(|to| r.start_time.is_some_and(|s| s <= to))
}

on_every_backend! {
    /// Any filter, any page size, any scan budget: paging through the listing gives exactly the
    /// calls the filter's definition selects, in the listing's order, each once; a small budget
    /// only cuts the same list into more (possibly empty) pages.
    async fn any_filter_and_budget_list_the_same_calls(db) {
        use alohook::model::Phase;
        use alohook::store::CallFilter;
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};
        let store = open(&db).await;
        fill_for_listing(store.as_ref(), 240, 7).await;
        let everything = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async {
                let mut all = Vec::new();
                let mut cursor = None;
                loop {
                    let page = store.calls_within(&CallFilter::default(), 1000, cursor, usize::MAX).await.unwrap();
                    all.extend(page.items);
                    match page.next { Some(n) => cursor = Some(n), None => break all }
                }
            })
        });
        assert_eq!(everything.len(), 240);
        let some = |values: Vec<&'static str>| {
            prop::option::weighted(0.3, prop::sample::select(values).prop_map(str::to_string))
        };
        let day = |d: u8| jiff::civil::date(2025, 11, d as i8).at(0, 0, 0, 0)
            .to_zoned(jiff::tz::TimeZone::fixed(jiff::tz::offset(7))).unwrap().timestamp().as_second();
        let filters = (
            (some(vec!["missed", "answered", "busy"]), some(vec!["inbound", "outbound"]),
             some(vec!["1900", "1800"]), some(vec!["an", "binh"]), some(vec!["101", "0901000001"])),
            (some(vec!["T1", "T3"]), prop::option::weighted(0.2, prop::sample::select(vec![Phase::Ringing, Phase::Ended])),
             some(vec!["+84901000001", "+84901000002", "101"]), some(vec!["an", "101", "102"]),
             prop::option::weighted(0.3, 10u8..13), prop::option::weighted(0.3, 10u8..13)),
            prop::sample::select(vec![1usize, 3, 7, 50]),
            prop::sample::select(vec![1usize, 2, 5, 40]),
        );
        let handle = tokio::runtime::Handle::current();
        let mut runner = TestRunner::new(Config { cases: 96, ..Config::default() });
        runner.run(&filters, |((status, direction, hotline, user_name, destination_number),
                              (transaction_id, phase, phone, agent, from, to), limit, budget)| {
            let filter = CallFilter {
                status, direction, hotline, user_name, destination_number, transaction_id, phase,
                phone, agent,
                from: from.map(day),
                to: to.map(|d| day(d) + 86_399),
            };
            let expected: Vec<String> = everything.iter().filter(|c| matches(c, &filter))
                .map(|c| c.record.fields.call_id.clone().unwrap()).collect();
            let (whole, _) = tokio::task::block_in_place(|| handle.block_on(list_all(store.as_ref(), &filter, 1000, usize::MAX)));
            prop_assert_eq!(&whole, &expected, "{:?}", filter);
            let (paged, most) = tokio::task::block_in_place(|| handle.block_on(list_all(store.as_ref(), &filter, limit, budget)));
            prop_assert_eq!(&paged, &expected, "{:?} limit {} budget {}", filter, limit, budget);
            prop_assert!(most <= limit);
            Ok(())
        }).unwrap();
    }
}

/// SQLite's plan of every statement a listing runs walks one index in the listing's order
/// (no sort of the matches, no scan of the table): the work of a page is the walk, which the
/// budget bounds. Checked for each shape of filter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_walks_an_index_in_order_for_every_filter_shape() {
    use alohook::store::listing::{ListPlan, plan};
    use alohook::store::{CallCursor, CallFilter, Column};
    let db = Db::sqlite();
    let store = open(&db).await;
    fill_for_listing(store.as_ref(), 50, 1).await;
    drop(store);
    let conn = rusqlite::Connection::open(db.path().join("alohook.db")).unwrap();
    let explain = |sql: &str, args: &[Column]| -> String {
        let values: Vec<rusqlite::types::Value> = args
            .iter()
            .map(|c| match c {
                Column::Text(Some(t)) => rusqlite::types::Value::Text(t.clone()),
                Column::Integer(Some(i)) => rusqlite::types::Value::Integer(*i),
                _ => rusqlite::types::Value::Null,
            })
            .collect();
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let rows = stmt
            .query_map(rusqlite::params_from_iter(values), |r| {
                r.get::<_, String>(3)
            })
            .unwrap();
        rows.map(Result::unwrap).collect::<Vec<_>>().join(" | ")
    };
    let text = |s: &str| Some(s.to_string());
    let shapes = [
        CallFilter::default(),
        CallFilter {
            status: text("missed"),
            ..Default::default()
        },
        CallFilter {
            direction: text("outbound"),
            ..Default::default()
        },
        CallFilter {
            status: text("missed"),
            direction: text("outbound"),
            ..Default::default()
        },
        CallFilter {
            hotline: text("1900"),
            direction: text("outbound"),
            ..Default::default()
        },
        CallFilter {
            status: text("missed"),
            hotline: text("1900"),
            from: Some(1),
            to: Some(2_000_000_000),
            ..Default::default()
        },
        CallFilter {
            user_name: text("an"),
            ..Default::default()
        },
        CallFilter {
            phone: text("+84901000001"),
            ..Default::default()
        },
        CallFilter {
            phone: text("+84901000001"),
            status: text("answered"),
            ..Default::default()
        },
        CallFilter {
            agent: text("101"),
            ..Default::default()
        },
        CallFilter {
            agent: text("an"),
            hotline: text("1900"),
            from: Some(1),
            ..Default::default()
        },
        CallFilter {
            from: Some(1),
            to: Some(2_000_000_000),
            ..Default::default()
        },
    ];
    let cursor = Some(CallCursor {
        sort_key: i64::MAX,
        seq: i64::MAX,
    });
    for filter in &shapes {
        let plan = plan(filter, cursor, 50, 1000);
        for end in plan.window_ends() {
            let p = explain(&end.sql, &end.args);
            assert!(
                p.contains("USING COVERING INDEX") || p.contains("USING INDEX"),
                "{filter:?}: {p}"
            );
            assert!(!p.contains("TEMP B-TREE"), "{filter:?}: {p}");
        }
        let rows = plan.rows(ListPlan::cutoff(&[Some(CallCursor {
            sort_key: 0,
            seq: 0,
        })]));
        let p = explain(&rows.sql, &rows.args);
        for step in p
            .split(" | ")
            .filter(|s| s.starts_with("SEARCH") || s.starts_with("SCAN"))
        {
            assert!(
                step.contains("INDEX") || step.starts_with("SCAN w") || step.starts_with("SCAN u"),
                "{filter:?}: a walk without an index: {p}"
            );
        }
        // Only the merge of several walks sorts (their few rows each).
        if !rows.sql.contains(" UNION ") {
            assert!(!p.contains("TEMP B-TREE"), "{filter:?}: {p}");
        }
    }
}

/// Calls for the figures' summary: several events each, whose start time, answer time, status
/// and agent change from one event to the next (a record moves between summary rows, and its
/// ring changes after it ended), each event of `calls` ids from `first`.
fn events_for_figures(rng: &mut fastrand::Rng, first: usize, calls: usize) -> Vec<Value> {
    let mut events = Vec::new();
    let at = |day: u8, secs: u32| {
        format!(
            "2025-11-{day} {:02}:{:02}:{:02}",
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        )
    };
    for n in first..first + calls {
        let pick =
            |rng: &mut fastrand::Rng, options: &[&'static str]| options[rng.usize(..options.len())];
        let day = rng.u8(10..13);
        // Around midnight too, so that calls fall on both sides of a day in the zone.
        let start = if rng.u8(..8) == 0 {
            rng.u32(0..1200)
        } else {
            rng.u32(8 * 3600..18 * 3600)
        };
        let mut body = json!({
            "call_id": format!("F{n:04}"),
            "call_status": "ringing",
            "direction": pick(rng, &["inbound", "inbound", "outbound"]),
            "caller_number": format!("09010000{:02}", rng.u8(..40)),
            "destination_number": pick(rng, &["101", "102", ""]),
            "hotline": pick(rng, &["1900", "1800", ""]),
            "userName": pick(rng, &["an", "binh", "", " "]),
            "starttime": at(day, start),
            "eventType": "call",
        });
        if rng.u8(..10) == 0 {
            body["starttime"] = json!("");
        }
        events.push(body.clone());
        let ring = rng.u32(0..40);
        let talk = rng.u32(0..300);
        let answered = rng.bool();
        let mut last = body.clone();
        if answered {
            last["call_status"] = json!("answered");
            last["answertime"] = json!(at(day, start + ring));
            events.push(last.clone());
            last["endtime"] = json!(at(day, start + ring + talk));
            last["holding_duration"] = json!(rng.u8(..30).to_string());
        } else {
            last["call_status"] = json!(pick(rng, &["missed", "MISSED", "busy"]));
            if rng.u8(..5) != 0 {
                last["endtime"] = json!(at(day, start + ring));
            }
        }
        events.push(last.clone());
        match rng.u8(..6) {
            // A later event with another start time: the call moves to another hour.
            0 => {
                let mut moved = last.clone();
                moved["starttime"] = json!(at(day, rng.u32(8 * 3600..18 * 3600)));
                events.push(moved);
            }
            // An answer time learnt after the end: the ring of an ended call shrinks.
            1 if !answered => {
                let mut late = last.clone();
                late["answertime"] = json!(at(day, start + ring / 2));
                events.push(late);
            }
            // Another agent takes it over.
            2 => {
                let mut other = last.clone();
                other["userName"] = json!("chi");
                events.push(other);
            }
            _ => {}
        }
    }
    events
}

/// Every figure of `filter` grouped by `group_by`, computed from the call records alone (the
/// definitions applied to the listing), and as the store answers it: (groups, undated, first
/// and last start).
async fn figures_both_ways(
    store: &dyn Store,
    filter: &alohook::store::CallFilter,
    group_by: alohook::report::stats::GroupBy,
    thresholds: alohook::report::stats::Thresholds,
) -> (String, String) {
    use alohook::report::stats::StatsBuilder;
    use alohook::store::CallFilter;
    let tz = TimeZone::get("Asia/Ho_Chi_Minh").unwrap();
    let mut by_hand = StatsBuilder::new(group_by, thresholds, tz.clone());
    let mut cursor = None;
    loop {
        let page = store
            .calls_within(&CallFilter::default(), 1000, cursor, usize::MAX)
            .await
            .unwrap();
        for call in &page.items {
            let undated_filter = CallFilter {
                from: None,
                to: None,
                ..filter.clone()
            };
            let dated = call.record.fields.start_time.is_some();
            if (dated && matches(call, filter)) || (!dated && matches(call, &undated_filter)) {
                by_hand.add(&alohook::store::rollup::facts(
                    &call.record,
                    &alohook::model::FinalStatuses::default(),
                ));
            }
        }
        match page.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    let stored = store
        .stats(filter, StatsBuilder::new(group_by, thresholds, tz))
        .await
        .unwrap();
    let show = |b: StatsBuilder| {
        // The range as the answer shows it: the first and last start only where `from` or `to`
        // is not given.
        let (undated, (first, last)) = (b.undated(), b.range());
        let range = (filter.from.or(first), filter.to.or(last));
        format!(
            "{:?} undated {undated} range {range:?}",
            b.finish(filter.from, filter.to)
        )
    };
    (show(stored), show(by_hand))
}

/// Queries of every grouping, with the filters the summary holds and one it does not, over
/// ranges of whole hours, ragged ends, and none.
fn figure_queries() -> Vec<(alohook::store::CallFilter, alohook::report::stats::GroupBy)> {
    use alohook::report::stats::GroupBy;
    use alohook::store::CallFilter;
    let local = |d: i8, h: i8, m: i8| {
        jiff::civil::date(2025, 11, d)
            .at(h, m, 0, 0)
            .to_zoned(TimeZone::get("Asia/Ho_Chi_Minh").unwrap())
            .unwrap()
            .timestamp()
            .as_second()
    };
    let ranges = [
        (None, None),
        (Some(local(10, 0, 0)), Some(local(12, 0, 0) - 1)),
        (Some(local(10, 9, 17)), Some(local(11, 15, 42))),
        // Whole days in the middle (the rows by day), whole hours and minutes around them.
        (Some(local(10, 9, 17)), Some(local(12, 15, 42))),
        (Some(local(11, 0, 0)), None),
        (None, Some(local(11, 10, 30))),
    ];
    let filters = [
        CallFilter::default(),
        CallFilter {
            hotline: Some("1900".into()),
            ..CallFilter::default()
        },
        CallFilter {
            direction: Some("inbound".into()),
            ..CallFilter::default()
        },
        CallFilter {
            status: Some("missed".into()),
            hotline: Some("1800".into()),
            ..CallFilter::default()
        },
        CallFilter {
            agent: Some("an".into()),
            ..CallFilter::default()
        },
    ];
    let groups = [
        GroupBy::None,
        GroupBy::Agent,
        GroupBy::Hotline,
        GroupBy::Direction,
        GroupBy::Status,
        GroupBy::Day,
        GroupBy::Hour,
        GroupBy::HourOfDay,
        GroupBy::Weekday,
    ];
    let mut queries = Vec::new();
    for (from, to) in ranges {
        for f in &filters {
            for g in groups {
                queries.push((
                    CallFilter {
                        from,
                        to,
                        ..f.clone()
                    },
                    g,
                ));
            }
        }
    }
    queries
}

on_every_backend! {
    /// The figures the store answers (from its summary where it can) are the figures of the
    /// call records, whatever order the events came in, however they were batched and resent,
    /// after records moved between hours and agents and rings shrank; and again after the store
    /// reopens with other thresholds.
    async fn the_summary_counts_what_the_calls_count(db) {
        use alohook::report::stats::Thresholds;
        let seed = fastrand::u64(..);
        println!("seed {seed}");
        let mut rng = fastrand::Rng::with_seed(seed);
        let store = open(&db).await;
        let thresholds = Thresholds::default();
        let mut received = 0;
        for round in 0..3 {
            let mut events = events_for_figures(&mut rng, round * 60, 60);
            let resent: Vec<Value> = events.iter().filter(|_| rng.u8(..4) == 0).cloned().collect();
            events.extend(resent);
            rng.shuffle(&mut events);
            let mut rest = events.as_slice();
            while !rest.is_empty() {
                let n = rng.usize(1..=rest.len().min(40));
                let batch: Vec<Incoming> = rest[..n].iter().map(|e| { received += 1; event(e, received) }).collect();
                store.commit(batch).await.unwrap();
                rest = &rest[n..];
            }
            for (filter, group_by) in figure_queries() {
                let (stored, by_hand) = figures_both_ways(store.as_ref(), &filter, group_by, thresholds).await;
                assert_eq!(stored, by_hand, "seed {seed}, round {round}: {filter:?} by {group_by:?}");
            }
            // Writes leave no row dirty: the longest wait of a row a call left is recomputed in
            // the same transaction.
            let (dirty, total) = summary_rows(&db).await;
            assert_eq!(dirty, 0, "seed {seed}, round {round}: {dirty} dirty of {total} rows");
            assert!(total > 0);
        }
        // Other thresholds: the summary is rebuilt with them at open.
        drop(store);
        let other = Thresholds { short_abandon_seconds: 12, service_level_seconds: 7 };
        let settings = MergeSettings { thresholds: Some(other), ..MergeSettings::default() };
        let store = open_with(&db, settings).await.unwrap();
        for (filter, group_by) in figure_queries() {
            let (stored, by_hand) = figures_both_ways(store.as_ref(), &filter, group_by, other).await;
            assert_eq!(stored, by_hand, "seed {seed}, other thresholds: {filter:?} by {group_by:?}");
        }
    }
}

on_every_backend! {
    /// The figures of an aligned range come from the summary, not from the calls: a summary
    /// changed behind alohook's back changes them (so the test above compares the summary).
    async fn the_figures_of_whole_hours_are_read_from_the_summary(db) {
        use alohook::report::stats::{GroupBy, StatsBuilder, Thresholds};
        use alohook::store::CallFilter;
        let store = open(&db).await;
        let mut rng = fastrand::Rng::with_seed(3);
        store.commit(figures_batch(&mut rng, 0, 30, 0)).await.unwrap();
        let tz = TimeZone::get("Asia/Ho_Chi_Minh").unwrap();
        let three_days = CallFilter {
            from: Some(1_762_707_600), // 2025-11-10T00:00:00+07:00
            to: Some(1_762_707_600 + 3 * 86_400 - 1),
            ..CallFilter::default()
        };
        let queries = [
            (CallFilter::default(), GroupBy::None),
            (CallFilter::default(), GroupBy::Agent),
            (three_days.clone(), GroupBy::Day),
            (three_days, GroupBy::HourOfDay),
        ];
        let total = async |filter: &CallFilter, group_by| -> u64 {
            let b = store
                .stats(filter, StatsBuilder::new(group_by, Thresholds::default(), tz.clone()))
                .await
                .unwrap();
            b.finish(filter.from, filter.to).unwrap().iter().map(|g| g.calls).sum()
        };
        let mut before = Vec::new();
        for (filter, group_by) in &queries {
            before.push(total(filter, *group_by).await);
        }
        // The first hour's rows by hour (agent, line, all): the queries by hour read them, the
        // one by day over whole days does not.
        let bump = "UPDATE call_rollup SET calls = calls + 1000 WHERE kind IN (1, 2, 5) AND bucket = \
            (SELECT min(bucket) FROM call_rollup WHERE kind IN (1, 2, 5) AND bucket > -9000000000000000000)";
        execute(&db, bump, bump).await;
        for (i, ((filter, group_by), before)) in queries.iter().zip(before).enumerate() {
            let now = total(filter, *group_by).await;
            if i == 2 {
                assert_eq!(now, before, "{filter:?} by {group_by:?} reads the rows by day");
            } else {
                assert!(now >= before + 1000, "{filter:?} by {group_by:?}");
            }
        }
        // Whole days come from the rows by day (kind 4, by line), hours from the rows by hour.
        let mut before = Vec::new();
        for (filter, group_by) in &queries {
            before.push(total(filter, *group_by).await);
        }
        let bump_days = "UPDATE call_rollup SET calls = calls + 1000 WHERE kind = 4 AND bucket = \
            (SELECT min(bucket) FROM call_rollup WHERE kind = 4)";
        execute(&db, bump_days, bump_days).await;
        let after = [
            total(&queries[0].0, queries[0].1).await,
            total(&queries[2].0, queries[2].1).await,
            total(&queries[3].0, queries[3].1).await,
        ];
        assert_eq!((after[0], after[2]), (before[0], before[3]), "hours: {after:?}");
        assert!(after[1] >= before[2] + 1000, "days: {after:?}");
    }
}

on_every_backend! {
    /// A day not folded into rows by day yet is counted from its hours; the first batch after
    /// (here, of a later day) folds every past day, and the figures stay the calls' throughout.
    async fn past_days_are_folded_into_rows_by_day(db) {
        use alohook::report::stats::Thresholds;
        let mut rng = fastrand::Rng::with_seed(11);
        let store = open(&db).await;
        store.commit(figures_batch(&mut rng, 0, 60, 0)).await.unwrap();
        drop(store);
        // As if the days from 2025-11-11 (local) had not been folded yet.
        let until = 1_762_707_600 + 86_400;
        let unfold = format!(
            "DELETE FROM call_rollup WHERE kind IN (3, 4) AND bucket >= {until}; \
             UPDATE alohook_meta SET value = '{until}' WHERE key = 'rollup_days'"
        );
        execute(&db, &unfold, &unfold).await;
        let day_rows = format!("SELECT COUNT(*) FROM call_rollup WHERE kind IN (3, 4) AND bucket >= {until}");
        assert_eq!(query_i64(&db, &day_rows).await, 0);
        let store = open(&db).await;
        for (filter, group_by) in figure_queries() {
            let (stored, by_hand) = figures_both_ways(store.as_ref(), &filter, group_by, Thresholds::default()).await;
            assert_eq!(stored, by_hand, "not folded: {filter:?} by {group_by:?}");
        }
        // The next batch folds them.
        store.commit(figures_batch(&mut rng, 60, 5, 100)).await.unwrap();
        assert!(query_i64(&db, &day_rows).await > 0);
        let folded = query_i64(&db, "SELECT CAST(value AS BIGINT) FROM alohook_meta WHERE key = 'rollup_days'").await;
        assert!(folded > until && folded <= jiff::Timestamp::now().as_second(), "{folded}");
        for (filter, group_by) in figure_queries() {
            let (stored, by_hand) = figures_both_ways(store.as_ref(), &filter, group_by, Thresholds::default()).await;
            assert_eq!(stored, by_hand, "folded: {filter:?} by {group_by:?}");
        }
        assert_eq!(summary_rows(&db).await.0, 0, "no dirty row");
    }
}

/// The events of `calls` calls for the figures (see [`events_for_figures`]) as one batch,
/// received from `received` on.
fn figures_batch(
    rng: &mut fastrand::Rng,
    first: usize,
    calls: usize,
    received: i64,
) -> Vec<Incoming> {
    events_for_figures(rng, first, calls)
        .iter()
        .enumerate()
        .map(|(i, e)| event(e, received + i as i64))
        .collect()
}

/// One number from the store's database.
async fn query_i64(db: &Db, sql: &str) -> i64 {
    match db.database() {
        Some(url) => {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            client.query_one(sql, &[]).await.unwrap().get(0)
        }
        None => {
            let conn = rusqlite::Connection::open(db.path().join("alohook.db")).unwrap();
            conn.query_row(sql, [], |r| r.get(0)).unwrap()
        }
    }
}

/// How many rows of the figures' summary are dirty, and how many there are.
async fn summary_rows(db: &Db) -> (i64, i64) {
    let sql = "SELECT COALESCE(SUM(CASE WHEN dirty <> 0 THEN 1 ELSE 0 END), 0), COUNT(*) FROM call_rollup";
    match db.database() {
        Some(url) => {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            let sql = sql
                .replace("COALESCE(SUM(", "CAST(COALESCE(SUM(")
                .replace(", 0), COUNT", ", 0) AS BIGINT), COUNT");
            let row = client.query_one(&sql, &[]).await.unwrap();
            (row.get(0), row.get(1))
        }
        None => {
            let conn = rusqlite::Connection::open(db.path().join("alohook.db")).unwrap();
            conn.query_row(sql, [], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
        }
    }
}

on_every_backend! {
    /// A batch of delivery outcomes is saved whole: each delivery's state, its attempt, the
    /// cursor; and a batch holding one change twice (two attempts of it) keeps both attempts
    /// and the later state.
    async fn a_batch_of_delivery_outcomes_is_saved_whole(db) {
        use alohook::forward::destination::DestinationSpec;
        use alohook::store::{Attempt, DeliveryFilter, DeliveryState, DeliveryUpdate};
        let store = open(&db).await;
        let spec = DestinationSpec::from_json(&json!({"url": "http://127.0.0.1:9/hook"})).unwrap();
        store.create_destination("dst_b", &spec, "whsec_b", 0).await.unwrap();
        let attempt = |at: i64, status: Option<i64>| Attempt {
            at,
            status,
            error: status.is_none().then(|| "connection refused".to_string()),
            duration_ms: 3,
            response: status.map(|s| format!("answer {s}")),
        };
        let update = |seq: i64, state, attempts, tried: Option<Attempt>| DeliveryUpdate {
            seq,
            kind: "call.updated".into(),
            call_id: Some(format!("C{seq}")),
            state,
            attempts,
            next_attempt_at: (state == DeliveryState::Pending).then_some(5_000_000),
            attempt: tried,
        };
        // Distinct changes: one statement on PostgreSQL.
        let batch = vec![
            update(1, DeliveryState::Delivered, 1, Some(attempt(10, Some(200)))),
            update(2, DeliveryState::Pending, 1, Some(attempt(11, None))),
            update(3, DeliveryState::Pending, 0, None),
        ];
        store.save_deliveries("dst_b", batch, 3).await.unwrap();
        // The same change twice: row by row.
        let batch = vec![
            update(2, DeliveryState::Pending, 2, Some(attempt(20, Some(500)))),
            update(2, DeliveryState::Delivered, 3, Some(attempt(21, Some(204)))),
        ];
        store.save_deliveries("dst_b", batch, 3).await.unwrap();
        let filter = DeliveryFilter { destination_id: Some("dst_b".into()), ..DeliveryFilter::default() };
        let page = store.deliveries(&filter, 10, None).await.unwrap();
        type Logged = Vec<(i64, Option<i64>, Option<String>)>;
        let mut seen: Vec<(i64, DeliveryState, i64, Logged)> = page
            .items
            .iter()
            .map(|d| {
                let log = d.attempt_log.iter().map(|a| (a.at, a.status, a.error.clone())).collect();
                (d.seq, d.state, d.attempts, log)
            })
            .collect();
        seen.sort_by_key(|d| d.0);
        assert_eq!(
            seen,
            vec![
                (1, DeliveryState::Delivered, 1, vec![(10, Some(200), None)]),
                (
                    2,
                    DeliveryState::Delivered,
                    3,
                    vec![
                        (11, None, Some("connection refused".into())),
                        (20, Some(500), None),
                        (21, Some(204), None)
                    ]
                ),
                (3, DeliveryState::Pending, 0, vec![]),
            ]
        );
        assert_eq!(store.destination("dst_b").await.unwrap().unwrap().cursor, 3);
    }
}

on_every_backend! {
    /// A destination saved from a copy read before another change (a secret rotation, say) is
    /// refused: the store keeps the other change, and the caller reads again and redoes its own.
    async fn a_stale_destination_does_not_undo_a_newer_change(db) {
        use alohook::forward::destination::DestinationSpec;
        let store = open(&db).await;
        let spec = DestinationSpec::from_json(&json!({"url": "http://127.0.0.1:9/hook"})).unwrap();
        store.create_destination("dst_1", &spec, "whsec_first", 0).await.unwrap();
        let patching = store.destination("dst_1").await.unwrap().unwrap();
        let mut rotating = store.destination("dst_1").await.unwrap().unwrap();
        rotating.previous_secret = Some(std::mem::replace(&mut rotating.secret, "whsec_second".into()));
        assert!(store.update_destination(&rotating).await.unwrap());
        let mut stale = patching;
        stale.spec.description = Some("CRM".into());
        assert!(!store.update_destination(&stale).await.unwrap(), "a stale copy is refused");
        let now = store.destination("dst_1").await.unwrap().unwrap();
        assert_eq!(now.secret, "whsec_second");
        // Read again, changed again: saved, with the rotation kept.
        let mut fresh = now.clone();
        fresh.spec.description = Some("CRM".into());
        assert!(store.update_destination(&fresh).await.unwrap());
        let now = store.destination("dst_1").await.unwrap().unwrap();
        assert_eq!((now.secret.as_str(), now.spec.description.as_deref()), ("whsec_second", Some("CRM")));
        let gone = alohook::store::StoredDestination { id: "dst_gone".into(), ..now };
        assert!(!store.update_destination(&gone).await.unwrap(), "no such destination");
    }
}
