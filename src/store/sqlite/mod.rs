//! The SQLite store: one file in WAL mode, one writer connection that commits whole batches
//! (`synchronous=FULL`: a commit is on disk before it returns), and a small pool of readers that
//! WAL lets run beside the writer.

mod reports;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::types::Value as SqlValue;
use rusqlite::{
    Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior, params, params_from_iter,
};
use sha2::{Digest, Sha256};

use super::deliveries;
use super::listing;
use super::{
    CALL_COLUMNS, CALL_EVENTS_QUERY, CallCache, CallCursor, CallFilter, CallPage, ChangeLog,
    ChangePage, Column, Committed, DELETE_DESTINATION, DELIVERY_ATTEMPT_COUNTS, DELIVERY_COUNTS,
    DESTINATION_COLUMNS, DeliveryCounts, Destinations, EventPage, HEARTBEAT, INSERT_DESTINATION,
    Incoming, LAST_DELIVERY_ERROR, MERGE_SETTINGS_KEY, MergeSettings, OLDEST_PENDING, Outcome,
    Pager, REJECTED_QUERY, RejectedPage, RowColumns, Statement, Store, StoreError, StoredCall,
    StoredDestination, UPDATE_DESTINATION, call_change, call_columns, call_size, change_columns,
    change_size, changes_query, count_changes_query, describe_failure, read_call_row,
    read_change_row, read_destination_row, read_event_row, read_rejected_row, rewrite_call,
    spec_json,
};
use super::{Deliveries, DeliveryFilter, DeliveryPage, DeliveryUpdate, StoredDelivery};
use crate::forward::destination::DestinationSpec;
use crate::model::change::{Change, ChangeFilter, NewChange};
use crate::model::{CallRecord, EventFields, FinalStatuses, ParsedEvent, SourceKey};

const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_init.sql"),
    include_str!("migrations/0002_merge_lattice.sql"),
    include_str!("migrations/0003_changes.sql"),
    include_str!("migrations/0004_forwarding.sql"),
    include_str!("migrations/0005_callbacks.sql"),
    include_str!("migrations/0006_listing_indexes.sql"),
    include_str!("migrations/0007_rollup.sql"),
    include_str!("migrations/0008_dashboard.sql"),
    include_str!("migrations/0009_callback_hotline_rows.sql"),
    include_str!("migrations/0010_callback_write_cost.sql"),
];
/// Below this much free space on the database's file system, the store says it is not ready:
/// a batch of large events, the WAL's growth and a checkpoint need room.
pub const MIN_FREE_BYTES: u64 = 16 * 1024 * 1024;
const MAX_IDLE_READERS: usize = 8;

/// The SQLite implementation of [`Store`].
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Arc<Mutex<Writer>>,
    readers: Mutex<Vec<Connection>>,
    settings: MergeSettings,
    /// The thresholds the figures' summary holds (see store::rollup): writes keep it with
    /// them, and figures with others are counted from the calls.
    rollup: Option<crate::report::stats::Thresholds>,
    /// Dropping it stops the checkpointer.
    _checkpointer: std::sync::mpsc::Sender<()>,
    /// Held while the store is open: one alohook per database file (see `lock_database`).
    _lock: std::fs::File,
}

/// The writer connection and what only the writer may know.
struct Writer {
    conn: Connection,
    calls: CallCache,
    /// The days before it have rows by day in the figures' summary (see store::rollup).
    folded_until: Option<i64>,
    /// When folding them last failed.
    fold_failed: Option<std::time::Instant>,
}

/// Takes an exclusive lock on `<database>.lock`: two processes writing one SQLite file would
/// each trust a cache the other makes stale, so the second one refuses to start.
fn lock_database(path: &Path) -> Result<std::fs::File, StoreError> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let file = private_file(&lock_path)
        .map_err(|e| StoreError::Database(format!("cannot open {}: {e}", lock_path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Database(format!(
            "another alohook is already using {}; run one instance per SQLite database \
             (several instances need PostgreSQL)",
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Database(format!(
            "cannot lock {}: {e}",
            lock_path.display()
        ))),
    }
}

/// Opens (creating it readable by the owner only) a file: the database holds customers' phone
/// numbers. SQLite gives its `-wal` and `-shm` files the database file's permissions.
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.create(true).truncate(false).write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// A database made by an older alohook (or copied in) may be readable by others: make it, and
/// its WAL files, the owner's only, and warn about a data dir that others can read.
fn tighten_permissions(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mut files = vec![path.to_path_buf()];
        for suffix in ["-wal", "-shm", ".lock"] {
            let mut name = path.as_os_str().to_owned();
            name.push(suffix);
            files.push(PathBuf::from(name));
        }
        for file in files {
            let Ok(meta) = std::fs::metadata(&file) else {
                continue;
            };
            if meta.permissions().mode() & 0o077 != 0 {
                match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
                    Ok(()) => {
                        tracing::info!(file = %file.display(), "made readable by its owner only (mode 0600): it holds customers' phone numbers")
                    }
                    Err(error) => {
                        tracing::warn!(file = %file.display(), %error, "others can read this file, and its mode cannot be changed")
                    }
                }
            }
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && std::fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o077 != 0)
        {
            tracing::warn!(dir = %dir.display(), "others can list the data dir; `chmod 700` it");
        }
    }
}

/// Creates `dir` (and its parents) readable by the owner only, when it does not exist.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.exists() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Database(e.to_string())
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, applies pending migrations and
    /// recomputes the call records if they were merged under other settings.
    pub fn open(path: &Path, settings: MergeSettings) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir).map_err(|e| {
                StoreError::Database(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        // The lock first: a second alohook must not touch the schema under a running one.
        let lock = lock_database(path)?;
        private_file(path)
            .map_err(|e| StoreError::Database(format!("cannot open {}: {e}", path.display())))?;
        tighten_permissions(path);
        let mut writer = Connection::open(path)?;
        writer.pragma_update(None, "journal_mode", "WAL")?;
        configure(&writer)?;
        writer.pragma_update(None, "cache_size", -8192)?;
        // Checkpoints are the checkpointer thread's job (see `spawn_checkpointer`); the writer's
        // own only runs if that thread ever falls far behind.
        writer.pragma_update(None, "wal_autocheckpoint", WAL_SAFETY_FRAMES)?;
        // A WAL that grew (long reads kept it from starting over) shrinks back to this once it
        // does: its size on disk stays bounded by what the checkpointer lets it reach.
        writer.pragma_update(None, "journal_size_limit", WAL_KEEP_BYTES)?;
        // One UPDATE statement per set of changed columns: keep the common ones prepared.
        writer.set_prepared_statement_cache_capacity(128);
        migrate(&mut writer)?;
        recompute_if_stale(&mut writer, &settings)?;
        reports::build_callbacks_if_missing(&mut writer)?;
        let rollup = reports::build_rollup_if_stale(&mut writer, &settings)?;
        let folded_until = reports::folded_until(&writer)?;
        let writer = Arc::new(Mutex::new(Writer {
            conn: writer,
            calls: CallCache::default(),
            folded_until,
            fold_failed: None,
        }));
        let checkpointer = spawn_checkpointer(path, writer.clone())?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                writer,
                readers: Mutex::new(Vec::new()),
                settings,
                rollup,
                _checkpointer: checkpointer,
                _lock: lock,
            }),
        })
    }

    /// Opens from a `sqlite://path` URL.
    pub fn open_url(url: &str, settings: MergeSettings) -> Result<Self, StoreError> {
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .ok_or_else(|| StoreError::Database(format!("not a sqlite URL: {url}")))?;
        Self::open(Path::new(path), settings)
    }

    /// Runs `f` on a thread that may block. A read it makes is interrupted when this future is
    /// dropped (its request timed out, or its client went away): a statement left running
    /// would hold a reader, the CPU and the WAL's start for nothing.
    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    {
        self.run_on(tokio::runtime::Handle::current(), f).await
    }

    /// [`SqliteStore::blocking`] for work that only reads (through [`Inner::with_reader`]): it
    /// runs on the read threads, whose lower priority keeps reads from delaying the
    /// acknowledgement of events (see [`READ_THREADS`]). Never for work that takes the writer:
    /// a read thread holding it would hold up every commit.
    async fn reading<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    {
        self.run_on(READ_THREADS.handle().clone(), f).await
    }

    async fn run_on<T, F>(&self, threads: tokio::runtime::Handle, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        let slot = ReadSlot::default();
        let mut abandon = InterruptOnDrop(Some(slot.clone()));
        let result = threads
            .spawn_blocking(move || {
                CURRENT_READ.set(Some(slot));
                let result = f(&inner);
                CURRENT_READ.set(None);
                result
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        abandon.0 = None;
        result
    }
}

/// The threads reads run on, at a lower scheduling priority than the rest of the process (nice
/// +10 on Linux): on a machine with few cores, a handful of readers (the dashboard, a report,
/// an export) kept every core busy and Alohub's events waited their turn (acknowledgement p99
/// from 8 to 28 ms with 8 readers, at 1 000 events/s). The writer, the HTTP workers and the
/// checkpointer keep the normal priority, so an event is taken in first and reads use the rest.
/// Never shut down: the reads of every store of the process share them.
static READ_THREADS: std::sync::LazyLock<tokio::runtime::Runtime> =
    std::sync::LazyLock::new(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(64)
            .thread_name("alohook-read")
            .on_thread_start(lower_priority)
            .build()
            .expect("the read threads start")
    });

/// Lowers the calling thread's priority (nice +10); where that is refused, reads keep the
/// normal priority.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // On Linux a thread's nice value is its own: `setpriority` on its thread id.
        let me = rustix::thread::gettid();
        let _ = rustix::process::setpriority_process(Some(me), 10);
    }
}

/// Where a read running for a [`SqliteStore::blocking`] call puts its connection's interrupt
/// handle while a statement may run (and takes it back before the connection goes back to the
/// pool, under the same lock an interrupt takes: a later interrupt cannot reach the next user).
/// Once abandoned, it stays so: a read that had not started yet (queued for a thread, or
/// between two statements) does not start another statement.
type ReadSlot = Arc<Mutex<ReadState>>;

#[derive(Default)]
struct ReadState {
    abandoned: Arc<std::sync::atomic::AtomicBool>,
    running: Option<rusqlite::InterruptHandle>,
}

thread_local! {
    /// The slot of the `blocking` call this thread runs, if any.
    static CURRENT_READ: std::cell::RefCell<Option<ReadSlot>> = const { std::cell::RefCell::new(None) };
}

/// Interrupts the read of its slot when dropped armed.
struct InterruptOnDrop(Option<ReadSlot>);

impl Drop for InterruptOnDrop {
    fn drop(&mut self) {
        if let Some(slot) = self.0.take()
            && let Ok(state) = slot.lock()
        {
            state
                .abandoned
                .store(true, std::sync::atomic::Ordering::Relaxed);
            if let Some(handle) = state.running.as_ref() {
                handle.interrupt();
            }
        }
    }
}

/// WAL frames after which the checkpointer makes the WAL start over.
const WAL_RESET_FRAMES: i64 = 4096;
/// A pass that copied fewer new frames than this is close enough to hold commits for the last one.
const WAL_CATCH_UP_FRAMES: i64 = 64;
/// WAL frames after which the writer checkpoints by itself (the checkpointer is stuck).
const WAL_SAFETY_FRAMES: i64 = 65536;
/// WAL frames (64 MiB of 4 KiB pages) past which the checkpointer waits for the reads still
/// using the WAL, instead of leaving its restart to chance: reads that keep overlapping never
/// leave a moment with none, and the WAL grew by gigabytes.
const WAL_RESTART_FRAMES: i64 = 16_384;
/// How long that wait may last; commits wait as long (reads are short: a listing page does
/// bounded work, the figures read in chunks, and every read stops when its request does).
const WAL_RESTART_WAIT: std::time::Duration = std::time::Duration::from_millis(50);
/// After a wait that the reads outlasted, the next is not tried before this (doubling, up to
/// 32 times), so that long reads do not make commits wait again and again.
const WAL_RESTART_BACKOFF: std::time::Duration = std::time::Duration::from_millis(500);
/// The WAL's size on disk after it starts over.
const WAL_KEEP_BYTES: i64 = 64 * 1024 * 1024;

/// Copies WAL frames into the database file from a thread of its own, so that commits do not
/// wait for it. A passive checkpoint copies what is in the WAL while the writer goes on
/// appending; but the WAL can only start over once it has been copied whole, which never happens
/// while commits keep coming. So once the WAL is long, the checkpointer holds the writer for one
/// more pass: it copies only what arrived since the previous pass, and the next commit rewinds
/// the WAL to its start.
fn spawn_checkpointer(
    path: &Path,
    writer: Arc<Mutex<Writer>>,
) -> Result<std::sync::mpsc::Sender<()>, StoreError> {
    use std::sync::mpsc::{RecvTimeoutError, channel};
    let conn = Connection::open(path)?;
    configure(&conn)?;
    let (stop, stopped) = channel::<()>();
    // (frames in the WAL, frames copied into the database), after a passive checkpoint.
    let checkpoint = move |conn: &Connection| -> rusqlite::Result<(i64, i64)> {
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get(1)?, r.get(2)?))
        })
    };
    std::thread::Builder::new()
        .name("alohook-checkpoint".into())
        .spawn(move || {
            // After a restart that the reads prevented, the next waits a while (doubling).
            let mut backoff = WAL_RESTART_BACKOFF;
            let mut next_restart = std::time::Instant::now();
            while let Err(RecvTimeoutError::Timeout) =
                stopped.recv_timeout(std::time::Duration::from_millis(100))
            {
                let result = checkpoint(&conn).and_then(|(mut frames, mut copied)| {
                    if frames < WAL_RESET_FRAMES {
                        return Ok(());
                    }
                    // Catch up while commits go on, until a pass finds little new to copy...
                    for _ in 0..16 {
                        let (f, c) = checkpoint(&conn)?;
                        let fresh = c - copied;
                        (frames, copied) = (f, c);
                        let _ = frames;
                        if fresh < WAL_CATCH_UP_FRAMES {
                            break;
                        }
                    }
                    // ...then copy the last few frames with commits held, so the WAL rewinds.
                    let _writer = writer.lock().unwrap_or_else(|e| e.into_inner());
                    if frames < WAL_RESTART_FRAMES || std::time::Instant::now() < next_restart {
                        return checkpoint(&conn).map(|_| ());
                    }
                    // Long: wait (a little) for the reads still in the WAL, then restart it.
                    conn.busy_timeout(WAL_RESTART_WAIT)?;
                    let restarted = conn
                        .query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| r.get::<_, i64>(0));
                    conn.busy_timeout(std::time::Duration::from_secs(5))?;
                    if restarted? == 0 {
                        backoff = WAL_RESTART_BACKOFF;
                    } else {
                        tracing::debug!(
                            frames,
                            "the WAL is long and reads kept it from restarting"
                        );
                        next_restart = std::time::Instant::now() + backoff;
                        backoff = (backoff * 2).min(WAL_RESTART_BACKOFF * 32);
                    }
                    Ok(())
                });
                if let Err(error) = result {
                    tracing::warn!(%error, "background checkpoint failed");
                }
            }
        })
        .map_err(|e| StoreError::Database(format!("cannot start the checkpointer: {e}")))?;
    Ok(stop)
}

fn configure(conn: &Connection) -> Result<(), StoreError> {
    // FULL: the WAL is synced at every commit, so an acknowledged event survives a power cut.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "busy_timeout", 5000)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(())
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: usize = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > MIGRATIONS.len() {
        return Err(StoreError::Database(format!(
            "the database is at schema version {version}, newer than this alohook knows ({}); \
             run a newer alohook",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
    }
    tx.commit()?;
    Ok(())
}

/// Recomputes every call record from its events when the stored fingerprint of the merge
/// settings is not the running one (another `--final-statuses` or `--timezone`, or a newer merge
/// rule), so that no record, and no phase, follows settings that are no longer in force.
fn recompute_if_stale(conn: &mut Connection, settings: &MergeSettings) -> Result<(), StoreError> {
    let wanted = settings.fingerprint();
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let stored: Option<String> = tx
        .query_row(
            "SELECT value FROM alohook_meta WHERE key = ?1",
            [MERGE_SETTINGS_KEY],
            |r| r.get(0),
        )
        .optional()?;
    if stored.as_deref() == Some(wanted.as_str()) {
        return Ok(());
    }
    if let Some(error) = settings.refuse_recompute(stored.as_deref()) {
        return Err(error);
    }
    let started = std::time::Instant::now();
    let mut recomputed = 0usize;
    let mut after = i64::MIN;
    loop {
        let chunk: Vec<(i64, String)> = query_rows(
            &tx,
            "SELECT seq, call_id FROM calls WHERE seq > ?1 ORDER BY seq LIMIT 1000",
            [after],
            |row| Ok((row.required_integer(0)?, row.required_text(1)?)),
        )?;
        let Some(&(last, _)) = chunk.last() else {
            break;
        };
        after = last;
        for (seq, call_id) in chunk {
            let events: Vec<(String, i64)> = query_rows(
                &tx,
                "SELECT body, received_at FROM events WHERE scope = ?1 AND call_id = ?1 ORDER BY id",
                [&call_id],
                |row| Ok((row.required_text(0)?, row.required_integer(1)?)),
            )?;
            let Some(record) = settings.remerge(&call_id, &events) else {
                continue;
            };
            let update = rewrite_call(seq, &record, &settings.finals);
            tx.prepare_cached(&update.sql)?
                .execute(params_from_iter(update.args.into_iter().map(sql_value)))?;
            recomputed += 1;
        }
    }
    // The worklist follows the records.
    reports::rebuild_callbacks(&tx)?;
    tx.execute(super::callbacks::MARK_CALLBACKS_BUILT, [])?;
    // And so does the figures' summary.
    let thresholds = match settings.thresholds {
        Some(t) => t,
        None => reports::stored_rollup(&tx)?.unwrap_or_default(),
    };
    reports::rebuild_rollup(&tx, &thresholds, &settings.timezone)?;
    tx.execute(
        "INSERT INTO alohook_meta (key, value) VALUES (?1, ?2) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![MERGE_SETTINGS_KEY, wanted],
    )?;
    tx.commit()?;
    super::log_recomputed(stored.as_deref(), &wanted, recomputed, started);
    Ok(())
}

impl Inner {
    fn with_reader<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let slot = CURRENT_READ.with_borrow(Clone::clone);
        let flag = slot
            .as_ref()
            .and_then(|s| s.lock().ok().map(|s| s.abandoned.clone()));
        let abandoned = || {
            flag.as_ref()
                .is_some_and(|f| f.load(std::sync::atomic::Ordering::Relaxed))
        };
        if abandoned() {
            return Err(StoreError::Database(
                "the read was abandoned: its request ended".into(),
            ));
        }
        let pooled = self.readers.lock().map_err(|_| StoreError::Closed)?.pop();
        let conn = match pooled {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                c.pragma_update(None, "busy_timeout", 5000)?;
                // 1 MiB of page cache per reader: the readers are many, their pages shared by
                // the OS's cache anyway.
                c.pragma_update(None, "cache_size", -1024)?;
                c
            }
        };
        if let Some(slot) = &slot
            && let Ok(mut state) = slot.lock()
        {
            state.running = Some(conn.get_interrupt_handle());
        }
        // An interrupt only stops the statement running when it lands; one between two
        // statements of `f` would be lost. The flag, checked every few thousand steps of any
        // statement, is not.
        if let Some(flag) = flag.clone() {
            conn.progress_handler(
                10_000,
                Some(move || flag.load(std::sync::atomic::Ordering::Relaxed)),
            );
        }
        // Abandoned between the check and the handle being there: nothing was interrupted.
        let result = if abandoned() {
            Err(StoreError::Database(
                "the read was abandoned: its request ended".into(),
            ))
        } else {
            f(&conn)
        };
        if let Some(slot) = &slot
            && let Ok(mut state) = slot.lock()
        {
            state.running = None;
        }
        if flag.is_some() {
            conn.progress_handler(0, None::<fn() -> bool>);
        }
        // A connection left inside a transaction (a rollback the interrupt cut short) would
        // serve an old snapshot and hold the WAL back: it is closed rather than kept.
        if conn.is_autocommit()
            && let Ok(mut idle) = self.readers.lock()
            && idle.len() < MAX_IDLE_READERS
        {
            idle.push(conn);
        }
        result
    }

    /// Runs `work` in a write transaction of the writer connection, beside the batches.
    fn write<T>(
        &self,
        work: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut writer = self.writer.lock().map_err(|_| StoreError::Closed)?;
        let tx = writer
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let result = work(&tx)?;
        tx.commit()?;
        Ok(result)
    }

    fn commit(&self, batch: Vec<Incoming>) -> Result<Committed, StoreError> {
        let mut writer = self.writer.lock().map_err(|_| StoreError::Closed)?;
        let Writer {
            conn,
            calls,
            folded_until,
            fold_failed,
        } = &mut *writer;
        // The first batch of a day folds the days before it (see store::rollup).
        let zone = &self.settings.timezone;
        let now = crate::model::time::now_micros() / 1_000_000;
        if self.rollup.is_some()
            && let Some(until) = super::rollup::fold_due(zone, now, *folded_until)
            && fold_failed.is_none_or(|at| at.elapsed() >= super::rollup::FOLD_RETRY)
        {
            match reports::fold_days(conn, zone, *folded_until, until) {
                Ok(()) => (*folded_until, *fold_failed) = (Some(until), None),
                Err(e) => {
                    tracing::warn!(error = %e, "could not fold the past days of the figures' summary (the figures stay right, counted by hour); trying again in a minute");
                    *fold_failed = Some(std::time::Instant::now());
                }
            }
        }
        let thresholds = self.rollup.unwrap_or_default();
        let result = commit_batch(
            conn,
            calls,
            batch,
            &self.settings,
            (&thresholds, *folded_until),
        );
        if result.is_err() {
            // Rolled back: what the cache learnt in this transaction never happened.
            calls.clear();
        }
        result
    }
}

fn commit_batch(
    conn: &mut Connection,
    calls: &mut CallCache,
    batch: Vec<Incoming>,
    settings: &MergeSettings,
    (thresholds, folded_until): (&crate::report::stats::Thresholds, Option<i64>),
) -> Result<Committed, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if batch.is_empty() {
        tx.prepare_cached(HEARTBEAT)?
            .execute([crate::model::time::now_micros().to_string()])?;
    }
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut changes = Vec::new();
    // The numbers whose callback items may have changed (see callbacks::touched).
    let mut phones = std::collections::BTreeMap::new();
    // What the batch does to the figures' summary.
    let mut rollup = super::rollup::Deltas::new(&settings.timezone, folded_until);
    for item in batch {
        let outcome = match item {
            Incoming::Event { event, received_at } => {
                let (outcome, change) = store_event(
                    &tx,
                    calls,
                    &event,
                    received_at,
                    settings,
                    &mut phones,
                    (&mut rollup, thresholds),
                )?;
                if let Some(change) = change {
                    changes.push(insert_change(&tx, change, settings)?);
                }
                outcome
            }
            Incoming::Rejected(r) => {
                let hash: [u8; 32] = Sha256::digest(&r.body).into();
                let id: i64 = tx
                    .prepare_cached(
                        "INSERT INTO rejected (body_hash, reason, detail, received_at, \
                             last_delivery_at, body) VALUES (?1, ?2, ?3, ?4, ?4, ?5) \
                             ON CONFLICT (body_hash) DO UPDATE SET \
                             deliveries = deliveries + 1, last_delivery_at = excluded.received_at \
                             RETURNING id",
                    )?
                    .query_row(
                        params![&hash[..], r.reason, r.detail, r.received_at, r.body],
                        |row| row.get(0),
                    )?;
                Outcome::Quarantined { id }
            }
        };
        outcomes.push(outcome);
    }
    reports::refresh_callbacks(&tx, &phones)?;
    reports::apply_rollup(&tx, rollup, thresholds)?;
    tx.commit()?;
    Ok(Committed { outcomes, changes })
}

/// Appends a change to the feed: its position is the next one (one writer, so positions follow
/// commit order).
fn insert_change(
    conn: &Connection,
    change: NewChange,
    settings: &MergeSettings,
) -> Result<Change, StoreError> {
    let columns = change_columns(&change);
    let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
    // The same text every time: prepared once, then found in the statement cache.
    let sql = format!(
        "INSERT INTO changes ({}) VALUES ({})",
        names.join(", "),
        vec!["?"; names.len()].join(", ")
    );
    conn.prepare_cached(&sql)?.execute(params_from_iter(
        columns.into_iter().map(|(_, value)| sql_value(value)),
    ))?;
    Ok(Change::new(
        conn.last_insert_rowid(),
        change,
        &settings.timezone,
    ))
}

/// Stores an event (or counts a resend) and merges it into its call; with the change it makes
/// when it is new. The call's number, before and after, goes into `phones`.
fn store_event(
    conn: &Connection,
    calls: &mut CallCache,
    event: &ParsedEvent,
    received_at: i64,
    settings: &MergeSettings,
    phones: &mut std::collections::BTreeMap<String, bool>,
    (rollup, thresholds): (
        &mut super::rollup::Deltas,
        &crate::report::stats::Thresholds,
    ),
) -> Result<(Outcome, Option<NewChange>), StoreError> {
    let call_id = event.merged_call_id();
    let warnings = event.warnings_json();
    let inserted = conn
        .prepare_cached(
            "INSERT INTO events (scope, dedupe_key, event_type, call_id, received_at, \
             last_delivery_at, warnings, body) VALUES (?7, ?1, ?2, ?3, ?4, ?4, ?5, ?6) \
             ON CONFLICT (scope, dedupe_key) DO NOTHING",
        )?
        .execute(params![
            &event.dedupe_key[..],
            event.event_type,
            call_id,
            received_at,
            warnings,
            event.raw,
            event.scope()
        ])?;
    if inserted == 0 {
        let event_id = conn
            .prepare_cached(
                "UPDATE events SET deliveries = deliveries + 1, last_delivery_at = ?2 \
                 WHERE scope = ?3 AND dedupe_key = ?1 RETURNING id",
            )?
            .query_row(
                params![&event.dedupe_key[..], received_at, event.scope()],
                |r| r.get(0),
            )?;
        return Ok((Outcome::Duplicate { event_id }, None));
    }
    let event_id = conn.last_insert_rowid();
    let change = match call_id {
        Some(call_id) => {
            let key = event.source_key(&settings.finals);
            let (before, after) = merge_call(
                conn,
                calls,
                call_id,
                &event.fields,
                key,
                received_at,
                &settings.finals,
            )?;
            super::callbacks::touched(before.as_ref(), &after, &settings.finals, phones);
            let facts = |r: &CallRecord| super::rollup::facts(r, &settings.finals);
            rollup.record(
                before.as_ref().map(facts).as_ref(),
                &facts(&after),
                thresholds,
            );
            call_change(event_id, received_at, before.as_ref(), &after, settings)
        }
        None => NewChange::event(event_id, received_at, &event.raw),
    };
    Ok((Outcome::Stored { event_id }, Some(change)))
}

/// Merges an event into its call (creating it); returns the record before (`None`: created) and
/// after.
fn merge_call(
    conn: &Connection,
    calls: &mut CallCache,
    call_id: &str,
    fields: &EventFields,
    key: SourceKey,
    received_at: i64,
    finals: &FinalStatuses,
) -> Result<(Option<CallRecord>, CallRecord), StoreError> {
    let (seq, mut record) = match calls.take(call_id) {
        Some(cached) => cached,
        None => {
            // Most calls are new: insert, and read the row only if the call existed after all.
            let record = CallRecord::from_event(call_id, fields, key, received_at);
            let insert = insert_call(&record, finals);
            let inserted = conn
                .prepare_cached(&insert.sql)?
                .execute(params_from_iter(insert.args.into_iter().map(sql_value)))?;
            if inserted == 1 {
                calls.put(call_id, conn.last_insert_rowid(), record.clone());
                return Ok((None, record));
            }
            let (seq, stored) = conn
                .prepare_cached(&format!(
                    "SELECT {CALL_COLUMNS} FROM calls WHERE call_id = ?1"
                ))?
                .query_row([call_id], read_call)?;
            (seq, stored?.record)
        }
    };
    let before = record.clone();
    let update = merge_into_call(seq, &mut record, fields, key, received_at, finals);
    conn.prepare_cached(&update.sql)?
        .execute(params_from_iter(update.args.into_iter().map(sql_value)))?;
    calls.put(call_id, seq, record.clone());
    Ok((Some(before), record))
}

/// Inserts a new call unless its id exists (`ON CONFLICT (call_id) DO NOTHING`).
fn insert_call(record: &CallRecord, finals: &FinalStatuses) -> Statement {
    let columns = call_columns(record, finals);
    let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
    Statement {
        sql: format!(
            "INSERT INTO calls ({}) VALUES ({}) ON CONFLICT (call_id) DO NOTHING",
            names.join(", "),
            vec!["?"; names.len()].join(", ")
        ),
        args: columns.into_iter().map(|(_, v)| v).collect(),
    }
}

/// Merges an event into a stored call and returns the UPDATE of the columns that changed.
/// Only those are written: SQLite rewrites the entries of every index holding a column named in
/// SET, and untouched index pages are what keep a commit small. (PostgreSQL compares the values
/// itself; its batches write whole rows, see `store/postgres/write.rs`.)
fn merge_into_call(
    seq: i64,
    record: &mut CallRecord,
    event: &EventFields,
    key: SourceKey,
    received_at: i64,
    finals: &FinalStatuses,
) -> Statement {
    let before = call_columns(record, finals);
    record.merge(event, key, received_at);
    let changed: Vec<(&str, Column)> = before
        .into_iter()
        .zip(call_columns(record, finals))
        .filter(|((_, old), (_, new))| old != new)
        .map(|(_, new)| new)
        .collect();
    let assignments: Vec<String> = changed
        .iter()
        .map(|(name, _)| format!("{name} = ?"))
        .collect();
    let mut args: Vec<Column> = changed.into_iter().map(|(_, v)| v).collect();
    args.push(Column::Integer(Some(seq)));
    Statement {
        sql: format!("UPDATE calls SET {} WHERE seq = ?", assignments.join(", ")),
        args,
    }
}

fn sql_value(column: Column) -> SqlValue {
    match column {
        Column::Text(Some(t)) => SqlValue::Text(t),
        Column::Integer(Some(i)) => SqlValue::Integer(i),
        Column::Text(None) | Column::Integer(None) => SqlValue::Null,
    }
}

impl RowColumns for Row<'_> {
    fn text(&self, index: usize) -> Result<Option<String>, StoreError> {
        Ok(self.get(index)?)
    }

    fn integer(&self, index: usize) -> Result<Option<i64>, StoreError> {
        Ok(self.get(index)?)
    }

    fn bytes(&self, index: usize) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.get(index)?)
    }
}

/// Every row of `sql` run with `args`, read with `read`.
fn query_rows<T>(
    conn: &Connection,
    sql: &str,
    args: impl rusqlite::Params,
    read: impl Fn(&Row<'_>) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(args)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(read(row)?);
    }
    Ok(out)
}

type CallRow = (i64, Result<StoredCall, StoreError>);

/// For rusqlite's row callbacks: SQL errors stop the query, bad data is reported per row.
fn read_call(row: &Row<'_>) -> rusqlite::Result<CallRow> {
    match read_call_row(row) {
        Ok((seq, call)) => Ok((seq, Ok(call))),
        Err(e) => Ok((0, Err(e))),
    }
}

/// A page of the call listing, as `plan` says (one snapshot: every statement in one read
/// transaction).
fn list_calls(conn: &Connection, plan: &listing::ListPlan) -> Result<CallPage, StoreError> {
    let tx = conn.unchecked_transaction()?;
    let mut ends = Vec::new();
    for end in plan.window_ends() {
        let at = tx
            .prepare_cached(&end.sql)?
            .query_row(params_from_iter(end.args.into_iter().map(sql_value)), |r| {
                Ok(CallCursor {
                    sort_key: r.get(0)?,
                    seq: r.get(1)?,
                })
            })
            .optional()?;
        ends.push(at);
    }
    let cutoff = listing::ListPlan::cutoff(&ends);
    let query = plan.rows(cutoff);
    let rows = query_rows(
        &tx,
        &query.sql,
        params_from_iter(query.args.into_iter().map(sql_value)),
        |row| read_call_row(row),
    )?;
    Ok(plan.page(rows, cutoff, call_size))
}

#[async_trait]
impl ChangeLog for SqliteStore {
    async fn changes(
        &self,
        after: i64,
        filter: &ChangeFilter,
        limit: usize,
        max_bytes: usize,
    ) -> Result<ChangePage, StoreError> {
        let query = changes_query(after, filter, limit);
        self.reading(move |inner| {
            let tz = inner.settings.timezone.clone();
            inner.with_reader(|conn| {
                let mut stmt = conn.prepare_cached(&query.sql)?;
                let mut rows =
                    stmt.query(params_from_iter(query.args.into_iter().map(sql_value)))?;
                let mut pager = Pager::with_bytes(limit, max_bytes);
                while let Some(row) = rows.next()? {
                    let change = read_change_row(row, &tz)?;
                    let size = change_size(&change);
                    if !pager.push(change, size) {
                        break;
                    }
                }
                let (items, next) = pager.finish(|c| c.seq);
                Ok(ChangePage {
                    items,
                    more: next.is_some(),
                })
            })
        })
        .await
    }

    async fn count_changes(
        &self,
        after: i64,
        filter: &ChangeFilter,
        undelivered_to: Option<&str>,
    ) -> Result<(i64, Option<i64>), StoreError> {
        let query = count_changes_query(after, filter, undelivered_to);
        self.reading(move |inner| {
            inner.with_reader(|conn| {
                Ok(conn.prepare_cached(&query.sql)?.query_row(
                    params_from_iter(query.args.into_iter().map(sql_value)),
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?)
            })
        })
        .await
    }

    async fn last_seq(&self) -> Result<i64, StoreError> {
        self.reading(|inner| {
            inner.with_reader(|conn| {
                Ok(conn
                    // The last position handed out, even when its row has been deleted since.
                    .prepare_cached(
                        "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'changes'), 0)",
                    )?
                    .query_row([], |r| r.get(0))?)
            })
        })
        .await
    }
}

#[async_trait]
impl super::Sessions for SqliteStore {
    async fn end_session(&self, id: &str, at: i64, forget_before: i64) -> Result<(), StoreError> {
        let id = id.to_string();
        self.blocking(move |inner| {
            inner.write(|tx| {
                tx.prepare_cached(super::END_SESSION)?
                    .execute(params![id, at])?;
                tx.prepare_cached(super::FORGET_SESSIONS)?
                    .execute([forget_before])?;
                Ok(())
            })
        })
        .await
    }

    async fn session_ended(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.reading(move |inner| {
            inner
                .with_reader(|conn| Ok(conn.prepare_cached(super::SESSION_ENDED)?.exists([&id])?))
        })
        .await
    }
}

#[async_trait]
impl Destinations for SqliteStore {
    async fn create_destination(
        &self,
        id: &str,
        spec: &DestinationSpec,
        secret: &str,
        cursor: i64,
    ) -> Result<StoredDestination, StoreError> {
        let now = crate::model::time::now_micros();
        let (id, spec_text, secret) = (id.to_string(), spec_json(spec), secret.to_string());
        let created = self
            .blocking(move |inner| {
                inner.write(|tx| {
                    tx.prepare_cached(INSERT_DESTINATION)?
                        .execute(params![id, spec_text, secret, cursor, now, now])?;
                    Ok(id)
                })
            })
            .await?;
        self.destination(&created)
            .await?
            .ok_or_else(|| StoreError::Corrupt("a destination vanished as it was made".into()))
    }

    async fn destinations(&self) -> Result<Vec<StoredDestination>, StoreError> {
        self.reading(|inner| {
            inner.with_reader(|conn| {
                query_rows(
                    conn,
                    &format!(
                        "SELECT {DESTINATION_COLUMNS} FROM destinations ORDER BY created_at, id"
                    ),
                    [],
                    |row| read_destination_row(row),
                )
            })
        })
        .await
    }

    async fn destination(&self, id: &str) -> Result<Option<StoredDestination>, StoreError> {
        let id = id.to_string();
        self.reading(move |inner| {
            inner.with_reader(|conn| {
                Ok(query_rows(
                    conn,
                    &format!("SELECT {DESTINATION_COLUMNS} FROM destinations WHERE id = ?1"),
                    [&id],
                    |row| read_destination_row(row),
                )?
                .pop())
            })
        })
        .await
    }

    async fn update_destination(
        &self,
        destination: &StoredDestination,
    ) -> Result<bool, StoreError> {
        let d = destination.clone();
        let now = crate::model::time::now_micros();
        self.blocking(move |inner| {
            inner.write(|tx| {
                let updated = tx.prepare_cached(UPDATE_DESTINATION)?.execute(params![
                    spec_json(&d.spec),
                    d.enabled as i64,
                    d.disabled_reason,
                    d.secret,
                    d.previous_secret,
                    d.previous_secret_until,
                    // Later than the version read, even on a clock that stepped back.
                    now.max(d.updated_at + 1),
                    d.id,
                    d.updated_at
                ])?;
                Ok(updated == 1)
            })
        })
        .await
    }

    async fn delete_destination(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.blocking(move |inner| {
            inner.write(|tx| {
                let mut deleted = 0;
                for sql in DELETE_DESTINATION {
                    deleted = tx.prepare_cached(sql)?.execute([&id])?;
                }
                Ok(deleted == 1)
            })
        })
        .await
    }

    async fn delivery_counts(&self, id: &str) -> Result<DeliveryCounts, StoreError> {
        let id = id.to_string();
        self.reading(move |inner| {
            inner.with_reader(|conn| {
                let (pending, delivered, dead) = conn
                    .prepare_cached(DELIVERY_COUNTS)?
                    .query_row([&id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                let (failed_attempts, last_success_at) = conn
                    .prepare_cached(DELIVERY_ATTEMPT_COUNTS)?
                    .query_row([&id], |r| Ok((r.get(0)?, r.get(1)?)))?;
                let last_error = conn
                    .prepare_cached(LAST_DELIVERY_ERROR)?
                    .query_row([&id], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?
                    .map(|(status, error)| describe_failure(status, error));
                let oldest_pending_received_at = conn
                    .prepare_cached(OLDEST_PENDING)?
                    .query_row([&id], |r| r.get(0))?;
                Ok(DeliveryCounts {
                    pending,
                    delivered,
                    dead,
                    failed_attempts,
                    oldest_pending_received_at,
                    last_success_at,
                    last_error,
                })
            })
        })
        .await
    }
}

#[async_trait]
impl Deliveries for SqliteStore {
    async fn save_deliveries(
        &self,
        destination_id: &str,
        updates: Vec<DeliveryUpdate>,
        cursor: i64,
    ) -> Result<(), StoreError> {
        let destination_id = destination_id.to_string();
        let now = crate::model::time::now_micros();
        self.blocking(move |inner| {
            inner.write(|tx| {
                for u in &updates {
                    let (last_status, last_error) = match &u.attempt {
                        Some(a) => (a.status, a.error.clone()),
                        None => (None, None),
                    };
                    let id: i64 = tx.prepare_cached(deliveries::UPSERT_DELIVERY)?.query_row(
                        params![
                            destination_id,
                            u.seq,
                            u.kind,
                            u.call_id,
                            u.state.as_str(),
                            u.attempts,
                            u.next_attempt_at,
                            last_status,
                            last_error,
                            now,
                            now
                        ],
                        |r| r.get(0),
                    )?;
                    if let Some(a) = &u.attempt {
                        tx.prepare_cached(deliveries::INSERT_ATTEMPT)?
                            .execute(params![
                                id,
                                a.at,
                                a.status,
                                a.error,
                                a.duration_ms,
                                a.response
                            ])?;
                    }
                }
                tx.prepare_cached(deliveries::RAISE_CURSOR)?
                    .execute(params![cursor, cursor, destination_id])?;
                Ok(())
            })
        })
        .await
    }

    async fn due_deliveries(
        &self,
        destination_id: &str,
        now: i64,
        limit: usize,
    ) -> Result<Vec<StoredDelivery>, StoreError> {
        let destination_id = destination_id.to_string();
        self.reading(move |inner| {
            inner.with_reader(|conn| {
                query_rows(
                    conn,
                    deliveries::DUE_DELIVERIES,
                    params![destination_id, now, limit as i64],
                    |row| deliveries::read_delivery_row(row),
                )
            })
        })
        .await
    }

    async fn release_call(
        &self,
        destination_id: &str,
        call_id: &str,
        now: i64,
    ) -> Result<Option<i64>, StoreError> {
        let (destination_id, call_id) = (destination_id.to_string(), call_id.to_string());
        self.blocking(move |inner| {
            inner.write(|tx| {
                Ok(tx
                    .prepare_cached(deliveries::RELEASE_CALL)?
                    .query_row(params![now, destination_id, call_id], |r| r.get(0))
                    .optional()?)
            })
        })
        .await
    }

    async fn calls_pending(&self, destination_id: &str) -> Result<Vec<String>, StoreError> {
        let destination_id = destination_id.to_string();
        self.reading(move |inner| {
            inner.with_reader(|conn| {
                query_rows(conn, deliveries::CALLS_PENDING, [&destination_id], |row| {
                    row.required_text(0)
                })
            })
        })
        .await
    }

    async fn delivered_positions(
        &self,
        destination_id: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<i64>, StoreError> {
        let destination_id = destination_id.to_string();
        self.reading(move |inner| {
            inner.with_reader(|conn| {
                query_rows(
                    conn,
                    deliveries::DELIVERED_POSITIONS,
                    params![destination_id, from, to],
                    |row| row.required_integer(0),
                )
            })
        })
        .await
    }

    async fn replay_matches(
        &self,
        destination_id: &str,
        scope: &deliveries::ReplayScope,
        upto: i64,
    ) -> Result<i64, StoreError> {
        let query = deliveries::replay_count_query(destination_id, scope, upto);
        self.reading(move |inner| {
            inner.with_reader(|conn| {
                Ok(conn.prepare_cached(&query.sql)?.query_row(
                    params_from_iter(query.args.into_iter().map(sql_value)),
                    |r| r.get(0),
                )?)
            })
        })
        .await
    }

    async fn queue_replay(
        &self,
        destination_id: &str,
        scope: &deliveries::ReplayScope,
        after: i64,
        upto: i64,
        per_call: bool,
        touch: bool,
    ) -> Result<i64, StoreError> {
        let now = crate::model::time::now_micros();
        let query =
            deliveries::replay_queue_query(destination_id, scope, after, upto, per_call, now);
        let destination_id = destination_id.to_string();
        self.blocking(move |inner| {
            inner.write(|tx| {
                let queued = tx
                    .prepare_cached(&query.sql)?
                    .execute(params_from_iter(query.args.into_iter().map(sql_value)))?;
                if per_call {
                    tx.prepare_cached(deliveries::RELEASE_HEADS)?
                        .execute(params![now, destination_id])?;
                }
                if touch {
                    tx.prepare_cached(deliveries::TOUCH_DESTINATION)?
                        .execute(params![now, destination_id])?;
                }
                Ok(queued as i64)
            })
        })
        .await
    }

    async fn pending_deliveries(
        &self,
        destination_id: &str,
    ) -> Result<(i64, Option<i64>), StoreError> {
        let destination_id = destination_id.to_string();
        self.reading(move |inner| {
            inner.with_reader(|conn| {
                Ok(conn
                    .prepare_cached(deliveries::PENDING_DELIVERIES)?
                    .query_row([&destination_id], |r| Ok((r.get(0)?, r.get(1)?)))?)
            })
        })
        .await
    }

    async fn release_held(
        &self,
        destination_id: &str,
        per_call: bool,
        now: i64,
    ) -> Result<(), StoreError> {
        let destination_id = destination_id.to_string();
        let sql = if per_call {
            deliveries::RELEASE_HEADS
        } else {
            deliveries::RELEASE_ALL_HELD
        };
        self.blocking(move |inner| {
            inner.write(|tx| {
                tx.prepare_cached(sql)?
                    .execute(params![now, destination_id])?;
                Ok(())
            })
        })
        .await
    }

    async fn disable_destination(
        &self,
        destination_id: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        let (destination_id, reason) = (destination_id.to_string(), reason.to_string());
        let now = crate::model::time::now_micros();
        self.blocking(move |inner| {
            inner.write(|tx| {
                tx.prepare_cached(deliveries::DISABLE_DESTINATION)?
                    .execute(params![reason, now, destination_id])?;
                Ok(())
            })
        })
        .await
    }

    async fn release_lease(&self, destination_id: &str, owner: &str) -> Result<(), StoreError> {
        let (destination_id, owner) = (destination_id.to_string(), owner.to_string());
        self.blocking(move |inner| {
            inner.write(|tx| {
                tx.prepare_cached(deliveries::RELEASE_LEASE)?
                    .execute(params![destination_id, owner])?;
                Ok(())
            })
        })
        .await
    }

    async fn save_job(&self, job: &deliveries::Job) -> Result<(), StoreError> {
        let job = job.clone();
        self.blocking(move |inner| {
            inner.write(|tx| {
                tx.prepare_cached(deliveries::SAVE_JOB)?.execute(params![
                    job.id,
                    job.kind,
                    job.destination_id,
                    job.state,
                    job.matched,
                    job.queued,
                    job.error,
                    job.created_at,
                    job.updated_at
                ])?;
                Ok(())
            })
        })
        .await
    }

    async fn job(&self, id: &str) -> Result<Option<deliveries::Job>, StoreError> {
        let id = id.to_string();
        self.reading(move |inner| {
            inner.with_reader(|conn| {
                Ok(query_rows(
                    conn,
                    &format!("SELECT {} FROM jobs WHERE id = ?", deliveries::JOB_COLUMNS),
                    params![id],
                    |row| deliveries::read_job_row(row),
                )?
                .pop())
            })
        })
        .await
    }

    async fn lease_destination(
        &self,
        destination_id: &str,
        owner: &str,
        now: i64,
        until: i64,
    ) -> Result<bool, StoreError> {
        let (destination_id, owner) = (destination_id.to_string(), owner.to_string());
        // One process has the database (its lock file says so): a lease left by a process that
        // is gone is taken at once, so that what was in flight goes again as soon as this one
        // starts.
        let _ = now;
        self.blocking(move |inner| {
            inner.write(|tx| {
                let taken = tx
                    .prepare_cached(deliveries::LEASE_DESTINATION)?
                    .execute(params![owner, until, destination_id, owner, i64::MAX])?;
                Ok(taken == 1)
            })
        })
        .await
    }

    async fn deliveries(
        &self,
        filter: &DeliveryFilter,
        limit: usize,
        before: Option<i64>,
    ) -> Result<DeliveryPage, StoreError> {
        let query = deliveries::deliveries_query(filter, before, limit);
        self.reading(move |inner| {
            inner.with_reader(|conn| {
                let rows = query_rows(
                    conn,
                    &query.sql,
                    params_from_iter(query.args.into_iter().map(sql_value)),
                    |row| deliveries::read_delivery_row(row),
                )?;
                let mut pager = Pager::new(limit);
                for row in rows {
                    if !pager.push(row, 300) {
                        break;
                    }
                }
                let (mut items, next) = pager.finish(|d| d.id);
                let ids: Vec<i64> = items.iter().map(|d| d.id).collect();
                if !ids.is_empty() {
                    let attempts = query_rows(
                        conn,
                        &deliveries::attempts_query(ids.len()),
                        params_from_iter(ids.iter()),
                        |row| deliveries::read_attempt_row(row),
                    )?;
                    for (id, attempt) in attempts {
                        if let Some(d) = items.iter_mut().find(|d| d.id == id) {
                            d.attempt_log.push(attempt);
                        }
                    }
                }
                Ok(DeliveryPage { items, next })
            })
        })
        .await
    }
}

#[async_trait]
impl Store for SqliteStore {
    /// Runs on the calling thread: alohook calls it only from its writer thread, where blocking
    /// is the point, and a hop to another thread per batch cost a sixth of ingest throughput.
    async fn commit(&self, batch: Vec<Incoming>) -> Result<Committed, StoreError> {
        self.inner.commit(batch)
    }

    async fn call(&self, call_id: &str) -> Result<Option<StoredCall>, StoreError> {
        let call_id = call_id.to_string();
        self.reading(move |inner| {
            inner.with_reader(|conn| {
                let row = conn
                    .prepare_cached(&format!(
                        "SELECT {CALL_COLUMNS} FROM calls WHERE call_id = ?1"
                    ))?
                    .query_row([call_id], read_call)
                    .optional()?;
                row.map(|(_, call)| call).transpose()
            })
        })
        .await
    }

    async fn calls_within(
        &self,
        filter: &CallFilter,
        limit: usize,
        cursor: Option<CallCursor>,
        budget: usize,
    ) -> Result<CallPage, StoreError> {
        let plan = listing::plan(filter, cursor, limit, budget);
        self.reading(move |inner| inner.with_reader(|conn| list_calls(conn, &plan)))
            .await
    }

    async fn call_events(
        &self,
        call_id: &str,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Option<EventPage>, StoreError> {
        let call_id = call_id.to_string();
        self.reading(move |inner| {
            inner.with_reader(|conn| {
                let tx = conn.unchecked_transaction()?;
                let known = tx
                    .prepare_cached("SELECT 1 FROM calls WHERE call_id = ?1")?
                    .exists([&call_id])?;
                if !known {
                    return Ok(None);
                }
                // Rows are read one at a time, and no further than the page holds.
                let mut pager = Pager::new(limit);
                let mut stmt = tx.prepare_cached(CALL_EVENTS_QUERY)?;
                let mut rows = stmt.query(params![
                    call_id,
                    call_id,
                    after.unwrap_or(i64::MIN),
                    limit as i64 + 1
                ])?;
                while let Some(row) = rows.next()? {
                    let event = read_event_row(row)?;
                    let size = event.payload.len();
                    if !pager.push(event, size) {
                        break;
                    }
                }
                let (items, next) = pager.finish(|e| e.event_id);
                Ok(Some(EventPage { items, next }))
            })
        })
        .await
    }

    async fn rejected(
        &self,
        limit: usize,
        before: Option<i64>,
    ) -> Result<RejectedPage, StoreError> {
        self.reading(move |inner| {
            inner.with_reader(|conn| {
                let mut pager = Pager::new(limit);
                let mut stmt = conn.prepare_cached(REJECTED_QUERY)?;
                let mut rows = stmt.query(params![before.unwrap_or(i64::MAX), limit as i64 + 1])?;
                while let Some(row) = rows.next()? {
                    let rejection = read_rejected_row(row)?;
                    let size = rejection.body.len();
                    if !pager.push(rejection, size) {
                        break;
                    }
                }
                let (items, next) = pager.finish(|r| r.id);
                Ok(RejectedPage { items, next })
            })
        })
        .await
    }

    /// Room on the disk and a database that answers, checked without the writer's lock: the
    /// checkpointer may hold that for a while, and readiness must not flap with it. Whether
    /// commits succeed is the writer's to say (see `ingest`).
    async fn check_writable(&self) -> Result<(), StoreError> {
        self.blocking(|inner| {
            let dir = match inner.path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            };
            let stat = rustix::fs::statvfs(&dir).map_err(|e| {
                StoreError::Database(format!("cannot read the free space of {}: {e}", dir.display()))
            })?;
            let free = stat.f_bavail.saturating_mul(stat.f_frsize);
            if free < MIN_FREE_BYTES {
                return Err(StoreError::Database(format!(
                    "only {free} bytes free on the file system of {}; alohook needs {MIN_FREE_BYTES}",
                    dir.display()
                )));
            }
            inner.with_reader(|conn| {
                conn.query_row("SELECT count(*) FROM alohook_meta", [], |_| Ok(()))?;
                Ok(())
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A read abandoned between two of its statements does not run the next one to its end
    /// (an interrupt lands only on a running statement; the flag stays).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_abandoned_between_statements_stops_at_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("a.db"), MergeSettings::default()).unwrap();
        let (ended, ends) = std::sync::mpsc::channel();
        let read = store.reading(move |inner| {
            let result = inner.with_reader(|conn| {
                let _: i64 = conn.query_row("SELECT 1", [], |r| r.get(0))?;
                // The request goes away here, between two statements.
                std::thread::sleep(Duration::from_millis(400));
                Ok(conn.query_row(
                    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) \
                     SELECT count(*) FROM c",
                    [],
                    |r| r.get::<_, i64>(0),
                )?)
            });
            let _ = ended.send(result.is_err());
            result
        });
        assert!(
            tokio::time::timeout(Duration::from_millis(100), read)
                .await
                .is_err()
        );
        let stopped =
            tokio::task::spawn_blocking(move || ends.recv_timeout(Duration::from_secs(5)))
                .await
                .unwrap();
        assert_eq!(stopped, Ok(true), "the next statement ran on");
    }

    /// Reads that keep overlapping (there is never a moment without one) do not let the WAL
    /// grow without bound: past WAL_RESTART_FRAMES the checkpointer waits for them and restarts
    /// it, and its file shrinks back to WAL_KEEP_BYTES.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn overlapping_reads_do_not_let_the_wal_grow_without_bound() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let store = SqliteStore::open(&path, MergeSettings::default()).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        // Three readers, each holding a snapshot 30 ms at a time, a third of a period apart:
        // there is never a moment without one.
        let readers: Vec<_> = (0..3)
            .map(|i| {
                let (path, stop) = (path.clone(), stop.clone());
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(10 * i));
                    let conn = Connection::open(&path).unwrap();
                    while !stop.load(Ordering::Relaxed) {
                        conn.execute_batch("BEGIN").unwrap();
                        let _: i64 = conn
                            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
                            .unwrap();
                        std::thread::sleep(Duration::from_millis(30));
                        conn.execute_batch("COMMIT").unwrap();
                    }
                })
            })
            .collect();
        // About 250 MiB of events (a rejected body of 60 KiB each: the quarantine keeps it).
        let mut peak = 0;
        for batch in 0..100 {
            let bodies = (0..40)
                .map(|i| {
                    Incoming::Rejected(crate::store::RejectedBody {
                        body: format!("{batch}-{i}-{}", "x".repeat(60 * 1024)).into_bytes(),
                        reason: "invalid_json",
                        detail: "test".into(),
                        received_at: 0,
                    })
                })
                .collect();
            store.commit(bodies).await.unwrap();
            let wal = std::fs::metadata(dir.path().join("a.db-wal")).map_or(0, |m| m.len());
            peak = peak.max(wal);
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            r.join().unwrap();
        }
        // Without the wait, it reached the whole volume written (about 250 MiB).
        let bound = (WAL_RESTART_FRAMES * 4096) as u64 * 2;
        assert!(peak < bound, "the WAL reached {} MiB", peak >> 20);
    }

    /// Reads run on the lower-priority read threads; work that may take the writer does not.
    #[cfg(target_os = "linux")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_run_at_a_lower_priority_than_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("a.db"), MergeSettings::default()).unwrap();
        let nice = || {
            rustix::process::getpriority_process(Some(rustix::thread::gettid()))
                .map_err(|e| StoreError::Database(e.to_string()))
        };
        let normal = store.blocking(move |_| nice()).await.unwrap();
        let read = store.reading(move |_| nice()).await.unwrap();
        assert_eq!(read, normal.max(10), "normal {normal}");
    }

    /// A read whose future is dropped (its request timed out or went away) stops: a statement
    /// that would otherwise run forever returns, interrupted, and its connection serves the
    /// next read.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_abandoned_read_is_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("a.db"), MergeSettings::default()).unwrap();
        let (ended, ends) = std::sync::mpsc::channel();
        let forever = store.blocking(move |inner| {
            let result = inner.with_reader(|conn| {
                Ok(conn.query_row(
                    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) \
                     SELECT count(*) FROM c",
                    [],
                    |r| r.get::<_, i64>(0),
                )?)
            });
            let _ = ended.send(result.is_err());
            result
        });
        assert!(
            tokio::time::timeout(Duration::from_millis(300), forever)
                .await
                .is_err()
        );
        let interrupted =
            tokio::task::spawn_blocking(move || ends.recv_timeout(Duration::from_secs(5)))
                .await
                .unwrap();
        assert_eq!(
            interrupted,
            Ok(true),
            "the abandoned statement did not stop"
        );
        // The pool's connection still reads.
        assert_eq!(store.last_seq().await.unwrap(), 0);
    }
}
