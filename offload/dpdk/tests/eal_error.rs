//! EAL refusing its arguments is a typed error that says what to change, not a panic;
//! after it, nothing starts EAL again in this process. One test function: EAL's state
//! is per process.

use lightpool_dpdk::{DpdkError, Eal};

#[test]
fn refused_arguments_are_a_typed_error() {
    let args: Vec<String> = [
        "lightpool",
        "--no-pci",
        "--no-huge",
        "--no-shconf",
        "-m",
        "64",
        "--no-such-option",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let e = Eal::init_args(&args).expect_err("EAL refuses an unknown option");
    match &e {
        DpdkError::EalInit { errno, .. } => assert_eq!(*errno, libc::EINVAL, "{e}"),
        other => panic!("{other}"),
    }
    let text = e.to_string();
    assert!(text.starts_with("EAL init failed"), "{text}");
    assert!(text.contains("argument was refused"), "{text}");
    // A NUL byte never reaches EAL.
    let e = Eal::init_args(&["lightpool".into(), "a\0b".into()]).expect_err("NUL");
    assert!(matches!(e, DpdkError::BadArgument(_)), "{e}");
    // EAL starts at most once per process, failed or not.
    let e = Eal::init_args(&args[..6]).expect_err("second init");
    assert!(matches!(e, DpdkError::EalAlreadyInitialised), "{e}");
}
