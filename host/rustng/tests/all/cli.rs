use std::process::Command;

use crate::harness::binary;

fn validate(yaml: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, yaml).expect("write");
    let out = Command::new(binary())
        .args(["validate", "-c"])
        .arg(&path)
        .output()
        .expect("run validate");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_minimal_config_from_the_issue_validates() {
    let (ok, stdout, stderr) = validate(
        "workers: 1
listeners:
  - name: main
    address: 127.0.0.1:8080
    default_cluster: backend
clusters:
  - name: backend
    endpoints:
      - address: 127.0.0.1:9000
",
    );
    assert!(ok, "{stderr}");
    assert!(stdout.ends_with(": ok\n"), "{stdout}");
}

#[test]
fn validate_prints_every_error_with_its_path_and_exits_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.yaml");
    std::fs::write(
        &path,
        "listeners:
  - name: main
    address: 127.0.0.1:8080
    default_cluster: nope
clusters:
  - name: backend
    endpoints:
      - address: 127.0.0.1:9000
      - address: x
",
    )
    .expect("write");
    let out = Command::new(binary())
        .args(["validate", "-c"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.lines().collect::<Vec<_>>(),
        vec![
            "listeners[0].default_cluster: unknown cluster \"nope\"",
            "clusters[0].endpoints[1].address: invalid socket address \"x\"",
        ]
    );
}

#[test]
fn unknown_fields_and_unreadable_files_are_errors() {
    let (ok, _, stderr) = validate("listeners: []\nbogus: 1\n");
    assert!(!ok);
    assert!(stderr.starts_with("unknown field `bogus`"), "{stderr}");

    let out = Command::new(binary())
        .args(["validate", "-c", "/nonexistent/rustng.yaml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/rustng.yaml"));
}

#[test]
fn version_and_run_with_a_bad_config() {
    let out = Command::new(binary())
        .arg("--version")
        .output()
        .expect("run");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("rustng {}", env!("CARGO_PKG_VERSION"))
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, "listeners: [{name: a, address: nope}]\n").expect("write");
    let out = Command::new(binary())
        .args(["run", "-c"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("listeners[0].address: invalid socket address \"nope\"")
    );
}

#[test]
fn run_reports_an_address_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.yaml");
    std::fs::write(
        &path,
        format!("listeners: [{{name: a, address: \"{addr}\"}}]\n"),
    )
    .expect("write");
    let out = Command::new(binary())
        .args(["run", "-c"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("listener a: cannot listen on {addr}")),
        "{stderr}"
    );
}
