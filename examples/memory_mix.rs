//! The request mix of `bench/memory`: everything that used to make alohook's memory grow with
//! the load instead of with its settings, all at once, for `--seconds`:
//!
//! - `--writers` (256) connections POSTing `--body` (60 KiB) events as fast as they are answered;
//! - `--readers` (16) readers of `/api/rejected?limit=1000` over a quarantine of 60 KB bodies;
//! - as many readers of `/api/calls?limit=1000`;
//! - `--stalled` (8) connections that pipeline 100 reads of a call of 3000 events, then never
//!   read.
//!
//! It prints a JSON summary of what was answered. The benchmark script samples the server's RSS.
//!
//! `cargo run --release --example memory_mix -- --url http://127.0.0.1:8080 --key K --token T`

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

struct Args {
    url: String,
    key: String,
    token: String,
    seconds: u64,
    writers: usize,
    readers: usize,
    body: usize,
    stalled: usize,
}

fn args() -> Args {
    let mut a = Args {
        url: String::new(),
        key: String::new(),
        token: String::new(),
        seconds: 20,
        writers: 256,
        readers: 16,
        body: 60 * 1024,
        stalled: 8,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => a.url = value,
            "--key" => a.key = value,
            "--token" => a.token = value,
            "--seconds" => a.seconds = value.parse().expect("--seconds N"),
            "--writers" => a.writers = value.parse().expect("--writers N"),
            "--readers" => a.readers = value.parse().expect("--readers N"),
            "--body" => a.body = value.parse().expect("--body BYTES"),
            "--stalled" => a.stalled = value.parse().expect("--stalled N"),
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(!a.url.is_empty(), "--url is required");
    a
}

type Tally = Arc<Mutex<BTreeMap<String, u64>>>;

fn count(tally: &Tally, what: String) {
    *tally.lock().unwrap().entry(what).or_default() += 1;
}

fn event(call_id: &str, padding: usize) -> String {
    serde_json::json!({
        "call_id": call_id, "call_status": "answered", "direction": "inbound",
        "caller_number": "0389123456", "destination_number": "101",
        "starttime": "2025-11-25 09:00:00", "answertime": "2025-11-25 09:00:05",
        "eventType": "call", "padding": "p".repeat(padding),
    })
    .to_string()
}

#[tokio::main]
async fn main() {
    let a = Arc::new(args());
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(512)
        .build()
        .unwrap();
    let webhook = format!("{}/webhooks/alohub", a.url);

    // The quarantine and a large call, before the mix.
    for i in 0..100 {
        let body = format!("{i:03}{}", "q".repeat(60_000));
        client
            .post(&webhook)
            .header("authorization", &a.key)
            .body(body)
            .send()
            .await
            .unwrap();
    }
    let mut seeds = Vec::new();
    for chunk in 0..30 {
        let (client, webhook, key) = (client.clone(), webhook.clone(), a.key.clone());
        seeds.push(tokio::spawn(async move {
            for i in 0..100 {
                let mut body = event("big-call", 900);
                body = body.replace("\"padding\":\"", &format!("\"padding\":\"{chunk:02}{i:03}"));
                client
                    .post(&webhook)
                    .header("authorization", &key)
                    .body(body)
                    .send()
                    .await
                    .unwrap();
            }
        }));
    }
    for s in seeds {
        s.await.unwrap();
    }

    let tally: Tally = Arc::default();
    let deadline = Instant::now() + Duration::from_secs(a.seconds);
    let mut tasks = Vec::new();
    for w in 0..a.writers {
        let (client, webhook, a, tally) =
            (client.clone(), webhook.clone(), a.clone(), tally.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while Instant::now() < deadline {
                n += 1;
                let body = event(&format!("mix-{w}-{n}"), a.body.saturating_sub(400));
                let outcome = client
                    .post(&webhook)
                    .header("authorization", &a.key)
                    .body(body)
                    .send()
                    .await;
                count(
                    &tally,
                    match outcome {
                        Ok(r) => format!("webhook {}", r.status().as_u16()),
                        Err(_) => "webhook error".into(),
                    },
                );
            }
        }));
    }
    for path in ["/api/rejected?limit=1000", "/api/calls?limit=1000"] {
        for _ in 0..a.readers {
            let (client, a, tally) = (client.clone(), a.clone(), tally.clone());
            let url = format!("{}{path}", a.url);
            tasks.push(tokio::spawn(async move {
                while Instant::now() < deadline {
                    let outcome = client.get(&url).bearer_auth(&a.token).send().await;
                    let what = match outcome {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let _ = r.bytes().await;
                            format!("{} {status}", path.split('?').next().unwrap_or(path))
                        }
                        Err(_) => format!("{path} error"),
                    };
                    count(&tally, what);
                }
            }));
        }
    }
    let address = a.url.trim_start_matches("http://").to_string();
    let mut stalled = Vec::new();
    for _ in 0..a.stalled {
        let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        let request = format!(
            "GET /api/calls/big-call/events?limit=1000 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
            a.token
        );
        stream
            .write_all(request.repeat(100).as_bytes())
            .await
            .unwrap();
        stalled.push(stream);
    }
    for t in tasks {
        let _ = t.await;
    }
    drop(stalled);
    let summary = tally.lock().unwrap().clone();
    println!("{}", serde_json::to_string(&summary).unwrap());
}
