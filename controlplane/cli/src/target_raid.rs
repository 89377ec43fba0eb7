//! `lightpool target raid ...`: the RAID arrays of ONE running lightpool-target (its
//! Raids service): make one, list and show them with their members and recovery
//! progress, fail, remove, re-add and add members, set the rebuild rate, delete.

use clap::Subcommand;
use lightpool_api::v1 as pb;
use lightpool_api::v1::block_devices_client::BlockDevicesClient;
use lightpool_api::v1::raids_client::RaidsClient;
use tonic::transport::Channel;

use crate::cmd::{done, emit, parse_size, refused, size};
use crate::table;

#[derive(Subcommand, Debug)]
pub enum RaidCmd {
    /// Make an array (new on blank members; members that hold it are assembled).
    /// Members in slot order: every --path, then every --ram, then every --vfio.
    Create {
        name: String,
        /// concat, raid0 or raid1.
        #[arg(long)]
        level: String,
        /// A file or block device of the host (repeat for each member).
        #[arg(long = "path")]
        paths: Vec<String>,
        /// A RAM member of this size (repeat for each).
        #[arg(long = "ram", value_parser = parse_size)]
        rams: Vec<u64>,
        /// An NVMe SSD bound to vfio-pci (repeat for each).
        #[arg(long = "vfio")]
        vfios: Vec<String>,
        /// RAID0: bytes per strip (default 64KiB).
        #[arg(long, value_parser = parse_size)]
        strip_size: Option<u64>,
        /// RAID1: bytes per write-intent bitmap bit (default 1MiB).
        #[arg(long, value_parser = parse_size)]
        region_size: Option<u64>,
        /// RAID1: bytes per second a resync or rebuild copies at most (0: no limit).
        #[arg(long, value_parser = parse_size)]
        rebuild_rate: Option<u64>,
        /// RAID1: the members are identical already (new files): not zeroed.
        #[arg(long)]
        assume_clean: bool,
        /// RAID1: start without members that cannot be opened.
        #[arg(long)]
        degraded: bool,
        /// Block size of file and RAM members: 512 or 4096.
        #[arg(long)]
        block_size: Option<u32>,
        /// File members through the page cache (no O_DIRECT).
        #[arg(long)]
        buffered: bool,
    },
    List,
    /// An array's members, their states and recovery progress.
    Show {
        name: String,
    },
    /// RAID1: mark a member faulty (MEMBER: its device, or #SLOT).
    Fail {
        name: String,
        member: String,
    },
    /// RAID1: take a faulty member out of its slot.
    Remove {
        name: String,
        member: String,
    },
    /// RAID1: bring a faulty member back (resynced from the bitmap).
    Readd {
        name: String,
        member: String,
    },
    /// RAID1: a new file or block device in a free slot, rebuilt while serving.
    Add {
        name: String,
        path: String,
    },
    /// RAID1: bytes per second a recovery copies at most (0: no limit).
    Rate {
        name: String,
        #[arg(value_parser = parse_size)]
        bytes_per_second: u64,
    },
    /// Delete an array nothing uses (its members keep their data and superblocks).
    Delete {
        name: String,
    },
}

fn members_cell(r: &pb::Raid) -> String {
    r.members
        .iter()
        .map(|m| {
            let dev = if m.device.is_empty() { "-" } else { &m.device };
            match &m.recovery {
                Some(x) => format!(
                    "{dev}:{}({} {}/{})",
                    m.state,
                    x.kind,
                    size(x.copied_bytes),
                    size(x.total_bytes)
                ),
                None => format!("{dev}:{}", m.state),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn raids_table(rs: &[pb::Raid]) {
    table::print(
        &["NAME", "LEVEL", "STATE", "SIZE", "MEMBERS", "USED BY"],
        &rs.iter()
            .map(|r| {
                vec![
                    r.name.clone(),
                    r.level.clone(),
                    r.state.clone(),
                    size(r.num_blocks * u64::from(r.block_size)),
                    members_cell(r),
                    if r.users.is_empty() {
                        "-".into()
                    } else {
                        r.users.join(",")
                    },
                ]
            })
            .collect::<Vec<_>>(),
    );
}

fn summary(r: &pb::Raid) {
    println!(
        "array {} ({}): {}, {}, members {}",
        r.name,
        r.level,
        r.state,
        size(r.num_blocks * u64::from(r.block_size)),
        members_cell(r)
    );
}

pub async fn run(j: bool, ch: Channel, c: &RaidCmd) -> Result<(), String> {
    use pb::raid_member::Device;
    let mut api = RaidsClient::new(ch.clone());
    let member = |name: &String, member: &String| pb::RaidMemberRequest {
        name: name.clone(),
        member: member.clone(),
    };
    let r = match c {
        RaidCmd::Create {
            name,
            level,
            paths,
            rams,
            vfios,
            strip_size,
            region_size,
            rebuild_rate,
            assume_clean,
            degraded,
            block_size,
            buffered,
        } => {
            let members = paths
                .iter()
                .map(|p| Device::Path(p.clone()))
                .chain(rams.iter().map(|b| Device::RamBytes(*b)))
                .chain(vfios.iter().map(|a| Device::Vfio(a.clone())))
                .map(|d| pb::RaidMember { device: Some(d) })
                .collect();
            api.create_raid(pb::CreateRaidRequest {
                name: name.clone(),
                level: level.clone(),
                members,
                strip_size_bytes: *strip_size,
                region_size_bytes: *region_size,
                rebuild_rate_bytes: *rebuild_rate,
                degraded: *degraded,
                assume_clean: *assume_clean,
                block_size: *block_size,
                direct: buffered.then_some(false),
            })
            .await
        }
        RaidCmd::List => {
            let l = api
                .list_raids(pb::ListRaidsRequest {})
                .await
                .map_err(refused)?
                .into_inner();
            return emit(j, &l.raids, |r| raids_table(r));
        }
        RaidCmd::Show { name } => {
            let r = api
                .get_raid(pb::GetRaidRequest { name: name.clone() })
                .await
                .map_err(refused)?
                .into_inner();
            return emit(j, &r, |r| {
                summary(r);
                for m in &r.members {
                    let rec = m.recovery.as_ref().map_or(String::new(), |x| {
                        format!(
                            " {} {} of {} (region {}/{})",
                            x.kind,
                            size(x.copied_bytes),
                            size(x.total_bytes),
                            x.cursor_region,
                            x.regions
                        )
                    });
                    println!(
                        "  slot {} {} {} member {}{rec}",
                        m.slot,
                        if m.device.is_empty() { "-" } else { &m.device },
                        m.state,
                        m.member_uuid
                    );
                }
                if r.level == "raid1" {
                    println!(
                        "  bitmap: {}/{} regions dirty, {} per region; {} copied in {} recoveries; rebuild rate {}",
                        r.dirty_regions,
                        r.regions,
                        size(r.region_bytes),
                        size(r.copied_bytes_total),
                        r.recoveries,
                        if r.rebuild_rate_bytes == 0 { "unlimited".to_string() } else { format!("{}/s", size(r.rebuild_rate_bytes)) }
                    );
                }
                if !r.users.is_empty() {
                    println!("  used by {}", r.users.join(", "));
                }
            });
        }
        RaidCmd::Fail { name, member: m } => api.fail_raid_member(member(name, m)).await,
        RaidCmd::Remove { name, member: m } => api.remove_raid_member(member(name, m)).await,
        RaidCmd::Readd { name, member: m } => api.readd_raid_member(member(name, m)).await,
        RaidCmd::Add { name, path } => {
            api.add_raid_member(pb::AddRaidMemberRequest {
                name: name.clone(),
                path: path.clone(),
            })
            .await
        }
        RaidCmd::Rate {
            name,
            bytes_per_second,
        } => {
            api.set_rebuild_rate(pb::SetRebuildRateRequest {
                name: name.clone(),
                bytes_per_second: *bytes_per_second,
            })
            .await
        }
        RaidCmd::Delete { name } => {
            BlockDevicesClient::new(ch)
                .delete_block_device(pb::DeleteBlockDeviceRequest { name: name.clone() })
                .await
                .map_err(refused)?;
            done(j, &format!("array {name} deleted"));
            return Ok(());
        }
    };
    let r = r.map_err(refused)?.into_inner();
    emit(j, &r, summary)
}
