//! The kinds a store holds: cluster-scoped custom resources with a status.

use std::fmt::Debug;

use kube::core::object::HasStatus;
use kube::core::ClusterResourceScope;
use kube::Resource;
use lightpool_model::{Snapshot, StoragePool, Volume, VolumeMigration};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A kind the stores hold.
pub trait Object:
    Resource<DynamicType = (), Scope = ClusterResourceScope>
    + Clone
    + Serialize
    + DeserializeOwned
    + Debug
    + PartialEq
    + Send
    + Sync
    + 'static
{
    /// The status type.
    type Status: Clone
        + Serialize
        + DeserializeOwned
        + Debug
        + PartialEq
        + Default
        + Send
        + Sync
        + 'static;

    /// The status, if any.
    fn status(&self) -> Option<&Self::Status>;

    /// The status, to set.
    fn status_mut(&mut self) -> &mut Option<Self::Status>;
}

macro_rules! object {
    ($($k:ty),*) => {$(
        impl Object for $k {
            type Status = <$k as HasStatus>::Status;
            fn status(&self) -> Option<&Self::Status> {
                HasStatus::status(self)
            }
            fn status_mut(&mut self) -> &mut Option<Self::Status> {
                HasStatus::status_mut(self)
            }
        }
    )*};
}

object!(StoragePool, Volume, Snapshot, VolumeMigration);
