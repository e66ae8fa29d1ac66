//! Structured logs through tracing-subscriber. `LOG_FORMAT=json` gives one
//! JSON object per line (production), anything else a human-readable format;
//! `RUST_LOG` filters (default `info`).

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|format| format == "json");
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let result = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
    } else {
        builder.try_init()
    };
    // A second initialisation (tests, dev mode) keeps the first subscriber.
    let _ = result;
}

/// Logging for command-line tools: warnings and errors only (unless
/// `RUST_LOG` says otherwise), on stderr so that stdout stays the tool's output.
pub fn init_for_tool() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
