//! The log filter, changeable while the target runs (the management API's Logging
//! service): the subscriber's filter sits behind a reload handle.

use std::io::IsTerminal;
use std::sync::{Mutex, OnceLock};

use tracing_subscriber::prelude::*;
use tracing_subscriber::{fmt, reload, EnvFilter, Registry};

static HANDLE: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();
static CURRENT: Mutex<String> = Mutex::new(String::new());

/// Log to stderr through `filter` (tracing EnvFilter syntax), colours only on a
/// terminal.
pub fn init(filter: &str) {
    let f = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let (layer, handle) = reload::Layer::new(f);
    tracing_subscriber::registry()
        .with(layer)
        .with(
            fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal()),
        )
        .init();
    let _ = HANDLE.set(handle);
    *CURRENT.lock().expect("log filter lock poisoned") = filter.to_string();
}

/// Change the filter; a filter that does not parse leaves the old one.
pub fn set(filter: &str) -> Result<(), String> {
    let f = EnvFilter::try_new(filter)
        .map_err(|e| format!("{filter:?} is not a log filter ({e}): give a level (error, warn, info, debug, trace) or TARGET=LEVEL directives separated by commas"))?;
    let h = HANDLE
        .get()
        .ok_or_else(|| "logging is not set up".to_string())?;
    h.reload(f).map_err(|e| e.to_string())?;
    *CURRENT.lock().expect("log filter lock poisoned") = filter.to_string();
    tracing::info!(filter, "log filter changed");
    Ok(())
}

/// The filter in force.
pub fn get() -> String {
    CURRENT.lock().expect("log filter lock poisoned").clone()
}
