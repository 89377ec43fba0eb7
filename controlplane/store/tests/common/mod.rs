//! Test support: a fake API server, and the shared objects.
#![allow(dead_code)]

pub mod apiserver;

#[allow(unused_imports)]
pub use lightpool_store::conformance::{pool, volume};
