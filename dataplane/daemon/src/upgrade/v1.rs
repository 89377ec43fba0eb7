//! State region layout 1, read when the running target is an older binary: file
//! namespaces were reopened by path, there were no VFIO namespaces.

use super::*;

#[derive(Debug, Serialize, Deserialize)]
pub(super) enum BdevState {
    Ram {
        fd: usize,
        block_size: u32,
        path: Option<String>,
    },
    File {
        path: String,
        block_size: u32,
        read_only: bool,
        direct: bool,
        queue_depth: u32,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Snapshot {
    pub layout: u32,
    pub version: String,
    pub pid: u32,
    pub cores: Vec<Option<usize>>,
    pub idle_spin_us: Option<u64>,
    pub control_path: String,
    pub control_fd: usize,
    pub stdout_fd: usize,
    pub stderr_fd: usize,
    pub state_dir: Option<String>,
    pub target: TargetState,
    pub tcp: TcpState,
    pub bdevs: Vec<(String, u32, BdevState)>,
}

impl From<Snapshot> for super::Snapshot {
    fn from(s: Snapshot) -> super::Snapshot {
        let bdevs = s
            .bdevs
            .into_iter()
            .map(|(nqn, nsid, b)| {
                let b = match b {
                    BdevState::Ram {
                        fd,
                        block_size,
                        path,
                    } => super::BdevState::Ram {
                        fd,
                        block_size,
                        path,
                    },
                    BdevState::File {
                        path,
                        block_size,
                        read_only,
                        direct,
                        queue_depth,
                    } => super::BdevState::File {
                        path,
                        fd: None,
                        block_size,
                        read_only,
                        direct,
                        queue_depth,
                    },
                };
                (nqn, nsid, b)
            })
            .collect();
        super::Snapshot {
            layout: s.layout,
            version: s.version,
            pid: s.pid,
            cores: s.cores,
            idle_spin_us: s.idle_spin_us,
            control_path: s.control_path,
            control_fd: s.control_fd,
            stdout_fd: s.stdout_fd,
            stderr_fd: s.stderr_fd,
            state_dir: s.state_dir,
            target: s.target,
            tcp: s.tcp,
            bdevs,
        }
    }
}
