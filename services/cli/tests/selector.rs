//! `optikon selector`: checking selectors needs no hub and no cluster.

use std::process::Command;

fn optikon(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_optikon"))
        .args(args)
        // Nothing listens here: the selector commands must not try to connect.
        .env("OPTIKON_NATS_URL", "nats://127.0.0.1:1")
        .output()
        .expect("run optikon");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    )
}

#[test]
fn parse_prints_the_canonical_form() {
    let (code, out, _) = optikon(&["selector", "parse", "tier in (store,edge), !canary"]);
    assert_eq!((code, out.as_str()), (0, "!canary,tier in (edge,store)"));
}

#[test]
fn parse_errors_exit_2_and_say_where() {
    let (code, _, err) = optikon(&["selector", "parse", "tier in (edge"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("tier in (edge") && err.contains("position"),
        "{err}"
    );
}

#[test]
fn match_and_no_match() {
    let (code, out, _) = optikon(&[
        "selector",
        "match",
        "Region=Europe",
        "--labels",
        "Region=Europe,ID=123",
    ]);
    assert_eq!((code, out.as_str()), (0, "match"));
    let (code, out, _) = optikon(&[
        "selector",
        "match",
        "Region=Asia",
        "--labels",
        "Region=Europe",
    ]);
    assert_eq!((code, out.as_str()), (1, "no match"));
    let (code, out, _) = optikon(&[
        "selector",
        "match",
        "!canary,tier in (edge,store)",
        "--labels",
        "tier=edge",
    ]);
    assert_eq!((code, out.as_str()), (0, "match"));
    let (code, _, err) = optikon(&["selector", "match", "a=b", "--labels", "bad key=1"]);
    assert_eq!(code, 2, "{err}");
}
