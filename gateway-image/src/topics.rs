//! Topic names, topic filters, permission templates and routes.

use tributary_contract::gateway_config::Route;

/// Why a topic name or filter is invalid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TopicError {
    /// Empty topic.
    #[error("empty topic")]
    Empty,
    /// A topic name (not filter) contained `+` or `#`.
    #[error("wildcard in topic name")]
    Wildcard,
    /// U+0000 in a topic.
    #[error("null character in topic")]
    Null,
    /// A `#` not at the end or `+`/`#` not a whole level in a filter.
    #[error("malformed topic filter")]
    MalformedFilter,
    /// Longer than MQTT's 65535 bytes.
    #[error("topic too long")]
    TooLong,
}

/// Checks a topic name a device publishes to (no wildcards, not empty).
pub fn validate_topic_name(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > 65_535 {
        return Err(TopicError::TooLong);
    }
    if topic.contains('\0') {
        return Err(TopicError::Null);
    }
    if topic.contains(['+', '#']) {
        return Err(TopicError::Wildcard);
    }
    Ok(())
}

/// Checks a topic filter (`+` whole level, `#` whole last level).
pub fn validate_topic_filter(filter: &str) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    if filter.contains('\0') {
        return Err(TopicError::Null);
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (index, level) in levels.iter().enumerate() {
        let is_last = index + 1 == levels.len();
        if level.contains('#') && (*level != "#" || !is_last) {
            return Err(TopicError::MalformedFilter);
        }
        if level.contains('+') && *level != "+" {
            return Err(TopicError::MalformedFilter);
        }
    }
    Ok(())
}

/// Whether `topic` matches the (valid) filter `filter`, per MQTT rules; topics starting with
/// `$` do not match filters starting with a wildcard.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut topic_levels = topic.split('/');
    for filter_level in filter.split('/') {
        match filter_level {
            "#" => return true,
            "+" => {
                if topic_levels.next().is_none() {
                    return false;
                }
            }
            literal => {
                if topic_levels.next() != Some(literal) {
                    return false;
                }
            }
        }
    }
    topic_levels.next().is_none()
}

/// Whether a device id or client id is safe to put into a topic template.
pub fn is_safe_identity(id: &str) -> bool {
    !id.is_empty() && !id.contains(['+', '#', '/', '\0'])
}

/// Publish permissions: topic filter templates over `{device}`.
#[derive(Debug, Clone)]
pub struct Permissions {
    templates: Vec<String>,
}

impl Permissions {
    /// Checks every template is a valid filter once `{device}` is substituted.
    pub fn new(templates: Vec<String>) -> Result<Self, TopicError> {
        for template in &templates {
            validate_topic_filter(&template.replace("{device}", "x"))?;
        }
        Ok(Self { templates })
    }

    /// Whether `device` may publish to `topic`. Devices whose id could widen a filter
    /// (wildcards, `/`) are never permitted anything.
    pub fn allows(&self, device: &str, topic: &str) -> bool {
        if !is_safe_identity(device) {
            return false;
        }
        self.templates
            .iter()
            .any(|template| template_allows(template, device, topic))
    }
}

/// Whether the permission template `template` lets `device` publish to `topic` (`{device}`
/// substituted; ids that could widen a filter are permitted nothing).
pub fn template_allows(template: &str, device: &str, topic: &str) -> bool {
    is_safe_identity(device) && filter_matches(&template.replace("{device}", device), topic)
}

/// Routes from topic filters to queues.
#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    /// Validates every route's filter.
    pub fn new(routes: Vec<Route>) -> Result<Self, TopicError> {
        for route in &routes {
            validate_topic_filter(&route.topic_filter)?;
        }
        Ok(Self { routes })
    }

    /// The distinct queues a topic goes to, in route order.
    pub fn queues_for(&self, topic: &str) -> Vec<String> {
        let mut queues: Vec<String> = Vec::new();
        for route in &self.routes {
            if filter_matches(&route.topic_filter, topic) && !queues.contains(&route.queue) {
                queues.push(route.queue.clone());
            }
        }
        queues
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_per_mqtt_rules() {
        let cases = [
            ("a/b", "a/b", true),
            ("a/+", "a/b", true),
            ("a/+", "a/b/c", false),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("#", "a/b", true),
            ("+/+", "a/b", true),
            ("+", "a/b", false),
            ("#", "$SYS/x", false),
            ("a/+/c", "a//c", true),
            ("a/b", "a/b/", false),
        ];
        for (filter, topic, expected) in cases {
            assert_eq!(
                filter_matches(filter, topic),
                expected,
                "{filter} vs {topic}"
            );
        }
    }

    #[test]
    fn topic_names_with_wildcards_nulls_or_nothing_are_invalid() {
        assert_eq!(validate_topic_name(""), Err(TopicError::Empty));
        assert_eq!(validate_topic_name("a/+"), Err(TopicError::Wildcard));
        assert_eq!(validate_topic_name("a/#"), Err(TopicError::Wildcard));
        assert_eq!(validate_topic_name("a\0b"), Err(TopicError::Null));
        assert_eq!(validate_topic_name("devices/x/t"), Ok(()));
    }

    #[test]
    fn malformed_filters_are_refused() {
        for filter in ["a/#/b", "a/b#", "a+/b", ""] {
            assert!(validate_topic_filter(filter).is_err(), "{filter}");
        }
    }

    #[test]
    fn permission_template_confines_device_to_its_subtree() {
        let permissions = Permissions::new(vec!["devices/{device}/#".into()]).expect("valid");
        assert!(permissions.allows("press-7", "devices/press-7/telemetry"));
        assert!(!permissions.allows("press-7", "devices/press-8/telemetry"));
        assert!(!permissions.allows("press-7", "devices/press-7x/telemetry"));
    }

    #[test]
    fn device_ids_with_wildcards_or_slashes_get_no_permission() {
        let permissions = Permissions::new(vec!["devices/{device}/#".into()]).expect("valid");
        assert!(!permissions.allows("#", "devices/other/t"));
        assert!(!permissions.allows("+", "devices/other/t"));
        assert!(!permissions.allows("a/b", "devices/a/b/t"));
    }

    #[test]
    fn router_sends_one_message_to_every_matching_queue_once() {
        let router = Router::new(vec![
            Route {
                topic_filter: "devices/+/telemetry".into(),
                queue: "telemetry".into(),
            },
            Route {
                topic_filter: "devices/#".into(),
                queue: "archive".into(),
            },
            Route {
                topic_filter: "devices/+/+".into(),
                queue: "archive".into(),
            },
        ])
        .expect("valid");
        assert_eq!(
            router.queues_for("devices/a/telemetry"),
            vec!["telemetry", "archive"]
        );
        assert_eq!(router.queues_for("devices/a/status"), vec!["archive"]);
        assert!(router.queues_for("other").is_empty());
    }
}
