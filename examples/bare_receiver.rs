//! The baseline of alohook's benchmarks: a receiver that checks the key, reads the body and
//! answers 200 without storing anything. Whatever alohook does beyond this is what it costs.
//!
//! `cargo run --release --example bare_receiver -- --listen 127.0.0.1:0 --webhook-key KEY`

use std::net::SocketAddr;
use std::sync::Arc;

use alohook::api::KeySet;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;

async fn receive(
    State(keys): State<Arc<KeySet>>,
    headers: HeaderMap,
    _body: Bytes,
) -> (StatusCode, &'static str) {
    let authorized = headers
        .get(header::AUTHORIZATION)
        .is_some_and(|v| keys.contains(v.as_bytes()));
    if authorized {
        (StatusCode::OK, r#"{"ok":true}"#)
    } else {
        (StatusCode::UNAUTHORIZED, r#"{"error":"unauthorized"}"#)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut listen: SocketAddr = "127.0.0.1:0".parse()?;
    let mut key = String::from("bench-key");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().unwrap_or_default().parse()?,
            "--webhook-key" => key = args.next().unwrap_or_default(),
            other => anyhow::bail!("unknown argument {other}; use --listen ADDR --webhook-key KEY"),
        }
    }
    let app = Router::new()
        .route("/webhooks/alohub", post(receive))
        .with_state(Arc::new(KeySet::new([key])));
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!(
        "bare receiver listening on http://{}",
        listener.local_addr()?
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
