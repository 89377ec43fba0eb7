//! Soft-RoCE (rxe) in the test guest: the shell that loads the RDMA modules, binds an
//! rxe device to the guest's network interface and says its address. tests/vm/setup.sh
//! carries the modules, iproute2's `rdma` and the userspace verbs libraries (with the
//! rxe provider) into the initramfs.
//!
//! rdma_cm does not route 127.0.0.1, so RDMA peers in the guest meet at the network
//! interface's own address ([`GUEST_ADDR`]): the kernel's initiator and a target in the
//! same guest reach each other through rxe's loopback.

/// The guest's address on its network interface (the harness's /init sets it), where
/// RDMA listeners in the guest bind.
pub const GUEST_ADDR: &str = "10.0.2.15";

/// Shell (for a guest script, busybox `sh`, `set -e` safe) that brings soft-RoCE up:
/// modules, an rxe device `rxe0` on the first non-loopback interface, the userspace
/// device nodes. Afterwards `$RDMA_ADDR` holds [`GUEST_ADDR`] and `rdma link` lists
/// rxe0 ACTIVE; it exits the script with status 90 if the device does not come up.
pub fn setup_script() -> String {
    format!(
        r#"
rdma_up() {{
    for m in crc32_generic crc32_pclmul ib_core ib_uverbs rdma_rxe ib_cm iw_cm rdma_cm rdma_ucm; do
        modprobe $m
    done
    ifc=
    for d in /sys/class/net/*; do
        [ "${{d##*/}}" = lo ] || {{ ifc=${{d##*/}}; break; }}
    done
    rdma link add rxe0 type rxe netdev "$ifc"
    for i in $(seq 1 50); do
        rdma link show rxe0/1 2>/dev/null | grep -q ACTIVE && break
        sleep 0.1
    done
    if ! rdma link show rxe0/1 | grep -q ACTIVE; then
        echo "RDMA: rxe0 on $ifc did not become ACTIVE" >&2
        rdma link show >&2 || true
        exit 90
    fi
    [ -e /dev/infiniband/uverbs0 ] || {{ echo "RDMA: no /dev/infiniband/uverbs0" >&2; exit 90; }}
    [ -e /dev/infiniband/rdma_cm ] || {{ echo "RDMA: no /dev/infiniband/rdma_cm" >&2; exit 90; }}
    RDMA_ADDR={GUEST_ADDR}
    echo "RDMA: rxe0 up on $ifc, address $RDMA_ADDR"
}}
rdma_up
"#
    )
}

/// Shell defining `perf_run NAME ARGS...`: runs /test/lightpool-perf with `--json` and
/// ARGS, and prints one console line `PERFJSON NAME EXIT {json on one line}` that
/// [`perf_reports`] reads back.
pub fn perf_script() -> &'static str {
    r#"
perf_run() {
    name=$1; shift
    rc=0
    /test/lightpool-perf --json "$@" > /tmp/perf.json 2> /tmp/perf.err || rc=$?
    [ $rc = 0 ] || { echo "perf $name stderr:"; tail -n 20 /tmp/perf.err; }
    echo "PERFJSON $name $rc $(tr -d '\n' < /tmp/perf.json)"
}
"#
}

/// What one `perf_run` reported: its exit code and its JSON report (None when it
/// printed none).
#[derive(Debug)]
pub struct PerfReport {
    pub code: i32,
    pub json: Option<serde_json::Value>,
}

/// The `perf_run` lines of a console, by name.
pub fn perf_reports(console: &str) -> std::collections::BTreeMap<String, PerfReport> {
    let mut out = std::collections::BTreeMap::new();
    for line in console.lines() {
        let Some(rest) = line.trim_end().strip_prefix("PERFJSON ") else {
            continue;
        };
        let mut parts = rest.splitn(3, ' ');
        let (Some(name), Some(code)) = (parts.next(), parts.next()) else {
            continue;
        };
        out.insert(
            name.to_string(),
            PerfReport {
                code: code.parse().unwrap_or(-1),
                json: parts.next().and_then(|j| serde_json::from_str(j).ok()),
            },
        );
    }
    out
}

impl PerfReport {
    /// Completed I/Os of the whole run (the JSON's total row).
    pub fn ios(&self) -> u64 {
        self.field(&["total", "ios"])
            .and_then(|v| v.as_u64())
            .unwrap_or(0)
    }

    /// I/Os per second of the whole run.
    pub fn iops(&self) -> f64 {
        self.field(&["total", "iops"])
            .and_then(|v| v.as_f64())
            .unwrap_or(0.0)
    }

    /// Blocks read back that held a valid stamp (checked, less the unwritten ones).
    pub fn stamped_blocks_read(&self) -> u64 {
        let n = |k: &str| {
            self.field(&["verify", k])
                .and_then(|v| v.as_u64())
                .unwrap_or(0)
        };
        n("blocks_checked").saturating_sub(n("blocks_unwritten"))
    }

    pub fn field(&self, path: &[&str]) -> Option<&serde_json::Value> {
        path.iter().try_fold(self.json.as_ref()?, |v, k| v.get(*k))
    }

    /// Panics unless the run exited 0 with I/Os done, no I/O error, no error, and (when
    /// it verified) blocks checked and no mismatch.
    pub fn assert_clean(&self, name: &str, verified: bool) {
        assert_eq!(self.code, 0, "{name}: {self:?}");
        assert!(self.ios() > 0, "{name}: no I/O completed: {self:?}");
        assert_eq!(
            self.field(&["error_total"]).and_then(|v| v.as_u64()),
            Some(0),
            "{name}: {self:?}"
        );
        assert!(
            self.field(&["error"]).is_some_and(|v| v.is_null()),
            "{name}: {self:?}"
        );
        if verified {
            assert_eq!(
                self.field(&["verify", "mismatches"])
                    .and_then(|v| v.as_u64()),
                Some(0),
                "{name}: {self:?}"
            );
            let checked = self
                .field(&["verify", "blocks_checked"])
                .and_then(|v| v.as_u64());
            assert!(
                checked.is_some_and(|n| n > 0),
                "{name}: nothing verified: {self:?}"
            );
        }
    }
}
