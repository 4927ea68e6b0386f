//! The example manifests in `examples/` stay usable:
//!
//! - every Gateway, Queue, Worker, Sink and Device parses into the operator's types with no field
//!   the types do not know (the types accept unknown fields, so the parsed object is
//!   serialized again and compared with the input: a typo'd field is missing from it) and
//!   passes the operator's own `validate`;
//! - inside each folder (as `kubectl apply -f` sees it) and each kustomization (as
//!   `kubectl apply -k` sees it), per namespace, every Queue, Sink, Gateway, Secret and
//!   ConfigMap a resource or pod refers to exists, with the referenced key (a Device's
//!   generated Secrets count as existing; a subfolder, such as an optional simulator, may
//!   use what its parent folder creates);
//! - the GitOps overlays' patches hit a base resource and give valid resources, using only
//!   the kustomize features kubectl 1.20 (kustomize v2.0.3) has;
//! - every Namespace enforces Pod Security "restricted" and every pod passes it;
//! - the GitOps base is an exact copy of factory-telemetry.
//!
//! `examples/check.sh` renders every kustomization with the real `kubectl kustomize`.

#[path = "examples/devices.rs"]
mod devices;
#[path = "examples/kustomize.rs"]
mod kustomize;
#[path = "examples/pod_security.rs"]
mod pod_security;
#[path = "examples/references.rs"]
mod references;

use devices::check_device;
use kustomize::{all_kustomizations, is_kustomization, patch_files, Kustomization};
use pod_security::{pod_spec_value, restricted_violations};
use references::check_references;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use tributary_operator::build;
use tributary_operator::crd::{ApplicationApi, Device, Gateway, Queue, SecretKeyRef, Sink, Worker};

const GROUP_PREFIX: &str = "tributary.dev/";

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn relative(path: &Path) -> String {
    path.strip_prefix(examples_dir())
        .unwrap_or(path)
        .display()
        .to_string()
}

fn is_manifest(path: &Path) -> bool {
    let yaml = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    );
    yaml && !is_kustomization(path)
}

/// Every file under `dir`, recursively, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let entries =
            std::fs::read_dir(&current).unwrap_or_else(|e| panic!("{}: {e}", current.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The YAML documents of a file as JSON values (empty documents skipped).
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut docs = Vec::new();
    for document in serde_yaml::Deserializer::from_str(&text) {
        let yaml: serde_yaml::Value = serde::Deserialize::deserialize(document)
            .unwrap_or_else(|e| panic!("{}: invalid YAML: {e}", relative(path)));
        if yaml.is_null() {
            continue;
        }
        let json = serde_json::to_value(&yaml)
            .unwrap_or_else(|e| panic!("{}: not JSON-compatible: {e}", relative(path)));
        docs.push(json);
    }
    docs
}

/// A Kubernetes object of an example, with where it came from.
#[derive(Clone, Debug)]
struct Object {
    origin: String,
    value: Value,
}

impl Object {
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or_default()
    }
    fn api_version(&self) -> &str {
        self.value["apiVersion"].as_str().unwrap_or_default()
    }
    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or_default()
    }
    fn namespace(&self) -> &str {
        self.value["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
    }
    fn is_tributary(&self) -> bool {
        self.api_version().starts_with(GROUP_PREFIX)
    }
    fn describe(&self) -> String {
        format!(
            "{} {}/{} ({})",
            self.kind(),
            self.namespace(),
            self.name(),
            self.origin
        )
    }
}

/// The manifests of one file. Documents without `apiVersion` and `kind` (such as a
/// standalone worker config) are not manifests and are left out; half of the pair is an
/// error.
fn objects_of(path: &Path, problems: &mut Vec<String>) -> Vec<Object> {
    let mut objects = Vec::new();
    for (index, value) in documents(path).into_iter().enumerate() {
        let origin = format!("{}#{}", relative(path), index + 1);
        match (value.get("apiVersion"), value.get("kind")) {
            (None, None) => continue,
            (Some(_), Some(_)) => {}
            _ => {
                problems.push(format!("{origin}: has only one of apiVersion and kind"));
                continue;
            }
        }
        objects.push(Object { origin, value });
    }
    objects
}

/// Parses `value` into `K` and reports every input field the parsed object lost or
/// changed: the CRD types ignore unknown fields, so a typo would otherwise pass silently.
fn strict<K: DeserializeOwned + Serialize>(object: &Object) -> Result<K, String> {
    let parsed: K = serde_json::from_value(object.value.clone())
        .map_err(|e| format!("{}: does not parse: {e}", object.describe()))?;
    let back = serde_json::to_value(&parsed)
        .map_err(|e| format!("{}: does not serialize: {e}", object.describe()))?;
    let mut lost = Vec::new();
    lost_fields(&object.value, &back, "", &mut lost);
    if lost.is_empty() {
        Ok(parsed)
    } else {
        Err(format!(
            "{}: fields the {} type does not know (typos?): {}",
            object.describe(),
            object.kind(),
            lost.join(", ")
        ))
    }
}

fn lost_fields(input: &Value, output: &Value, path: &str, lost: &mut Vec<String>) {
    match (input, output) {
        (Value::Object(input), Value::Object(output)) => {
            for (key, value) in input {
                let here = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match output.get(key) {
                    Some(kept) => lost_fields(value, kept, &here, lost),
                    None => lost.push(here),
                }
            }
        }
        (Value::Array(input), Value::Array(output)) if input.len() == output.len() => {
            for (index, (a, b)) in input.iter().zip(output).enumerate() {
                lost_fields(a, b, &format!("{path}[{index}]"), lost);
            }
        }
        (a, b) if a == b => {}
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => {}
        (a, b) => lost.push(format!("{path} ({a} became {b})")),
    }
}

/// The six resource kinds, parsed and validated.
#[derive(Default)]
struct Parsed {
    queues: BTreeMap<String, Queue>,
    gateways: BTreeMap<String, Gateway>,
    workers: BTreeMap<String, Worker>,
    sinks: BTreeMap<String, Sink>,
    devices: BTreeMap<String, Device>,
    apis: BTreeMap<String, ApplicationApi>,
}

/// Strict parsing plus the operator's `validate` of one Tributary object.
fn check_tributary(object: &Object, parsed: &mut Parsed) -> Result<(), String> {
    let invalid = |e: build::BuildError| format!("{}: invalid: {e}", object.describe());
    let name = object.name().to_owned();
    match object.kind() {
        "Queue" => {
            let queue: Queue = strict(object)?;
            build::queue::validate(&queue).map_err(invalid)?;
            parsed.queues.insert(name, queue);
        }
        "Gateway" => {
            let gateway: Gateway = strict(object)?;
            build::gateway::validate(&gateway).map_err(invalid)?;
            parsed.gateways.insert(name, gateway);
        }
        "Device" => {
            let device: Device = strict(object)?;
            check_device(&device).map_err(|e| format!("{}: invalid: {e}", object.describe()))?;
            parsed.devices.insert(name, device);
        }
        "Worker" => {
            let worker: Worker = strict(object)?;
            build::worker::validate(&worker).map_err(invalid)?;
            parsed.workers.insert(name, worker);
        }
        "Sink" => {
            let sink: Sink = strict(object)?;
            // The chart's default settings: internal webhook targets refused.
            build::sink::validate(&sink, &build::sink::SinkPolicy::default()).map_err(invalid)?;
            check_sink_expressions(&sink).map_err(|e| format!("{}: {e}", object.describe()))?;
            parsed.sinks.insert(name, sink);
        }
        "ApplicationApi" => {
            let api: ApplicationApi = strict(object)?;
            build::api::validate(&api).map_err(invalid)?;
            parsed.apis.insert(name, api);
        }
        other => return Err(format!("{}: unknown kind {other}", object.describe())),
    }
    if object.api_version() != "tributary.dev/v1alpha1" {
        return Err(format!(
            "{}: apiVersion must be tributary.dev/v1alpha1",
            object.describe()
        ));
    }
    Ok(())
}

/// The sink's CEL expressions compile. The operator's `validate` leaves them to the worker,
/// which refuses to start on a bad one; an example must not get that far.
fn check_sink_expressions(sink: &Sink) -> Result<(), String> {
    let mut expressions = Vec::new();
    if let Some(postgres) = &sink.spec.postgres {
        for column in &postgres.columns {
            expressions.push((
                format!("spec.postgres.columns[{}]", column.name),
                &column.expr,
            ));
        }
    }
    if let Some(value) = sink.spec.redis.as_ref().and_then(|r| r.value.as_ref()) {
        expressions.push(("spec.redis.value".to_owned(), value));
    }
    for (at, expr) in expressions {
        cel::Program::compile(expr).map_err(|e| format!("{at}: invalid CEL {expr:?}: {e}"))?;
    }
    Ok(())
}

/// Every manifest file, patches excluded, grouped by folder (what `kubectl apply -f DIR`
/// would send).
fn manifests_by_folder() -> (BTreeMap<PathBuf, Vec<Object>>, Vec<String>) {
    let patches = patch_files();
    let mut problems = Vec::new();
    let mut folders: BTreeMap<PathBuf, Vec<Object>> = BTreeMap::new();
    for file in files_under(&examples_dir()) {
        let canonical = file.canonicalize().unwrap_or(file.clone());
        if !is_manifest(&file) || patches.contains(&canonical) {
            continue;
        }
        let folder = file.parent().unwrap_or(Path::new(".")).to_path_buf();
        let objects = objects_of(&file, &mut problems);
        folders.entry(folder).or_default().extend(objects);
    }
    (folders, problems)
}

fn by_namespace(objects: &[Object]) -> BTreeMap<String, Vec<&Object>> {
    let mut groups: BTreeMap<String, Vec<&Object>> = BTreeMap::new();
    for object in objects {
        groups
            .entry(object.namespace().to_owned())
            .or_default()
            .push(object);
    }
    groups
}

fn assert_no_problems(problems: Vec<String>) {
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn example_resources_parse_strictly_and_pass_the_operators_validation() {
    let (folders, mut problems) = manifests_by_folder();
    let mut seen = 0;
    for objects in folders.values() {
        for object in objects.iter().filter(|o| o.is_tributary()) {
            seen += 1;
            if object.namespace().is_empty() {
                problems.push(format!("{}: no metadata.namespace", object.describe()));
            }
            if let Err(problem) = check_tributary(object, &mut Parsed::default()) {
                problems.push(problem);
            }
        }
    }
    assert_no_problems(problems);
    assert!(
        seen >= 20,
        "only {seen} Tributary resources found in examples/"
    );
}

#[test]
fn references_resolve_within_each_folder_and_namespace() {
    let (folders, mut problems) = manifests_by_folder();
    let no_objects = Vec::new();
    for (folder, objects) in &folders {
        // A subfolder (an optional simulator) is applied after its parent folder.
        let parent = folder
            .parent()
            .filter(|parent| *parent != examples_dir())
            .and_then(|parent| folders.get(parent))
            .unwrap_or(&no_objects);
        let context = by_namespace(parent);
        for (namespace, group) in by_namespace(objects) {
            let scope = format!("{} (namespace {namespace})", relative(folder));
            let around = context.get(&namespace).map_or(&[][..], Vec::as_slice);
            problems.extend(check_references(&scope, &group, around));
        }
    }
    assert_no_problems(problems);
}

#[test]
fn kustomizations_use_the_v2_subset_and_render_valid_references() {
    let mut problems = Vec::new();
    for kustomization in all_kustomizations() {
        let rendered = match kustomization.render(0) {
            Ok(objects) => objects,
            Err(problem) => {
                problems.push(problem);
                continue;
            }
        };
        for (namespace, group) in by_namespace(&rendered) {
            let scope = format!("{} (namespace {namespace})", relative(&kustomization.file));
            problems.extend(check_references(&scope, &group, &[]));
        }
    }
    assert_no_problems(problems);
}

#[test]
fn kustomizations_list_every_manifest_of_their_folder() {
    let mut problems = Vec::new();
    for kustomization in all_kustomizations() {
        let listed: BTreeSet<PathBuf> = ["resources", "patchesStrategicMerge"]
            .iter()
            .flat_map(|field| kustomization.list(field))
            .collect();
        let entries = std::fs::read_dir(&kustomization.dir).expect("kustomization folder");
        for entry in entries {
            let path = entry.expect("entry").path();
            if is_manifest(&path) && !listed.contains(&path) {
                problems.push(format!(
                    "{} does not list {}",
                    relative(&kustomization.file),
                    relative(&path)
                ));
            }
        }
    }
    assert_no_problems(problems);
}

#[test]
fn gitops_overlays_patch_the_base_into_their_own_namespace() {
    let dir = examples_dir().join("gitops/overlays");
    for (overlay, namespace, gateway_replicas, max_workers) in [
        ("staging", "factory-staging", 1, 2),
        ("production", "factory-production", 3, 8),
    ] {
        let kustomization = Kustomization::in_dir(&dir.join(overlay))
            .expect("overlay has a kustomization")
            .unwrap_or_else(|e| panic!("{e}"));
        let objects = kustomization.render(0).unwrap_or_else(|e| panic!("{e}"));
        let find = |kind: &str| {
            objects
                .iter()
                .find(|o| o.kind() == kind)
                .unwrap_or_else(|| panic!("{overlay}: no {kind}"))
        };
        assert_eq!(find("Namespace").name(), namespace, "{overlay}");
        for object in objects.iter().filter(|o| o.kind() != "Namespace") {
            assert_eq!(object.namespace(), namespace, "{}", object.describe());
        }
        let gateway: Gateway = strict(find("Gateway")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(gateway.spec.replicas, gateway_replicas, "{overlay}");
        let worker: Worker = strict(find("Worker")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(worker.spec.scaling.max_replicas, max_workers, "{overlay}");
        // The patch merges: the pipeline of the base is still there.
        assert_eq!(worker.spec.pipeline.len(), 3, "{overlay}");
    }
}

#[test]
fn namespaces_enforce_restricted_and_every_pod_passes_it() {
    let (folders, mut problems) = manifests_by_folder();
    let mut pods = 0;
    for objects in folders.values() {
        for object in objects {
            if object.kind() == "Namespace" {
                let label =
                    &object.value["metadata"]["labels"]["pod-security.kubernetes.io/enforce"];
                if label.as_str() != Some("restricted") {
                    problems.push(format!(
                        "{}: needs label pod-security.kubernetes.io/enforce: restricted",
                        object.describe()
                    ));
                }
            }
            if let Some(pod) = pod_spec_value(object) {
                pods += 1;
                problems.extend(restricted_violations(&object.describe(), pod));
            }
        }
    }
    assert_no_problems(problems);
    assert!(pods >= 5, "only {pods} pod templates found");
}

#[test]
fn strict_parsing_reports_misspelled_fields() {
    let object = Object {
        origin: "inline".into(),
        value: serde_json::json!({
            "apiVersion": "tributary.dev/v1alpha1",
            "kind": "Worker",
            "metadata": {"name": "w", "namespace": "n"},
            "spec": {"queue": "q", "sinks": ["s"], "scaling": {"maxReplica": 3}},
        }),
    };
    let error = strict::<Worker>(&object).expect_err("typo found");
    assert!(error.contains("spec.scaling.maxReplica"), "{error}");
}

#[test]
fn gitops_base_is_a_copy_of_factory_telemetry() {
    let base = examples_dir().join("gitops/base");
    let original = examples_dir().join("factory-telemetry");
    let mut copies = 0;
    for file in files_under(&base).into_iter().filter(|f| is_manifest(f)) {
        let name = file.file_name().expect("file name");
        let copy = std::fs::read_to_string(&file).expect("base file");
        let source = std::fs::read_to_string(original.join(name))
            .unwrap_or_else(|e| panic!("factory-telemetry has no {name:?}: {e}"));
        assert!(
            copy == source,
            "{} differs from factory-telemetry; copy it again: cp examples/factory-telemetry/{} {}",
            relative(&file),
            name.to_string_lossy(),
            relative(&base)
        );
        copies += 1;
    }
    let originals = files_under(&original)
        .into_iter()
        .filter(|f| is_manifest(f) && f.parent() == Some(original.as_path()))
        .filter(|f| !f.ends_with("00-namespace.yaml"))
        .count();
    assert_eq!(
        copies, originals,
        "gitops/base misses factory-telemetry files"
    );
}
