//! Logging: the `--log` filter, checked before anything runs; colour only where a
//! person reads the log on a terminal; and the filter changeable while the target runs
//! (the management API's Logging service: the subscriber's filter sits behind a
//! reload handle, and a new filter passes the same check as `--log`).

use std::io::IsTerminal;
use std::sync::{Mutex, OnceLock};

use tracing_subscriber::prelude::*;
use tracing_subscriber::{fmt, reload, EnvFilter, Registry};

static HANDLE: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();
static CURRENT: Mutex<String> = Mutex::new(String::new());

/// The level names a filter directive may give.
const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

fn what_is_valid() -> String {
    format!(
        "give a level ({}) or TARGET=LEVEL directives, separated by commas, e.g. \
         \"info,lightpool_transport_tcp=debug\"",
        LEVELS.join(", ")
    )
}

/// Checks a `--log` filter (clap's value parser: a refusal exits with status 2 and
/// says what is valid). A bare word must be a level: tracing's own syntax would read
/// "debgu" or "verbose" as the name of a module to trace, which silently turns every
/// other log line off.
pub fn parse_filter(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Err(format!("the log filter is empty: {}", what_is_valid()));
    }
    for d in s.split(',').map(str::trim) {
        if d.is_empty() {
            return Err(format!(
                "the log filter {s:?} has an empty directive: {}",
                what_is_valid()
            ));
        }
        let (target, level) = match d.rsplit_once('=') {
            Some((t, l)) => (Some(t.trim()), l.trim()),
            None => (None, d),
        };
        if target == Some("") {
            return Err(format!(
                "the directive {d:?} names no target before '=': {}",
                what_is_valid()
            ));
        }
        if !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level)) {
            return Err(match target {
                Some(t) => format!(
                    "{level:?} (in {d:?}) is not a log level for {t}: {}",
                    what_is_valid()
                ),
                None => format!("{d:?} is not a log level: {}", what_is_valid()),
            });
        }
    }
    tracing_subscriber::EnvFilter::try_new(s)
        .map_err(|e| format!("invalid log filter {s:?} ({e}): {}", what_is_valid()))?;
    Ok(s.to_string())
}

/// Whether log lines get ANSI colours: only when stderr is a terminal and NO_COLOR is
/// not set. A process taking over in a hot upgrade (`inherited`) never colours: from
/// the takeover on it writes to the previous process's stderr (a journal or a file,
/// as often as not), which it cannot see when it starts.
pub fn colour(inherited: bool) -> bool {
    !inherited && std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Install the global subscriber: stderr, through `filter` (which passed
/// [`parse_filter`]), coloured as [`colour`] says, the filter reloadable with [`set`].
pub fn init(filter: &str, inherited: bool) {
    let f = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let (layer, handle) = reload::Layer::new(f);
    tracing_subscriber::registry()
        .with(layer)
        .with(
            fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(colour(inherited)),
        )
        .init();
    let _ = HANDLE.set(handle);
    *CURRENT.lock().expect("log filter lock poisoned") = filter.to_string();
}

/// Change the filter while the target runs; one that [`parse_filter`] refuses leaves
/// the old one in force.
pub fn set(filter: &str) -> Result<(), String> {
    let checked =
        parse_filter(filter).map_err(|e| format!("{filter:?} is not a log filter: {e}"))?;
    let f = EnvFilter::try_new(&checked)
        .map_err(|e| format!("{filter:?} is not a log filter ({e}): {}", what_is_valid()))?;
    let h = HANDLE
        .get()
        .ok_or_else(|| "logging is not set up".to_string())?;
    h.reload(f).map_err(|e| e.to_string())?;
    *CURRENT.lock().expect("log filter lock poisoned") = checked;
    tracing::info!(filter, "log filter changed");
    Ok(())
}

/// The filter in force.
pub fn get() -> String {
    CURRENT.lock().expect("log filter lock poisoned").clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_target_directives_pass() {
        for ok in [
            "info",
            "DEBUG",
            "warn,lightpool_transport_tcp=debug",
            "lightpool_nvmf::queue=trace",
            "off",
        ] {
            assert_eq!(parse_filter(ok).as_deref(), Ok(ok), "{ok}");
        }
    }

    #[test]
    fn misspelt_levels_and_empty_directives_are_refused_with_what_is_valid() {
        for bad in [
            "debgu",
            "verbose",
            "info,,debug",
            "=debug",
            "lightpool=loud",
            "",
        ] {
            let e = parse_filter(bad).expect_err(bad);
            assert!(
                e.contains("off, error, warn, info, debug, trace") && e.contains("TARGET=LEVEL"),
                "{bad}: {e}"
            );
        }
        assert!(parse_filter("debgu")
            .expect_err("refused")
            .contains("\"debgu\" is not a log level"));
    }
}
