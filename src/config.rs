//! Settings: defaults < TOML file (`--config`) < environment (`ALOHOOK_*`) < flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::tz::TimeZone;
use serde::Deserialize;

use crate::model::FinalStatuses;

pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
pub const DEFAULT_DATA_DIR: &str = "./alohook-data";
pub const DEFAULT_TIMEZONE: &str = "Asia/Ho_Chi_Minh";
pub const DEFAULT_MAX_BODY: usize = 64 * 1024;
pub const DEFAULT_CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
const CREDENTIALS_FILE: &str = "credentials.toml";

/// Every environment variable alohook reads; others with the `ALOHOOK_` prefix are warned about.
pub const KNOWN_ENV: &[&str] = &[
    "ALOHOOK_CONFIG",
    "ALOHOOK_LISTEN",
    "ALOHOOK_DATA_DIR",
    "ALOHOOK_DATABASE_URL",
    "ALOHOOK_WEBHOOK_KEYS",
    "ALOHOOK_API_TOKEN",
    "ALOHOOK_TIMEZONE",
    "ALOHOOK_MAX_BODY",
    "ALOHOOK_CLIENT_TIMEOUT",
    "ALOHOOK_FINAL_STATUSES",
    "ALOHOOK_LOG",
];

/// The settings of `alohook serve`, as flags and environment variables.
#[derive(clap::Args, Clone, Default)]
pub struct Settings {
    /// TOML file with settings; flags and environment variables override it.
    /// `alohook config` prints a commented example.
    #[arg(long, env = "ALOHOOK_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free port [default: 0.0.0.0:8080]
    #[arg(long, env = "ALOHOOK_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Directory for the SQLite database and generated credentials [default: ./alohook-data]
    #[arg(long, env = "ALOHOOK_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Database URL [default: sqlite://<data-dir>/alohook.db]
    #[arg(long, env = "ALOHOOK_DATABASE_URL", value_name = "URL")]
    pub database: Option<String>,
    /// Key Alohub sends in `Authorization`. Repeat (or comma-separate) to accept several at once
    /// while rotating. Generated on first start when none is given.
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
    /// IANA zone of Alohub's local timestamps [default: Asia/Ho_Chi_Minh]
    #[arg(long, env = "ALOHOOK_TIMEZONE", value_name = "ZONE")]
    pub timezone: Option<String>,
    /// Largest accepted webhook body: bytes, or with a unit (64KiB, 1MiB) [default: 64KiB]
    #[arg(long, env = "ALOHOOK_MAX_BODY", value_name = "SIZE", value_parser = parse_size)]
    pub max_body: Option<usize>,
    /// Seconds a client has to send a whole request once it started, and that a connection may
    /// stay silent, before it is closed [default: 60]
    #[arg(long, env = "ALOHOOK_CLIENT_TIMEOUT", value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub client_timeout: Option<u64>,
    /// Statuses that end a call without an end time, comma-separated
    /// [default: missed,busy,failed,no_answer,noanswer,no-answer,cancelled,canceled,rejected,ended,completed]
    #[arg(
        long,
        env = "ALOHOOK_FINAL_STATUSES",
        value_name = "LIST",
        value_delimiter = ','
    )]
    pub final_statuses: Vec<String>,
}

/// The settings file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    database: Option<String>,
    webhook_keys: Option<Vec<String>>,
    api_token: Option<String>,
    timezone: Option<String>,
    max_body: Option<toml::Value>,
    client_timeout: Option<u64>,
    final_statuses: Option<Vec<String>>,
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
    /// See `--client-timeout`.
    pub client_timeout: Duration,
    pub final_statuses: FinalStatuses,
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
            .field("client_timeout", &self.client_timeout)
            .field("final_statuses", &self.final_statuses.as_slice())
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
    #[error("client_timeout must be at least 1 second")]
    ClientTimeout,
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
        let max_body = match (self.max_body, file.max_body) {
            (Some(n), _) => n,
            (None, Some(toml::Value::Integer(n))) => {
                usize::try_from(n).map_err(|_| ConfigError::MaxBody(format!("{n} is negative")))?
            }
            (None, Some(toml::Value::String(s))) => parse_size(&s).map_err(ConfigError::MaxBody)?,
            (None, Some(other)) => {
                return Err(ConfigError::MaxBody(format!(
                    "expected a size, got {other}"
                )));
            }
            (None, None) => DEFAULT_MAX_BODY,
        };
        let client_timeout = match self.client_timeout.or(file.client_timeout) {
            Some(0) => return Err(ConfigError::ClientTimeout),
            Some(seconds) => Duration::from_secs(seconds),
            None => DEFAULT_CLIENT_TIMEOUT,
        };
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
            listen: self
                .listen
                .or(file.listen)
                .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("default address parses")),
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
            client_timeout,
            final_statuses,
        })
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
        }
    }

    pub fn credentials_path(&self) -> PathBuf {
        self.data_dir.join(CREDENTIALS_FILE)
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
        std::fs::create_dir_all(dir)?;
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

# Address to listen on. Port 0 picks a free port.
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

# Seconds a client has to send a whole request once it started, and that an open connection may
# stay silent, before it is closed (clients that trickle bytes or hold sockets open).
client_timeout = 60

# Statuses that end a call even without an end time.
final_statuses = ["missed", "busy", "failed", "no_answer", "noanswer", "no-answer", "cancelled", "canceled", "rejected", "ended", "completed"]
"#;

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.timezone_name, "Asia/Bangkok");
        assert_eq!(config.max_body, 1024);
        assert_eq!(config.webhook_keys, ["a", "b"]);
        assert_eq!(config.database, "sqlite://./alohook-data/alohook.db");
    }

    #[test]
    fn example_config_is_valid() {
        let parsed: FileSettings = toml::from_str(EXAMPLE_CONFIG).unwrap();
        assert_eq!(parsed.timezone.as_deref(), Some(DEFAULT_TIMEZONE));
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
