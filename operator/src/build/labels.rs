//! Extra labels the platform team puts on objects the operator creates (for example
//! `release: kube-prometheus-stack`, which that chart's Prometheus selects monitors and rules
//! by): parsed and checked at start, added to objects without overriding the operator's own.

use kube::api::ObjectMeta;
use std::collections::BTreeMap;

/// Parses `KEY=VALUE` items into labels, checking Kubernetes' label syntax.
pub fn parse(items: &[String]) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    for item in items.iter().map(|i| i.trim()).filter(|i| !i.is_empty()) {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| format!("label {item:?} is not KEY=VALUE"))?;
        let (key, value) = (key.trim(), value.trim());
        if !is_label_key(key) {
            return Err(format!(
                "label key {key:?} is not a valid Kubernetes label key"
            ));
        }
        if !is_label_value(value) {
            return Err(format!(
                "label value {value:?} of {key:?} is not a valid Kubernetes label value"
            ));
        }
        labels.insert(key.to_owned(), value.to_owned());
    }
    Ok(labels)
}

/// Adds `extra` to the object's labels; a label the operator set itself is kept.
pub fn add_missing(meta: &mut ObjectMeta, extra: &BTreeMap<String, String>) {
    if extra.is_empty() {
        return;
    }
    let labels = meta.labels.get_or_insert_with(BTreeMap::new);
    for (key, value) in extra {
        labels.entry(key.clone()).or_insert_with(|| value.clone());
    }
}

/// `[prefix/]name`: the prefix a DNS subdomain, the name a label value of 1–63 characters.
fn is_label_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part.len() <= 63
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            })
    });
    prefix_ok && !name.is_empty() && is_label_value(name)
}

/// At most 63 characters of `[A-Za-z0-9._-]`, starting and ending alphanumeric (or empty).
fn is_label_value(value: &str) -> bool {
    value.is_empty()
        || (value.len() <= 63
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_and_bad_ones_are_refused_with_the_reason() {
        let items = vec![
            "release=kube-prometheus-stack".to_owned(),
            " team.example.com/owner = platform ".to_owned(),
            String::new(),
        ];
        let labels = parse(&items).expect("valid");
        assert_eq!(labels["release"], "kube-prometheus-stack");
        assert_eq!(labels["team.example.com/owner"], "platform");
        assert_eq!(labels.len(), 2);
        for bad in [
            "release",
            "=x",
            "Bad Key=x",
            "a/b/c=x",
            "k=-x",
            &format!("k={}", "x".repeat(64)),
        ] {
            assert!(parse(&[bad.to_owned()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn extra_labels_never_override_the_operators_own() {
        let mut meta = ObjectMeta {
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_owned(),
                "tributary".to_owned(),
            )])),
            ..ObjectMeta::default()
        };
        let extra = BTreeMap::from([
            (
                "app.kubernetes.io/managed-by".to_owned(),
                "someone".to_owned(),
            ),
            ("release".to_owned(), "kps".to_owned()),
        ]);
        add_missing(&mut meta, &extra);
        let labels = meta.labels.expect("labels");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "tributary");
        assert_eq!(labels["release"], "kps");
    }
}
