//! `/readyz` says whether events can be stored now: not while the disk is full, and not fooled
//! by a lock someone else holds for a while.

use reqwest::StatusCode;
use serde_json::json;

use crate::support::*;

/// A write lock held on the database (by the checkpointer, a backup, an operator's sqlite3)
/// delays commits; it does not make the instance unready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_does_not_wait_for_the_writers_lock() {
    let db = Db::sqlite();
    let server = TestServer::start(&db).await;
    server.send(&in_progress("c-ready")).await;
    let holder = rusqlite::Connection::open(db.path().join("alohook.db")).unwrap();
    holder
        .execute_batch("BEGIN IMMEDIATE; INSERT INTO alohook_meta VALUES ('held', 'x');")
        .unwrap();
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let (status, body) = server.get_with_auth("/readyz", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }
    holder.execute_batch("ROLLBACK").unwrap();
    server.stop().await;
}

/// A tmpfs of its own for the data dir, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// `None` (with a notice) where mounting is not allowed; CI sets ALOHOOK_TEST_STRICT, which
    /// turns that into a failure.
    fn mount(megabytes: u32) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(dir.path())
            .status();
        match status {
            Ok(s) if s.success() => Some(SmallDisk { dir }),
            other => {
                let why = format!("cannot mount a tmpfs ({other:?}): this test needs root");
                assert!(std::env::var_os("ALOHOOK_TEST_STRICT").is_none(), "{why}");
                eprintln!("NOTICE: skipped: {why}");
                None
            }
        }
    }

    /// Fills the file system; returns the filler's path.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.dir.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while file.write_all(&chunk).is_ok() {}
        let _ = file.sync_all();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

/// With the disk full, events are answered 503 and keep nothing, and `/readyz` says so, so that
/// a load balancer sends the traffic elsewhere; with room again, both come back by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_makes_the_instance_unready() {
    let Some(disk) = SmallDisk::mount(48) else {
        return;
    };
    let mut settings = settings(&Db::sqlite());
    settings.data_dir = Some(disk.dir.path().join("data"));
    let server = TestServer::start_with(settings, None).await;
    server.send(&in_progress("c-before")).await;

    let filler = disk.fill();
    let (status, _) = server.get_with_auth("/readyz", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let large = |i: usize| {
        let mut e = ended(&format!("c-full-{i}"));
        e["padding"] = json!("y".repeat(60_000));
        e.to_string()
    };
    let mut refused = Vec::new();
    for i in 0..10 {
        let (status, answer) = server.post(large(i)).await;
        match status {
            StatusCode::SERVICE_UNAVAILABLE => refused.push(i),
            StatusCode::OK => {
                // Stored after all: it must be readable.
                assert_eq!(
                    server.call(&format!("c-full-{i}")).await["event_count"],
                    1,
                    "{answer}"
                );
            }
            other => panic!("{other}: {answer}"),
        }
    }
    assert!(!refused.is_empty(), "a full disk took every event");

    std::fs::remove_file(filler).unwrap();
    let mut ready = false;
    for _ in 0..50 {
        let (status, _) = server.get_with_auth("/readyz", None).await;
        if status == StatusCode::OK {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ready, "/readyz did not come back once the disk had room");
    for i in refused {
        let (status, answer) = server.post(large(i)).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer["duplicate"], false, "the refused delivery was kept");
    }
    server.stop().await;
    drop(disk);
}
