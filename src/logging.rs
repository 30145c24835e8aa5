//! Logging to stderr (`logging.format: text | json`), at the level
//! `logging.level` sets, which a reload changes; `RUST_LOG`, when set at
//! start, overrides the config for the life of the process.

use crate::config::Config;
use std::sync::OnceLock;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Registry};

static LEVEL: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Installs the process's logger (once; later calls do nothing).
pub fn init(config: &Config) {
    let from_env = EnvFilter::try_from_default_env().ok();
    let configured = from_env.is_none();
    let filter = from_env.unwrap_or_else(|| EnvFilter::new(&config.logging.level));
    let (filter, handle) = reload::Layer::new(filter);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let json = config.logging.format == "json";
    let text_layer = (!json).then(|| fmt::layer().with_writer(std::io::stderr).with_ansi(ansi));
    let json_layer = json.then(|| fmt::layer().json().with_writer(std::io::stderr));
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(text_layer)
        .with(json_layer)
        .try_init()
        .is_ok();
    if installed && configured {
        let _ = LEVEL.set(handle);
    }
}

/// Applies a reloaded `logging.level` (unless `RUST_LOG` decides).
pub fn set_level(level: &str) {
    if let Some(handle) = LEVEL.get() {
        if let Err(e) = handle.reload(EnvFilter::new(level)) {
            tracing::warn!("logging.level: {e}");
        }
    }
}
