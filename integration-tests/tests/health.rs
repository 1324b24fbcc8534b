//! `/health/live` and `/health/ready` through the real broker and registry: ready once
//! the stage has partitions and reaches both, not ready (naming why) when the registry
//! goes away.

use integration_tests::*;

/// Status and body of `GET url`; status 0 while nothing listens.
fn get(runtime: &tokio::runtime::Runtime, url: &str) -> (u16, String) {
    runtime.block_on(async {
        match reqwest::get(url).await {
            Ok(response) => (response.status().as_u16(), response.text().await.unwrap_or_default()),
            Err(_) => (0, String::new()),
        }
    })
}

#[test]
fn ready_means_assigned_with_broker_and_registry_reachable() {
    let runtime = runtime();
    let stack = Stack::start();
    let mut pipeline = Pipeline::new(&stack, "transactional");
    let index = pipeline.start("quire-validator", "0");
    let port = pipeline.services[index].metrics_port.expect("port");
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    eventually(WAIT, "the endpoint to answer", || (get(&runtime, &url("/health/live")).0 == 200).then_some(())).unwrap();
    let ready = eventually(WAIT, "ready", || {
        let (status, body) = get(&runtime, &url("/health/ready"));
        (status == 200).then_some(body)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", pipeline.logs()));
    let ready: serde_json::Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(ready, serde_json::json!({"ready": true, "assigned": true, "broker": "ok", "registry": "ok"}));

    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(stack.dir.path().join("stack.json")).unwrap()).unwrap();
    let registry_pid = state["registry_pid"].as_u64().expect("registry pid").to_string();
    assert!(std::process::Command::new("kill").args(["-9", &registry_pid]).status().unwrap().success());
    let not_ready = eventually(WAIT, "not ready without the registry", || {
        let (status, body) = get(&runtime, &url("/health/ready"));
        (status == 503).then_some(body)
    })
    .unwrap();
    let not_ready: serde_json::Value = serde_json::from_str(&not_ready).unwrap();
    assert_eq!((not_ready["ready"].as_bool(), not_ready["broker"].as_str()), (Some(false), Some("ok")), "{not_ready}");
    assert!(not_ready["registry"].as_str().unwrap().starts_with("unreachable: "), "{not_ready}");
    assert_eq!(get(&runtime, &url("/health/live")).0, 200, "live is about the process only");
}
