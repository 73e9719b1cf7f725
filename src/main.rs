use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

use alohook::config::{self, Config, Settings, args};

/// Receive Alohub call-event webhooks, keep every event, merge them into call records, serve them back.
#[derive(Parser)]
#[command(name = "alohook", version, about)]
struct Cli {
    /// How log lines are written to stderr: `text` for people, `json` (one object per line) for
    /// log shippers.
    #[arg(
        long,
        global = true,
        env = "ALOHOOK_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the webhook receiver and the read API.
    Serve(args::Serve),
    /// Show, or generate, the webhook key and API token.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Print a commented configuration file with every default.
    Config,
    /// Act as Alohub: send realistic call events to a webhook URL, measure, and verify.
    Simulate(alohook::sim::SimOptions),
    /// Print call changes as they happen, from a running alohook's live stream; reconnects and
    /// resumes after the last change printed, for as long as it runs.
    Tail(alohook::feed::client::TailArgs),
    /// POST each call change to your local handler, in order, as it happens (a handler that
    /// fails is retried; the stream never moves past a change it has not acknowledged).
    Listen(alohook::feed::client::ListenArgs),
    /// Manage where changes are forwarded, in the configured database (no server needed).
    Destinations {
        #[command(flatten)]
        settings: args::Migrate,
        #[command(subcommand)]
        command: alohook::forward::cli::DestinationsCommand,
    },
    /// Export calls or the callback worklist as CSV or JSON Lines, from the configured database
    /// (no server needed; on SQLite, while `serve` runs, use GET /api/export/… instead).
    Export {
        #[command(flatten)]
        settings: args::Migrate,
        #[command(subcommand)]
        command: alohook::report::cli::ExportCommand,
    },
    /// Apply the database migrations (and recompute the calls if the merge settings changed),
    /// then exit. `serve` does the same at start.
    Migrate(args::Migrate),
    /// Exit 0 when the alohook configured here (or at --url) is ready to take events (its
    /// /readyz answers 200), 1 when not: a container health check that needs no curl.
    Healthcheck {
        #[command(flatten)]
        settings: args::Health,
        /// The alohook to check: `http://host:port`, `host:port`, `:port`, a port, or the
        /// `/readyz` URL itself [default: where `serve` with these settings listens]
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 5, value_name = "SECONDS")]
        timeout: u64,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print the webhook key(s) and the API token that `serve` with these settings uses, and
    /// what to give Alohub. Creates nothing.
    Show(args::KeysShow),
    /// Generate a webhook key and an API token into the data dir's credentials file (mode
    /// 0600), where `serve` finds them, unless they exist already.
    Generate(args::KeysGenerate),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Serve(a) => serve(a.into()),
        Command::Keys {
            command: KeysCommand::Show(a),
        } => keys_show(a.into()),
        Command::Keys {
            command: KeysCommand::Generate(a),
        } => keys_generate(a.into()),
        Command::Config => {
            print!("{}", config::EXAMPLE_CONFIG);
            Ok(())
        }
        Command::Simulate(options) => simulate(options),
        Command::Tail(args) => {
            runtime().and_then(|r| r.block_on(alohook::feed::client::tail(args)))
        }
        Command::Listen(args) => {
            runtime().and_then(|r| r.block_on(alohook::feed::client::listen(args)))
        }
        Command::Migrate(a) => migrate(a.into()),
        Command::Destinations { settings, command } => destinations(settings.into(), command),
        Command::Export { settings, command } => export(settings.into(), command),
        Command::Healthcheck {
            settings,
            url,
            timeout,
        } => healthcheck(settings.into(), url.as_deref(), timeout),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("alohook: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("ALOHOOK_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    for (name, _) in std::env::vars() {
        if name.starts_with("ALOHOOK_") && !config::KNOWN_ENV.contains(&name.as_str()) {
            tracing::warn!(
                "unknown environment variable {name} is ignored (known: {})",
                config::KNOWN_ENV.join(", ")
            );
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        // SQLite's reads run on blocking threads, at most 8 at once (see api::API_READS_AT_ONCE);
        // a few more than that is plenty, and each idle thread keeps a heap of its own.
        .max_blocking_threads(32)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn serve(settings: Settings) -> anyhow::Result<()> {
    let mut config = settings.resolve()?;
    runtime()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let addr = listener.local_addr()?;
        let store = alohook::server::open_store(&config).await?;
        // Only once the store is open: a first start that fails there creates no keys, and the
        // next one generates and prints them.
        let generated = config.ensure_credentials()?;
        let shutdown = shutdown_signal()?;
        // Only now can events be taken: scripts wait for this line.
        if generated.webhook_key.is_some() || generated.api_token.is_some() {
            print_first_run(&config, addr);
        }
        println!("alohook listening on http://{addr}");
        alohook::server::run_with_store(listener, config, store, shutdown).await?;
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
        println!("Dashboard: http://<host>:{port}/ (sign in with the API token)");
    }
}

/// Shows what `serve` with the same settings would use, and creates nothing: keys given as
/// flags, in the environment or in the config file first, then the data dir's credentials file.
fn keys_show(settings: Settings) -> anyhow::Result<()> {
    let mut config = settings.resolve()?;
    let given = (!config.webhook_keys.is_empty(), config.api_token.is_some());
    let path = config.credentials_path();
    let loaded = config.load_credentials()?;
    if config.webhook_keys.is_empty() || config.api_token.is_none() {
        let missing = match (config.webhook_keys.is_empty(), config.api_token.is_none()) {
            (true, true) => "no webhook key and no API token",
            (true, false) => "no webhook key",
            _ => "no API token",
        };
        anyhow::bail!(
            "{missing} found. Looked in {} (the data dir's credentials file; it does not hold \
             them{}), and in --webhook-key / --api-token, ALOHOOK_WEBHOOK_KEYS / \
             ALOHOOK_API_TOKEN and --config. A running alohook may have been given its keys by \
             flags or its environment: run `alohook keys show` with the same --data-dir, \
             environment and --config as `alohook serve`. To create keys, run `alohook keys \
             generate` (or start `alohook serve`, which generates any that are missing).",
            absolute(&path).display(),
            if path.exists() {
                ""
            } else {
                ", or does not exist"
            },
        );
    }
    let from = |given: bool, loaded: bool| {
        if given {
            "flags, environment or --config".to_string()
        } else if loaded {
            absolute(&path).display().to_string()
        } else {
            "nowhere".to_string()
        }
    };
    println!(
        "Webhook key from {}; API token from {}.",
        from(given.0, loaded.webhook_key.is_some()),
        from(given.1, loaded.api_token.is_some())
    );
    print_credentials(&config, &config.listen.port().to_string());
    Ok(())
}

fn keys_generate(settings: Settings) -> anyhow::Result<()> {
    let mut config = settings.resolve()?;
    // Only the credentials file counts here: keys given elsewhere are not stored.
    config.webhook_keys.clear();
    config.api_token = None;
    let path = config.credentials_path();
    let generated = config.ensure_credentials()?;
    if generated.webhook_key.is_none() && generated.api_token.is_none() {
        anyhow::bail!(
            "{} already holds a webhook key and an API token; `alohook keys show` prints them",
            absolute(&path).display()
        );
    }
    println!(
        "Generated {} in {} (mode 0600); `alohook serve` with this data dir uses them.",
        match (&generated.webhook_key, &generated.api_token) {
            (Some(_), Some(_)) => "a webhook key and an API token",
            (Some(_), None) => "a webhook key",
            _ => "an API token",
        },
        absolute(&path).display()
    );
    print_credentials(&config, &config.listen.port().to_string());
    Ok(())
}

fn absolute(path: &std::path::Path) -> std::path::PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The `/readyz` URL for `--url` in any of its forms, or for where `serve` listens.
fn readyz_url(url: Option<&str>, listen: std::net::SocketAddr) -> anyhow::Result<String> {
    let base = match url.map(str::trim) {
        None => {
            let ip = match listen.ip() {
                std::net::IpAddr::V4(ip) if ip.is_unspecified() => "127.0.0.1".to_string(),
                std::net::IpAddr::V6(ip) if ip.is_unspecified() => "[::1]".to_string(),
                std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                ip => ip.to_string(),
            };
            format!("http://{ip}:{}", listen.port())
        }
        Some(u) if u.contains("://") => u.to_string(),
        Some(u) if !u.is_empty() && u.bytes().all(|b| b.is_ascii_digit()) => {
            format!("http://127.0.0.1:{u}")
        }
        Some(u) if u.starts_with(':') => format!("http://127.0.0.1{u}"),
        Some(u) => format!("http://{u}"),
    };
    let mut parsed = reqwest::Url::parse(&base)
        .with_context(|| format!("--url {base:?} is not a URL such as http://127.0.0.1:8080"))?;
    let path = parsed.path().trim_end_matches('/').to_string();
    let path = path
        .strip_suffix("/readyz")
        .or_else(|| path.strip_suffix("/healthz"))
        .unwrap_or(&path)
        .to_string();
    parsed.set_path(&format!("{path}/readyz"));
    parsed.set_query(None);
    Ok(parsed.to_string())
}

fn healthcheck(settings: Settings, url: Option<&str>, timeout: u64) -> anyhow::Result<()> {
    let config = settings.resolve()?;
    let readyz = readyz_url(url, config.listen)?;
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
            println!("alohook at {readyz} is ready");
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

fn destinations(
    settings: Settings,
    command: alohook::forward::cli::DestinationsCommand,
) -> anyhow::Result<()> {
    let config = settings.resolve()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let store = alohook::server::open_store(&config).await.with_context(|| {
            if config.database.starts_with("sqlite") {
                "while `alohook serve` runs on this SQLite database, manage destinations through \
                 its API (POST /api/destinations)"
            } else {
                "cannot open the database"
            }
        })?;
        alohook::forward::cli::run(command, store.as_ref()).await
    })
}

fn export(settings: Settings, command: alohook::report::cli::ExportCommand) -> anyhow::Result<()> {
    let mut config = settings.resolve()?;
    // Only reads: never recomputes the calls, never makes a database where there is none.
    config.read_only = true;
    if let Some(path) = config.database.strip_prefix("sqlite://")
        && !std::path::Path::new(path).exists()
    {
        anyhow::bail!("no alohook database at {path} (check --data-dir or --database)");
    }
    runtime()?.block_on(async {
        let store = alohook::server::open_store(&config)
            .await
            .with_context(|| {
                if config.database.starts_with("sqlite") {
                    "while `alohook serve` runs on this SQLite database, export through its API \
                 (GET /api/export/calls, GET /api/export/callbacks)"
                } else {
                    "cannot open the database"
                }
            })?;
        alohook::report::cli::run(command, store.as_ref(), &config.timezone).await
    })
}

fn simulate(options: alohook::sim::SimOptions) -> anyhow::Result<()> {
    let report = runtime()?.block_on(alohook::sim::run(options))?;
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

/// Completes on SIGTERM or Ctrl-C. The handlers are installed now, not when the future is first
/// polled: a SIGTERM sent as soon as the listening line appears must stop alohook gracefully,
/// not kill it.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for Ctrl-C")?;
        Ok(async move {
            tokio::select! {
                _ = terminate.recv() => {},
                _ = interrupt.recv() => {},
            }
            tracing::info!("shutting down: finishing requests in flight");
        })
    }
    #[cfg(not(unix))]
    Ok(async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
        tracing::info!("shutting down: finishing requests in flight");
    })
}

#[cfg(test)]
mod tests {
    use super::readyz_url;

    #[test]
    fn healthcheck_urls_in_every_form() {
        let listen = "0.0.0.0:8080".parse().unwrap();
        for (given, expected) in [
            (None, "http://127.0.0.1:8080/readyz"),
            (Some("http://10.0.0.5:9000"), "http://10.0.0.5:9000/readyz"),
            (Some("http://10.0.0.5:9000/"), "http://10.0.0.5:9000/readyz"),
            (
                Some("http://10.0.0.5:9000/readyz"),
                "http://10.0.0.5:9000/readyz",
            ),
            (
                Some("https://h.example/alohook/healthz"),
                "https://h.example/alohook/readyz",
            ),
            (Some("127.0.0.1:8081"), "http://127.0.0.1:8081/readyz"),
            (Some(":8082"), "http://127.0.0.1:8082/readyz"),
            (Some("8083"), "http://127.0.0.1:8083/readyz"),
        ] {
            assert_eq!(readyz_url(given, listen).unwrap(), expected, "{given:?}");
        }
        let local = "127.0.0.5:7000".parse().unwrap();
        assert_eq!(
            readyz_url(None, local).unwrap(),
            "http://127.0.0.5:7000/readyz"
        );
        let v6 = "[::]:7000".parse().unwrap();
        assert_eq!(readyz_url(None, v6).unwrap(), "http://[::1]:7000/readyz");
    }
}

// glibc's malloc showed as a tenth of request-handling time under load (bench/ingest profile).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
