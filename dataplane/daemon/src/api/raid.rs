//! The Raids service: arrays made at run time (through the registry, as a `[[raid]]`
//! section, so that `config save` writes them back and a hot upgrade hands them over
//! like configured ones) and their members managed while they serve.

use std::path::PathBuf;

use lightpool_api::v1 as pb;
use lightpool_api::v1::raids_server;
use lightpool_raid::RaidStatus;
use tonic::{Request, Response, Status};

use super::service::Api;
use crate::config::format_size;
use crate::manage::raid::{array, MemberOp};
use crate::manage::{DeviceSpec, ManageError};
use crate::raid::{MemberSection, RaidSection};
use crate::Running;

type Res<T> = Result<Response<T>, Status>;

fn raid_msg(run: &Running, st: RaidStatus) -> pb::Raid {
    let users = run
        .mgmt
        .registry
        .get(&st.name)
        .map(|e| run.users_of(&e.bdev))
        .unwrap_or_default();
    pb::Raid {
        uuid: st.uuid,
        level: st.level.to_string(),
        state: st.state.name().to_string(),
        block_size: st.block_size,
        num_blocks: st.num_blocks,
        members: st
            .members
            .into_iter()
            .map(|m| pb::RaidMemberStatus {
                slot: m.slot as u32,
                device: m.device.unwrap_or_default(),
                member_uuid: m.member_uuid,
                state: m.state.name().to_string(),
                recovery: m.recovery.map(|r| pb::RaidRecovery {
                    kind: r.kind.to_string(),
                    copied_bytes: r.copied_bytes,
                    total_bytes: r.total_bytes,
                    cursor_region: r.cursor_region,
                    regions: r.regions,
                }),
            })
            .collect(),
        region_bytes: st.region_bytes,
        regions: st.regions,
        dirty_regions: st.dirty_regions,
        copied_bytes_total: st.copied_bytes_total,
        recoveries: st.recoveries,
        rebuild_rate_bytes: st.rebuild_rate,
        users,
        name: st.name,
    }
}

fn get(run: &Running, name: &str) -> Result<pb::Raid, ManageError> {
    Ok(raid_msg(run, array(name)?.status()))
}

/// The `[[raid]]` section a request describes, checked as the configuration's is (an
/// error names the request's field).
fn section(r: &pb::CreateRaidRequest) -> Result<RaidSection, ManageError> {
    use pb::raid_member::Device;
    let mut s = RaidSection {
        name: r.name.clone(),
        level: r.level.clone(),
        devices: Vec::new(),
        members: Vec::new(),
        strip_size: r.strip_size_bytes.map(format_size),
        region_size: r.region_size_bytes.map(format_size),
        rebuild_rate: r.rebuild_rate_bytes.map(format_size),
        bitmap_clear_delay_ms: None,
        degraded: r.degraded,
        assume_clean: r.assume_clean,
        block_size: r.block_size,
        direct: r.direct,
    };
    for (i, m) in r.members.iter().enumerate() {
        let table = |ram: Option<String>, vfio: Option<String>| MemberSection {
            ram,
            file: None,
            vfio,
            vfio_nsid: None,
            hugepages: false,
        };
        match &m.device {
            // Paths first, as the section lists them: the members' order is the
            // request's only when paths come before RAM and VFIO members.
            Some(Device::Path(p)) if s.members.is_empty() => s.devices.push(PathBuf::from(p)),
            Some(Device::Path(p)) => s.members.push(MemberSection {
                file: Some(PathBuf::from(p)),
                ..table(None, None)
            }),
            Some(Device::RamBytes(b)) => s.members.push(table(Some(b.to_string()), None)),
            Some(Device::Vfio(a)) => s.members.push(table(None, Some(a.clone()))),
            None => {
                return Err(ManageError::Invalid(format!(
                    "members[{i}]: say what the member is: path, ram_bytes or vfio"
                )))
            }
        }
    }
    crate::raid::validate(std::slice::from_ref(&s)).map_err(|e| {
        // The configuration's key `raid[0].X` is the request's field X.
        let field = e.key.strip_prefix("raid[0].").unwrap_or(&e.key);
        let field = match field {
            "devices" => "members".to_string(),
            f => f.replace("member[", "members["),
        };
        ManageError::Invalid(format!("{field}: {}", e.reason))
    })?;
    Ok(s)
}

#[tonic::async_trait]
impl raids_server::Raids for Api {
    async fn create_raid(&self, r: Request<pb::CreateRaidRequest>) -> Res<pb::Raid> {
        let r = r.into_inner();
        let s = section(&r).map_err(super::convert::status_of)?;
        let name = r.name;
        let out = self
            .blocking(move |run| {
                crate::config::check_device_name(&name).map_err(ManageError::Invalid)?;
                if run.mgmt.registry.get(&name).is_some() {
                    return Err(ManageError::Exists(format!(
                        "a block device named {name:?} exists already: pick another name"
                    )));
                }
                run.create_bdev(&name, DeviceSpec::Raid(Box::new(s)))
                    .map_err(|e| match e {
                        // The section was checked: what is left is a member that
                        // cannot be opened or joined.
                        ManageError::Invalid(m) => ManageError::InUse(m),
                        e => e,
                    })?;
                get(run, &name)
            })
            .await?;
        Ok(Response::new(out))
    }

    async fn list_raids(&self, _: Request<pb::ListRaidsRequest>) -> Res<pb::ListRaidsResponse> {
        let raids = self
            .blocking(|run| {
                let mut v: Vec<pb::Raid> = crate::raid::registry()
                    .list()
                    .into_iter()
                    .map(|a| raid_msg(run, a.status()))
                    .collect();
                v.sort_by(|a, b| a.name.cmp(&b.name));
                Ok(v)
            })
            .await?;
        Ok(Response::new(pb::ListRaidsResponse { raids }))
    }

    async fn get_raid(&self, r: Request<pb::GetRaidRequest>) -> Res<pb::Raid> {
        let name = r.into_inner().name;
        Ok(Response::new(
            self.blocking(move |run| get(run, &name)).await?,
        ))
    }

    async fn fail_raid_member(&self, r: Request<pb::RaidMemberRequest>) -> Res<pb::Raid> {
        self.member(r.into_inner(), |m| MemberOp::Fail(m)).await
    }

    async fn remove_raid_member(&self, r: Request<pb::RaidMemberRequest>) -> Res<pb::Raid> {
        self.member(r.into_inner(), |m| MemberOp::Remove(m)).await
    }

    async fn readd_raid_member(&self, r: Request<pb::RaidMemberRequest>) -> Res<pb::Raid> {
        self.member(r.into_inner(), |m| MemberOp::Readd(m)).await
    }

    async fn add_raid_member(&self, r: Request<pb::AddRaidMemberRequest>) -> Res<pb::Raid> {
        let r = r.into_inner();
        if r.path.is_empty() {
            return Err(Status::invalid_argument(
                "path: give the file or block device to add",
            ));
        }
        let out = self
            .blocking(move |run| {
                run.raid_member(&r.name, MemberOp::Add(std::path::Path::new(&r.path)))?;
                get(run, &r.name)
            })
            .await?;
        Ok(Response::new(out))
    }

    async fn set_rebuild_rate(&self, r: Request<pb::SetRebuildRateRequest>) -> Res<pb::Raid> {
        let r = r.into_inner();
        let out = self
            .blocking(move |run| {
                array(&r.name)?
                    .set_rebuild_rate(r.bytes_per_second)
                    .map_err(crate::manage::raid::raid_error)?;
                get(run, &r.name)
            })
            .await?;
        Ok(Response::new(out))
    }
}

impl Api {
    async fn member(
        &self,
        r: pb::RaidMemberRequest,
        op: fn(&str) -> MemberOp<'_>,
    ) -> Res<pb::Raid> {
        if r.member.is_empty() {
            return Err(Status::invalid_argument(
                "member: name the member's device, or its slot as #N",
            ));
        }
        let out = self
            .blocking(move |run| {
                run.raid_member(&r.name, op(&r.member))?;
                get(run, &r.name)
            })
            .await?;
        Ok(Response::new(out))
    }
}
