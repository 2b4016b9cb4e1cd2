//! Issue 12.3: schemathesis (PyPI, installed into the venv by `scripts/test`) generates
//! requests from the daemon's own `/openapi.json` and sends them to a daemon running the demo
//! site's simulators, as an admin: no answer may be a server error or break the document.
//!
//! Every operation runs, the changing ones included (the devices are simulators and the
//! store is a temporary directory, so a generated power-off or booking harms nothing), except
//! the session login and logout: a generated login token is a wrong guess, and guesses block
//! the client by design (see the exclusion below). The run is bounded by examples and time.

use std::time::Duration;

use crate::metrics::{demo_daemon, ADMIN_TOKEN};
use crate::support::python;

const ADMIN: &str = r#"
[[api.tokens]]
name = "schemathesis"
role = "admin"
token_env = "ADMIN_TOKEN"
"#;

/// Examples per operation: enough to reach each route's error paths, few enough that the
/// whole run stays well under two minutes on a shared machine.
const MAX_EXAMPLES: &str = "10";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = demo_daemon(dir.path(), ADMIN).await;
    let url = format!("http://{}/openapi.json", d.api_addr);
    let cli = std::path::Path::new(&python).with_file_name("schemathesis");
    let run = tokio::process::Command::new(cli)
        .args(["run", &url])
        .args(["--checks", "not_a_server_error,response_schema_conformance"])
        .args(["--header", &format!("Authorization: Bearer {ADMIN_TOKEN}")])
        // Its own bearer values would be wrong tokens, and five of those block the client
        // (429) for ever longer: the run would test the limiter instead of the routes.
        .args(["--generation-with-security-parameters", "false"])
        // Login with a generated token is a wrong guess, and guesses slow the client down by
        // design: the rest of the run would see only 429. The login and the limiter are
        // covered by tests/it/api_auth.rs.
        .args(["--exclude-path", "/api/v1/session"])
        .args(["--max-examples", MAX_EXAMPLES])
        // A fixed seed, so a failure here is the same failure on the next run.
        .args(["--seed", "1207"])
        // One worker: hypothesis' lambda introspection is not thread-safe in this version
        // ("AST constructor recursion depth mismatch" as a runtime error under two workers).
        .args(["--workers", "1"])
        .args(["--request-timeout", "20"])
        .args(["--max-time", "90"])
        .arg("--no-color")
        .current_dir(dir.path())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(170), run)
        .await
        .expect("schemathesis finishes")
        .expect("schemathesis runs (pip install -r tests/requirements.txt)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{stdout}\n{stderr}"
    );
    // The summary (phases, operations, cases), for the test log.
    let summary = stdout.find("SUMMARY").map_or("", |i| &stdout[i..]);
    eprintln!("{summary}");
    d.shutdown("test").await;
}
