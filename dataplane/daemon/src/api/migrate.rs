//! The Migrations service: live migration on the source node (`manage::migrate`).

use lightpool_api::v1 as pb;
use lightpool_api::v1::migrations_server;
use lightpool_migrate::{MigrateOptions, Progress};
use tonic::{Request, Response, Status};

use super::service::Api;
use crate::manage::migrate::{self, Destination, Entry};
use crate::manage::ManageError;

type Res<T> = Result<Response<T>, Status>;

fn msg(e: &Entry, p: Progress) -> pb::Migration {
    pb::Migration {
        nqn: e.nqn.clone(),
        nsid: e.nsid,
        dest_address: e.dest.addr.to_string(),
        dest_nqn: e.dest.nqn.clone(),
        dest_nsid: e.dest.nsid,
        state: p.state.name().to_string(),
        round: p.round,
        copied_bytes: p.copied_bytes,
        total_bytes: p.total_bytes,
        dirty_bytes: p.dirty_bytes,
        pause_us: p.pause.map(|d| d.as_micros() as u64),
        elapsed_ms: p.elapsed.as_millis() as u64,
        eta_ms: p.eta.map(|d| d.as_millis() as u64),
        error: p.error,
        throttled: p.throttled,
    }
}

#[tonic::async_trait]
impl migrations_server::Migrations for Api {
    async fn start_migration(&self, r: Request<pb::StartMigrationRequest>) -> Res<pb::Migration> {
        let r = r.into_inner();
        let addr = r.dest_address.parse().map_err(|_| {
            Status::invalid_argument(format!(
                "dest_address {:?} is not HOST:PORT (an IP address and a port)",
                r.dest_address
            ))
        })?;
        if r.dest_nqn.is_empty() || r.dest_nsid == 0 {
            return Err(Status::invalid_argument(
                "give the destination's subsystem (dest_nqn) and namespace (dest_nsid)",
            ));
        }
        let mut o = MigrateOptions::default();
        if let Some(v) = r.region_size_bytes {
            o.region_bytes = v;
        }
        if let Some(v) = r.rate_limit_bytes {
            o.rate_limit = v;
        }
        if let Some(v) = r.max_rounds {
            o.max_rounds = v.max(1);
        }
        if let Some(v) = r.final_dirty_bytes {
            o.final_dirty_bytes = v;
        }
        let dest = Destination {
            addr,
            nqn: r.dest_nqn,
            nsid: r.dest_nsid,
        };
        let (nqn, nsid) = (r.nqn, r.nsid);
        let out = self
            .blocking(move |run| {
                run.start_migration(&nqn, nsid, dest, o, None)?;
                let (e, p) = migrate::get(&nqn, nsid)?;
                Ok(msg(&e, p))
            })
            .await?;
        Ok(Response::new(out))
    }

    async fn get_migration(&self, r: Request<pb::GetMigrationRequest>) -> Res<pb::Migration> {
        let r = r.into_inner();
        let (e, p) = migrate::get(&r.nqn, r.nsid).map_err(super::convert::status_of)?;
        Ok(Response::new(msg(&e, p)))
    }

    async fn list_migrations(
        &self,
        _: Request<pb::ListMigrationsRequest>,
    ) -> Res<pb::ListMigrationsResponse> {
        let migrations = migrate::all()
            .into_iter()
            .map(|(e, p)| msg(&e, p))
            .collect();
        Ok(Response::new(pb::ListMigrationsResponse { migrations }))
    }

    async fn stop_migration(&self, r: Request<pb::StopMigrationRequest>) -> Res<pb::Migration> {
        let r = r.into_inner();
        let out = self
            .blocking(move |run| {
                let (e, _) = migrate::get(&r.nqn, r.nsid)?;
                let p = run.stop_migration(&r.nqn, r.nsid)?;
                Ok::<_, ManageError>(msg(&e, p))
            })
            .await?;
        Ok(Response::new(out))
    }
}
