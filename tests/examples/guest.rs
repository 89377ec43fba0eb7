//! Runs a script in the test guest and prints the console:
//! `cargo run -p lightpool-e2e --example guest -- 'nvme version'`.

use std::time::Duration;

use lightpool_e2e::{run_guest, GuestConfig};

fn main() -> anyhow::Result<()> {
    let script = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    let cfg = GuestConfig {
        timeout: Duration::from_secs(600),
        ..GuestConfig::new("example-guest", &script)
    };
    let out = run_guest(&cfg)?;
    println!("{}", out.console);
    eprintln!(
        "exit code {}, boot {:.1?}, total {:.1?}, console {}",
        out.exit_code,
        out.boot_time,
        out.total_time,
        out.console_log.display()
    );
    std::process::exit(out.exit_code);
}
