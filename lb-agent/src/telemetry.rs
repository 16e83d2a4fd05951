//! lb-agent's tracing subscriber: human-readable lines on stderr, filtered by `RUST_LOG`
//! when it is set, else by `--log-level`; and [`error_chain`], the one way the agent turns an
//! error into text for a log field or an API answer.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; a second call (e.g. from another test) is a no-op.
pub fn init(level: tracing::Level) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(level.to_string().to_lowercase()));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: logs collected from a file or a pod stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// An error and its sources on one line, `outer: inner: innermost`: what `{err:#}` prints for
/// an `anyhow::Error`, for the library's `thiserror` errors.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
