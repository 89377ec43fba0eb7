//! Crash safety of a pool under SIGKILL: the target is killed at a random moment while
//! hosts write heavily to several volumes of one pool (a verifying writer per volume
//! that records what each write it got acknowledged put where, and lightpool-perf
//! --verify at queue depth 32 on a third volume) and to a plain file-backed namespace
//! beside the pool (a verifying writer too) and volumes are created, deleted,
//! snapshotted, cloned and grown through the control socket. It is restarted from the
//! same configuration: the pool is replayed, and then every acknowledged block must
//! hold what was acknowledged (or what a write in flight at the kill put there), every
//! block lightpool-perf wrote must carry a valid stamp of its own block, the volumes
//! whose creation was acknowledged must be there and those whose deletion was must not,
//! and the pool's check (metadata read back from the device: readable, no cluster
//! owned twice, the free clusters those the maps leave) must pass.
//!
//! `LIGHTPOOL_POOL_CRASH_ROUNDS` sets the rounds (default 8, about a minute);
//! perf/pool-crash.sh runs 200 and prints the figures.
#![cfg(feature = "e2e")]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use lightpool_e2e::nvme_host::{pattern, HostController};
use lightpool_e2e::{e2e_dir, free_port, release_binary, HostProcess};

const NQN: &str = "nqn.2024-01.io.lightpool:pool-crash";
const BS: u32 = 4096;
/// Blocks of each tracked volume (64 MiB).
const TRACKED_BLOCKS: u64 = 16384;
/// Blocks of lightpool-perf's volume (32 MiB).
const PERF_BLOCKS: u64 = 8192;
/// Each grow adds this to v1 (a round grows it about 25 times: 200 rounds stay far
/// below the pool's over-commit limit).
const GROW_STEP: u64 = 64 << 10;

/// A small deterministic generator.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What a tracked block may hold: the generation last acknowledged, and those of writes
/// whose fate is unknown (in flight when the target died) since.
#[derive(Default, Clone)]
struct Block {
    acked: Option<u64>,
    maybe: Vec<u64>,
}

type Blocks = Arc<Mutex<BTreeMap<u64, Block>>>;

/// Names whose existence is known after a round.
#[derive(Default)]
struct Names {
    /// Created (acknowledged) and not deleted since.
    present: BTreeSet<String>,
    /// Deleted (acknowledged).
    gone: BTreeSet<String>,
    /// The operation's answer never came.
    unknown: BTreeSet<String>,
    /// v1's size (it is grown a step at a time).
    v1_size: u64,
}

struct Setup {
    addr: SocketAddr,
    control: String,
    config: PathBuf,
}

fn setup() -> Setup {
    let port = free_port().expect("port");
    let dir = e2e_dir().expect("e2e dir");
    let state = PathBuf::from("/dev/shm/lightpool-e2e-pool-crash");
    let _ = std::fs::remove_dir_all(&state);
    std::fs::create_dir_all(&state).expect("state dir");
    // The pool on a file (tmpfs), through io_uring, as a pool on a disk is: a block
    // write the target started completes in the kernel even when the target is killed.
    // (A RAM device's write is the target's own memcpy: SIGKILL in the middle of one
    // leaves that block torn, half new and half old, which no pool can prevent.)
    let image = state.join("pool.img");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(512 << 20))
        .expect("pool image");
    // A plain file-backed namespace beside the pool, tracked the same way.
    let plain = state.join("plain.img");
    std::fs::File::create(&plain)
        .and_then(|f| f.set_len(TRACKED_BLOCKS * u64::from(BS)))
        .expect("plain image");
    let control = dir.join("pool-crash.sock").display().to_string();
    let config = dir.join("pool-crash.toml");
    std::fs::write(
        &config,
        format!(
            "[target]\ncores = [0]\nstate_dir = \"{}\"\n[[listener]]\naddress = \"127.0.0.1:{port}\"\n\
             [[pool]]\nname = \"crash\"\ndevice = \"{}\"\ndirect = false\nblock_size = 4096\ncluster_size = \"64KiB\"\novercommit = 400\n\
             [[pool.volume]]\nname = \"v0\"\nsize = \"64MiB\"\n\
             [[pool.volume]]\nname = \"v1\"\nsize = \"64MiB\"\n\
             [[pool.volume]]\nname = \"perf\"\nsize = \"32MiB\"\n\
             [[subsystem]]\nnqn = \"{NQN}\"\n\
             [[subsystem.namespace]]\nnsid = 1\nvolume = \"crash/v0\"\n\
             [[subsystem.namespace]]\nnsid = 2\nvolume = \"crash/v1\"\n\
             [[subsystem.namespace]]\nnsid = 3\nvolume = \"crash/perf\"\n\
             [[subsystem.namespace]]\nnsid = 4\nfile = \"{}\"\ndirect = false\nblock_size = 4096\n",
            state.display(),
            image.display(),
            plain.display()
        ),
    )
    .expect("config");
    Setup {
        addr: format!("127.0.0.1:{port}").parse().expect("addr"),
        control,
        config,
    }
}

fn start(s: &Setup, round: u64) -> (HostProcess, Duration) {
    let mut cmd = Command::new(release_binary("lightpool-target").expect("built"));
    cmd.arg("--config")
        .arg(&s.config)
        .arg("--control-socket")
        .arg(&s.control);
    let t = Instant::now();
    let p = HostProcess::spawn_listening(
        &format!("pool-crash-{round}"),
        cmd,
        s.addr,
        Duration::from_secs(30),
    )
    .expect("the target starts (and replays its pool)");
    (p, t.elapsed())
}

/// `lightpool-target pool ARGS`: its output, or its error.
fn pool(control: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(release_binary("lightpool-target").expect("built"))
        .arg("pool")
        .arg("--control-socket")
        .arg(control)
        .args(args)
        .output()
        .expect("run lightpool-target pool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

fn perf(addr: SocketAddr, args: &[&str]) -> std::process::Child {
    Command::new(release_binary("lightpool-perf").expect("built"))
        .arg("-r")
        .arg(format!(
            "trtype:tcp adrfam:ipv4 traddr:{} trsvcid:{} subnqn:{NQN} ns:3",
            addr.ip(),
            addr.port()
        ))
        .args(["-o", "4096", "--verify", "--json", "-c", "1"])
        .args(["--range", &format!("0:{PERF_BLOCKS}")])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start lightpool-perf")
}

/// A verifying writer on namespace `nsid` until `stop` or the connection dies.
fn writer(
    addr: SocketAddr,
    nsid: u32,
    blocks: Blocks,
    gen: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    seed: u64,
) -> thread::JoinHandle<u64> {
    thread::spawn(move || {
        let Ok(mut c) = HostController::connect(addr, NQN, 1) else {
            return 0;
        };
        let mut rng = Rng(seed | 1);
        let mut acked = 0;
        while !stop.load(Ordering::Relaxed) {
            let mut batch: Vec<(u64, u64)> = Vec::new();
            while batch.len() < 16 {
                let lba = rng.below(TRACKED_BLOCKS);
                if !batch.iter().any(|b| b.0 == lba) {
                    batch.push((lba, gen.fetch_add(1, Ordering::Relaxed)));
                }
            }
            match c.io[0].write_blocks(nsid, &batch, BS) {
                Ok(ok) => {
                    let mut m = blocks.lock().unwrap();
                    for (&(lba, g), ok) in batch.iter().zip(ok) {
                        let b = m.entry(lba).or_default();
                        if ok {
                            b.acked = Some(g);
                            b.maybe.clear();
                            acked += 1;
                        } else {
                            b.maybe.push(g);
                        }
                    }
                }
                Err(_) => {
                    // The target died: these writes may or may not have happened.
                    let mut m = blocks.lock().unwrap();
                    for &(lba, g) in &batch {
                        m.entry(lba).or_default().maybe.push(g);
                    }
                    break;
                }
            }
        }
        acked
    })
}

/// Operations through the control socket until `stop` or the target dies.
fn operator(
    control: String,
    names: Arc<Mutex<Names>>,
    stop: Arc<AtomicBool>,
    round: u64,
) -> thread::JoinHandle<u64> {
    thread::spawn(move || {
        let mut done = 0;
        let mut k = 0;
        while !stop.load(Ordering::Relaxed) {
            k += 1;
            let snap = format!("s{round}-{k}");
            let clone = format!("c{round}-{k}");
            let tmp = format!("t{round}-{k}");
            let steps: Vec<(Vec<String>, Option<&String>, Option<&String>)> = vec![
                (
                    vec!["snapshot".into(), "v0".into(), snap.clone()],
                    Some(&snap),
                    None,
                ),
                (
                    vec!["create".into(), tmp.clone(), "4MiB".into()],
                    Some(&tmp),
                    None,
                ),
                (
                    vec!["clone".into(), snap.clone(), clone.clone()],
                    Some(&clone),
                    None,
                ),
                (
                    vec![
                        "grow".into(),
                        "v1".into(),
                        format!("{}", names.lock().unwrap().v1_size + GROW_STEP),
                    ],
                    None,
                    None,
                ),
                (vec!["delete".into(), tmp.clone()], None, Some(&tmp)),
                (vec!["delete".into(), clone.clone()], None, Some(&clone)),
            ];
            for (args, made, deleted) in steps {
                let mut a = vec!["crash".to_string()];
                a.extend(args);
                let refs: Vec<&str> = a.iter().map(String::as_str).collect();
                match pool(&control, &refs) {
                    Ok(_) => {
                        done += 1;
                        let mut n = names.lock().unwrap();
                        if a[1] == "grow" {
                            n.v1_size += GROW_STEP;
                        }
                        if let Some(m) = made {
                            n.present.insert(m.clone());
                        }
                        if let Some(d) = deleted {
                            n.present.remove(d);
                            n.gone.insert(d.clone());
                        }
                    }
                    Err(e) => {
                        // The target was killed while answering (the kill and `stop`
                        // come together): the operation may or may not have happened.
                        let killed = || {
                            thread::sleep(Duration::from_millis(300));
                            stop.load(Ordering::Relaxed)
                        };
                        if e.contains("cannot reach")
                            || e.contains("unexpected answer")
                            || e.contains("Connection")
                            || e.contains("Broken pipe")
                            || killed()
                        {
                            let mut n = names.lock().unwrap();
                            for x in made.iter().chain(deleted.iter()) {
                                n.present.remove(*x);
                                n.unknown.insert((*x).clone());
                            }
                            return done;
                        }
                        panic!("pool {refs:?} failed: {e}");
                    }
                }
            }
            // Snapshots pile up under v0 (a chain): delete the older ones, each of which
            // hands its clusters to the next.
            thread::sleep(Duration::from_millis(20));
        }
        done
    })
}

/// Every tracked block of namespace `nsid` holds what it may.
fn check_tracked(addr: SocketAddr, nsid: u32, blocks: &Blocks) -> Result<u64, String> {
    let m = blocks.lock().unwrap().clone();
    let mut c = HostController::connect(addr, NQN, 1).map_err(|e| format!("{e:#}"))?;
    let lbas: Vec<u64> = m.keys().copied().collect();
    let mut checked = 0;
    for chunk in lbas.chunks(64) {
        let data = c.io[0]
            .read_blocks(nsid, chunk, BS)
            .map_err(|e| format!("{e:#}"))?;
        for (lba, d) in chunk.iter().zip(data) {
            let b = &m[lba];
            let ok = b
                .acked
                .iter()
                .chain(b.maybe.iter())
                .any(|&g| d == pattern(*lba, g, BS as usize))
                || (b.acked.is_none() && d.iter().all(|&x| x == 0));
            if !ok {
                return Err(format!(
                    "namespace {nsid}, block {lba}: holds neither the acknowledged generation {:?} nor one in flight {:?}",
                    b.acked, b.maybe
                ));
            }
            checked += 1;
        }
    }
    Ok(checked)
}

fn json_num(json: &str, key: &str) -> f64 {
    let pat = format!("\"{key}\":");
    json.find(&pat)
        .and_then(|at| json[at + pat.len()..].trim_start().split([',', '}']).next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

/// Figures of the whole run.
#[derive(Default, Debug)]
struct Totals {
    rounds: u64,
    acked_writes: u64,
    blocks_checked: u64,
    perf_blocks_checked: u64,
    operations: u64,
    worst_restart: Duration,
    sum_restart: Duration,
}

fn one_round(
    s: &Setup,
    round: u64,
    rng: &mut Rng,
    v: [&Blocks; 3],
    gen: &Arc<AtomicU64>,
    names: &Arc<Mutex<Names>>,
    t: &mut Totals,
) {
    let (mut target, restart) = start(s, round);
    t.worst_restart = t.worst_restart.max(restart);
    t.sum_restart += restart;
    if round > 0 {
        // What the previous round left, after the replay.
        for (nsid, b) in [(1, v[0]), (2, v[1]), (4, v[2])] {
            t.blocks_checked += check_tracked(s.addr, nsid, b)
                .unwrap_or_else(|e| panic!("round {round}: {e}\ntarget log:\n{}", target.log()));
        }
        let (ok, out, err) = {
            let o = perf(s.addr, &["-w", "read", "-q", "16", "-t", "4"])
                .wait_with_output()
                .expect("perf");
            (
                o.status.success(),
                String::from_utf8_lossy(&o.stdout).to_string(),
                String::from_utf8_lossy(&o.stderr).to_string(),
            )
        };
        assert!(
            ok,
            "round {round}: lightpool-perf's read pass failed: {err}\n{out}"
        );
        assert_eq!(json_num(&out, "mismatches"), 0.0, "{out}");
        t.perf_blocks_checked += json_num(&out, "blocks_checked") as u64;
        let listed = pool(&s.control, &["crash", "list"]).expect("list");
        let have: BTreeSet<String> = listed
            .lines()
            .filter_map(|l| {
                l.split_whitespace()
                    .next()?
                    .strip_prefix("name=")
                    .map(str::to_string)
            })
            .collect();
        let mut n = names.lock().unwrap();
        // A grow whose answer never came may or may not have happened.
        n.v1_size = listed
            .lines()
            .find(|l| l.starts_with("name=v1 "))
            .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("size=")))
            .and_then(|x| x.parse().ok())
            .unwrap_or_else(|| panic!("round {round}: v1 is not listed: {listed}"));
        for p in &n.present {
            assert!(
                have.contains(p),
                "round {round}: volume {p} was acknowledged and is gone: {listed}"
            );
        }
        for g in &n.gone {
            assert!(
                !have.contains(g),
                "round {round}: volume {g} was deleted and is back: {listed}"
            );
        }
        let check = pool(&s.control, &["crash", "check"]).unwrap_or_else(|e| {
            panic!(
                "round {round}: the pool's check failed: {e}\n{}",
                target.log()
            )
        });
        assert!(check.starts_with("ok "), "{check}");
        drop(n);
        // Keep the pool from filling: the snapshots and clones of earlier rounds go
        // (the oldest snapshot first: each hands its clusters to the next).
        let mut snaps: Vec<(u64, u64, String)> = have
            .iter()
            .filter_map(|x| {
                let (r, k) = x.strip_prefix('s')?.split_once('-')?;
                Some((r.parse().ok()?, k.parse().ok()?, x.clone()))
            })
            .collect();
        snaps.sort();
        for x in have
            .iter()
            .filter(|x| x.starts_with('c') || x.starts_with('t'))
        {
            pool(&s.control, &["crash", "delete", x]).expect("delete a clone");
            names.lock().unwrap().present.remove(x);
            names.lock().unwrap().unknown.remove(x);
        }
        for (_, _, x) in snaps {
            pool(&s.control, &["crash", "delete", &x])
                .unwrap_or_else(|e| panic!("delete {x}: {e}"));
            let mut n = names.lock().unwrap();
            n.present.remove(&x);
            n.unknown.remove(&x);
            n.gone.insert(x);
        }
    }
    // The load, then a kill at a random moment.
    let stop = Arc::new(AtomicBool::new(false));
    let perf_child = perf(
        s.addr,
        &["-w", "randrw", "-M", "30", "-q", "32", "-t", "30"],
    );
    let ws: Vec<_> = [(1u32, v[0]), (2, v[1]), (4, v[2])]
        .into_iter()
        .map(|(nsid, b)| {
            writer(
                s.addr,
                nsid,
                b.clone(),
                gen.clone(),
                stop.clone(),
                rng.next(),
            )
        })
        .collect();
    let op = operator(s.control.clone(), names.clone(), stop.clone(), round);
    thread::sleep(Duration::from_millis(800 + rng.below(1700)));
    // SAFETY: kill(2) on the target this test started.
    unsafe { libc::kill(target.id() as i32, libc::SIGKILL) };
    let _ = target.try_wait();
    stop.store(true, Ordering::Relaxed);
    for w in ws {
        t.acked_writes += w.join().expect("writer");
    }
    t.operations += op.join().expect("operator");
    let _ = perf_child.wait_with_output();
    t.rounds += 1;
}

#[test]
fn sigkill_during_writes_and_operations_loses_nothing_acknowledged() {
    let rounds: u64 = std::env::var("LIGHTPOOL_POOL_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let s = setup();
    let v0: Blocks = Arc::default();
    let v1: Blocks = Arc::default();
    let plain: Blocks = Arc::default();
    let gen = Arc::new(AtomicU64::new(1));
    let names = Arc::new(Mutex::new(Names {
        v1_size: 64 << 20,
        ..Names::default()
    }));
    let mut rng = Rng(0x5EED_0000 ^ rounds);
    let mut t = Totals::default();
    for r in 0..rounds {
        one_round(&s, r, &mut rng, [&v0, &v1, &plain], &gen, &names, &mut t);
    }
    // A last start checks what the last kill left.
    let (target, restart) = start(&s, rounds);
    t.worst_restart = t.worst_restart.max(restart);
    for (nsid, b) in [(1, &v0), (2, &v1), (4, &plain)] {
        t.blocks_checked += check_tracked(s.addr, nsid, b)
            .unwrap_or_else(|e| panic!("last start: {e}\n{}", target.log()));
    }
    let check = pool(&s.control, &["crash", "check"]).expect("the pool's check");
    assert!(check.starts_with("ok "), "{check}");
    eprintln!(
        "{} SIGKILL rounds: {} acknowledged tracked writes, {} tracked blocks and {} lightpool-perf blocks checked after restarts, 0 lost; {} pool operations acknowledged; pool check passed after every restart (no cluster owned twice); restart to listening: mean {:.0} ms, worst {:.0} ms",
        t.rounds,
        t.acked_writes,
        t.blocks_checked,
        t.perf_blocks_checked,
        t.operations,
        t.sum_restart.as_secs_f64() * 1e3 / (t.rounds.max(1)) as f64,
        t.worst_restart.as_secs_f64() * 1e3
    );
    assert!(t.acked_writes > 0 && t.blocks_checked > 0 && t.operations > 0);
    let _ = std::fs::remove_dir_all("/dev/shm/lightpool-e2e-pool-crash");
}
