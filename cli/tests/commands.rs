//! The `sessionfold` command line itself, run as a process. (Besides what it
//! checks, this test makes `cargo test --workspace` build the binary, which
//! the end-to-end tests, the fault suite and the cluster test run.)

#![allow(
    clippy::unwrap_used,
    reason = "in a test, an unwrap that fails is the failure"
)]

use std::process::Command;

const SUBCOMMANDS: [&str; 11] = [
    "dev",
    "ingest",
    "processor",
    "api",
    "dead-letters",
    "send",
    "get",
    "tail",
    "token",
    "rebuild",
    "sessions",
];

fn sessionfold(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sessionfold"))
        .args(args)
        .output()
        .expect("running sessionfold")
}

#[test]
fn every_subcommand_is_listed_and_describes_itself() {
    let help = sessionfold(&["--help"]);
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    for subcommand in SUBCOMMANDS {
        assert!(help.contains(subcommand), "--help lists no {subcommand}");
        let own = sessionfold(&[subcommand, "--help"]);
        assert!(
            own.status.success(),
            "sessionfold {subcommand} --help failed"
        );
        assert!(
            !own.stdout.is_empty(),
            "sessionfold {subcommand} --help is empty"
        );
    }
}

#[test]
fn a_setting_out_of_range_is_refused_before_anything_starts() {
    let refused = sessionfold(&["ingest", "--max-session-id-bytes", "0"]);
    assert_eq!(refused.status.code(), Some(2), "clap's usage error");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--max-session-id-bytes"), "{stderr}");
}
