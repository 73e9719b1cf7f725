use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use alohook::config::{self, Config, Settings};

/// Receive Alohub call-event webhooks, keep every event, merge them into call records, serve them back.
#[derive(Parser)]
#[command(name = "alohook", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the webhook receiver and the read API.
    Serve(Settings),
    /// Show the webhook key and API token in use.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Print a commented configuration file with every default.
    Config,
    /// Act as Alohub: send realistic call events to a webhook URL, measure, and verify.
    Simulate(alohook::sim::SimOptions),
    /// Apply the database migrations and exit (serve also applies them at start).
    Migrate(Settings),
    /// Exit 0 when the alohook at URL is ready to take events (its /readyz answers 200), 1 when
    /// not: a container health check that needs no curl.
    Healthcheck {
        /// Base URL of the alohook to check.
        #[arg(long, default_value = "http://127.0.0.1:8080", value_name = "URL")]
        url: String,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 5, value_name = "SECONDS")]
        timeout: u64,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print the webhook key(s) and the API token, and what to give Alohub.
    Show(Settings),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Serve(settings) => serve(settings),
        Command::Keys {
            command: KeysCommand::Show(settings),
        } => keys_show(settings),
        Command::Config => {
            print!("{}", config::EXAMPLE_CONFIG);
            Ok(())
        }
        Command::Simulate(options) => simulate(options),
        Command::Migrate(settings) => migrate(settings),
        Command::Healthcheck { url, timeout } => healthcheck(&url, timeout),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("alohook: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = EnvFilter::try_from_env("ALOHOOK_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    for (name, _) in std::env::vars() {
        if name.starts_with("ALOHOOK_") && !config::KNOWN_ENV.contains(&name.as_str()) {
            tracing::warn!(
                "unknown environment variable {name} is ignored (known: {})",
                config::KNOWN_ENV.join(", ")
            );
        }
    }
}

fn serve(settings: Settings) -> anyhow::Result<()> {
    let mut config = settings.resolve()?;
    let generated = config.ensure_credentials()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let addr = listener.local_addr()?;
        if generated.webhook_key.is_some() || generated.api_token.is_some() {
            print_first_run(&config, addr);
        }
        println!("alohook listening on http://{addr}");
        alohook::server::run(listener, config, shutdown_signal()).await?;
        Ok(())
    })
}

fn print_first_run(config: &Config, addr: std::net::SocketAddr) {
    println!(
        "alohook: first start: generated credentials, kept in {} (mode 0600).",
        config.credentials_path().display()
    );
    print_credentials(config, &addr.port().to_string());
    println!("`alohook keys show` prints these again.\n");
}

fn print_credentials(config: &Config, port: &str) {
    println!("Give Alohub:");
    println!("  URL:               https://<this server's public address>/webhooks/alohub");
    println!("                     (here: http://<host>:{port}/webhooks/alohub)");
    for key in &config.webhook_keys {
        println!("  Authorization key: {key}");
    }
    if let Some(token) = &config.api_token {
        println!("Read API (your CRM, curl):");
        println!("  Authorization: Bearer {token}");
    }
}

fn keys_show(settings: Settings) -> anyhow::Result<()> {
    let mut config = settings.resolve()?;
    let path = config.credentials_path();
    let generated = config.ensure_credentials()?;
    if generated.webhook_key.is_some() || generated.api_token.is_some() {
        println!(
            "No credentials existed yet: generated them in {}.",
            path.display()
        );
    }
    print_credentials(&config, &config.listen.port().to_string());
    Ok(())
}

fn healthcheck(url: &str, timeout: u64) -> anyhow::Result<()> {
    let readyz = format!("{}/readyz", url.trim_end_matches('/'));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let status = runtime.block_on(async {
        reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(timeout))
            .build()?
            .get(&readyz)
            .send()
            .await
            .map(|response| response.status())
    });
    match status {
        Ok(status) if status.is_success() => {
            println!("alohook at {url} is ready");
            Ok(())
        }
        Ok(status) => anyhow::bail!("{readyz} answered {status}: not ready to take events"),
        Err(error) => Err(anyhow::Error::from(error).context(format!("{readyz} did not answer"))),
    }
}

fn migrate(settings: Settings) -> anyhow::Result<()> {
    let config = settings.resolve()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(alohook::server::open_store(&config))?;
    println!(
        "alohook: {} is at the current schema",
        config::redact_url(&config.database)
    );
    Ok(())
}

fn simulate(options: alohook::sim::SimOptions) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime.block_on(alohook::sim::run(options))?;
    report.print();
    if !report.success() {
        anyhow::bail!(
            "simulation failed: {} unacknowledged events, {} duplicates not recognised, {} mismatches",
            report.unacknowledged,
            report.duplicates_missed,
            report.verify.as_ref().map_or(0, |v| v.mismatches)
        );
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}

// glibc's malloc showed as a tenth of request-handling time under load (bench/ingest profile).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
