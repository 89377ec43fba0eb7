//! What the guest tests of one subsystem on two targets share (tests/tests/multipath.rs,
//! migrate_switch.rs): shell functions for the guest's native NVMe multipath, and the
//! check that the guest kernel complained of nothing.

/// Shell functions for a guest script that sets `NQN` (the subsystem) and `AGENT` (the
/// host agent's port) first: `say`, `ask` (one request to the host agent; a `FAILED`
/// answer ends the script), `connect PORT`, `ctrl_of PORT` (the nvmeN connected to
/// it), `state_of CTRL` (the ANA state of its path), `wait_state CTRL STATE` (10 s at
/// most) and `paths` (how many paths the namespace has).
pub const GUEST_LIB: &str = r#"
say() { echo "E2E: $*"; }
ask() { r=$(echo "$*" | nc 10.0.2.2 $AGENT); say "$*: $r"; case "$r" in FAILED*) exit 1;; esac; }
connect() { nvme connect -t tcp -a 10.0.2.2 -s $1 -n $NQN --nr-io-queues=2 > /dev/null; }
ctrl_of() {
    for c in /sys/class/nvme/nvme*; do
        grep -q "trsvcid=$1" $c/address 2>/dev/null && { echo ${c##*/}; return 0; }
    done
    return 1
}
state_of() { cat /sys/block/nvme*c${1#nvme}n1/ana_state; }
wait_state() {
    for i in $(seq 1 100); do [ "$(state_of $1)" = "$2" ] && return 0; sleep 0.1; done
    say "path $1 is $(state_of $1), not $2"; return 1
}
paths() { ls -d /sys/block/nvme*c*n1 2>/dev/null | wc -l; }
"#;

/// Fails the test when the guest's console shows an I/O error, a controller reset, a
/// timeout or a failed connect (`tail` goes into the message).
pub fn assert_kernel_quiet(console: &str, tail: &str) {
    for bad in [
        "I/O Error",
        "I/O error",
        "resetting controller",
        "timeout",
        "Connect command failed",
    ] {
        assert!(
            !console.contains(bad),
            "guest kernel logged {bad:?}:\n{tail}"
        );
    }
}
