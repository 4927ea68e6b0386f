//! The subset of kustomize (v2.0.3, as in kubectl 1.20) the examples use, rendered in
//! memory so the tests can check what `kubectl apply -k` would send. `examples/check.sh`
//! runs the real `kubectl kustomize`.

use super::{documents, examples_dir, files_under, objects_of, relative, Object};
use serde_json::{Map, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// File names kustomize recognises as a kustomization.
pub const KUSTOMIZATION_NAMES: [&str; 3] =
    ["kustomization.yaml", "kustomization.yml", "Kustomization"];
/// The kustomization fields the examples may use: those kustomize v2.0.3 (kubectl 1.20)
/// understands the same way as later versions.
pub const KUSTOMIZE_FIELDS: [&str; 7] = [
    "apiVersion",
    "kind",
    "resources",
    "bases",
    "namespace",
    "commonLabels",
    "patchesStrategicMerge",
];

/// Whether `path` is a kustomization file.
pub fn is_kustomization(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| KUSTOMIZATION_NAMES.contains(&n))
}

/// A kustomization: its folder and parsed content.
pub struct Kustomization {
    /// The folder.
    pub dir: PathBuf,
    /// The kustomization file.
    pub file: PathBuf,
    spec: Map<String, Value>,
}

impl Kustomization {
    /// Parses a kustomization file.
    pub fn load(file: &Path) -> Result<Self, String> {
        let docs = documents(file);
        let [Value::Object(spec)] = docs.as_slice() else {
            return Err(format!("{}: one YAML mapping expected", relative(file)));
        };
        Ok(Kustomization {
            dir: file.parent().unwrap_or(Path::new(".")).to_path_buf(),
            file: file.to_path_buf(),
            spec: spec.clone(),
        })
    }

    /// The kustomization of a folder, if it has one.
    pub fn in_dir(dir: &Path) -> Option<Result<Self, String>> {
        KUSTOMIZATION_NAMES
            .iter()
            .map(|name| dir.join(name))
            .find(|path| path.is_file())
            .map(|path| Self::load(&path))
    }

    /// The paths a list field names, relative to the folder.
    pub fn list(&self, field: &str) -> Vec<PathBuf> {
        self.spec
            .get(field)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|entry| self.dir.join(entry))
            .collect()
    }

    /// The objects `kubectl kustomize` renders for this folder, for the supported subset.
    pub fn render(&self, depth: usize) -> Result<Vec<Object>, String> {
        let here = relative(&self.file);
        if depth > 8 {
            return Err(format!("{here}: bases nest too deep"));
        }
        for field in self.spec.keys() {
            if !KUSTOMIZE_FIELDS.contains(&field.as_str()) {
                return Err(format!(
                    "{here}: field {field} is outside the kustomize subset the examples use \
                     (kubectl 1.20 has kustomize v2.0.3): {KUSTOMIZE_FIELDS:?}"
                ));
            }
        }
        let mut objects = Vec::new();
        for base in self.list("bases") {
            let kustomization = Kustomization::in_dir(&base)
                .ok_or_else(|| format!("{here}: base {} has no kustomization", base.display()))??;
            objects.extend(kustomization.render(depth + 1)?);
        }
        let mut problems = Vec::new();
        for resource in self.list("resources") {
            if resource.is_dir() {
                return Err(format!(
                    "{here}: resources entry {} is a folder; kustomize v2.0.3 wants it under bases",
                    resource.display()
                ));
            }
            let inside = resource.strip_prefix(&self.dir).is_ok_and(|entry| {
                entry
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)))
            });
            if !inside {
                return Err(format!(
                    "{here}: resources entry {} is outside the folder (kustomize v2.0.3 refuses it)",
                    resource.display()
                ));
            }
            if !resource.is_file() {
                return Err(format!(
                    "{here}: resources entry {} is missing",
                    resource.display()
                ));
            }
            objects.extend(objects_of(&resource, &mut problems));
        }
        for patch_file in self.list("patchesStrategicMerge") {
            for patch in objects_of(&patch_file, &mut problems) {
                let target = objects.iter_mut().find(|o| {
                    o.kind() == patch.kind()
                        && o.name() == patch.name()
                        && o.api_version() == patch.api_version()
                });
                let Some(target) = target else {
                    return Err(format!(
                        "{}: patches nothing in the bases",
                        patch.describe()
                    ));
                };
                // Custom resources take a JSON merge patch (maps merge, lists are replaced).
                merge_patch(&mut target.value, &patch.value);
                target.origin = format!("{} + {}", target.origin, patch.origin);
            }
        }
        if let Some(namespace) = self.spec.get("namespace").and_then(Value::as_str) {
            for object in objects.iter_mut().filter(|o| o.kind() != "Namespace") {
                object.value["metadata"]["namespace"] = Value::String(namespace.to_owned());
            }
        }
        if let Some(labels) = self.spec.get("commonLabels").and_then(Value::as_object) {
            // kustomize v2.0.3 adds the labels to `spec.volumeClaimTemplates` as a map when
            // a StatefulSet has no claim templates, which the API server then refuses.
            let broken = objects.iter().find(|o| {
                o.kind() == "StatefulSet" && o.value.pointer("/spec/volumeClaimTemplates").is_none()
            });
            if let Some(statefulset) = broken {
                return Err(format!(
                    "{here}: commonLabels on {} without volumeClaimTemplates renders an invalid \
                     object with kustomize v2.0.3; add `volumeClaimTemplates: []`",
                    statefulset.describe()
                ));
            }
            for object in &mut objects {
                let metadata = &mut object.value["metadata"];
                if !metadata["labels"].is_object() {
                    metadata["labels"] = Value::Object(Map::new());
                }
                for (key, value) in labels {
                    metadata["labels"][key] = value.clone();
                }
            }
        }
        if problems.is_empty() {
            Ok(objects)
        } else {
            Err(problems.join("\n"))
        }
    }
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target) = target {
        for (key, value) in patch {
            if value.is_null() {
                target.remove(key);
            } else {
                merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// Every kustomization under `examples/`.
pub fn all_kustomizations() -> Vec<Kustomization> {
    files_under(&examples_dir())
        .into_iter()
        .filter(|path| is_kustomization(path))
        .map(|path| Kustomization::load(&path).unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

/// Files that are patches of some kustomization (partial objects, not manifests).
pub fn patch_files() -> BTreeSet<PathBuf> {
    all_kustomizations()
        .iter()
        .flat_map(|k| k.list("patchesStrategicMerge"))
        .map(|p| p.canonicalize().unwrap_or(p))
        .collect()
}
