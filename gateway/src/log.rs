//! The server's log: every line through `tracing`, human-readable by
//! default (`log_format = "text"`: time, level, where, message and fields)
//! or one JSON object per line (`"json"`), filtered by `log_level` (a
//! level such as `info`, or per-module directives such as
//! `info,persistence=debug`).
//!
//! Nothing secret is ever logged: the admin token, API secrets, request
//! signatures and the database password never reach a log call (the
//! database URL is only ever shown without its password).

use std::error::Error;

use serde::Deserialize;
use tracing_subscriber::EnvFilter;

/// How log lines are written to standard error.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Checks a `log_level` filter, as the configuration loads.
pub fn check_level(level: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    // The filter syntax reads a bare word as a module name at every level;
    // a misspelt level would then log nothing, silently.
    for directive in level.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if !directive.contains('=') && !LEVELS.contains(&directive.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "{directive:?} is not a level (one of {}); for one module write module=level",
                LEVELS.join(", ")
            ));
        }
    }
    EnvFilter::builder().parse(level).map(|_| ()).map_err(|e| format!("{level:?} is not a log filter: {e}"))
}

/// Installs the process's log subscriber (once; later calls do nothing).
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::builder().parse(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.with_ansi(ansi).try_init(),
        // A line logged while a request is served carries its span (`id`,
        // `method`, `path`) under "span".
        LogFormat::Json => {
            builder.json().with_current_span(true).with_span_list(false).flatten_event(true).try_init()
        }
    };
}

/// `error` and every cause under it, joined by ": " (what a log line needs
/// to say why, not only what).
pub fn chain(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some errors repeat their source in their own message.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("error connecting to server")
        }
    }
    impl Error for Outer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_chain_names_every_cause() {
        let error = Outer(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused"));
        assert_eq!(chain(&error), "error connecting to server: Connection refused");
    }

    #[test]
    fn filters_are_checked() {
        assert!(check_level("info").is_ok());
        assert!(check_level("warn,persistence=debug").is_ok());
        assert!(check_level("loud").is_err());
        assert!(check_level("info,persistence=loud").is_err());
    }
}
