//! How each namespace's block device travels to a successor (or is reopened by
//! `--recover`).

use std::os::fd::OwnedFd;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use lightpool_bdev::{
    Bdev, Handover, MallocBdev, NvmeVfioBdev, NvmeVfioHandover, UringBdev, UringOptions,
};
use lightpool_nvmf::Target;
use serde::{Deserialize, Serialize};

use super::*;

/// How the new process gets each namespace's block device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum BdevState {
    Ram {
        /// Index among the descriptors that come with the REACTORS answer (after the
        /// region).
        fd: usize,
        block_size: u32,
        path: Option<String>,
    },
    /// A file or block device: its open descriptor (index as for `Ram`), so the
    /// successor serves the same file even if the path names another one by now;
    /// `path` for recovery, which reopens it.
    File {
        path: String,
        fd: usize,
        block_size: u32,
        read_only: bool,
        direct: bool,
        queue_depth: u32,
    },
    /// An NVMe namespace through VFIO (`name`): its controller state and descriptors
    /// come with STATE ([`Pause::vfio`]).
    Vfio { name: String },
}

/// The block devices of a target as a successor reopens them, and the memfds of the RAM
/// devices (in the order their `fd` indices count).
/// Each namespace's (NQN, NSID, how to reopen its block device).
pub(super) type BdevList = Vec<(String, u32, BdevState)>;

pub(super) fn bdev_states(target: &Target) -> Result<(BdevList, Vec<OwnedFd>)> {
    let mut bdevs = Vec::new();
    let mut fds = Vec::new();
    for s in target.subsystems() {
        for n in s.namespaces() {
            if n.bdev.handover_at_pause() {
                bdevs.push((
                    s.nqn.clone(),
                    n.nsid,
                    BdevState::Vfio {
                        name: n.bdev.info().name.clone(),
                    },
                ));
                continue;
            }
            let st = match n.bdev.handover() {
                Handover::Ram {
                    memfd,
                    block_size,
                    path,
                } => {
                    fds.push(dup(memfd)?);
                    BdevState::Ram {
                        fd: fds.len() - 1,
                        block_size,
                        path,
                    }
                }
                Handover::File {
                    path,
                    fd,
                    block_size,
                    read_only,
                    direct,
                    queue_depth,
                } => {
                    fds.push(dup(fd)?);
                    BdevState::File {
                        path,
                        fd: fds.len() - 1,
                        block_size,
                        read_only,
                        direct,
                        queue_depth,
                    }
                }
                Handover::Vfio { .. } => {
                    bail!(
                        "namespace {} of {}: a VFIO device must report handover_at_pause",
                        n.nsid,
                        s.nqn
                    )
                }
                Handover::Unsupported { reason } => {
                    bail!(
                        "namespace {} of {} cannot be handed over: {reason}",
                        n.nsid,
                        s.nqn
                    )
                }
            };
            bdevs.push((s.nqn.clone(), n.nsid, st));
        }
    }
    Ok((bdevs, fds))
}

/// The VFIO namespaces' pause-time state (the target is drained), their descriptors
/// appended to `fds` (indices as `idx` numbers them).
pub(super) fn vfio_states(
    target: &Target,
    fds: &mut Vec<OwnedFd>,
    idx: impl Fn(&mut Vec<OwnedFd>, OwnedFd) -> usize,
) -> Result<Vec<VfioPause>> {
    let mut out = Vec::new();
    for s in target.subsystems() {
        for n in s.namespaces() {
            if !n.bdev.handover_at_pause() {
                continue;
            }
            match n.bdev.handover() {
                Handover::Vfio { state, fds: vfds } => {
                    let ix = vfds.into_iter().map(|f| idx(fds, f)).collect();
                    out.push((s.nqn.clone(), n.nsid, state, ix));
                }
                Handover::Unsupported { reason } => bail!(
                    "namespace {} of {} cannot be handed over: {reason}",
                    n.nsid,
                    s.nqn
                ),
                _ => bail!(
                    "namespace {} of {}: unexpected pause-time handover",
                    n.nsid,
                    s.nqn
                ),
            }
        }
    }
    Ok(out)
}

/// Take a namespace's block device over. `take` hands out the descriptors that came
/// with REACTORS (RAM memfds, open files) by index, and `vfio` the VFIO controllers'
/// state and descriptors that came with STATE; without them (recovery) a RAM device
/// must live in the state directory and a file is reopened by path. A RAM device in the
/// state directory is reattached by name, so the next handover and `--recover` know
/// where it is.
pub(super) fn open_bdev(
    nqn: &str,
    nsid: u32,
    st: &BdevState,
    take: Option<&mut dyn FnMut(usize) -> Result<OwnedFd>>,
    vfio: &mut Vec<(String, u32, Box<NvmeVfioHandover>, Vec<OwnedFd>)>,
) -> Result<Arc<dyn Bdev>> {
    let name = format!("ram{nsid}");
    Ok(match (st, take) {
        (
            BdevState::Ram {
                block_size,
                path: Some(p),
                ..
            },
            _,
        ) => {
            let len = std::fs::metadata(p)
                .with_context(|| format!("RAM data of {nqn} nsid {nsid} at {p}"))?
                .len();
            MallocBdev::open_shared(&name, std::path::Path::new(p), len, *block_size)?
        }
        (
            BdevState::Ram {
                fd,
                block_size,
                path: None,
            },
            Some(take),
        ) => MallocBdev::from_memfd(&name, take(*fd)?, *block_size)?,
        (BdevState::Ram { path: None, .. }, None) => {
            bail!("namespace {nsid} of {nqn} was a RAM device outside the state directory: its data did not survive")
        }
        (
            BdevState::File {
                path,
                fd,
                block_size,
                read_only,
                direct,
                queue_depth,
            },
            take,
        ) => {
            let opts = UringOptions {
                block_size: Some(*block_size),
                read_only: *read_only,
                direct: *direct,
                queue_depth: *queue_depth,
            };
            match take {
                Some(take) => UringBdev::adopt(take(*fd)?, path, opts)
                    .with_context(|| format!("namespace {nsid} of {nqn}"))?,
                None => UringBdev::open(std::path::Path::new(path), opts)?,
            }
        }
        (BdevState::Vfio { name }, _) => {
            let Some(i) = vfio.iter().position(|(q, n, _, _)| q == nqn && *n == nsid) else {
                bail!(
                    "namespace {nsid} of {nqn} was the NVMe device {name} through VFIO, which \
                     cannot be recovered without the process that drove it; start from the \
                     configuration"
                );
            };
            let (_, _, state, fds) = vfio.swap_remove(i);
            NvmeVfioBdev::adopt(&state, fds)
                .with_context(|| format!("namespace {nsid} of {nqn}"))?
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lightpool_nvme_vfio::{
        AdminState, ContainerState, ControllerInfo, ControllerOptions, ControllerState, MemState,
        NamespaceInfo, QueueState,
    };

    fn mem(iova: u64) -> MemState {
        MemState {
            len: 2 << 20,
            iova,
            backing: lightpool_dma::Backing::Hugepages {
                mount: "/dev/hugepages".into(),
                page_size: 2 << 20,
            },
        }
    }

    fn vfio_state() -> NvmeVfioHandover {
        NvmeVfioHandover {
            ns: NamespaceInfo {
                nsid: 1,
                num_blocks: 524288,
                block_size: 512,
                metadata_size: 0,
                deallocate_reads_zeroes: true,
                write_protected: false,
            },
            pool_buf_size: 128 << 10,
            pool_count: 256,
            pool_mem: mem(1 << 32),
            container: ContainerState {
                groups: vec![7],
                next_iova: (1 << 32) + (40 << 20),
                free_iovas: vec![((1 << 32) + (36 << 20), 2 << 20)],
            },
            controller: ControllerState {
                addr: "0000:00:04.0".into(),
                group: 7,
                cap: 0x0020_0000_2001_07ff,
                info: ControllerInfo {
                    vid: 0x1b36,
                    serial: "LPVFIO0001".into(),
                    model: "QEMU NVMe Ctrl".into(),
                    firmware: "9.0".into(),
                    max_transfer: Some(512 << 10),
                    nn: 256,
                    oncs: 0x15d,
                    volatile_write_cache: true,
                    io_queues: 64,
                    io_queue_depth: 256,
                },
                opts: ControllerOptions::default(),
                admin: AdminState {
                    sq_tail: 9,
                    sq_head: 9,
                    cq_head: 9,
                    cq_phase: true,
                    cid: 9,
                    mem: mem((1 << 32) + (32 << 20)),
                },
                io_queues: vec![QueueState {
                    qid: 1,
                    depth: 256,
                    sq_tail: 200,
                    sq_head: 200,
                    cq_head: 200,
                    cq_phase: false,
                    mem: mem((1 << 32) + (34 << 20)),
                    cq_off: 16384,
                    prp_off: 20480,
                }],
                enables: 1,
            },
        }
    }

    /// The boot blob carries file descriptors' indices, the handover blob a VFIO
    /// controller's whole state, through encoding and decoding.
    #[test]
    fn blobs_round_trip_with_file_and_vfio_namespaces() {
        let boot = Boot {
            version: "0.1.0".into(),
            pid: 42,
            cores: vec![Some(0), None],
            idle_spin_us: None,
            control_path: "/tmp/x.sock".into(),
            state_dir: None,
            bdevs: vec![
                (
                    "nqn.a".into(),
                    1,
                    BdevState::File {
                        path: "/srv/a.img".into(),
                        fd: 4,
                        block_size: 4096,
                        read_only: false,
                        direct: true,
                        queue_depth: 128,
                    },
                ),
                (
                    "nqn.a".into(),
                    2,
                    BdevState::Vfio {
                        name: "0000:00:04.0".into(),
                    },
                ),
            ],
        };
        let back: Boot = postcard::from_bytes(&postcard::to_stdvec(&boot).unwrap()).unwrap();
        match &back.bdevs[0].2 {
            BdevState::File { fd, path, .. } => {
                assert_eq!((*fd, path.as_str()), (4, "/srv/a.img"))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(&back.bdevs[1].2, BdevState::Vfio { name } if name == "0000:00:04.0"));
        let pause = Pause {
            version: "0.1.0".into(),
            pid: 42,
            control_fd: 1,
            stdout_fd: 2,
            stderr_fd: 3,
            tcp: TcpState {
                listeners: Vec::new(),
                conns: Vec::new(),
            },
            vfio: vec![(
                "nqn.a".into(),
                2,
                Box::new(vfio_state()),
                vec![5, 6, 7, 8, 9, 10],
            )],
        };
        let back: Pause = postcard::from_bytes(&postcard::to_stdvec(&pause).unwrap()).unwrap();
        let (nqn, nsid, state, fds) = &back.vfio[0];
        assert_eq!((nqn.as_str(), *nsid), ("nqn.a", 2));
        assert_eq!(**state, vfio_state());
        assert_eq!(fds, &[5, 6, 7, 8, 9, 10]);
    }

    /// Without the process that drove it, a VFIO namespace cannot be recovered: the
    /// error says so and names the device.
    #[test]
    fn vfio_namespaces_are_not_recovered() {
        let e = open_bdev(
            "nqn.a",
            2,
            &BdevState::Vfio {
                name: "0000:00:04.0".into(),
            },
            None,
            &mut Vec::new(),
        )
        .err()
        .expect("refused");
        let e = format!("{e:#}");
        assert!(
            e.contains("0000:00:04.0") && e.contains("start from the configuration"),
            "{e}"
        );
    }
}
