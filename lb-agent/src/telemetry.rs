//! lb-agent's tracing subscriber: human-readable lines on stderr, filtered by `RUST_LOG`
//! when it is set, else by `--log-level`.

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
