//! The daemon's TOML configuration parser (`lightpool-target --config`): the daemon's
//! own `config` module (with the `raid` and `transports` modules its checks use),
//! compiled here from its sources, fed arbitrary text.
//!
//! Invariants beyond "no panic":
//! - an error, from the TOML parser or from `Config::validate`, is located by the same
//!   code `load` uses (`Locator::at`, `at_file`) without panicking, whatever the span;
//! - a configuration that parses and validates is written back (`toml::to_string`, what
//!   `lightpool config save` does) to text that parses to the same configuration and
//!   validates again;
//! - no allocation beyond 4 MiB, 64 MiB live.
#![no_main]
#![allow(dead_code, unused_imports)]

#[path = "../../dataplane/daemon/src/config/mod.rs"]
mod config;
#[path = "../../dataplane/daemon/src/raid.rs"]
mod raid;
#[path = "../../dataplane/daemon/src/transports.rs"]
mod transports;

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use lightpool_fuzz::{bounded_allocator, Armed};

bounded_allocator!();

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _armed = Armed::new(4 << 20, 64 << 20);
    let loc = config::Locator::new(text);
    let file = Path::new("fuzz.toml");
    let cfg: config::Config = match toml::from_str(text) {
        Ok(c) => c,
        Err(e) => {
            if let Some(s) = e.span() {
                let _ = loc.at(s.start);
            }
            return;
        }
    };
    if let Err(e) = cfg.validate() {
        let msg = config::at_file(file, &loc, &e);
        assert!(msg.starts_with("fuzz.toml"));
        return;
    }
    let saved = toml::to_string(&cfg).expect("a valid configuration serializes");
    let back: config::Config = toml::from_str(&saved)
        .unwrap_or_else(|e| panic!("the saved configuration does not parse: {e}\n{saved}"));
    assert_eq!(
        back, cfg,
        "the configuration changed through save:\n{saved}"
    );
    back.validate().expect("the saved configuration validates");
});
