//! `alohook destinations …`: the destinations of the configured database, from the command line,
//! without a running server (the same checks and answers as `/api/destinations`).

use anyhow::{Context, bail};
use serde_json::{Map, Value, json};

use crate::api::destinations::{create, view};
use crate::forward::destination::DestinationSpec;
use crate::store::Store;

#[derive(clap::Subcommand, Clone, Debug)]
pub enum DestinationsCommand {
    /// Every destination: id, whether it is enabled, where it goes, what waits for it.
    List,
    /// Add a destination; prints its id and its secret (shown this once; `show` omits it).
    Add(Box<AddArgs>),
    /// One destination, as the API shows it (JSON).
    Show {
        /// The destination's id (dst_…)
        id: String,
    },
    /// Remove a destination; its pending deliveries are dropped.
    Remove {
        /// The destination's id (dst_…)
        id: String,
    },
}

#[derive(clap::Args, Clone, Debug)]
pub struct AddArgs {
    /// Where changes go: an http(s):// URL, or nats://host:port
    pub url: String,
    /// Only these change types, comma-separated [default: all]
    #[arg(long, value_name = "LIST")]
    pub types: Option<String>,
    /// Only calls with this status, as of the change
    #[arg(long)]
    pub status: Option<String>,
    /// Only calls of this hotline
    #[arg(long)]
    pub hotline: Option<String>,
    /// Only inbound or outbound calls
    #[arg(long)]
    pub direction: Option<String>,
    /// A header sent with every delivery, `Name: value` (repeatable)
    #[arg(long = "header", value_name = "HEADER")]
    pub headers: Vec<String>,
    /// Where it starts: now, beginning (the whole history), or after a seq [default: now]
    #[arg(long, value_name = "now|beginning|SEQ")]
    pub start: Option<String>,
    /// per_call (a call's later change waits for its earlier one) or none [default: per_call]
    #[arg(long)]
    pub ordering: Option<String>,
    /// Seconds a delivery may take [default: 15]
    #[arg(long, value_name = "SECONDS")]
    pub timeout_seconds: Option<u64>,
    /// Deliveries under way at once [default: 8]
    #[arg(long, value_name = "N")]
    pub max_in_flight: Option<u64>,
    /// What it is for
    #[arg(long)]
    pub description: Option<String>,
}

impl AddArgs {
    /// The body `POST /api/destinations` would take.
    fn body(&self) -> anyhow::Result<Value> {
        let mut body = Map::new();
        body.insert("url".into(), json!(self.url));
        if let Some(types) = &self.types {
            let list: Vec<&str> = types
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .collect();
            body.insert("types".into(), json!(list));
        }
        let mut filter = Map::new();
        for (key, value) in [
            ("status", &self.status),
            ("hotline", &self.hotline),
            ("direction", &self.direction),
        ] {
            if let Some(v) = value {
                filter.insert(key.into(), json!(v));
            }
        }
        if !filter.is_empty() {
            body.insert("filter".into(), Value::Object(filter));
        }
        if !self.headers.is_empty() {
            let mut headers = Map::new();
            for header in &self.headers {
                let (name, value) = header
                    .split_once(':')
                    .with_context(|| format!("--header {header:?} is not `Name: value`"))?;
                headers.insert(name.trim().into(), json!(value.trim()));
            }
            body.insert("headers".into(), Value::Object(headers));
        }
        if let Some(start) = &self.start {
            let start = match start.trim().parse::<i64>() {
                Ok(seq) => json!(seq),
                Err(_) => json!(start.trim()),
            };
            body.insert("start".into(), start);
        }
        for (key, value) in [
            ("ordering", &self.ordering),
            ("description", &self.description),
        ] {
            if let Some(v) = value {
                body.insert(key.into(), json!(v));
            }
        }
        for (key, value) in [
            ("timeout_seconds", self.timeout_seconds),
            ("max_in_flight", self.max_in_flight),
        ] {
            if let Some(v) = value {
                body.insert(key.into(), json!(v));
            }
        }
        Ok(Value::Object(body))
    }
}

/// Runs a `destinations` command against `store`.
pub async fn run(command: DestinationsCommand, store: &dyn Store) -> anyhow::Result<()> {
    match command {
        DestinationsCommand::List => {
            let destinations = store.destinations().await?;
            if destinations.is_empty() {
                println!("no destinations; `alohook destinations add URL` adds one");
            }
            for destination in destinations {
                let shown = view(store, destination).await?;
                println!(
                    "{}  {}  {}  pending {}  dead {}{}",
                    shown.id,
                    if shown.enabled {
                        "enabled "
                    } else {
                        "disabled"
                    },
                    shown.spec.url,
                    shown.stats.pending,
                    shown.stats.dead,
                    shown
                        .spec
                        .description
                        .as_deref()
                        .map_or(String::new(), |d| format!("  ({d})"))
                );
            }
        }
        DestinationsCommand::Add(args) => {
            let spec = DestinationSpec::from_json(&args.body()?)
                .map_err(|e| anyhow::anyhow!("{}: {}", flag(&e.field), e.detail))?;
            let created = create(store, spec)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("id:     {}", created.id);
            println!("secret: {}", created.secret);
            println!(
                "Deliveries are signed with the secret (Standard Webhooks); `alohook destinations show {}` shows the rest.",
                created.id
            );
        }
        DestinationsCommand::Show { id } => {
            let Some(destination) = store.destination(&id).await? else {
                bail!("no destination {id}; `alohook destinations list` lists them");
            };
            println!(
                "{}",
                serde_json::to_string_pretty(&view(store, destination).await?)?
            );
        }
        DestinationsCommand::Remove { id } => {
            if !store.delete_destination(&id).await? {
                bail!("no destination {id}; `alohook destinations list` lists them");
            }
            println!("removed {id}");
        }
    }
    Ok(())
}

/// The flag that sets a field.
fn flag(field: &str) -> String {
    match field {
        "url" => "URL".to_string(),
        "filter" => "--status/--hotline/--direction".to_string(),
        "headers" => "--header".to_string(),
        other => format!("--{}", other.replace('_', "-")),
    }
}
