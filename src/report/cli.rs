//! `alohook export calls|callbacks`: the same bytes as `/api/export/…`, written to a file or to
//! standard output from the configured database, with no server running.

use std::io::{IsTerminal, Write};

use anyhow::Context;
use axum::extract::Query;
use jiff::tz::TimeZone;

use crate::api::callbacks::callback_filter;
use crate::api::calls::{Params, call_filter};
use crate::report::export::{Export, Format, Pages};
use crate::store::Store;

#[derive(clap::Subcommand, Clone, Debug)]
pub enum ExportCommand {
    /// Every call matching the filters (the columns of the call object), newest first.
    Calls(CallsArgs),
    /// The callback worklist's items matching the filters, oldest first miss first.
    Callbacks(CallbacksArgs),
}

#[derive(clap::Args, Clone, Debug)]
pub struct Output {
    /// csv or jsonl
    #[arg(long, default_value = "csv", value_name = "csv|jsonl")]
    pub format: String,
    /// Put a UTF-8 byte order mark before a CSV (Excel then shows Vietnamese names right)
    #[arg(long)]
    pub bom: bool,
    /// Write here instead of to standard output
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<std::path::PathBuf>,
}

#[derive(clap::Args, Clone, Debug)]
pub struct CallsArgs {
    #[command(flatten)]
    pub output: Output,
    /// Only calls with this status (any case)
    #[arg(long)]
    pub status: Option<String>,
    /// ringing, in_progress or ended
    #[arg(long)]
    pub phase: Option<String>,
    /// inbound or outbound
    #[arg(long)]
    pub direction: Option<String>,
    #[arg(long)]
    pub hotline: Option<String>,
    #[arg(long)]
    pub user_name: Option<String>,
    #[arg(long)]
    pub destination_number: Option<String>,
    #[arg(long)]
    pub transaction_id: Option<String>,
    /// The caller's or the destination's number, in any usual form
    #[arg(long)]
    pub phone: Option<String>,
    /// The agent: the user name, or the extension of a call with no user name
    #[arg(long)]
    pub agent: Option<String>,
    /// Calls that started at or after this (RFC 3339, or a day YYYY-MM-DD in the zone)
    #[arg(long)]
    pub from: Option<String>,
    /// Calls that started at or before this (a day means to its end)
    #[arg(long)]
    pub to: Option<String>,
}

#[derive(clap::Args, Clone, Debug)]
pub struct CallbacksArgs {
    #[command(flatten)]
    pub output: Output,
    /// open, closed or all [default: open]
    #[arg(long)]
    pub state: Option<String>,
    /// Items with a miss on this hotline
    #[arg(long)]
    pub hotline: Option<String>,
    /// Items of this number, in any usual form
    #[arg(long)]
    pub phone: Option<String>,
    /// Items first missed at or after this
    #[arg(long)]
    pub from: Option<String>,
    /// Items first missed at or before this
    #[arg(long)]
    pub to: Option<String>,
    /// oldest or newest first [default: oldest]
    #[arg(long)]
    pub sort: Option<String>,
}

fn pairs(named: &[(&str, &Option<String>)]) -> Params {
    let pairs = named
        .iter()
        .filter_map(|(name, value)| value.as_ref().map(|v| (name.to_string(), v.clone())))
        .collect();
    Params::new(
        Ok(Query(pairs)),
        &named.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
    )
    .expect("every name is known and given once")
}

/// Runs an export against `store`.
pub async fn run(command: ExportCommand, store: &dyn Store, tz: &TimeZone) -> anyhow::Result<()> {
    let (export, output) = match command {
        ExportCommand::Calls(a) => {
            let params = pairs(&[
                ("status", &a.status),
                ("phase", &a.phase),
                ("direction", &a.direction),
                ("hotline", &a.hotline),
                ("user_name", &a.user_name),
                ("destination_number", &a.destination_number),
                ("transaction_id", &a.transaction_id),
                ("phone", &a.phone),
                ("agent", &a.agent),
                ("from", &a.from),
                ("to", &a.to),
            ]);
            let filter = call_filter(&params, tz).map_err(|e| anyhow::anyhow!("--{e}"))?;
            (Export::Calls(filter), a.output)
        }
        ExportCommand::Callbacks(a) => {
            let params = pairs(&[
                ("state", &a.state),
                ("hotline", &a.hotline),
                ("phone", &a.phone),
                ("from", &a.from),
                ("to", &a.to),
                ("sort", &a.sort),
            ]);
            let filter = callback_filter(&params, tz).map_err(|e| anyhow::anyhow!("--{e}"))?;
            (Export::Callbacks(filter), a.output)
        }
    };
    let format = Format::parse(&output.format)
        .ok_or_else(|| anyhow::anyhow!("--format: must be one of csv, jsonl"))?;
    // A file is written beside its name and renamed when complete: a failure part-way never
    // leaves a file that looks whole.
    let partial = output.output.as_ref().map(|path| {
        let mut name = path.as_os_str().to_owned();
        name.push(".partial");
        std::path::PathBuf::from(name)
    });
    let mut out: Box<dyn Write> = match &partial {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let progress = if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {pos} rows {per_sec} {elapsed}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let name = export.name();
    let mut pages = Pages::new(export, format, tz.clone());
    let written = async {
        out.write_all(&pages.head(output.bom))?;
        let mut rows = 0u64;
        while let Some((chunk, n)) = pages.next(store).await? {
            out.write_all(&chunk)?;
            rows += n as u64;
            progress.set_position(rows);
        }
        out.flush()?;
        drop(out);
        anyhow::Ok(rows)
    }
    .await;
    progress.finish_and_clear();
    match (written, &partial, &output.output) {
        (Ok(rows), Some(partial), Some(path)) => {
            std::fs::rename(partial, path).with_context(|| {
                format!("cannot rename {} to {}", partial.display(), path.display())
            })?;
            eprintln!("alohook: {rows} {name} written to {}", path.display());
            Ok(())
        }
        (Ok(_), _, _) => Ok(()),
        (Err(error), partial, _) => {
            if let Some(partial) = partial {
                let _ = std::fs::remove_file(partial);
            }
            Err(error)
        }
    }
}
