//! Hot upgrade under the Linux kernel initiator: fio writes and verifies through the
//! guest's NVMe/TCP host while lightpool-target on the host is upgraded several times;
//! no I/O error, no controller reset or reconnect in the guest's kernel log.
#![cfg(feature = "e2e")]

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::time::{Duration, Instant};

use lightpool_e2e::{e2e_dir, free_port, release_binary, run_guest, GuestConfig, HostProcess};

const NQN: &str = "nqn.2024-01.io.lightpool:upgrade-kernel";

#[test]
fn kernel_initiator_sees_nothing_across_upgrades() {
    let port = free_port().expect("port");
    let dir = e2e_dir().expect("dir");
    let control = dir.join("upgrade-kernel.sock").display().to_string();
    let cfg = dir.join("upgrade-kernel.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[listener]]\naddress = \"127.0.0.1:{port}\"\n[[subsystem]]\nnqn = \"{NQN}\"\n\
             [[subsystem.namespace]]\nnsid = 1\nram = \"128MiB\"\nblock_size = 512\n"
        ),
    )
    .expect("config");
    let a = release_binary("lightpool-target").expect("built");
    let b = release_binary("lightpool-target-next").expect("tests/run.sh builds it");
    let mut cmd = Command::new(&a);
    cmd.arg("--config")
        .arg(&cfg)
        .arg("--control-socket")
        .arg(&control);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let first = HostProcess::spawn_listening("upgrade-kernel", cmd, addr, Duration::from_secs(20))
        .expect("target");

    // The guest says when fio starts and ends; upgrades happen in between.
    let sig = TcpListener::bind("127.0.0.1:0").expect("bind");
    let sig_port = sig.local_addr().expect("addr").port();
    let upgrader = {
        let control = control.clone();
        std::thread::spawn(move || -> Result<Vec<String>, String> {
            let wait = |what: &str| -> Result<(), String> {
                let (mut s, _) = sig.accept().map_err(|e| e.to_string())?;
                let mut got = String::new();
                s.read_to_string(&mut got).map_err(|e| e.to_string())?;
                if got.trim() == what {
                    Ok(())
                } else {
                    Err(format!("expected {what}, got {got:?}"))
                }
            };
            wait("fio-start")?;
            let mut done = Vec::new();
            for i in 0..4 {
                std::thread::sleep(Duration::from_millis(2500));
                let bin = if i % 2 == 0 { &b } else { &a };
                let out = Command::new(&a)
                    .arg("upgrade")
                    .arg("--binary")
                    .arg(bin)
                    .arg("--control-socket")
                    .arg(&control)
                    .output()
                    .map_err(|e| e.to_string())?;
                let text = String::from_utf8_lossy(&out.stdout).to_string()
                    + &String::from_utf8_lossy(&out.stderr);
                if !out.status.success() {
                    return Err(format!("upgrade {i} failed: {text}"));
                }
                done.push(
                    text.lines()
                        .find(|l| l.contains("took over"))
                        .unwrap_or_default()
                        .to_string(),
                );
            }
            wait("fio-end")?;
            Ok(done)
        })
    };

    let script = format!(
        r#"set -eu
NQN={NQN}
say() {{ echo "UPK: $*"; }}
nvme connect -t tcp -a 10.0.2.2 -s {port} -n $NQN --nr-io-queues=2
for i in $(seq 1 100); do [ -b /dev/nvme0n1 ] && break; sleep 0.1; done
echo fio-start | nc 10.0.2.2 {sig_port}
fio --name=across --filename=/dev/nvme0n1 --ioengine=libaio --direct=1 --iodepth=16 \
    --rw=randwrite --bsrange=4k-256k --size=16m --loops=8 --verify=crc32c --verify_fatal=1 \
    --do_verify=1 --output-format=terse --terse-version=3 > /tmp/fio.out
echo fio-end | nc 10.0.2.2 {sig_port}
say "fio errors=$(cut -d';' -f5 /tmp/fio.out) read_kb=$(cut -d';' -f6 /tmp/fio.out) write_kb=$(cut -d';' -f47 /tmp/fio.out)"
say "kernel log:"
dmesg | grep -i nvme | sed 's/^/UPK-DMESG: /'
nvme disconnect -n $NQN
say done
"#
    );
    let t0 = Instant::now();
    let out = run_guest(&GuestConfig {
        timeout: Duration::from_secs(600),
        ..GuestConfig::new("upgrade-kernel", &script)
    })
    .expect("guest");
    eprintln!("guest {:?}, test {:?}", out.total_time, t0.elapsed());
    let tail = out.tail(60);
    let upgrades = upgrader.join().expect("upgrader thread");
    assert_eq!(out.exit_code, 0, "{tail}\ntarget log:\n{}", first.log());
    let upgrades = upgrades.unwrap_or_else(|e| panic!("{e}\n{tail}"));
    eprintln!("upgrades during fio:\n{}", upgrades.join("\n"));
    assert_eq!(upgrades.len(), 4);
    assert!(out.console.contains("UPK: fio errors=0 "), "{tail}");
    let dmesg: Vec<&str> = out
        .console
        .lines()
        .filter(|l| l.starts_with("UPK-DMESG"))
        .collect();
    eprintln!("{}", dmesg.join("\n"));
    for bad in ["reset", "reconnect", "I/O error", "timeout", "failed"] {
        assert!(
            !dmesg
                .iter()
                .any(|l| l.to_lowercase().contains(&bad.to_lowercase())),
            "guest kernel logged {bad:?}:\n{}",
            dmesg.join("\n")
        );
    }
    // Stop whatever process serves now.
    if let Ok(mut s) = std::os::unix::net::UnixStream::connect(&control) {
        use std::io::{BufRead, BufReader, Write};
        let _ = s.write_all(b"STATUS\n");
        let mut line = String::new();
        let _ = BufReader::new(&s).read_line(&mut line);
        if let Some(pid) = line
            .split("pid=")
            .nth(1)
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<i32>().ok())
        {
            // SAFETY: kill(2) on the pid the target reported.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
}
