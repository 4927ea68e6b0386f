//! Cross-references inside one folder or kustomization: every Secret, ConfigMap, Queue and
//! Sink a resource or pod names exists, with the key it names.

use super::*;

/// Keys of every Secret (or ConfigMap) in a set of objects, by name.
fn keys_by_name(objects: &[&Object], kind: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut found = BTreeMap::new();
    for object in objects.iter().filter(|o| o.kind() == kind) {
        let mut keys = BTreeSet::new();
        for field in ["data", "stringData", "binaryData"] {
            if let Some(map) = object.value[field].as_object() {
                keys.extend(map.keys().cloned());
            }
        }
        found.insert(object.name().to_owned(), keys);
    }
    found
}

/// The Secrets the operator generates for the Devices among `objects`, with their keys.
fn device_secrets(objects: &[&Object]) -> BTreeMap<String, BTreeSet<String>> {
    let mut found = BTreeMap::new();
    for object in objects
        .iter()
        .filter(|o| o.is_tributary() && o.kind() == "Device")
    {
        let credentials = &object.value["spec"]["credentials"];
        let keys = |keys: &[&str]| keys.iter().map(|k| (*k).to_owned()).collect();
        if credentials["generated"].is_object() {
            let name = format!("{}-credentials", object.name());
            found.insert(name, keys(&["username", "password"]));
        }
        if credentials["certificate"].is_object() {
            let name = format!("{}-certificate", object.name());
            found.insert(name, keys(&["tls.crt", "tls.key", "ca.crt"]));
        }
    }
    found
}

/// What a set of objects (one namespace) refers to and whether it exists there or among
/// the `context` objects (those of a parent folder, applied before).
pub(super) fn check_references(
    scope: &str,
    objects: &[&Object],
    context: &[&Object],
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut parsed = Parsed::default();
    for object in objects.iter().filter(|o| o.is_tributary()) {
        if let Err(problem) = check_tributary(object, &mut parsed) {
            problems.push(problem);
        }
    }
    let everything: Vec<&Object> = objects.iter().chain(context).copied().collect();
    let mut secrets = keys_by_name(&everything, "Secret");
    secrets.extend(device_secrets(&everything));
    let config_maps = keys_by_name(&everything, "ConfigMap");
    for (name, device) in &parsed.devices {
        for gateway in &device.spec.gateways {
            if !parsed.gateways.contains_key(gateway) {
                problems.push(format!(
                    "{scope}: Device {name} names missing Gateway {gateway}"
                ));
            }
        }
        if let Some(hash) = &device.spec.credentials.password_hash {
            wanted_device_hash(&mut problems, scope, name, hash, &secrets);
        }
    }
    // Managed Queues get a generated credentials Secret, which others may use.
    for (name, queue) in &parsed.queues {
        if queue.spec.broker.managed.is_some() {
            let keys = [
                build::queue::KEY_USERNAME,
                build::queue::KEY_PASSWORD,
                build::queue::KEY_COOKIE,
                build::queue::KEY_URI,
                build::queue::KEY_MANAGEMENT_URI,
            ];
            secrets.insert(
                build::queue::ManagedNames::for_queue(name).credentials,
                keys.iter().map(|k| (*k).to_owned()).collect(),
            );
        }
    }
    let mut wanted: Vec<(String, SecretKeyRef)> = Vec::new();
    let secret_key = |name: &str, key: &str| SecretKeyRef {
        name: name.to_owned(),
        key: key.to_owned(),
    };
    for (name, queue) in &parsed.queues {
        if let Some(external) = &queue.spec.broker.external {
            wanted.push((format!("Queue {name}"), external.uri_secret_ref.clone()));
            if let Some(management) = &external.management_uri_secret_ref {
                wanted.push((format!("Queue {name}"), management.clone()));
            }
        }
    }
    for (name, gateway) in &parsed.gateways {
        let who = format!("Gateway {name}");
        let auth = &gateway.spec.auth;
        if let Some(passwords) = &auth.passwords {
            wanted.push((
                who.clone(),
                secret_key(&passwords.name, build::gateway::PASSWORDS_KEY),
            ));
        }
        if let Some(tls) = &gateway.spec.listeners.mqtt_tls {
            for key in ["tls.crt", "tls.key"] {
                wanted.push((who.clone(), secret_key(&tls.secret_name, key)));
            }
        }
        if let Some(certs) = &auth.client_certificates {
            wanted.push((who.clone(), secret_key(&certs.ca.name, "ca.crt")));
        }
        for secret in build::gateway::referenced_secrets(gateway) {
            if !secrets.contains_key(&secret) {
                problems.push(format!("{scope}: {who} refers to missing Secret {secret}"));
            }
        }
        // Routed Queues exist and share one broker (the same connection Secret).
        let mut brokers = BTreeSet::new();
        for route in &gateway.spec.routes {
            match parsed.queues.get(&route.queue) {
                None => problems.push(format!(
                    "{scope}: {who} routes to missing Queue {}",
                    route.queue
                )),
                Some(queue) => {
                    if let Ok(plan) = build::queue::validate(queue) {
                        if let Ok(secret) = build::queue::connection_secret_ref(queue, &plan) {
                            brokers.insert(secret);
                        }
                    }
                }
            }
        }
        if brokers.len() > 1 {
            problems.push(format!(
                "{scope}: {who} routes to Queues on different brokers: {brokers:?}"
            ));
        }
    }
    for (name, sink) in &parsed.sinks {
        for secret in build::sink::referenced_secrets(sink) {
            wanted.push((format!("Sink {name}"), secret));
        }
        if let Some(target) = build::sink::target_queue(sink) {
            if !parsed.queues.contains_key(target) {
                problems.push(format!(
                    "{scope}: Sink {name} republishes to missing Queue {target}"
                ));
            }
        }
    }
    for (name, worker) in &parsed.workers {
        if !parsed.queues.contains_key(&worker.spec.queue) {
            problems.push(format!(
                "{scope}: Worker {name} consumes missing Queue {}",
                worker.spec.queue
            ));
        }
        for sink in &worker.spec.sinks {
            if !parsed.sinks.contains_key(sink) {
                problems.push(format!(
                    "{scope}: Worker {name} writes to missing Sink {sink}"
                ));
            }
        }
    }
    for (name, api) in &parsed.apis {
        api_references(&mut problems, scope, name, api, &parsed);
    }
    let mut wanted_config_maps: Vec<(String, String, Option<String>)> = Vec::new();
    for object in objects {
        if let Some(pod) = pod_spec_value(object) {
            pod_references(
                &object.describe(),
                pod,
                &mut wanted,
                &mut wanted_config_maps,
            );
        }
    }
    for (who, reference) in wanted {
        match secrets.get(&reference.name) {
            None => problems.push(format!(
                "{scope}: {who} refers to missing Secret {}",
                reference.name
            )),
            // An empty key stands for "the whole Secret".
            Some(keys) if !reference.key.is_empty() && !keys.contains(&reference.key) => problems
                .push(format!(
                    "{scope}: {who} refers to key {} that Secret {} does not have",
                    reference.key, reference.name
                )),
            Some(_) => {}
        }
    }
    for (who, name, key) in wanted_config_maps {
        match (config_maps.get(&name), key) {
            (None, _) => {
                problems.push(format!("{scope}: {who} refers to missing ConfigMap {name}"))
            }
            (Some(keys), Some(key)) if !keys.contains(&key) => problems.push(format!(
                "{scope}: {who} refers to key {key} that ConfigMap {name} does not have"
            )),
            _ => {}
        }
    }
    problems
}
/// An ApplicationApi's Sinks (of the right type), live Queue and commands Gateway exist.
fn api_references(
    problems: &mut Vec<String>,
    scope: &str,
    name: &str,
    api: &ApplicationApi,
    parsed: &Parsed,
) {
    let who = format!("{scope}: ApplicationApi {name}");
    let history = &api.spec.history.sink;
    match parsed.sinks.get(history) {
        Some(sink) if sink.spec.postgres.is_some() => {}
        Some(_) => problems.push(format!("{who}: history Sink {history} is not PostgreSQL")),
        None => problems.push(format!("{who}: reads missing Sink {history}")),
    }
    if let Some(latest) = &api.spec.latest {
        match parsed.sinks.get(&latest.sink) {
            Some(sink) if sink.spec.redis.is_some() => {}
            Some(_) => problems.push(format!("{who}: latest Sink {} is not Redis", latest.sink)),
            None => problems.push(format!("{who}: reads missing Sink {}", latest.sink)),
        }
    }
    if let Some(live) = &api.spec.live {
        if !parsed.queues.contains_key(&live.queue) {
            problems.push(format!("{who}: live feed on missing Queue {}", live.queue));
        }
    }
    if let Some(commands) = &api.spec.commands {
        if !parsed.gateways.contains_key(&commands.gateway) {
            problems.push(format!(
                "{who}: commands through missing Gateway {}",
                commands.gateway
            ));
        }
    }
}

fn wanted_device_hash(
    problems: &mut Vec<String>,
    scope: &str,
    device: &str,
    reference: &SecretKeyRef,
    secrets: &BTreeMap<String, BTreeSet<String>>,
) {
    let found = secrets.get(&reference.name);
    if !found.is_some_and(|keys| keys.contains(&reference.key)) {
        problems.push(format!(
            "{scope}: Device {device} refers to missing Secret key {}/{}",
            reference.name, reference.key
        ));
    }
}

/// Secrets and ConfigMaps a pod spec needs (optional references left out).
fn pod_references(
    who: &str,
    pod: &Value,
    secrets: &mut Vec<(String, SecretKeyRef)>,
    config_maps: &mut Vec<(String, String, Option<String>)>,
) {
    let optional = |v: &Value| v["optional"].as_bool() == Some(true);
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let containers = ["containers", "initContainers"]
        .iter()
        .filter_map(|field| pod[*field].as_array())
        .flatten();
    for container in containers {
        for env in container["env"].as_array().into_iter().flatten() {
            let from = &env["valueFrom"];
            if from["secretKeyRef"].is_object() && !optional(&from["secretKeyRef"]) {
                let r = &from["secretKeyRef"];
                secrets.push((
                    who.to_owned(),
                    SecretKeyRef {
                        name: text(&r["name"]),
                        key: text(&r["key"]),
                    },
                ));
            }
            if from["configMapKeyRef"].is_object() && !optional(&from["configMapKeyRef"]) {
                let r = &from["configMapKeyRef"];
                config_maps.push((who.to_owned(), text(&r["name"]), Some(text(&r["key"]))));
            }
        }
        for from in container["envFrom"].as_array().into_iter().flatten() {
            if from["configMapRef"].is_object() && !optional(&from["configMapRef"]) {
                config_maps.push((who.to_owned(), text(&from["configMapRef"]["name"]), None));
            }
            if from["secretRef"].is_object() && !optional(&from["secretRef"]) {
                // Any key will do: the whole Secret becomes variables.
                let name = text(&from["secretRef"]["name"]);
                secrets.push((
                    who.to_owned(),
                    SecretKeyRef {
                        name,
                        key: String::new(),
                    },
                ));
            }
        }
    }
    // A projected volume's sources are Secrets and ConfigMaps like volumes of their own.
    let projected = pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|volume| {
            volume["projected"]["sources"]
                .as_array()
                .into_iter()
                .flatten()
        })
        .map(|source| {
            let mut volume = serde_json::json!({});
            if source["secret"].is_object() {
                volume["secret"] = source["secret"].clone();
                volume["secret"]["secretName"] = source["secret"]["name"].clone();
            }
            if source["configMap"].is_object() {
                volume["configMap"] = source["configMap"].clone();
            }
            volume
        });
    let volumes: Vec<Value> = pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .cloned()
        .chain(projected)
        .collect();
    for volume in &volumes {
        let secret = &volume["secret"];
        if secret.is_object() && !optional(secret) {
            let name = text(&secret["secretName"]);
            let items: Vec<String> = secret["items"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|item| text(&item["key"]))
                .collect();
            if items.is_empty() {
                secrets.push((
                    who.to_owned(),
                    SecretKeyRef {
                        name,
                        key: String::new(),
                    },
                ));
            } else {
                for key in items {
                    secrets.push((
                        who.to_owned(),
                        SecretKeyRef {
                            name: name.clone(),
                            key,
                        },
                    ));
                }
            }
        }
        let config_map = &volume["configMap"];
        if config_map.is_object() && !optional(config_map) {
            config_maps.push((who.to_owned(), text(&config_map["name"]), None));
        }
    }
}
