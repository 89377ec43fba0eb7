//! The management API of `lightpool-target`: gRPC, one service per resource, generated
//! from the `.proto` files in `proto/lightpool/v1/` (versioned with the code; the
//! package is `lightpool.v1`). The target serves it on a Unix socket, and optionally
//! on TCP with mutual TLS ([`tls`]); the `lightpool` CLI and the control plane are
//! clients ([`connect`], [`connect_tls`]).
//!
//! Errors are gRPC status codes with a message that says what to change:
//! `NOT_FOUND` (an unknown name), `ALREADY_EXISTS` (a duplicate), `INVALID_ARGUMENT` (a
//! value out of range or malformed), `FAILED_PRECONDITION` (the object is in use, or
//! the operation cannot be done in the target's present state), `RESOURCE_EXHAUSTED`
//! (not enough memory or pool space), `UNAVAILABLE` (an address in use, a target
//! handing over), `DATA_LOSS` (a pool's check found corrupt metadata).

pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("lightpool.v1");
}

pub mod socket;
pub mod tls;

pub use tls::{connect_tls, ClientTls};

use std::path::PathBuf;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// A channel to the target's API on the Unix socket `path`.
pub async fn connect(path: impl Into<PathBuf>) -> Result<Channel, tonic::transport::Error> {
    let path = path.into();
    // The URI is not used to connect (the connector dials the socket); it must parse.
    Endpoint::from_static("http://lightpool.invalid")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
}
