//! Settings: defaults < TOML file (`--config`) < environment (`ALOHOOK_*`) < flags.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::tz::TimeZone;
use serde::Deserialize;

use crate::ingest::request_cost;
use crate::model::FinalStatuses;

pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
pub const DEFAULT_DATA_DIR: &str = "./alohook-data";
pub const DEFAULT_TIMEZONE: &str = "Asia/Ho_Chi_Minh";
pub const DEFAULT_MAX_BODY: usize = 64 * 1024;
pub const DEFAULT_MAX_INFLIGHT: usize = 32 * 1024 * 1024;
pub const DEFAULT_CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_MAX_STREAMS: usize = 256;
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
const CREDENTIALS_FILE: &str = "credentials.toml";

/// Every environment variable alohook reads; others with the `ALOHOOK_` prefix are warned about.
/// (`PORT`, the platform convention, is read too when `ALOHOOK_LISTEN` is not set.)
pub const KNOWN_ENV: &[&str] = &[
    "ALOHOOK_CONFIG",
    "ALOHOOK_LISTEN",
    "ALOHOOK_DATA_DIR",
    "ALOHOOK_DATABASE_URL",
    "ALOHOOK_WEBHOOK_KEYS",
    "ALOHOOK_API_TOKEN",
    "ALOHOOK_VIEWER_TOKEN",
    "ALOHOOK_VIEWER_CAN_CLOSE",
    "ALOHOOK_SESSION_IDLE_MINUTES",
    "ALOHOOK_CALLBACK_AMBER_MINUTES",
    "ALOHOOK_CALLBACK_RED_MINUTES",
    "ALOHOOK_API_URL",
    "ALOHOOK_TIMEZONE",
    "ALOHOOK_MAX_BODY",
    "ALOHOOK_MAX_INFLIGHT",
    "ALOHOOK_CLIENT_TIMEOUT",
    "ALOHOOK_MAX_STREAMS",
    "ALOHOOK_MAX_CONNECTIONS",
    "ALOHOOK_RETRY_SCHEDULE",
    "ALOHOOK_SHORT_ABANDON_SECONDS",
    "ALOHOOK_SERVICE_LEVEL_SECONDS",
    "ALOHOOK_FINAL_STATUSES",
    "ALOHOOK_LOG",
    "ALOHOOK_LOG_FORMAT",
];

/// Every setting, as given by flags and environment variables (`None` or empty: not given).
/// [`Settings::resolve`] layers them over the config file and the defaults.
/// Not `Debug`: it holds secrets.
#[derive(Clone, Default)]
pub struct Settings {
    pub config: Option<PathBuf>,
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub database: Option<String>,
    pub webhook_keys: Vec<String>,
    pub api_token: Option<String>,
    pub timezone: Option<String>,
    pub max_body: Option<usize>,
    pub max_inflight: Option<usize>,
    pub client_timeout: Option<u64>,
    pub max_streams: Option<usize>,
    pub max_connections: Option<usize>,
    pub retry_schedule: Option<String>,
    pub short_abandon_seconds: Option<u64>,
    pub service_level_seconds: Option<u64>,
    pub final_statuses: Vec<String>,
    pub dashboard: args::Dashboard,
    /// The command takes the figures' settings (`serve`): only then does the store keep its
    /// summary of the figures with this configuration's thresholds.
    pub figures: bool,
}

/// The command-line groups of settings. Each command takes only the groups it uses, so its
/// `--help` lists only what matters to it.
pub mod args {
    use std::path::PathBuf;

    use super::{Settings, parse_size};

    #[derive(clap::Args, Clone, Default)]
    pub struct ConfigFile {
        /// TOML file with settings; flags and environment variables override it.
        /// `alohook config` prints a commented example.
        #[arg(long, global = true, env = "ALOHOOK_CONFIG", value_name = "FILE")]
        pub config: Option<PathBuf>,
    }

    #[derive(clap::Args, Clone, Default)]
    pub struct DataDir {
        /// Directory for the SQLite database and generated credentials [default: ./alohook-data]
        #[arg(long, global = true, env = "ALOHOOK_DATA_DIR", value_name = "DIR")]
        pub data_dir: Option<PathBuf>,
    }

    #[derive(clap::Args, Clone, Default)]
    pub struct Listen {
        /// Address to listen on: `0.0.0.0:8080`, `localhost:8080`, `:8080` or `8080` (all
        /// interfaces); port 0 picks a free port. Without it, `PORT` (the platform convention)
        /// gives the port [default: 0.0.0.0:8080]
        #[arg(long, env = "ALOHOOK_LISTEN", value_name = "ADDR")]
        pub listen: Option<String>,
    }

    #[derive(clap::Args, Clone, Default)]
    pub struct Database {
        /// Database URL: sqlite://<path> or postgres://user:password@host:5432/db
        /// [default: sqlite://<data-dir>/alohook.db]
        #[arg(long, global = true, env = "ALOHOOK_DATABASE_URL", value_name = "URL")]
        pub database: Option<String>,
        /// IANA zone of Alohub's local timestamps [default: Asia/Ho_Chi_Minh]
        #[arg(long, global = true, env = "ALOHOOK_TIMEZONE", value_name = "ZONE")]
        pub timezone: Option<String>,
        /// Statuses that end a call without an end time, comma-separated. Changing the list
        /// recomputes the stored calls at the next start
        /// [default: missed,busy,failed,no_answer,noanswer,no-answer,cancelled,canceled,rejected,ended,completed]
        #[arg(
            long,
            env = "ALOHOOK_FINAL_STATUSES",
            value_name = "LIST",
            value_delimiter = ',',
            global = true
        )]
        pub final_statuses: Vec<String>,
    }

    #[derive(clap::Args, Clone, Default)]
    pub struct Credentials {
        /// Key Alohub sends in `Authorization`. Repeat (or comma-separate) to accept several at
        /// once while rotating. Generated on first start when none is given.
        #[arg(
            long = "webhook-key",
            env = "ALOHOOK_WEBHOOK_KEYS",
            value_name = "KEY",
            value_delimiter = ',',
            hide_env_values = true
        )]
        pub webhook_keys: Vec<String>,
        /// Bearer token of the read API. Generated on first start when none is given.
        #[arg(
            long,
            env = "ALOHOOK_API_TOKEN",
            value_name = "TOKEN",
            hide_env_values = true
        )]
        pub api_token: Option<String>,
    }

    #[derive(clap::Args, Clone, Default)]
    pub struct Dashboard {
        /// Token of the dashboard's read-only role: it signs in (and calls the API with it as a
        /// Bearer token) to see everything and change nothing. Without it, only the API token
        /// signs in
        #[arg(
            long,
            env = "ALOHOOK_VIEWER_TOKEN",
            value_name = "TOKEN",
            hide_env_values = true
        )]
        pub viewer_token: Option<String>,
        /// The read-only role may close callback items (with a note)
        #[arg(long, env = "ALOHOOK_VIEWER_CAN_CLOSE")]
        pub viewer_can_close: bool,
        /// A dashboard session ends after this many minutes without a request [default: 480]
        #[arg(long, env = "ALOHOOK_SESSION_IDLE_MINUTES", value_name = "MINUTES",
              value_parser = clap::value_parser!(u64).range(1..))]
        pub session_idle_minutes: Option<u64>,
        /// The callback list shows an open item amber from this age [default: 15]
        #[arg(long, env = "ALOHOOK_CALLBACK_AMBER_MINUTES", value_name = "MINUTES")]
        pub callback_amber_minutes: Option<u64>,
        /// ...and red from this age [default: 60]
        #[arg(long, env = "ALOHOOK_CALLBACK_RED_MINUTES", value_name = "MINUTES")]
        pub callback_red_minutes: Option<u64>,
    }

    #[derive(clap::Args, Clone, Default)]
    pub struct Limits {
        /// Largest accepted webhook body: bytes, or with a unit (64KiB, 1MiB) [default: 64KiB]
        #[arg(long, env = "ALOHOOK_MAX_BODY", value_name = "SIZE", value_parser = parse_size)]
        pub max_body: Option<usize>,
        /// Webhook bodies held in memory at once (being read, queued or committed); past it,
        /// requests get 503 with Retry-After and the sender resends [default: 32MiB]
        #[arg(long, env = "ALOHOOK_MAX_INFLIGHT", value_name = "SIZE", value_parser = parse_size)]
        pub max_inflight: Option<usize>,
        /// Seconds a client has to send a whole request once it started, that a connection may
        /// stay silent, and that an answer may wait for the client to read it, before the
        /// connection is closed [default: 60]
        #[arg(long, env = "ALOHOOK_CLIENT_TIMEOUT", value_name = "SECONDS",
              value_parser = clap::value_parser!(u64).range(1..))]
        pub client_timeout: Option<u64>,
        /// Live streams (`GET /api/stream`) open at once; past it a new one is answered 503 with
        /// Retry-After [default: 256]
        #[arg(long, env = "ALOHOOK_MAX_STREAMS", value_name = "N",
              value_parser = clap::value_parser!(u64).range(1..))]
        pub max_streams: Option<u64>,
        /// Client connections open at once; more wait to be accepted until one closes. Each may
        /// hold up to about 400 KiB while a request head is read [default: 1024]
        #[arg(long, env = "ALOHOOK_MAX_CONNECTIONS", value_name = "N",
              value_parser = clap::value_parser!(u64).range(1..))]
        pub max_connections: Option<u64>,
    }

    #[derive(clap::Args, Clone, Default)]
    pub struct Forwarding {
        /// Waits between the attempts of a forwarded change that fails: comma-separated
        /// durations (5s, 5m, 2h, 1d); N of them are N retries after the first attempt
        /// [default: 5s,5m,30m,2h,5h,10h,14h,20h,24h]
        #[arg(long, env = "ALOHOOK_RETRY_SCHEDULE", value_name = "LIST")]
        pub retry_schedule: Option<String>,
    }

    #[derive(clap::Args, Clone, Default)]
    pub struct Figures {
        /// An unanswered inbound call that rang less than this many seconds is a short abandon
        /// (a misdial or a caller who changed their mind at once): it is kept out of the abandon
        /// rate and the service level [default: 5]
        #[arg(long, env = "ALOHOOK_SHORT_ABANDON_SECONDS", value_name = "SECONDS")]
        pub short_abandon_seconds: Option<u64>,
        /// An inbound call answered after ringing less than this many seconds meets the service
        /// level [default: 20]
        #[arg(long, env = "ALOHOOK_SERVICE_LEVEL_SECONDS", value_name = "SECONDS",
              value_parser = clap::value_parser!(u64).range(1..))]
        pub service_level_seconds: Option<u64>,
    }

    /// `alohook serve`.
    #[derive(clap::Args, Clone, Default)]
    pub struct Serve {
        #[command(flatten)]
        pub config: ConfigFile,
        #[command(flatten)]
        pub listen: Listen,
        #[command(flatten)]
        pub data_dir: DataDir,
        #[command(flatten)]
        pub database: Database,
        #[command(flatten)]
        pub credentials: Credentials,
        #[command(flatten)]
        pub limits: Limits,
        #[command(flatten)]
        pub forwarding: Forwarding,
        #[command(flatten)]
        pub figures: Figures,
        #[command(flatten)]
        pub dashboard: Dashboard,
    }

    /// `alohook migrate`.
    #[derive(clap::Args, Clone, Default)]
    pub struct Migrate {
        #[command(flatten)]
        pub config: ConfigFile,
        #[command(flatten)]
        pub data_dir: DataDir,
        #[command(flatten)]
        pub database: Database,
    }

    /// `alohook keys show`.
    #[derive(clap::Args, Clone, Default)]
    pub struct KeysShow {
        #[command(flatten)]
        pub config: ConfigFile,
        #[command(flatten)]
        pub data_dir: DataDir,
        #[command(flatten)]
        pub credentials: Credentials,
        #[command(flatten)]
        pub listen: Listen,
    }

    /// `alohook keys generate`.
    #[derive(clap::Args, Clone, Default)]
    pub struct KeysGenerate {
        #[command(flatten)]
        pub config: ConfigFile,
        #[command(flatten)]
        pub data_dir: DataDir,
    }

    /// `alohook healthcheck`: where the server listens, to ask it.
    #[derive(clap::Args, Clone, Default)]
    pub struct Health {
        #[command(flatten)]
        pub config: ConfigFile,
        #[command(flatten)]
        pub listen: Listen,
    }

    /// `PORT` stands in for the address when none was given (ALOHOOK_LISTEN or --listen).
    fn listen_or_port(listen: Listen) -> Option<String> {
        listen.listen.or_else(|| {
            std::env::var("PORT")
                .ok()
                .filter(|p| !p.trim().is_empty())
                .map(|p| format!("0.0.0.0:{}", p.trim()))
        })
    }

    impl From<Serve> for Settings {
        fn from(a: Serve) -> Self {
            Settings {
                config: a.config.config,
                listen: listen_or_port(a.listen),
                data_dir: a.data_dir.data_dir,
                database: a.database.database,
                webhook_keys: a.credentials.webhook_keys,
                api_token: a.credentials.api_token,
                timezone: a.database.timezone,
                max_body: a.limits.max_body,
                max_inflight: a.limits.max_inflight,
                client_timeout: a.limits.client_timeout,
                max_streams: a.limits.max_streams.map(|n| n as usize),
                max_connections: a.limits.max_connections.map(|n| n as usize),
                retry_schedule: a.forwarding.retry_schedule,
                short_abandon_seconds: a.figures.short_abandon_seconds,
                service_level_seconds: a.figures.service_level_seconds,
                final_statuses: a.database.final_statuses,
                dashboard: a.dashboard,
                figures: true,
            }
        }
    }

    impl From<Migrate> for Settings {
        fn from(a: Migrate) -> Self {
            Settings {
                config: a.config.config,
                data_dir: a.data_dir.data_dir,
                database: a.database.database,
                timezone: a.database.timezone,
                final_statuses: a.database.final_statuses,
                ..Settings::default()
            }
        }
    }

    impl From<KeysShow> for Settings {
        fn from(a: KeysShow) -> Self {
            Settings {
                config: a.config.config,
                listen: listen_or_port(a.listen),
                data_dir: a.data_dir.data_dir,
                webhook_keys: a.credentials.webhook_keys,
                api_token: a.credentials.api_token,
                ..Settings::default()
            }
        }
    }

    impl From<KeysGenerate> for Settings {
        fn from(a: KeysGenerate) -> Self {
            Settings {
                config: a.config.config,
                data_dir: a.data_dir.data_dir,
                ..Settings::default()
            }
        }
    }

    impl From<Health> for Settings {
        fn from(a: Health) -> Self {
            Settings {
                config: a.config.config,
                listen: listen_or_port(a.listen),
                ..Settings::default()
            }
        }
    }
}

/// An address to listen on: `host:port` (names are resolved, IPv4 first), `:port` or `port`
/// (every interface).
pub fn parse_listen(text: &str) -> Result<SocketAddr, ConfigError> {
    let bad = || ConfigError::Listen(text.to_string());
    let t = text.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return format!("0.0.0.0:{t}").parse().map_err(|_| bad());
    }
    if let Some(port) = t.strip_prefix(':') {
        return format!("0.0.0.0:{port}").parse().map_err(|_| bad());
    }
    if let Ok(addr) = t.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let resolved: Vec<SocketAddr> = t.to_socket_addrs().map_err(|_| bad())?.collect();
    resolved
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| resolved.first())
        .copied()
        .ok_or_else(bad)
}

/// The settings file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    database: Option<String>,
    webhook_keys: Option<Vec<String>>,
    api_token: Option<String>,
    timezone: Option<String>,
    max_body: Option<toml::Value>,
    max_inflight: Option<toml::Value>,
    client_timeout: Option<u64>,
    max_streams: Option<usize>,
    max_connections: Option<usize>,
    retry_schedule: Option<String>,
    short_abandon_seconds: Option<u64>,
    service_level_seconds: Option<u64>,
    final_statuses: Option<Vec<String>>,
    viewer_token: Option<String>,
    viewer_can_close: Option<bool>,
    session_idle_minutes: Option<u64>,
    callback_amber_minutes: Option<u64>,
    callback_red_minutes: Option<u64>,
}

/// The dashboard's settings (see `alohook serve --help`).
#[derive(Clone, PartialEq, Eq)]
pub struct DashboardConfig {
    pub viewer_token: Option<String>,
    pub viewer_can_close: bool,
    pub session_idle: Duration,
    /// Ages from which an open callback item shows amber, then red.
    pub callback_amber: Duration,
    pub callback_red: Duration,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        DashboardConfig {
            viewer_token: None,
            viewer_can_close: false,
            session_idle: Duration::from_secs(480 * 60),
            callback_amber: Duration::from_secs(15 * 60),
            callback_red: Duration::from_secs(60 * 60),
        }
    }
}

/// Resolved settings.
#[derive(Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database: String,
    pub webhook_keys: Vec<String>,
    pub api_token: Option<String>,
    pub timezone: TimeZone,
    pub timezone_name: String,
    pub max_body: usize,
    /// See `--max-inflight`.
    pub max_inflight: usize,
    /// See `--client-timeout`.
    pub client_timeout: Duration,
    /// See `--max-streams`.
    pub max_streams: usize,
    /// See `--max-connections`.
    pub max_connections: usize,
    /// See `--retry-schedule`.
    pub retry_schedule: crate::forward::retry::Schedule,
    /// See `--short-abandon-seconds` and `--service-level-seconds`.
    pub thresholds: crate::report::stats::Thresholds,
    /// The command was given the figures' settings (see [`Settings::figures`]).
    pub figures: bool,
    pub final_statuses: FinalStatuses,
    pub dashboard: DashboardConfig,
    /// Set by commands that only read: they refuse a database whose calls were merged under
    /// other settings instead of recomputing them.
    pub read_only: bool,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("database", &redact_url(&self.database))
            .field(
                "webhook_keys",
                &format!("{} redacted", self.webhook_keys.len()),
            )
            .field("api_token", &self.api_token.as_ref().map(|_| "redacted"))
            .field("timezone", &self.timezone_name)
            .field("max_body", &self.max_body)
            .field("max_inflight", &self.max_inflight)
            .field("client_timeout", &self.client_timeout)
            .field("max_streams", &self.max_streams)
            .field("max_connections", &self.max_connections)
            .field("retry_schedule", &self.retry_schedule)
            .field("thresholds", &self.thresholds)
            .field("final_statuses", &self.final_statuses.as_slice())
            .field(
                "viewer_token",
                &self.dashboard.viewer_token.as_ref().map(|_| "redacted"),
            )
            .field("viewer_can_close", &self.dashboard.viewer_can_close)
            .field("session_idle", &self.dashboard.session_idle)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the config file {path} is not valid: {message}")]
    ParseFile { path: PathBuf, message: String },
    #[error("unknown time zone {0:?}: give an IANA name such as Asia/Ho_Chi_Minh")]
    TimeZone(String),
    #[error("max_body: {0}")]
    MaxBody(String),
    #[error("max_inflight: {0}")]
    MaxInflight(String),
    #[error(
        "cannot listen on {0:?}: give host:port (0.0.0.0:8080, localhost:8080), :port or a port"
    )]
    Listen(String),
    #[error("client_timeout must be at least 1 second")]
    ClientTimeout,
    #[error("max_streams must be at least 1")]
    MaxStreams,
    #[error("max_connections must be at least 1")]
    MaxConnections,
    #[error("session_idle_minutes must be at least 1")]
    SessionIdle,
    #[error(
        "the viewer token is too short: give at least {} characters (it signs in to the dashboard)",
        crate::server::MIN_VIEWER_TOKEN
    )]
    ViewerTokenTooShort,
    #[error("service_level_seconds must be at least 1")]
    ServiceLevel,
    #[error("retry_schedule: {0}")]
    RetrySchedule(String),
    #[error("cannot keep credentials in {path}: {source}")]
    Credentials {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the credentials file {path} is not valid: {message}")]
    CredentialsFile { path: PathBuf, message: String },
}

impl Settings {
    /// Merges flags and environment (already in `self`) over the config file and defaults.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let file = match &self.config {
            Some(path) => read_file_settings(path)?,
            None => FileSettings::default(),
        };
        let data_dir = self
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let database = self
            .database
            .or(file.database)
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("alohook.db").display()));
        let timezone_name = self
            .timezone
            .or(file.timezone)
            .unwrap_or_else(|| DEFAULT_TIMEZONE.to_string());
        let timezone = TimeZone::get(&timezone_name)
            .map_err(|_| ConfigError::TimeZone(timezone_name.clone()))?;
        let max_body = size_setting(self.max_body, file.max_body, DEFAULT_MAX_BODY)
            .map_err(ConfigError::MaxBody)?;
        let max_inflight = size_setting(self.max_inflight, file.max_inflight, DEFAULT_MAX_INFLIGHT)
            .map_err(ConfigError::MaxInflight)?;
        if max_inflight < request_cost(max_body) {
            return Err(ConfigError::MaxInflight(format!(
                "{max_inflight} bytes cannot hold one request with a body of max_body \
                 ({max_body} bytes), which takes {} bytes",
                request_cost(max_body)
            )));
        }
        let client_timeout = match self.client_timeout.or(file.client_timeout) {
            Some(0) => return Err(ConfigError::ClientTimeout),
            Some(seconds) => Duration::from_secs(seconds),
            None => DEFAULT_CLIENT_TIMEOUT,
        };
        let max_streams = match self.max_streams.or(file.max_streams) {
            Some(0) => return Err(ConfigError::MaxStreams),
            Some(n) => n,
            None => DEFAULT_MAX_STREAMS,
        };
        let max_connections = match self.max_connections.or(file.max_connections) {
            Some(0) => return Err(ConfigError::MaxConnections),
            Some(n) => n,
            None => DEFAULT_MAX_CONNECTIONS,
        };
        let retry_schedule = match self.retry_schedule.or(file.retry_schedule) {
            Some(text) => {
                crate::forward::retry::Schedule::parse(&text).map_err(ConfigError::RetrySchedule)?
            }
            None => crate::forward::retry::Schedule::default(),
        };
        let thresholds = crate::report::stats::Thresholds {
            short_abandon_seconds: self
                .short_abandon_seconds
                .or(file.short_abandon_seconds)
                .unwrap_or(crate::report::stats::DEFAULT_SHORT_ABANDON_SECONDS),
            service_level_seconds: match self.service_level_seconds.or(file.service_level_seconds) {
                Some(0) => return Err(ConfigError::ServiceLevel),
                Some(n) => n,
                None => crate::report::stats::DEFAULT_SERVICE_LEVEL_SECONDS,
            },
        };
        let d = self.dashboard;
        let minutes = |m: u64| Duration::from_secs(m.saturating_mul(60));
        let dashboard = DashboardConfig {
            viewer_token: d
                .viewer_token
                .or(file.viewer_token)
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty()),
            viewer_can_close: d.viewer_can_close || file.viewer_can_close.unwrap_or(false),
            session_idle: match d.session_idle_minutes.or(file.session_idle_minutes) {
                Some(0) => return Err(ConfigError::SessionIdle),
                Some(m) => minutes(m),
                None => DashboardConfig::default().session_idle,
            },
            callback_amber: d
                .callback_amber_minutes
                .or(file.callback_amber_minutes)
                .map_or(DashboardConfig::default().callback_amber, minutes),
            callback_red: d
                .callback_red_minutes
                .or(file.callback_red_minutes)
                .map_or(DashboardConfig::default().callback_red, minutes),
        };
        if dashboard
            .viewer_token
            .as_ref()
            .is_some_and(|t| t.chars().count() < crate::server::MIN_VIEWER_TOKEN)
        {
            return Err(ConfigError::ViewerTokenTooShort);
        }
        let webhook_keys: Vec<String> = if self.webhook_keys.is_empty() {
            file.webhook_keys.unwrap_or_default()
        } else {
            self.webhook_keys
        }
        .into_iter()
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
        .collect();
        let final_statuses = if !self.final_statuses.is_empty() {
            FinalStatuses::new(&self.final_statuses)
        } else if let Some(list) = file.final_statuses {
            FinalStatuses::new(list)
        } else {
            FinalStatuses::default()
        };
        Ok(Config {
            listen: parse_listen(
                self.listen
                    .as_deref()
                    .or(file.listen.as_deref())
                    .unwrap_or(DEFAULT_LISTEN),
            )?,
            data_dir,
            database,
            webhook_keys,
            api_token: self
                .api_token
                .or(file.api_token)
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty()),
            timezone,
            timezone_name,
            max_body,
            max_inflight,
            client_timeout,
            max_streams,
            max_connections,
            retry_schedule,
            thresholds,
            figures: self.figures,
            final_statuses,
            dashboard,
            read_only: false,
        })
    }
}

/// A size from a flag, else from the file (an integer or `"64KiB"`), else `default`.
fn size_setting(
    flag: Option<usize>,
    file: Option<toml::Value>,
    default: usize,
) -> Result<usize, String> {
    match (flag, file) {
        (Some(n), _) => Ok(n),
        (None, Some(toml::Value::Integer(n))) => {
            usize::try_from(n).map_err(|_| format!("{n} is negative"))
        }
        (None, Some(toml::Value::String(s))) => parse_size(&s),
        (None, Some(other)) => Err(format!("expected a size, got {other}")),
        (None, None) => Ok(default),
    }
}

fn read_file_settings(path: &Path) -> Result<FileSettings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::ParseFile {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// `65536`, `64KiB`, `64k`, `1MiB`, `1m`.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: usize = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size such as 65536 or 64KiB"))?;
    let factor = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        _ => return Err(format!("{text:?}: unknown unit (use bytes, KiB or MiB)")),
    };
    n.checked_mul(factor)
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{text:?} is out of range"))
}

/// A database URL without its password, for logs.
pub fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let base = match (base.find("://"), base.rfind('@')) {
        (Some(scheme_end), Some(at))
            if at > scheme_end && base[scheme_end + 3..at].contains(':') =>
        {
            let userinfo = &base[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &base[..scheme_end + 3], user, &base[at..])
        }
        _ => base.to_string(),
    };
    match query {
        // libpq also takes the password as a parameter.
        Some(query) => {
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key == "password" => format!("{key}=***"),
                    _ => pair.to_string(),
                })
                .collect();
            format!("{base}?{}", pairs.join("&"))
        }
        None => base,
    }
}

/// Which credentials were generated on this start (to be shown once).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Generated {
    pub webhook_key: Option<String>,
    pub api_token: Option<String>,
}

#[derive(Debug, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct CredentialsFile {
    webhook_key: Option<String>,
    api_token: Option<String>,
}

impl Config {
    /// The settings stored call records depend on.
    pub fn merge_settings(&self) -> crate::store::MergeSettings {
        crate::store::MergeSettings {
            finals: self.final_statuses.clone(),
            timezone: self.timezone.clone(),
            timezone_name: self.timezone_name.clone(),
            read_only: self.read_only,
            thresholds: self.figures.then_some(self.thresholds),
        }
    }

    pub fn credentials_path(&self) -> PathBuf {
        self.data_dir.join(CREDENTIALS_FILE)
    }

    /// Fills a missing webhook key or API token from the data dir's credentials file, when it
    /// has them; never creates anything. Returns which were filled.
    pub fn load_credentials(&mut self) -> Result<Generated, ConfigError> {
        let stored = self.stored_credentials()?;
        let mut loaded = Generated::default();
        if self.webhook_keys.is_empty()
            && let Some(key) = stored.webhook_key
        {
            self.webhook_keys = vec![key.clone()];
            loaded.webhook_key = Some(key);
        }
        if self.api_token.is_none()
            && let Some(token) = stored.api_token
        {
            self.api_token = Some(token.clone());
            loaded.api_token = Some(token);
        }
        Ok(loaded)
    }

    /// Fills a missing webhook key or API token from the data dir, generating and keeping
    /// (mode 0600) any that was never made. Returns what was generated now.
    pub fn ensure_credentials(&mut self) -> Result<Generated, ConfigError> {
        let mut generated = Generated::default();
        if !self.webhook_keys.is_empty() && self.api_token.is_some() {
            return Ok(generated);
        }
        let path = self.credentials_path();
        let mut stored = self.stored_credentials()?;
        if self.webhook_keys.is_empty() {
            let key = stored.webhook_key.get_or_insert_with(|| {
                let key = random_secret("ahk_");
                generated.webhook_key = Some(key.clone());
                key
            });
            self.webhook_keys = vec![key.clone()];
        }
        if self.api_token.is_none() {
            let token = stored.api_token.get_or_insert_with(|| {
                let token = random_secret("aht_");
                generated.api_token = Some(token.clone());
                token
            });
            self.api_token = Some(token.clone());
        }
        if generated != Generated::default() {
            let text = format!(
                "# Generated by alohook. Keep this file secret.\n{}",
                toml::to_string(&stored).unwrap_or_default()
            );
            write_private(&path, text.as_bytes())
                .map_err(|source| ConfigError::Credentials { path, source })?;
        }
        Ok(generated)
    }

    fn stored_credentials(&self) -> Result<CredentialsFile, ConfigError> {
        let path = self.credentials_path();
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| ConfigError::CredentialsFile {
                path,
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(CredentialsFile::default()),
            Err(source) => Err(ConfigError::Credentials { path, source }),
        }
    }
}

fn random_secret(prefix: &str) -> String {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source is available");
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Writes `bytes` to `path` readable by the owner only, replacing it atomically.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        crate::store::sqlite::create_private_dir(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// A commented configuration file with every default, printed by `alohook config`.
pub const EXAMPLE_CONFIG: &str = r#"# alohook configuration. Every setting is optional; shown are the defaults.
# Precedence: flags > environment (ALOHOOK_*) > this file > defaults.

# Address to listen on: "0.0.0.0:8080", "localhost:8080", ":8080" or "8080". Port 0 picks a free
# port. The PORT environment variable, when set, overrides this (ALOHOOK_LISTEN overrides both).
listen = "0.0.0.0:8080"

# Where the SQLite database and generated credentials live.
data_dir = "./alohook-data"

# Database URL. Default: sqlite://<data_dir>/alohook.db
# database = "sqlite://./alohook-data/alohook.db"

# Keys Alohub may send in the Authorization header; several are valid at once so a key can be
# rotated with no downtime. When none is set, one is generated on first start and kept in
# <data_dir>/credentials.toml.
# webhook_keys = ["change-me"]

# Bearer token of the read API (/api/...). Generated on first start when not set.
# api_token = "change-me-too"

# IANA time zone of Alohub's local timestamps (YYYY-MM-DD HH:mm:ss).
timezone = "Asia/Ho_Chi_Minh"

# Largest webhook body accepted; larger ones are answered 413.
max_body = "64KiB"

# Webhook bodies held in memory at once (being read, queued or committed). Past it, requests are
# answered 503 with Retry-After (Alohub resends) instead of queueing without bound.
max_inflight = "32MiB"

# Seconds a client has to send a whole request once it started, that an open connection may stay
# silent, and that an answer may wait for the client to read it, before the connection is closed
# (clients that trickle bytes, hold sockets open or stop reading).
client_timeout = 60

# Live streams (GET /api/stream) open at once; past it a new one is answered 503 with Retry-After.
max_streams = 256

# Client connections open at once; more wait to be accepted until one closes. Each may hold up to
# about 400 KiB while a request head is read, so this bounds that memory.
max_connections = 1024

# Waits between the attempts of a forwarded change that fails (N waits: N retries after the first
# attempt); after the last, the delivery is dead.
retry_schedule = "5s,5m,30m,2h,5h,10h,14h,20h,24h"

# Call-centre figures (GET /api/stats): an unanswered inbound call that rang less than
# short_abandon_seconds is a short abandon (kept out of the abandon rate and service level); an
# inbound call answered after ringing less than service_level_seconds meets the service level.
short_abandon_seconds = 5
service_level_seconds = 20

# Statuses that end a call even without an end time. Changing the list recomputes the stored
# calls at the next start.
final_statuses = ["missed", "busy", "failed", "no_answer", "noanswer", "no-answer", "cancelled", "canceled", "rejected", "ended", "completed"]

# The dashboard (http://<host>:8080/). The API token signs in as admin; viewer_token, when set,
# signs in read-only (it also reads the API as a Bearer token). viewer_can_close lets the viewer
# close callback items. A session ends after session_idle_minutes without a request. Open
# callback items show amber from callback_amber_minutes and red from callback_red_minutes.
# viewer_token = "…"
viewer_can_close = false
session_idle_minutes = 480
callback_amber_minutes = 15
callback_red_minutes = 60
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_viewer_token_is_refused_before_anything_starts() {
        let mut settings = Settings::default();
        settings.dashboard.viewer_token = Some("short".to_string());
        assert!(matches!(
            settings.clone().resolve(),
            Err(ConfigError::ViewerTokenTooShort)
        ));
        settings.dashboard.viewer_token = Some("sixteen-chars-ok".to_string());
        assert_eq!(
            settings
                .resolve()
                .unwrap()
                .dashboard
                .viewer_token
                .as_deref(),
            Some("sixteen-chars-ok")
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1m"), Ok(1 << 20));
        assert!(parse_size("0").is_err());
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alohook.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\ntimezone = \"UTC\"\nmax_body = \"1KiB\"\nwebhook_keys = [\"a\", \"b\"]\n",
        )
        .unwrap();
        let settings = Settings {
            config: Some(path.clone()),
            timezone: Some("Asia/Bangkok".into()),
            ..Settings::default()
        };
        let config = settings.resolve().unwrap();
        assert_eq!(config.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(config.timezone_name, "Asia/Bangkok");
        assert_eq!(config.max_body, 1024);
        assert_eq!(config.webhook_keys, ["a", "b"]);
        assert_eq!(config.database, "sqlite://./alohook-data/alohook.db");
    }

    #[test]
    fn listen_forms() {
        let addr = |t: &str| parse_listen(t).map(|a| a.to_string());
        assert_eq!(addr(":8080").unwrap(), "0.0.0.0:8080");
        assert_eq!(addr("8080").unwrap(), "0.0.0.0:8080");
        assert_eq!(addr("127.0.0.1:9000").unwrap(), "127.0.0.1:9000");
        assert_eq!(addr("[::1]:9000").unwrap(), "[::1]:9000");
        assert_eq!(addr("localhost:8080").unwrap(), "127.0.0.1:8080");
        for bad in ["", "localhost", "host:port", "99999", ":x"] {
            assert!(
                matches!(parse_listen(bad), Err(ConfigError::Listen(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_in_flight_budget_holds_at_least_one_body() {
        let settings = Settings {
            max_body: Some(1 << 20),
            max_inflight: Some(2 << 20),
            ..Settings::default()
        };
        assert!(matches!(
            settings.resolve(),
            Err(ConfigError::MaxInflight(_))
        ));
        let settings = Settings {
            max_inflight: Some(1 << 20),
            ..Settings::default()
        };
        assert_eq!(settings.resolve().unwrap().max_inflight, 1 << 20);
    }

    #[test]
    fn example_config_is_valid() {
        let parsed: FileSettings = toml::from_str(EXAMPLE_CONFIG).unwrap();
        assert_eq!(parsed.timezone.as_deref(), Some(DEFAULT_TIMEZONE));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alohook.toml");
        std::fs::write(&path, EXAMPLE_CONFIG).unwrap();
        let config = Settings {
            config: Some(path),
            ..Settings::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(config.max_inflight, DEFAULT_MAX_INFLIGHT);
        assert_eq!(config.max_body, DEFAULT_MAX_BODY);
    }

    #[test]
    fn bad_zone_is_a_clear_error() {
        let settings = Settings {
            timezone: Some("Mars/Olympus".into()),
            ..Settings::default()
        };
        assert!(matches!(settings.resolve(), Err(ConfigError::TimeZone(_))));
    }

    #[test]
    fn credentials_are_generated_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let settings = || Settings {
            data_dir: Some(dir.path().to_path_buf()),
            ..Settings::default()
        };
        let mut first = settings().resolve().unwrap();
        let generated = first.ensure_credentials().unwrap();
        assert!(generated.webhook_key.is_some() && generated.api_token.is_some());
        let mut second = settings().resolve().unwrap();
        assert_eq!(second.ensure_credentials().unwrap(), Generated::default());
        assert_eq!(first.webhook_keys, second.webhook_keys);
        assert_eq!(first.api_token, second.api_token);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(first.credentials_path())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn passwords_are_not_logged() {
        assert_eq!(
            redact_url("postgres://alo:s3cret@db:5432/alohook"),
            "postgres://alo:***@db:5432/alohook"
        );
        assert_eq!(redact_url("postgres://alo@db/x"), "postgres://alo@db/x");
        assert_eq!(
            redact_url("postgres://alo@db/x?sslmode=require&password=s3cret&application_name=a"),
            "postgres://alo@db/x?sslmode=require&password=***&application_name=a"
        );
        assert_eq!(
            redact_url("postgres://alo:s3cret@db/x?sslrootcert=/etc/ca@home.pem"),
            "postgres://alo:***@db/x?sslrootcert=/etc/ca@home.pem"
        );
        let config = Settings {
            webhook_keys: vec!["super-secret".into()],
            ..Settings::default()
        }
        .resolve()
        .unwrap();
        assert!(!format!("{config:?}").contains("super-secret"));
    }
}
