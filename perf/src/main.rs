//! `lightpool-perf`: see `lightpool-perf --help` and the crate documentation.

fn main() {
    std::process::exit(lightpool_perf::cli::main());
}
