//! The field reference of the custom resources (`docs/resources.md`), generated from the
//! CRDs' OpenAPI v3 schemas: one table per resource part (`spec`, `status`) listing every
//! field with its type, constraints, default and description.
//!
//! `tributary-operator reference` prints it and `hack/gen-reference.sh` writes it; a unit
//! test fails when the committed page differs from what the CRDs give.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{Map, Value};
use std::fmt::Write;

/// Where the generated page is committed, relative to the repository root.
pub const DOC_PATH: &str = "docs/resources.md";

/// One row of a field table.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    path: String,
    required: bool,
    type_: String,
    default: String,
    description: String,
}

/// Renders the reference page of `crds` (markdown), in the given order.
pub fn render(crds: &[CustomResourceDefinition]) -> String {
    let mut out = String::new();
    out.push_str("# Resource reference\n\n");
    out.push_str(
        "<!-- Generated from the CRD schemas by `tributary-operator reference` \
         (hack/gen-reference.sh). Do not edit by hand. -->\n\n",
    );
    out.push_str(
        "Every field of the Tributary custom resources, as the API server validates them. \
         A field marked *required* must be set whenever its parent object is; a default is \
         filled in by the API server when the field is left out. `kubectl explain \
         <kind>.spec` shows the same descriptions.\n\n",
    );
    for crd in crds {
        let kind = &crd.spec.names.kind;
        let _ = writeln!(out, "- [{kind}](#{})", kind.to_lowercase());
    }
    for crd in crds {
        if !out.ends_with("\n\n") {
            out.push('\n');
        }
        render_crd(&mut out, crd);
    }
    // One final newline, not the blank line the last table ends with.
    while out.ends_with("\n\n") {
        out.pop();
    }
    out
}

fn render_crd(out: &mut String, crd: &CustomResourceDefinition) {
    let names = &crd.spec.names;
    let _ = writeln!(out, "## {}\n", names.kind);
    for version in &crd.spec.versions {
        let schema = version
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .and_then(|s| serde_json::to_value(s).ok())
            .unwrap_or(Value::Null);
        if let Some(description) = schema.get("description").and_then(Value::as_str) {
            let _ = writeln!(out, "{}\n", paragraph(description));
        }
        let mut facts = vec![
            format!("`apiVersion: {}/{}`", crd.spec.group, version.name),
            format!("plural `{}`", names.plural),
            format!("scope {}", crd.spec.scope),
        ];
        let short = names.short_names.clone().unwrap_or_default();
        if !short.is_empty() {
            let short: Vec<String> = short.iter().map(|s| format!("`{s}`")).collect();
            facts.push(format!("short names {}", short.join(", ")));
        }
        let categories = names.categories.clone().unwrap_or_default();
        if !categories.is_empty() {
            let categories: Vec<String> = categories.iter().map(|c| format!("`{c}`")).collect();
            facts.push(format!("categories {}", categories.join(", ")));
        }
        if let Some(subresources) = &version.subresources {
            let mut sub = Vec::new();
            if subresources.status.is_some() {
                sub.push("`status`");
            }
            if subresources.scale.is_some() {
                sub.push("`scale`");
            }
            if !sub.is_empty() {
                facts.push(format!("subresources {}", sub.join(", ")));
            }
        }
        let _ = writeln!(out, "{}.\n", facts.join(" · "));
        let columns = version
            .additional_printer_columns
            .clone()
            .unwrap_or_default();
        if !columns.is_empty() {
            let columns: Vec<String> = columns
                .iter()
                .map(|c| format!("{} (`{}`)", c.name, c.json_path))
                .collect();
            let _ = writeln!(
                out,
                "`kubectl get {}` columns: {}.\n",
                names.plural,
                escape(&columns.join(", "))
            );
        }
        for part in ["spec", "status"] {
            let Some(part_schema) = schema.pointer(&format!("/properties/{part}")) else {
                continue;
            };
            let _ = writeln!(out, "### {} `{part}`\n", names.kind);
            if let Some(description) = part_schema.get("description").and_then(Value::as_str) {
                let _ = writeln!(out, "{}\n", paragraph(description));
            }
            let mut rows = Vec::new();
            walk_children(part, part_schema, &mut rows);
            render_table(out, &rows);
            out.push('\n');
        }
    }
}

fn render_table(out: &mut String, rows: &[Row]) {
    out.push_str("| Field | Type | Default | Description |\n");
    out.push_str("| --- | --- | --- | --- |\n");
    for row in rows {
        let required = if row.required { " *required*" } else { "" };
        let _ = writeln!(
            out,
            "| `{}`{required} | {} | {} | {} |",
            row.path,
            escape(&row.type_),
            escape(&row.default),
            escape(&row.description)
        );
    }
}

/// Adds a row per property of `schema` (and their descendants) under `prefix`.
fn walk_children(prefix: &str, schema: &Value, rows: &mut Vec<Row>) {
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        let required: Vec<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|names| names.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut names: Vec<&String> = properties.keys().collect();
        names.sort();
        for name in names {
            let child = &properties[name.as_str()];
            let path = format!("{prefix}.{name}");
            let mut description = child
                .get("description")
                .and_then(Value::as_str)
                .map(paragraph)
                .unwrap_or_default();
            // An array's item type has its own description (e.g. a pipeline step).
            if let Some(item) = child.pointer("/items/description").and_then(Value::as_str) {
                description = format!("{description}<br>Each item: {}", paragraph(item));
            }
            rows.push(Row {
                path: path.clone(),
                required: required.contains(&name.as_str()),
                type_: type_of(child),
                default: child.get("default").map(default_of).unwrap_or_default(),
                description,
            });
            walk_children(&path, child, rows);
        }
    }
    if let Some(items) = schema.get("items") {
        walk_children(&format!("{prefix}[]"), items, rows);
    }
    if let Some(values) = schema.get("additionalProperties").filter(|v| v.is_object()) {
        walk_children(&format!("{prefix}.*"), values, rows);
    }
}

/// The type of a schema with its constraints, e.g. `integer (int32), 1–65535`.
fn type_of(schema: &Value) -> String {
    let mut text = base_type(schema);
    let mut constraints = Vec::new();
    match (number(schema, "minimum"), number(schema, "maximum")) {
        (Some(min), Some(max)) => constraints.push(format!("{min}–{max}")),
        (Some(min), None) => constraints.push(format!("≥ {min}")),
        (None, Some(max)) => constraints.push(format!("≤ {max}")),
        (None, None) => {}
    }
    if let Some(min) = number(schema, "minLength") {
        constraints.push(format!("min length {min}"));
    }
    if let Some(max) = number(schema, "maxLength") {
        constraints.push(format!("max length {max}"));
    }
    if let Some(min) = number(schema, "minItems") {
        constraints.push(format!(
            "at least {min} item{}",
            if min == "1" { "" } else { "s" }
        ));
    }
    if let Some(max) = number(schema, "maxItems") {
        constraints.push(format!("at most {max} items"));
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        let values: Vec<String> = values.iter().map(|v| format!("`{}`", scalar(v))).collect();
        constraints.push(format!("one of {}", values.join(", ")));
    }
    if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
        constraints.push(format!("pattern `{pattern}`"));
    }
    if !constraints.is_empty() {
        text.push_str(", ");
        text.push_str(&constraints.join(", "));
    }
    text
}

fn base_type(schema: &Value) -> String {
    if schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        return "integer or string".to_owned();
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("array") => match schema.get("items") {
            Some(items) => format!("[]{}", base_type(items)),
            None => "[]any".to_owned(),
        },
        Some("object") => match schema.get("additionalProperties") {
            Some(values) if values.is_object() => format!("map[string]{}", base_type(values)),
            _ => "object".to_owned(),
        },
        Some(type_) => match schema.get("format").and_then(Value::as_str) {
            Some(format) => format!("{type_} ({format})"),
            None => type_.to_owned(),
        },
        None => "any".to_owned(),
    }
}

/// A numeric keyword as text, without a fractional part when it has none (`1.0` → `1`).
fn number(schema: &Value, key: &str) -> Option<String> {
    let value = schema.get(key)?;
    if let Some(int) = value.as_i64() {
        return Some(int.to_string());
    }
    let float = value.as_f64()?;
    if float.fract() == 0.0 && float.abs() < 1e15 {
        Some(format!("{}", float as i64))
    } else {
        Some(float.to_string())
    }
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// A default value as inline code: scalars as they are, objects and arrays as compact JSON.
fn default_of(value: &Value) -> String {
    match value {
        Value::Object(map) if map.is_empty() => "`{}`".to_owned(),
        Value::Object(map) => format!("`{}`", Value::Object(sorted(map))),
        other => format!("`{}`", scalar(other)),
    }
}

fn sorted(map: &Map<String, Value>) -> Map<String, Value> {
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    keys.into_iter()
        .map(|k| (k.clone(), map[k.as_str()].clone()))
        .collect()
}

/// A description on one line: wrapped lines joined, paragraphs separated by `<br>`.
fn paragraph(text: &str) -> String {
    text.split("\n\n")
        .map(|para| {
            para.lines()
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|para| !para.is_empty())
        .collect::<Vec<_>>()
        .join("<br>")
}

/// Escapes what would break a table cell.
fn escape(text: &str) -> String {
    text.replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd;

    fn page() -> String {
        render(&crd::all())
    }

    fn row<'a>(page: &'a str, field: &str) -> &'a str {
        let needle = format!("| `{field}` ");
        page.lines()
            .find(|line| line.starts_with(&needle))
            .unwrap_or_else(|| panic!("no row for {field}"))
    }

    #[test]
    fn committed_reference_matches_the_crds() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(DOC_PATH);
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == page(),
            "{DOC_PATH} is stale: run hack/gen-reference.sh and commit the result"
        );
    }

    #[test]
    fn every_resource_has_a_spec_and_a_status_table() {
        let page = page();
        for kind in ["Queue", "Gateway", "Worker", "Sink"] {
            assert!(page.contains(&format!("\n## {kind}\n")), "{kind}");
            assert!(page.contains(&format!("### {kind} `spec`")), "{kind}");
            assert!(page.contains(&format!("### {kind} `status`")), "{kind}");
        }
    }

    #[test]
    fn rows_show_type_constraints_default_and_required() {
        let page = page();
        let replicas = row(&page, "spec.replicas");
        assert!(replicas.contains("integer (int32), ≥ 0"), "{replicas}");
        assert!(replicas.contains("| `1` |"), "{replicas}");
        let queue = row(&page, "spec.queue");
        assert!(queue.contains("*required*"), "{queue}");
        assert!(queue.contains("min length 1"), "{queue}");
        let delivery = row(&page, "spec.delivery");
        assert!(
            delivery.contains("one of `confirmed`, `fast`"),
            "{delivery}"
        );
        let port = row(&page, "spec.listeners.mqtt.port");
        assert!(port.contains("1–65535"), "{port}");
    }

    #[test]
    fn nested_arrays_and_maps_get_their_own_rows() {
        let page = page();
        assert!(row(&page, "spec.routes").contains("[]object, at least 1 item"));
        row(&page, "spec.routes[].topicFilter");
        row(&page, "spec.pipeline[].set.expr");
        assert!(row(&page, "spec.container.env").contains("map[string]string"));
        row(&page, "status.conditions[].observedGeneration");
    }

    #[test]
    fn multi_line_descriptions_stay_in_one_cell() {
        let page = page();
        for line in page.lines().filter(|l| l.starts_with("| `")) {
            // Four columns: five unescaped pipes.
            let pipes = line.replace("\\|", "").matches('|').count();
            assert_eq!(pipes, 5, "{line}");
        }
        let step = row(&page, "spec.pipeline");
        assert!(!step.contains('\n'));
    }

    #[test]
    fn pipes_in_text_are_escaped() {
        assert_eq!(escape("a|b"), "a\\|b");
        assert_eq!(paragraph("one\ntwo\n\nthree"), "one two<br>three");
    }
}
