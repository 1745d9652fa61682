use crate::harness::{cli, cli_with_config};

#[test]
fn the_minimal_config_from_the_issue_validates() {
    let run = cli_with_config(
        "validate",
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
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stdout.ends_with(": ok\n"), "{}", run.stdout);
}

#[test]
fn validate_prints_every_error_with_its_path_and_exits_1() {
    let run = cli_with_config(
        "validate",
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
    );
    assert_eq!(run.code, Some(1));
    assert_eq!(
        run.stderr.lines().collect::<Vec<_>>(),
        vec![
            "listeners[0].default_cluster: unknown cluster \"nope\"",
            "clusters[0].endpoints[1].address: invalid socket address \"x\"",
        ]
    );
}

#[test]
fn an_invalid_log_level_is_caught_by_validate() {
    let run = cli_with_config(
        "validate",
        "log: { level: 'info,[' }\nlisteners: [{name: a, address: '127.0.0.1:1'}]\n",
    );
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr
            .starts_with("log.level: invalid filter \"info,[\""),
        "{}",
        run.stderr
    );
}

#[test]
fn unknown_fields_and_unreadable_files_are_errors() {
    let run = cli_with_config("validate", "listeners: []\nbogus: 1\n");
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.starts_with("unknown field `bogus`"),
        "{}",
        run.stderr
    );

    let run = cli(&["validate", "-c", "/nonexistent/rustng.yaml"]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("cannot read /nonexistent/rustng.yaml"));
}

#[test]
fn version_and_run_with_a_bad_config() {
    let run = cli(&["--version"]);
    assert_eq!(run.code, Some(0));
    assert_eq!(
        run.stdout.trim(),
        format!("rustng {}", env!("CARGO_PKG_VERSION"))
    );

    let run = cli_with_config("run", "listeners: [{name: a, address: nope}]\n");
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr
            .contains("listeners[0].address: invalid socket address \"nope\""),
        "{}",
        run.stderr
    );
}

#[test]
fn run_reports_an_address_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let run = cli_with_config(
        "run",
        &format!("listeners: [{{name: a, address: \"{addr}\"}}]\n"),
    );
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr
            .contains(&format!("listener a: cannot listen on {addr}")),
        "{}",
        run.stderr
    );
}

#[test]
fn the_shipped_examples_validate() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    for name in ["quickstart.yaml", "filter.yaml"] {
        let path = examples.join(name);
        let run = cli(&["validate", "-c", path.to_str().expect("utf-8")]);
        assert_eq!(run.code, Some(0), "{name}: {}", run.stderr);
    }
}
