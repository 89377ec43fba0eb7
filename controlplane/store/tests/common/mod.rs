//! Test support: the shared objects.
#![allow(dead_code)]

#[allow(unused_imports)]
pub use lightpool_store::conformance::{pool, volume};
