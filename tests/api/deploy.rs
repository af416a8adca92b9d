//! The deployment files in `deploy/` hold together: the Kubernetes manifests parse and keep their
//! invariants (non-root, probes, requests, two schedulers, the HPA on ingest), the ConfigMap's
//! configuration passes `config check` with the example Secret's variables, the systemd units run
//! real roles as an unprivileged user, and the image runs as the same non-root user.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

const ROLES: [&str; 5] = ["serve", "ingest", "worker", "scheduler", "migrate"];
const USER_ID: i64 = 10001;

fn manifests() -> Vec<Value> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let mut documents = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = Value::deserialize(document).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            documents.push(value);
        }
    }
    documents
}

fn find<'a>(all: &'a [Value], kind: &str, name: &str) -> &'a Value {
    all.iter().find(|d| d["kind"] == kind && d["metadata"]["name"] == name).unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn the_kubernetes_manifests_keep_their_invariants() {
    let all = manifests();
    let workloads: Vec<&Value> = all.iter().filter(|d| d["kind"] == "Deployment" || d["kind"] == "Job").collect();
    assert_eq!(workloads.len(), 4, "three Deployments and the migration Job");
    for workload in &workloads {
        let name = workload["metadata"]["name"].as_str().unwrap();
        let pod = &workload["spec"]["template"];
        let security = &pod["spec"]["securityContext"];
        assert_eq!((security["runAsNonRoot"].as_bool(), security["runAsUser"].as_i64()), (Some(true), Some(USER_ID)), "{name}");
        if workload["kind"] == "Deployment" {
            let selector = workload["spec"]["selector"]["matchLabels"].as_object().unwrap();
            for (key, value) in selector {
                assert_eq!(&pod["metadata"]["labels"][key], value, "{name}: the selector matches the pod's labels");
            }
        }
        for container in pod["spec"]["containers"].as_array().unwrap() {
            assert!(ROLES.contains(&container["args"][0].as_str().unwrap()), "{name} runs a real role");
            assert_eq!(container["image"], "kommo-pay:latest", "{name}: one image");
            let requests = &container["resources"]["requests"];
            assert!(requests["cpu"].is_string() && requests["memory"].is_string(), "{name} requests resources");
            let security = &container["securityContext"];
            assert_eq!(security["allowPrivilegeEscalation"], false, "{name}");
            assert_eq!(security["readOnlyRootFilesystem"], true, "{name}");
            assert_eq!(container["envFrom"][0]["secretRef"]["name"], "kommo-pay", "{name} reads the Secret");
            assert_eq!(container["volumeMounts"][0]["mountPath"], "/etc/kommo-pay", "{name} mounts the configuration where the image looks");
            let ports: Vec<&str> = container["ports"].as_array().map(|p| p.iter().map(|p| p["name"].as_str().unwrap()).collect()).unwrap_or_default();
            for probe in ["livenessProbe", "readinessProbe"] {
                if let Some(port) = container[probe]["httpGet"]["port"].as_str() {
                    assert!(ports.contains(&port), "{name}: the {probe} uses a declared port");
                }
            }
        }
    }

    let ingest = &find(&all, "Deployment", "kommo-pay-ingest")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        (ingest["livenessProbe"]["httpGet"]["path"].as_str(), ingest["readinessProbe"]["httpGet"]["path"].as_str()),
        (Some("/healthz"), Some("/readyz"))
    );
    for role in ["worker", "scheduler"] {
        let container = &find(&all, "Deployment", &format!("kommo-pay-{role}"))["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz", "{role} is probed on its metrics listener");
    }
    assert_eq!(find(&all, "Deployment", "kommo-pay-scheduler")["spec"]["replicas"], 2, "a leader and a stand-by");
    assert_eq!(find(&all, "Job", "kommo-pay-migrate")["spec"]["template"]["spec"]["containers"][0]["args"][0], "migrate");
    let hpa = find(&all, "HorizontalPodAutoscaler", "kommo-pay-ingest");
    assert_eq!(
        (hpa["spec"]["scaleTargetRef"]["kind"].as_str(), hpa["spec"]["scaleTargetRef"]["name"].as_str()),
        (Some("Deployment"), Some("kommo-pay-ingest"))
    );
    let service = find(&all, "Service", "kommo-pay-ingest");
    assert_eq!(service["spec"]["selector"]["app.kubernetes.io/component"], "ingest");

    let kustomization = find_kind(&all, "Kustomization");
    for resource in kustomization["resources"].as_array().unwrap() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes").join(resource.as_str().unwrap());
        assert!(file.exists(), "{} is listed and exists", file.display());
    }
}

fn find_kind<'a>(all: &'a [Value], kind: &str) -> &'a Value {
    all.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind}"))
}

#[test]
fn the_configmaps_configuration_is_valid_with_the_example_secrets_variables() {
    let all = manifests();
    let text = find(&all, "ConfigMap", "kommo-pay")["data"]["kommo-pay.toml"].as_str().unwrap().to_owned();
    let secret: HashMap<String, String> = serde_json::from_value(find(&all, "Secret", "kommo-pay")["stringData"].clone()).unwrap();
    let config =
        kommo_pay_core::config::Config::parse(&text, "deploy/kubernetes/configmap.yaml", &|name| secret.get(name).cloned()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.server.listen.port(), 8080, "the http port the manifests declare");
    assert_eq!(config.metrics.listen.map(|a| a.port()), Some(9090), "the metrics port the manifests declare");
    assert!(!config.database.migrate_on_start, "the migration Job migrates, not every pod at once");
}

#[test]
fn the_systemd_units_run_real_roles_unprivileged() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/systemd");
    let mut roles = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let value = |key: &str| text.lines().find_map(|l| l.strip_prefix(&format!("{key}="))).unwrap_or_else(|| panic!("{}: no {key}", path.display()));
        assert_eq!(value("User"), "kommo-pay", "{}", path.display());
        assert_eq!(value("NoNewPrivileges"), "yes");
        let exec: Vec<&str> = value("ExecStart").split_whitespace().collect();
        assert_eq!(exec[0], "/usr/local/bin/kommo-pay");
        assert!(ROLES.contains(&exec[1]), "{}: {exec:?}", path.display());
        if exec[1] != "migrate" {
            assert_eq!(value("Requires"), "kommo-pay-migrate.service", "{} waits for the schema", path.display());
        }
        roles.push(exec[1].to_owned());
    }
    roles.sort();
    assert_eq!(roles, ["ingest", "migrate", "scheduler", "worker"]);
}

#[test]
fn the_image_is_built_in_stages_and_runs_as_the_same_unprivileged_user() {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/Dockerfile")).unwrap();
    assert!(text.lines().filter(|l| l.starts_with("FROM ")).count() >= 2, "multi-stage");
    assert!(text.lines().any(|l| l == format!("USER {USER_ID}:{USER_ID}")), "non-root, the user the manifests expect");
    assert!(text.contains("ENV KOMMO_PAY_CONFIG=/etc/kommo-pay/kommo-pay.toml"));
    assert!(text.contains("cargo build --release --locked"), "built from the committed Cargo.lock");
}
