//! `hugepage-setup`: prepares a host for the LightPool dataplane, as SPDK's setup.sh
//! does for SPDK. Reserves hugepages (on every NUMA node where there are several),
//! mounts hugetlbfs, binds NVMe controllers to vfio-pci (checking that the IOMMU is on,
//! that each IOMMU group can be taken whole, and that nothing uses the device) and gives
//! them back to the nvme driver. Idempotent: what is already so is left alone.
//! `--dry-run` prints what it would do. The DaemonSet's init container runs `setup`.

mod devices;
mod host;
mod hugepages;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use host::{Host, SetupError};

#[derive(Parser, Debug)]
#[command(
    name = "hugepage-setup",
    version,
    about = "Prepare a host for the LightPool dataplane: hugepages, hugetlbfs, NVMe SSDs on vfio-pci"
)]
struct Args {
    /// Print what would be done, change nothing.
    #[arg(long, global = true)]
    dry_run: bool,
    /// Where sysfs is (tests use a fake tree).
    #[arg(long, global = true, hide = true, default_value = "/sys")]
    sysfs_root: PathBuf,
    /// Where procfs is (tests use a fake tree).
    #[arg(long, global = true, hide = true, default_value = "/proc")]
    procfs_root: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Debug, Clone)]
struct PageArgs {
    /// Hugepages to reserve, on each NUMA node where there are several.
    #[arg(long)]
    pages: u64,
    /// Page size: 2M or 1G.
    #[arg(long, default_value = "2M")]
    page_size: String,
    /// Where to mount hugetlbfs.
    #[arg(long, default_value = "/dev/hugepages")]
    mount: PathBuf,
    /// Do not mount hugetlbfs.
    #[arg(long)]
    no_mount: bool,
}

#[derive(clap::Args, Debug, Clone)]
struct BindArgs {
    /// PCI addresses (0000:00:04.0) of the NVMe controllers; none: every NVMe controller
    /// that nothing uses.
    addrs: Vec<String>,
    /// Take devices that are mounted or in use, or whose IOMMU group cannot be taken
    /// whole.
    #[arg(long)]
    force: bool,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Reserve hugepages and mount hugetlbfs.
    Reserve(PageArgs),
    /// Bind NVMe controllers to vfio-pci.
    Bind(BindArgs),
    /// Give NVMe controllers back to the nvme driver (none named: every NVMe controller
    /// on vfio-pci).
    Reset { addrs: Vec<String> },
    /// Reserve, mount and bind in one go (what the init container runs).
    Setup {
        #[command(flatten)]
        pages: PageArgs,
        #[command(flatten)]
        bind: BindArgs,
    },
    /// Show hugepages, mounts, the IOMMU and NVMe controllers.
    Status {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
}

fn addresses(
    h: &Host,
    given: &[String],
    all: impl Fn(&devices::Device) -> bool,
) -> Result<Vec<String>, SetupError> {
    if given.is_empty() {
        return Ok(devices::nvme_devices(h)
            .into_iter()
            .filter(|d| all(d))
            .map(|d| d.addr)
            .collect());
    }
    let mut out = Vec::new();
    for a in given {
        let n = devices::normalize(a).ok_or_else(|| {
            SetupError::Refused(format!("{a:?} is not a PCI address such as 0000:00:04.0"))
        })?;
        if !h.sys("bus/pci/devices").join(&n).exists() {
            return Err(SetupError::Refused(format!("no PCI device {n}")));
        }
        out.push(n);
    }
    Ok(out)
}

fn page_size_kb(p: &PageArgs) -> Result<u64, SetupError> {
    hugepages::parse_page_size(&p.page_size).ok_or_else(|| {
        SetupError::Refused(format!("page size {:?} is neither 2M nor 1G", p.page_size))
    })
}

fn do_reserve(h: &Host, p: &PageArgs, kb: u64) -> Result<(), SetupError> {
    hugepages::reserve(h, p.pages, kb)?;
    if !p.no_mount {
        hugepages::mount(h, &p.mount, kb)?;
    }
    Ok(())
}

/// The controllers `bind` acts on: those named (each checked to exist), or every NVMe
/// controller nothing uses.
fn bind_addresses(h: &Host, b: &BindArgs) -> Result<Vec<String>, SetupError> {
    addresses(h, &b.addrs, |d| {
        let free = d.in_use.is_empty();
        if !free && d.driver.as_deref() != Some("vfio-pci") {
            println!("{}: skipped, in use ({})", d.addr, d.in_use.join("; "));
        }
        free || d.driver.as_deref() == Some("vfio-pci")
    })
}

fn do_bind(h: &Host, addrs: &[String], force: bool) -> Result<(), SetupError> {
    if addrs.is_empty() {
        println!("no NVMe controller to bind");
        return Ok(());
    }
    devices::bind(h, addrs, force)
}

fn run(args: &Args) -> Result<(), SetupError> {
    let h = Host::new(
        args.sysfs_root.clone(),
        args.procfs_root.clone(),
        args.dry_run,
    );
    match &args.cmd {
        Cmd::Reserve(p) => do_reserve(&h, p, page_size_kb(p)?),
        Cmd::Bind(b) => do_bind(&h, &bind_addresses(&h, b)?, b.force),
        Cmd::Setup { pages, bind } => {
            // Every argument is checked before anything is done (or, with --dry-run,
            // printed): a bad address must not leave pages reserved behind it.
            let kb = page_size_kb(pages)?;
            let addrs = bind_addresses(&h, bind)?;
            do_reserve(&h, pages, kb)?;
            do_bind(&h, &addrs, bind.force)
        }
        Cmd::Reset { addrs } => {
            let addrs = addresses(&h, addrs, |d| d.driver.as_deref() == Some("vfio-pci"))?;
            devices::reset(&h, &addrs)
        }
        Cmd::Status { json } => {
            let s = status::collect(&h);
            if *json {
                let text = serde_json::to_string_pretty(&s)
                    .map_err(|e| SetupError::Failed(format!("cannot encode the status: {e}")))?;
                println!("{text}");
            } else {
                print!("{}", status::table(&s));
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hugepage-setup: {e}");
            ExitCode::FAILURE
        }
    }
}
