//! Tests of the merge of pod reports and of the `SinksAvailable` transitions.

use super::*;
use tributary_contract::worker_status::Outage;

fn report(pod: &str, outages: &[(&str, &str, &str)]) -> PodReport {
    PodReport {
        pod: pod.to_owned(),
        answer: Ok(WorkerStatus {
            outages: outages
                .iter()
                .map(|(target, since, error)| Outage {
                    target: (*target).to_owned(),
                    since: (*since).to_owned(),
                    error: (*error).to_owned(),
                })
                .collect(),
        }),
    }
}

fn silent(pod: &str) -> PodReport {
    PodReport {
        pod: pod.to_owned(),
        answer: Err("connection refused".to_owned()),
    }
}

const REFUSED: &str = "connect: connection refused";

#[test]
fn merge_takes_the_earliest_start_the_common_error_and_counts_pods() {
    let verdict = merge(&[
        report(
            "w-c",
            &[("sink rows", "2026-11-30T04:00:05.250Z", "timed out")],
        ),
        report("w-a", &[("sink rows", "2026-11-30T04:00:07Z", REFUSED)]),
        report(
            "w-b",
            &[
                ("sink rows", "2026-11-30T04:00:09Z", REFUSED),
                ("sink cache", "2026-11-30T04:01:00Z", "READONLY"),
            ],
        ),
        silent("w-d"),
    ]);
    assert_eq!(
        (verdict.pods, verdict.answered, verdict.unanswered()),
        (4, 3, 1)
    );
    assert_eq!(verdict.available(), Some(false));
    assert_eq!(
        verdict.outages,
        vec![
            TargetOutage {
                target: "sink rows".into(),
                since: "2026-11-30T04:00:05Z".into(),
                error: REFUSED.into(),
                pods: 3,
            },
            TargetOutage {
                target: "sink cache".into(),
                since: "2026-11-30T04:01:00Z".into(),
                error: "READONLY".into(),
                pods: 1,
            },
        ]
    );
    assert_eq!(
        verdict.outage_summary().as_deref(),
        Some(
            "sink rows unavailable since 2026-11-30T04:00:05Z, \
             sink cache unavailable since 2026-11-30T04:01:00Z"
        )
    );
    let message = verdict.desired().expect("known").message;
    assert!(
        message.starts_with(
            "sink rows unavailable since 2026-11-30T04:00:05Z: connect: connection refused \
             (reported by 3 of 3 pods); sink cache unavailable since"
        ),
        "{message}"
    );
    assert!(
        message.contains("1 of 4 pods did not answer /status"),
        "{message}"
    );
}

#[test]
fn pods_that_do_not_answer_are_no_outage() {
    let nobody = merge(&[silent("w-a"), silent("w-b")]);
    assert_eq!((nobody.pods, nobody.answered), (2, 0));
    assert_eq!(nobody.available(), None);
    assert_eq!(nobody.desired(), None);
    assert_eq!(merge(&[]).available(), None);

    let healthy = merge(&[report("w-a", &[]), silent("w-b")]);
    assert_eq!(healthy.available(), Some(true));
    assert_eq!(healthy.outage_summary(), None);
    let desired = healthy.desired().expect("known");
    assert_eq!(desired.reason, reason::ALL_SINKS_AVAILABLE);
    assert_eq!(desired.message, "the worker pods report no sink outage");
    // More pods, same condition: nothing to write while replicas change.
    let more = merge(&[report("w-a", &[]), report("w-b", &[]), report("w-c", &[])]);
    assert_eq!(more.desired(), Some(desired));
}

#[test]
fn an_unparsable_start_is_kept_only_when_nothing_parses() {
    let verdict = merge(&[
        report("w-a", &[("container", "yesterday", "HTTP 503")]),
        report("w-b", &[("container", "2026-11-30T04:00:00Z", "HTTP 503")]),
    ]);
    assert_eq!(verdict.outages[0].since, "2026-11-30T04:00:00Z");
    let verdict = merge(&[report("w-a", &[("container", "yesterday", "HTTP 503")])]);
    assert_eq!(verdict.outages[0].since, "yesterday");
}

fn condition(status: &str, since: &str) -> Condition {
    Condition {
        type_: SINKS_AVAILABLE.into(),
        status: status.into(),
        reason: if status == "True" {
            reason::ALL_SINKS_AVAILABLE.into()
        } else {
            reason::SINK_UNAVAILABLE.into()
        },
        message: "m".into(),
        observed_generation: Some(1),
        last_transition_time: since.into(),
    }
}

#[test]
fn outage_start_raises_a_warning_once_and_recovery_a_normal_event() {
    let down = merge(&[report(
        "w-a",
        &[("sink rows", "2026-11-30T04:00:00Z", REFUSED)],
    )]);
    let up = merge(&[report("w-a", &[])]);

    // First reading ever, healthy: the condition appears, no Event.
    let first = transition(None, &up, Some(1), "t0").expect("known");
    assert_eq!(
        (
            first.condition.status.as_str(),
            first.condition.reason.as_str()
        ),
        ("True", reason::ALL_SINKS_AVAILABLE)
    );
    assert_eq!(first.event, None);

    // Outage starts: False, a Warning naming target, error and start.
    let started = transition(Some(&first.condition), &down, Some(1), "t1").expect("known");
    assert_eq!(started.condition.status, "False");
    assert_eq!(started.condition.reason, reason::SINK_UNAVAILABLE);
    assert_eq!(started.condition.last_transition_time, "t1");
    let event = started.event.clone().expect("warning");
    assert!(event.warning);
    assert_eq!(event.reason, reason::SINK_UNAVAILABLE);
    assert!(
        event
            .note
            .contains("sink rows unavailable since 2026-11-30T04:00:00Z")
            && event.note.contains(REFUSED),
        "{}",
        event.note
    );

    // It lasts: no further Event, transition time kept, generation follows the spec.
    let lasting = transition(Some(&started.condition), &down, Some(2), "t2").expect("known");
    assert_eq!(lasting.event, None);
    assert_eq!(lasting.condition.last_transition_time, "t1");
    assert_eq!(lasting.condition.observed_generation, Some(2));

    // Nobody answers (pods restarting): nothing changes.
    let nobody = merge(&[silent("w-a")]);
    assert_eq!(
        transition(Some(&lasting.condition), &nobody, Some(2), "t3"),
        None
    );

    // Recovery: True, one Normal Event saying since when it was down.
    let recovered = transition(Some(&lasting.condition), &up, Some(2), "t4").expect("known");
    assert_eq!(recovered.condition.status, "True");
    assert_eq!(recovered.condition.last_transition_time, "t4");
    let event = recovered.event.expect("normal");
    assert!(!event.warning);
    assert_eq!(event.reason, reason::SINK_RECOVERED);
    assert!(event.note.contains("outage since t1"), "{}", event.note);
    let again = transition(Some(&recovered.condition), &up, Some(2), "t5").expect("known");
    assert_eq!(again.event, None);
    assert_eq!(again.condition, recovered.condition);
}

#[test]
fn an_outage_seen_first_is_a_warning_too() {
    let down = merge(&[report(
        "w-a",
        &[("container", "2026-11-30T04:00:00Z", "HTTP 503")],
    )]);
    let t = transition(None, &down, None, "t0").expect("known");
    assert_eq!(t.event.map(|e| e.reason), Some(reason::SINK_UNAVAILABLE));
    let t = transition(Some(&condition("True", "t0")), &down, None, "t1").expect("known");
    assert!(t.event.is_some_and(|e| e.warning));
    let t = transition(Some(&condition("False", "t0")), &down, None, "t1").expect("known");
    assert_eq!(t.event, None);
}
