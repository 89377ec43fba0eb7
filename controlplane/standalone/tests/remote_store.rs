//! The Store conformance suite on `RemoteStore`, over the socket, in front of
//! an embedded store: the CLI and the agents of other nodes see the same
//! semantics as the controller.

use lightpool_standalone::protocol::{serve, RemoteStore};
use lightpool_store::EmbeddedStore;

fn fresh() -> RemoteStore {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path().join("s.redb")).unwrap();
    let sock = dir.path().join("s.sock");
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    tokio::spawn(serve(listener, store));
    // Kept for the test's life: the socket and database live in it.
    std::mem::forget(dir);
    RemoteStore::new(sock)
}

lightpool_store::conformance_tests!(fresh());
