//! Runs the built `pushwire` binary.

use std::process::Command;

#[test]
fn demo_prints_the_protocol_catalogue_and_exits_zero() {
    let out = Command::new(env!("CARGO_BIN_EXE_pushwire"))
        .arg("demo")
        .output()
        .expect("run pushwire");
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("pushwire protocol version 1"), "{stdout}");
    assert!(stdout.contains("Published"), "{stdout}");
}

#[test]
fn unknown_subcommand_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_pushwire"))
        .arg("no-such-command")
        .output()
        .expect("run pushwire");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
