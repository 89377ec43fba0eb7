//! The harness itself: the guest boots, runs a script, reaches the host, and
//! its NVMe/TCP initiator, nvme-cli and fio work against the guest kernel's
//! own target (nvmet-tcp).
#![cfg(feature = "e2e")]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use lightpool_e2e::{free_port, run_guest, GuestConfig};

#[test]
fn guest_runs_script_and_reports_exit_code() {
    let cfg = GuestConfig {
        timeout: Duration::from_secs(180),
        extra_files: vec![("/test/data/msg".to_string(), b"carried along".to_vec())],
        ..GuestConfig::new(
            "smoke-exit-code",
            "echo \"kernel $(uname -r)\"; cat /test/data/msg; echo; exit 7\n",
        )
    };
    let out = run_guest(&cfg).expect("guest run");
    eprintln!(
        "boot to start marker {:?}, total {:?}",
        out.boot_time, out.total_time
    );
    assert_eq!(out.exit_code, 7, "{}", out.tail(40));
    assert!(out.console.contains("kernel 6.12."), "{}", out.tail(40));
    assert!(out.console.contains("carried along"), "{}", out.tail(40));
}

/// A hung guest must not hang the suite: QEMU is killed at the timeout and
/// the error names the console log and shows its tail.
#[test]
fn hung_guest_times_out() {
    let cfg = GuestConfig {
        timeout: Duration::from_secs(25),
        ..GuestConfig::new("smoke-timeout", "echo about to hang; sleep 1000\n")
    };
    let t0 = Instant::now();
    let err = run_guest(&cfg).expect_err("the guest cannot finish");
    let msg = format!("{err:#}");
    eprintln!("the expected error: {msg}");
    assert!(t0.elapsed() < Duration::from_secs(60), "{msg}");
    assert!(msg.contains("timed out"), "{msg}");
    assert!(msg.contains("smoke-timeout.console.log"), "{msg}");
    // On a slow machine the guest may not even get to the script.
    if msg.contains("LIGHTPOOL-TEST-START") {
        assert!(msg.contains("about to hang"), "{msg}");
    }
}

/// The guest kernel's nvmet-tcp target on a 64 MiB RAM disk (brd), reached
/// over the guest's loopback by nvme-cli and the kernel initiator; fio writes
/// and verifies through it, once plain and once with header and data digests.
const NVME_SMOKE: &str = r#"
set -eu
NQN=nqn.2024-01.io.lightpool:smoke
say() { echo "SMOKE: $*"; }

modprobe brd rd_nr=1 rd_size=65536
modprobe nvmet-tcp
T=/sys/kernel/config/nvmet
mkdir $T/subsystems/$NQN
echo 1 > $T/subsystems/$NQN/attr_allow_any_host
mkdir $T/subsystems/$NQN/namespaces/1
echo /dev/ram0 > $T/subsystems/$NQN/namespaces/1/device_path
echo 1 > $T/subsystems/$NQN/namespaces/1/enable
mkdir $T/ports/1
echo tcp > $T/ports/1/addr_trtype
echo ipv4 > $T/ports/1/addr_adrfam
echo 127.0.0.1 > $T/ports/1/addr_traddr
echo 4420 > $T/ports/1/addr_trsvcid
ln -s $T/subsystems/$NQN $T/ports/1/subsystems/$NQN
say "target up"

nvme discover -t tcp -a 127.0.0.1 -s 4420

# The block device of our namespace, once it shows up.
ns_dev() {
    for i in $(seq 1 100); do
        for s in /sys/class/nvme-subsystem/nvme-subsys*; do
            [ "$(cat $s/subsysnqn 2>/dev/null)" = $NQN ] || continue
            for n in $s/nvme*n*; do
                [ -e "$n" ] && [ -b /dev/${n##*/} ] && { echo /dev/${n##*/}; return 0; }
            done
        done
        sleep 0.1
    done
    echo "namespace of $NQN did not show up" >&2
    return 1
}

for digests in "" "--hdr-digest --data-digest"; do
    say "connect ${digests:-without digests}"
    nvme connect -t tcp -a 127.0.0.1 -s 4420 -n $NQN $digests
    dev=$(ns_dev)
    say "namespace $dev"
    nvme list-subsys
    ctrl=/dev/$(ls /sys/class/nvme-subsystem/nvme-subsys*/ | grep -m1 '^nvme[0-9]*$')
    nvme id-ctrl $ctrl | grep -E '^(mn|subnqn|ioccsz|iorcsz)'
    fio --name=smoke --filename=$dev --ioengine=libaio --direct=1 \
        --rw=randwrite --bsrange=4k-1m --size=8m --iodepth=8 \
        --verify=crc32c --verify_fatal=1 --do_verify=1 --randrepeat=0 \
        --output-format=terse --terse-version=3 > /tmp/fio.out
    # terse v3: field 5 the error count, 6 KiB read (the verify pass), 47 KiB written
    summary=$(cut -d';' -f5,6,47 /tmp/fio.out)
    say "fio err;read_kb;write_kb = $summary"
    [ "$summary" = "0;8192;8192" ]
    say "fio verified"
    nvme disconnect -n $NQN
    say "disconnected"
done
say "all good"
"#;

#[test]
fn nvme_tcp_against_guest_kernel_target() {
    let cfg = GuestConfig {
        timeout: Duration::from_secs(420),
        ..GuestConfig::new("smoke-nvme-tcp", NVME_SMOKE)
    };
    let t0 = Instant::now();
    let out = run_guest(&cfg).expect("guest run");
    eprintln!(
        "nvme smoke: boot {:?}, guest total {:?}, test {:?}",
        out.boot_time,
        out.total_time,
        t0.elapsed()
    );
    let tail = out.tail(60);
    assert_eq!(out.exit_code, 0, "{tail}");
    for want in [
        "SMOKE: target up",
        "subtype: nvme subsystem",
        "trsvcid: 4420",
        "SMOKE: connect without digests",
        "SMOKE: connect --hdr-digest --data-digest",
        "nqn.2024-01.io.lightpool:smoke",
        "SMOKE: fio err;read_kb;write_kb = 0;8192;8192",
        "SMOKE: disconnected",
        "SMOKE: all good",
    ] {
        assert!(out.console.contains(want), "{want:?} missing from:\n{tail}");
    }
    assert_eq!(
        out.console.matches("SMOKE: fio verified").count(),
        2,
        "{tail}"
    );
}

/// The path the real tests use: the guest kernel reaches the host's loopback
/// at 10.0.2.2. And the other way, a `host_forwards` entry.
#[test]
fn guest_and_host_reach_each_other() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("local addr").port();
    listener.set_nonblocking(true).expect("nonblocking");
    let fwd = free_port().expect("free port");
    let deadline = Instant::now() + Duration::from_secs(240);

    // Guest -> host: read what the guest sends until it shuts down its
    // half, answer, close.
    let (guest_up, wait_guest_up) = std::sync::mpsc::channel::<()>();
    let inbound = thread::spawn(move || -> Result<String, String> {
        let mut s = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return Err("no connection from the guest".into());
                    }
                    thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(format!("accept: {e}")),
            }
        };
        s.set_nonblocking(false).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| e.to_string())?;
        let mut got = String::new();
        s.read_to_string(&mut got).map_err(|e| e.to_string())?;
        s.write_all(b"hello-from-host\n")
            .map_err(|e| e.to_string())?;
        let _ = guest_up.send(());
        Ok(got)
    });
    // Host -> guest through the forward, once the guest's network is up
    // (earlier, slirp's SYNs to the guest get lost and back off for
    // seconds). Slirp accepts at once and closes again while nothing
    // listens in the guest yet, so retry until data comes.
    let outbound = thread::spawn(move || -> Result<String, String> {
        let wait = deadline.saturating_duration_since(Instant::now());
        wait_guest_up
            .recv_timeout(wait)
            .map_err(|_| "the guest never connected to the host".to_string())?;
        loop {
            if Instant::now() > deadline {
                return Err("nothing came through the host forward".into());
            }
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", fwd)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                let mut got = String::new();
                if s.read_to_string(&mut got).is_ok() && !got.is_empty() {
                    return Ok(got);
                }
            }
            thread::sleep(Duration::from_millis(200));
        }
    });

    let script = format!(
        "set -eu\n\
         echo hello-from-guest | timeout 60 nc 10.0.2.2 {port} > /tmp/reply\n\
         echo \"NET: reply $(cat /tmp/reply)\"\n\
         echo hello-through-forward | timeout 60 nc -l -p 7000\n\
         echo NET: forward served\n"
    );
    let cfg = GuestConfig {
        timeout: Duration::from_secs(180),
        host_forwards: vec![(fwd, 7000)],
        ..GuestConfig::new("smoke-net", &script)
    };
    let out = run_guest(&cfg).expect("guest run");
    let tail = out.tail(40);
    assert_eq!(out.exit_code, 0, "{tail}");
    let inbound = inbound.join().expect("inbound thread");
    assert_eq!(inbound.as_deref(), Ok("hello-from-guest\n"), "{tail}");
    assert!(out.console.contains("NET: reply hello-from-host"), "{tail}");
    let outbound = outbound.join().expect("outbound thread");
    assert_eq!(outbound.as_deref(), Ok("hello-through-forward\n"), "{tail}");
    assert!(out.console.contains("NET: forward served"), "{tail}");
}
