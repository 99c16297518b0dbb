//! The `kpc` binary end to end: exit statuses and where output goes.

use std::process::Command;

fn kpc(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kpc")).args(args).output().expect("run kpc")
}

#[test]
fn check_succeeds_with_the_parameter_table_on_stdout() {
    let out = kpc(&["check", "examples/digits_mlp.train"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("fc1.weight") && stdout.contains("[128, 64]"), "{stdout}");
    assert!(stdout.contains("bn1.num_batches_tracked"), "{stdout}");
    assert!(out.stderr.is_empty());
}

#[test]
fn a_user_error_exits_1_with_a_located_diagnostic_on_stderr() {
    let out = kpc(&["check", "tests/golden/diagnostics/unknown_layer.train"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tests/golden/diagnostics/unknown_layer.train:11:19"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn a_missing_file_exits_1() {
    let out = kpc(&["check", "no/such/file.train"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read `no/such/file.train`"));
}

#[test]
fn bad_usage_exits_2() {
    assert_eq!(kpc(&[]).status.code(), Some(2));
    assert_eq!(kpc(&["check"]).status.code(), Some(2));
    assert_eq!(kpc(&["frobnicate", "x.train"]).status.code(), Some(2));
    assert_eq!(kpc(&["check", "a.train", "--no-such-flag"]).status.code(), Some(2));
}

#[test]
fn help_exists_for_every_subcommand() {
    let out = kpc(&["check", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Usage: kpc check"));
}
