//! Which topic filters a device may subscribe to, and at which QoS each command goes out.
//!
//! A filter is granted only when it lies *within* one of the `commands.subscribe`
//! templates (with `{device}` replaced by the authenticated device id): every topic the
//! filter can match must be matched by the template, so no wildcard reaches past the
//! device's own commands. All pure.

use crate::mqtt::names::ReasonCode;
use crate::topics::{filter_matches, is_safe_identity, validate_topic_filter, TopicError};

/// Most subscriptions one session holds; further filters are refused.
pub const MAX_SUBSCRIPTIONS_PER_SESSION: usize = 16;

/// The highest QoS the gateway grants (QoS 2 is downgraded to 1).
pub const MAX_GRANTED_QOS: u8 = 1;

/// Why a subscription was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// `commands.enabled` is false.
    Disabled,
    /// The filter reaches outside every template (another device's commands, `#`).
    NotAuthorized,
    /// A shared subscription (`$share/…`).
    Shared,
    /// The SUBSCRIBE carried a Subscription Identifier, which the gateway does not support.
    SubscriptionIdentifier,
    /// The session holds [`MAX_SUBSCRIPTIONS_PER_SESSION`] subscriptions already.
    TooMany,
    /// The broker refused to declare or consume the device's queue (permissions, limits).
    BrokerRefused,
    /// The broker is not reachable for commands right now.
    BrokerUnavailable,
}

impl Refusal {
    /// Every refusal, for metrics initialised at zero.
    pub const ALL: [Refusal; 7] = [
        Refusal::Disabled,
        Refusal::NotAuthorized,
        Refusal::Shared,
        Refusal::SubscriptionIdentifier,
        Refusal::TooMany,
        Refusal::BrokerRefused,
        Refusal::BrokerUnavailable,
    ];

    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Disabled => "disabled",
            Refusal::NotAuthorized => "not_authorized",
            Refusal::Shared => "shared",
            Refusal::SubscriptionIdentifier => "subscription_identifier",
            Refusal::TooMany => "too_many",
            Refusal::BrokerRefused => "broker_refused",
            Refusal::BrokerUnavailable => "broker_unavailable",
        }
    }

    /// The SUBACK code: MQTT 5's reason code, or 3.1.1's one failure code.
    pub fn suback_code(self, v5: bool) -> u8 {
        if !v5 {
            return crate::mqtt::names::SUBACK_V311_FAILURE;
        }
        match self {
            Refusal::Disabled | Refusal::NotAuthorized => ReasonCode::NotAuthorized.code(),
            Refusal::Shared => ReasonCode::SharedSubscriptionsNotSupported.code(),
            Refusal::SubscriptionIdentifier => {
                ReasonCode::SubscriptionIdentifiersNotSupported.code()
            }
            Refusal::TooMany => ReasonCode::QuotaExceeded.code(),
            Refusal::BrokerRefused | Refusal::BrokerUnavailable => {
                ReasonCode::UnspecifiedError.code()
            }
        }
    }
}

/// Whether every topic `filter` matches is matched by `template` (both valid filters).
pub fn filter_within(filter: &str, template: &str) -> bool {
    let mut filter_levels = filter.split('/');
    let mut template_levels = template.split('/');
    loop {
        match (filter_levels.next(), template_levels.next()) {
            // `#` covers whatever the filter has left, its parent level included.
            (_, Some("#")) => return true,
            (None, None) => return true,
            // Only `#` in the filter matches any number of levels; only `#` covers it.
            (Some("#"), _) => return false,
            (Some("+"), Some("+")) => {}
            (Some("+"), _) => return false,
            (Some(level), Some(expected)) if expected == "+" || expected == level => {}
            _ => return false,
        }
    }
}

/// The `commands.subscribe` templates, checked once.
#[derive(Debug, Clone)]
pub struct Templates {
    templates: Vec<String>,
}

impl Templates {
    /// Checks that each template is a valid filter once `{device}` is substituted.
    pub fn new(templates: Vec<String>) -> Result<Self, TopicError> {
        for template in &templates {
            validate_topic_filter(&template.replace("{device}", "x"))?;
        }
        Ok(Self { templates })
    }

    /// Whether `device` may subscribe to `filter`. Device ids that could widen a template
    /// (wildcards, `/`) may subscribe to nothing.
    pub fn allow(&self, device: &str, filter: &str) -> bool {
        is_safe_identity(device)
            && self
                .templates
                .iter()
                .any(|template| filter_within(filter, &template.replace("{device}", device)))
    }
}

/// The checks of one filter of a SUBSCRIBE that need no broker: commands on, not shared,
/// no subscription identifier, within a template.
pub fn check_filter(
    enabled: bool,
    templates: &Templates,
    device: &str,
    filter: &str,
    subscription_identifier: bool,
) -> Result<(), Refusal> {
    if !enabled {
        return Err(Refusal::Disabled);
    }
    if filter.starts_with("$share/") {
        return Err(Refusal::Shared);
    }
    if subscription_identifier {
        return Err(Refusal::SubscriptionIdentifier);
    }
    if !templates.allow(device, filter) {
        return Err(Refusal::NotAuthorized);
    }
    Ok(())
}

/// A session's subscriptions: filters with their granted QoS, at most
/// [`MAX_SUBSCRIPTIONS_PER_SESSION`]. A resumed persistent session is subscribed to all its
/// device's commands at QoS 1 until it subscribes again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscriptions {
    entries: Vec<(String, u8)>,
    implicit: bool,
}

/// The session holds its maximum of subscriptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooMany;

impl Subscriptions {
    /// A resumed session's: every command of the device at QoS 1.
    pub fn resumed() -> Self {
        Self {
            entries: Vec::new(),
            implicit: true,
        }
    }

    /// Adds `filter` at `qos` (a filter subscribed again gets the new QoS), ending the
    /// implicit subscription of a resumed session.
    pub fn subscribe(&mut self, filter: &str, qos: u8) -> Result<(), TooMany> {
        if let Some(entry) = self.entries.iter_mut().find(|(f, _)| f == filter) {
            entry.1 = qos;
        } else if self.entries.len() >= MAX_SUBSCRIPTIONS_PER_SESSION {
            return Err(TooMany);
        } else {
            self.entries.push((filter.to_owned(), qos));
        }
        self.implicit = false;
        Ok(())
    }

    /// Whether `filter` could be added now.
    pub fn has_room_for(&self, filter: &str) -> bool {
        self.entries.len() < MAX_SUBSCRIPTIONS_PER_SESSION
            || self.entries.iter().any(|(f, _)| f == filter)
    }

    /// Removes `filter`; whether it was there.
    pub fn unsubscribe(&mut self, filter: &str) -> bool {
        let before = self.entries.len();
        self.entries.retain(|(f, _)| f != filter);
        before != self.entries.len()
    }

    /// The QoS a command on `topic` goes out at: the highest among the matching
    /// subscriptions, `None` when none matches.
    pub fn qos_for(&self, topic: &str) -> Option<u8> {
        if self.implicit {
            return Some(MAX_GRANTED_QOS);
        }
        self.entries
            .iter()
            .filter(|(filter, _)| filter_matches(filter, topic))
            .map(|(_, qos)| *qos)
            .max()
    }

    /// How many filters are held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no filter is held (and no implicit subscription).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && !self.implicit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn templates(list: &[&str]) -> Templates {
        Templates::new(list.iter().map(|t| (*t).to_owned()).collect()).expect("valid")
    }

    #[test]
    fn filters_within_the_device_subtree_are_allowed_and_wider_ones_are_not() {
        let default = templates(&["commands/{device}/#"]);
        for ok in [
            "commands/d1/#",
            "commands/d1/fan/+",
            "commands/d1/fan/set",
            "commands/d1",
            "commands/d1/+/+/#",
            "commands/d1/req/#",
        ] {
            assert!(default.allow("d1", ok), "{ok}");
        }
        for refused in [
            "commands/+/#",
            "#",
            "+/d1/#",
            "commands/d2/#",
            "commands/#",
            "commands/+",
            "commands/d10/#",
            "commands/d/#",
            "commands",
            "other/d1/#",
        ] {
            assert!(!default.allow("d1", refused), "{refused}");
        }
    }

    #[test]
    fn narrower_templates_confine_filters_level_by_level() {
        let fans = templates(&["commands/{device}/fan/+", "alerts/{device}"]);
        assert!(fans.allow("d1", "commands/d1/fan/set"));
        assert!(fans.allow("d1", "commands/d1/fan/+"));
        assert!(fans.allow("d1", "alerts/d1"));
        assert!(!fans.allow("d1", "commands/d1/fan/#"), "# reaches deeper");
        assert!(!fans.allow("d1", "commands/d1/fan"), "parent of +");
        assert!(
            !fans.allow("d1", "commands/d1/+/set"),
            "+ reaches other names"
        );
        assert!(!fans.allow("d1", "alerts/d1/#"));
        assert!(!fans.allow("d1", "alerts/+"));
    }

    #[test]
    fn filter_within_follows_mqtt_matching() {
        assert!(filter_within("a/b", "a/+"));
        assert!(filter_within("a/+", "a/+"));
        assert!(filter_within("a", "a/#"), "# matches its parent level");
        assert!(filter_within("a/#", "#"));
        assert!(filter_within("#", "#"));
        assert!(!filter_within("a/#", "a/+"));
        assert!(!filter_within("a/+", "a/b"));
        assert!(!filter_within("a/b/c", "a/b"));
        assert!(!filter_within("a", "a/b"));
        assert!(!filter_within("a", "a/+"), "+ needs a level");
    }

    #[test]
    fn device_ids_that_could_widen_a_template_get_nothing() {
        let default = templates(&["commands/{device}/#"]);
        assert!(!default.allow("+", "commands/+/#"));
        assert!(!default.allow("#", "commands/#"));
        assert!(!default.allow("a/b", "commands/a/b/#"));
    }

    #[test]
    fn a_filter_is_refused_for_each_reason_in_order() {
        let default = templates(&["commands/{device}/#"]);
        let check =
            |enabled, filter, identifier| check_filter(enabled, &default, "d1", filter, identifier);
        assert_eq!(check(true, "commands/d1/#", false), Ok(()));
        assert_eq!(check(false, "commands/d1/#", false), Err(Refusal::Disabled));
        assert_eq!(
            check(true, "$share/g/commands/d1/#", false),
            Err(Refusal::Shared)
        );
        assert_eq!(
            check(true, "commands/d1/#", true),
            Err(Refusal::SubscriptionIdentifier)
        );
        assert_eq!(
            check(true, "commands/d2/#", false),
            Err(Refusal::NotAuthorized)
        );
    }

    #[test]
    fn refusal_codes_follow_each_version() {
        assert_eq!(Refusal::NotAuthorized.suback_code(true), 0x87);
        assert_eq!(Refusal::Shared.suback_code(true), 0x9E);
        assert_eq!(Refusal::BrokerRefused.suback_code(true), 0x80);
        assert_eq!(Refusal::TooMany.suback_code(true), 0x97);
        for refusal in Refusal::ALL {
            assert_eq!(refusal.suback_code(false), 0x80);
        }
    }

    #[test]
    fn the_highest_matching_qos_wins_and_unmatched_topics_get_none() {
        let mut subscriptions = Subscriptions::default();
        subscriptions.subscribe("commands/d1/#", 0).expect("room");
        subscriptions
            .subscribe("commands/d1/fan/+", 1)
            .expect("room");
        assert_eq!(subscriptions.qos_for("commands/d1/fan/set"), Some(1));
        assert_eq!(subscriptions.qos_for("commands/d1/reboot"), Some(0));
        assert!(subscriptions.unsubscribe("commands/d1/#"));
        assert_eq!(subscriptions.qos_for("commands/d1/reboot"), None);
        assert!(!subscriptions.unsubscribe("commands/d1/#"));
    }

    #[test]
    fn a_resumed_session_gets_everything_at_qos1_until_it_subscribes() {
        let mut subscriptions = Subscriptions::resumed();
        assert!(!subscriptions.is_empty());
        assert_eq!(subscriptions.qos_for("commands/d1/anything"), Some(1));
        subscriptions
            .subscribe("commands/d1/fan/+", 0)
            .expect("room");
        assert_eq!(subscriptions.qos_for("commands/d1/anything"), None);
        assert_eq!(subscriptions.qos_for("commands/d1/fan/on"), Some(0));
    }

    #[test]
    fn subscriptions_are_bounded_but_a_held_filter_can_be_renewed() {
        let mut subscriptions = Subscriptions::default();
        for index in 0..MAX_SUBSCRIPTIONS_PER_SESSION {
            subscriptions
                .subscribe(&format!("commands/d1/n{index}"), 1)
                .expect("room");
        }
        assert_eq!(subscriptions.len(), MAX_SUBSCRIPTIONS_PER_SESSION);
        assert!(!subscriptions.has_room_for("commands/d1/more"));
        assert_eq!(subscriptions.subscribe("commands/d1/more", 1), Err(TooMany));
        assert!(subscriptions.has_room_for("commands/d1/n0"));
        assert_eq!(subscriptions.subscribe("commands/d1/n0", 0), Ok(()));
        assert_eq!(subscriptions.qos_for("commands/d1/n0"), Some(0));
    }
}
