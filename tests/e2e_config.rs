//! The binary's start-up: invalid configuration fails at once with the file, the key and the reason; the example
//! configuration shipped in `deploy/` is valid.

use std::process::Command;

fn fairvox() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fairvox"))
}

#[test]
fn invalid_config_fails_at_start_naming_file_key_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[rtp]\nports = \"30000-20000\"\n").unwrap();
    let out = fairvox().args(["serve", "--config"]).arg(&path).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("{}: rtp.ports: ", path.display())), "{stderr}");

    std::fs::write(&path, "[[tenants]]\nid = \"a\"\n[[tenants.numbers]]\nnumber = \"+1555\"\napp = \"nope\"\n")
        .unwrap();
    let out = fairvox().args(["check-config", "--config"]).arg(&path).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tenants[0].numbers[0].app: no app named \"nope\""), "{stderr}");

    let out = fairvox().args(["serve", "--config", "/nonexistent/fairvox.toml"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/fairvox.toml: cannot read"));

    let out = fairvox().args(["serve", "--rtp-ports", "5-3"]).output().unwrap();
    assert!(!out.status.success(), "a bad override is refused too");
}

#[test]
fn shipped_example_config_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/fairvox.example.toml");
    let out = fairvox().args(["check-config", "--config", example]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
