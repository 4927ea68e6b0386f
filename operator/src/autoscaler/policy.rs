//! The autoscaler's decision, pure: from one reading of the queue, the current replica
//! count and the worker's recent history to the replica count it should run.
//!
//! Time is seconds on a monotonic clock chosen by the caller.

use crate::broker::Reading;
use crate::crd::Scaling;
use std::collections::VecDeque;

/// What the autoscaler remembers of one worker between readings.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// Replica counts wanted during the scale-down window, oldest first.
    wanted: VecDeque<(f64, i32)>,
    /// Last time the queue had a backlog or received a message.
    last_activity: Option<f64>,
    /// The publish counter at the previous reading.
    last_published: Option<u64>,
}

impl History {
    /// Records the activity a reading shows; whether the queue saw messages within `delay`
    /// (or has a backlog now).
    fn observe(&mut self, reading: &Reading, now: f64, delay: f64) -> bool {
        let backlog = reading.backlog();
        let published_moved = matches!(
            (self.last_published, reading.published),
            (Some(before), Some(after)) if after != before
        );
        if reading.published.is_some() {
            self.last_published = reading.published;
        }
        if backlog > 0 || published_moved || self.last_activity.is_none() {
            // The first reading counts as activity: nothing stops before a full delay.
            self.last_activity = Some(now);
        }
        self.last_activity
            .is_some_and(|at| now - at < delay || backlog > 0)
    }

    /// Records what this reading asks for; the most any reading asked for within the
    /// scale-down window. Without history, `running` stands for the window: no scale-down
    /// before the delay has passed under this autoscaler's eyes.
    fn window_max(&mut self, now: f64, delay: f64, running: i32, by_backlog: i32) -> i32 {
        if self.wanted.is_empty() {
            self.wanted.push_back((now, running));
        }
        self.wanted.push_back((now, by_backlog));
        while self.wanted.front().is_some_and(|(at, _)| *at < now - delay) && self.wanted.len() > 1
        {
            self.wanted.pop_front();
        }
        self.wanted
            .iter()
            .map(|(_, w)| *w)
            .max()
            .unwrap_or(by_backlog)
    }
}

/// The autoscaler's answer for one reading.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Replicas to run.
    pub replicas: i32,
    /// Replicas this reading alone asks for (before the scale-down window and rate limit).
    pub wanted: i32,
    /// Why the count changes; `None` when it stays.
    pub reason: Option<String>,
    /// The Event reason of the change: `WokeUp`, `ScaledUp`, `ScaledDown` or `ScaledToZero`.
    pub event: Option<&'static str>,
    /// Why the replicas stay below what the backlog asks for (an outage the pods report);
    /// `None` when nothing is held.
    pub held: Option<String>,
}

/// Replicas for `backlog` at `per_replica` messages each (rounded up).
fn replicas_for(backlog: i64, per_replica: i64) -> i64 {
    let per_replica = per_replica.max(1);
    (backlog.max(0) + per_replica - 1) / per_replica
}

/// A replica count, why it changes, and the Event reason of the change.
type Change = (i32, Option<String>, Option<&'static str>);

/// The same count: nothing to say.
fn stay(current: i32) -> Change {
    (current, None, None)
}

/// One reading's situation, from which the change follows.
struct Situation {
    current: i32,
    min: i32,
    max: i32,
    /// Seconds of the scale-down delay.
    delay: f64,
    backlog: i64,
    /// What this reading asks for (bounded, with the floor of an active queue).
    wanted: i32,
    /// The most any reading asked for during the delay.
    window_max: i32,
}

/// Decides the replica count after `reading`, taken at `now`, with `current` replicas
/// running. Scales up at once; scales down to the highest count wanted during the last
/// `scaleDownDelaySeconds`, at most `maxScaleDownPercent` of the replicas per step; keeps
/// one replica while the queue saw messages within the delay.
///
/// `outage` says which target the worker pods report unavailable (see
/// [`super::sinks::SinkVerdict::outage_summary`]): then a backlog adds no replicas, since
/// more consumers cannot drain what a down sink holds back. The bounds still apply, scaling
/// down follows the usual rules, and a stopped worker still wakes (to one replica).
pub fn decide(
    scaling: &Scaling,
    current: i32,
    reading: &Reading,
    history: &mut History,
    now: f64,
    outage: Option<&str>,
) -> Decision {
    let min = scaling.min_replicas.max(0);
    let max = scaling.max_replicas.max(min).max(1);
    let delay = scaling.scale_down_delay_seconds.max(0) as f64;
    let backlog = reading.backlog();
    let recently_active = history.observe(reading, now, delay);

    let by_backlog = replicas_for(backlog, scaling.messages_per_replica);
    let by_backlog = i32::try_from(by_backlog)
        .unwrap_or(i32::MAX)
        .clamp(min, max);
    // While messages flow, a running worker keeps one replica even if each message is
    // consumed at once. (A stopped worker wakes on a backlog, never on this floor.)
    let floor = if recently_active && current > 0 {
        min.max(1)
    } else {
        min
    }
    .min(max);
    let wanted = by_backlog.max(floor);
    let window_max = history
        .window_max(now, delay, current.clamp(min, max), by_backlog)
        .max(floor);
    let situation = Situation {
        current,
        min,
        max,
        delay,
        backlog,
        wanted,
        window_max,
    };

    let ((replicas, reason, event), held) = match outage {
        Some(outage) if wanted > current => held_up(&situation, outage),
        _ => (change(&situation, scaling), None),
    };
    Decision {
        replicas,
        wanted,
        reason,
        event,
        held,
    }
}

/// The backlog asks for more replicas while the pods report `outage`: none for the
/// backlog; only the bounds (and waking a stopped worker) count. Also says what is held.
fn held_up(s: &Situation, outage: &str) -> (Change, Option<String>) {
    let (current, min, wanted, backlog) = (s.current, s.min, s.wanted, s.backlog);
    let target = if current == 0 {
        min.max(1)
    } else {
        current.max(min)
    };
    let held = (wanted > target).then(|| format!("holding at {target}: {outage}"));
    let change = if target == current {
        stay(current)
    } else if current == 0 {
        let reason = format!(
            "backlog {backlog} after idle: waking the worker, 0 → {target} \
             (no more while {outage})"
        );
        (target, Some(reason), Some("WokeUp"))
    } else {
        let reason = format!("below minReplicas: {current} → {target} (no more while {outage})");
        (target, Some(reason), Some("ScaledUp"))
    };
    (change, held)
}

/// The change without an outage holding it: up at once, down within the bounds after the
/// delay and by at most the step.
fn change(s: &Situation, scaling: &Scaling) -> Change {
    let (current, max, wanted, backlog) = (s.current, s.max, s.wanted, s.backlog);
    let per_replica = scaling.messages_per_replica;
    if wanted > current {
        if current == 0 {
            let reason = format!("backlog {backlog} after idle: waking the worker, 0 → {wanted}");
            (wanted, Some(reason), Some("WokeUp"))
        } else {
            let reason = format!(
                "backlog {backlog} needs {wanted} replicas at {per_replica} messages each: \
                 {current} → {wanted}"
            );
            (wanted, Some(reason), Some("ScaledUp"))
        }
    } else if current > max {
        let reason = format!("above maxReplicas: {current} → {max}");
        (max, Some(reason), Some("ScaledDown"))
    } else if s.window_max < current {
        scale_down(s, scaling.max_scale_down_percent)
    } else {
        stay(current)
    }
}

/// Down towards the window's highest ask, by at most `percent` of the replicas.
fn scale_down(s: &Situation, percent: i32) -> Change {
    let (current, window_max, backlog, delay) = (s.current, s.window_max, s.backlog, s.delay);
    let percent = i64::from(percent.clamp(1, 100));
    let step = ((i64::from(current) * percent) / 100).max(1) as i32;
    let target = window_max.max(current - step);
    if target == 0 {
        let reason = format!(
            "queue empty and idle for {}s: stopping the worker, {current} → 0",
            delay as i64
        );
        (target, Some(reason), Some("ScaledToZero"))
    } else {
        let reason = format!(
            "backlog {backlog}; at most {window_max} replicas needed for {}s: \
             {current} → {target}",
            delay as i64
        );
        (target, Some(reason), Some("ScaledDown"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scaling(min: i32, max: i32, delay: i64) -> Scaling {
        Scaling {
            min_replicas: min,
            max_replicas: max,
            messages_per_replica: 100,
            scale_down_delay_seconds: delay,
            ..Scaling::default()
        }
    }

    fn ready(n: i64) -> Reading {
        Reading {
            ready: n,
            unacked: Some(0),
            consumers: 1,
            published: Some(0),
        }
    }

    #[test]
    fn backlog_scales_up_at_once_within_max() {
        let mut history = History::default();
        let d = decide(&scaling(1, 4, 60), 1, &ready(250), &mut history, 0.0, None);
        assert_eq!(d.replicas, 3);
        assert!(d.reason.expect("changed").contains("backlog 250"));
        let d = decide(
            &scaling(1, 4, 60),
            3,
            &ready(10_000),
            &mut history,
            5.0,
            None,
        );
        assert_eq!((d.replicas, d.wanted), (4, 4));
    }

    #[test]
    fn unacknowledged_messages_count_as_backlog() {
        let reading = Reading {
            ready: 50,
            unacked: Some(500),
            consumers: 1,
            published: None,
        };
        let d = decide(
            &scaling(1, 10, 60),
            1,
            &reading,
            &mut History::default(),
            0.0,
            None,
        );
        assert_eq!(d.replicas, 6);
    }

    #[test]
    fn scale_down_waits_for_the_delay_then_steps_by_percent() {
        let policy = scaling(1, 10, 30);
        let mut history = History::default();
        assert_eq!(
            decide(&policy, 1, &ready(1000), &mut history, 0.0, None).replicas,
            10
        );
        // Drained: nothing changes until 30 s after the last high reading.
        for t in [5.0, 10.0, 20.0, 29.0] {
            let d = decide(&policy, 10, &ready(0), &mut history, t, None);
            assert_eq!(d.replicas, 10, "at {t}s");
            assert_eq!(d.reason, None);
        }
        // Then at most half of the replicas per step, down to the minimum.
        let mut current = 10;
        let mut steps = Vec::new();
        for t in [31.0, 36.0, 41.0, 46.0, 51.0, 56.0] {
            current = decide(&policy, current, &ready(0), &mut history, t, None).replicas;
            steps.push(current);
        }
        assert_eq!(steps, vec![5, 3, 2, 1, 1, 1]);
    }

    #[test]
    fn no_scale_down_right_after_the_autoscaler_starts() {
        let policy = scaling(1, 10, 60);
        let mut history = History::default();
        let d = decide(&policy, 6, &ready(0), &mut history, 100.0, None);
        assert_eq!(d.replicas, 6);
        let d = decide(&policy, 6, &ready(0), &mut history, 161.0, None);
        assert_eq!(d.replicas, 3);
    }

    #[test]
    fn scales_to_zero_only_when_empty_and_idle() {
        let policy = scaling(0, 5, 20);
        let mut history = History::default();
        let mut reading = ready(0);
        assert_eq!(
            decide(&policy, 1, &reading, &mut history, 0.0, None).replicas,
            1
        );
        // Messages keep arriving and are consumed at once: the backlog reads 0, but the
        // publish counter moves, so one replica stays.
        for (i, t) in [10.0, 20.0, 30.0, 40.0].into_iter().enumerate() {
            reading.published = Some((i as u64 + 1) * 7);
            assert_eq!(
                decide(&policy, 1, &reading, &mut history, t, None).replicas,
                1
            );
        }
        // Traffic stops: 20 s later the worker stops.
        assert_eq!(
            decide(&policy, 1, &reading, &mut history, 50.0, None).replicas,
            1
        );
        let d = decide(&policy, 1, &reading, &mut history, 61.0, None);
        assert_eq!(d.replicas, 0);
        assert_eq!(d.event, Some("ScaledToZero"));
        assert!(d.reason.expect("changed").contains("idle for 20s"));
    }

    #[test]
    fn first_message_wakes_a_stopped_worker() {
        let policy = scaling(0, 5, 20);
        let mut history = History::default();
        assert_eq!(
            decide(&policy, 0, &ready(0), &mut history, 0.0, None).replicas,
            0
        );
        let d = decide(&policy, 0, &ready(1), &mut history, 5.0, None);
        assert_eq!(d.replicas, 1);
        assert_eq!(d.event, Some("WokeUp"));
        assert!(d.reason.expect("changed").contains("waking"));
    }

    #[test]
    fn without_publish_counts_an_empty_queue_is_idle() {
        let policy = scaling(0, 5, 10);
        let mut history = History::default();
        let reading = Reading {
            ready: 0,
            unacked: None,
            consumers: 1,
            published: None,
        };
        assert_eq!(
            decide(&policy, 1, &reading, &mut history, 0.0, None).replicas,
            1
        );
        assert_eq!(
            decide(&policy, 1, &reading, &mut history, 11.0, None).replicas,
            0
        );
    }

    #[test]
    fn bounds_changed_under_a_running_worker_apply_at_once() {
        let mut history = History::default();
        let d = decide(&scaling(1, 3, 60), 8, &ready(0), &mut history, 0.0, None);
        assert_eq!(d.replicas, 3);
        let d = decide(
            &scaling(2, 3, 60),
            1,
            &ready(0),
            &mut History::default(),
            0.0,
            None,
        );
        assert_eq!(d.replicas, 2);
    }

    const OUTAGE: &str = "sink rows unavailable since 2026-11-30T04:00:00Z";

    #[test]
    fn a_reported_outage_holds_scale_up_and_says_why() {
        let policy = scaling(1, 10, 30);
        let mut history = History::default();
        let d = decide(&policy, 2, &ready(900), &mut history, 0.0, Some(OUTAGE));
        assert_eq!(
            (d.replicas, d.wanted, d.reason, d.event),
            (2, 9, None, None)
        );
        assert_eq!(
            d.held.as_deref(),
            Some("holding at 2: sink rows unavailable since 2026-11-30T04:00:00Z")
        );
        // The outage ends: the backlog scales up at once, nothing held.
        let d = decide(&policy, 2, &ready(900), &mut history, 5.0, None);
        assert_eq!((d.replicas, d.held), (9, None));
        assert_eq!(d.event, Some("ScaledUp"));
    }

    #[test]
    fn nothing_is_held_when_the_backlog_asks_for_no_more() {
        let d = decide(
            &scaling(1, 10, 30),
            3,
            &ready(250),
            &mut History::default(),
            0.0,
            Some(OUTAGE),
        );
        assert_eq!((d.replicas, d.reason, d.held), (3, None, None));
    }

    #[test]
    fn during_an_outage_scale_down_and_bounds_still_apply() {
        let policy = scaling(1, 10, 30);
        let mut history = History::default();
        assert_eq!(
            decide(&policy, 8, &ready(800), &mut history, 0.0, None).replicas,
            8
        );
        // The backlog drained before the sink went down: scale-down follows the delay and
        // the step limit as usual.
        for t in [5.0, 20.0] {
            let d = decide(&policy, 8, &ready(0), &mut history, t, Some(OUTAGE));
            assert_eq!((d.replicas, d.reason), (8, None), "at {t}s");
        }
        let d = decide(&policy, 8, &ready(0), &mut history, 31.0, Some(OUTAGE));
        assert_eq!((d.replicas, d.event), (4, Some("ScaledDown")));
        // Above maxReplicas comes down; below minReplicas goes up to it, and no further.
        let d = decide(
            &scaling(1, 3, 30),
            5,
            &ready(900),
            &mut History::default(),
            0.0,
            Some(OUTAGE),
        );
        assert_eq!(d.replicas, 3);
        let d = decide(
            &scaling(2, 10, 30),
            1,
            &ready(900),
            &mut History::default(),
            0.0,
            Some(OUTAGE),
        );
        assert_eq!((d.replicas, d.event), (2, Some("ScaledUp")));
        assert!(d.reason.expect("changed").contains("below minReplicas"));
        assert_eq!(
            d.held.as_deref(),
            Some(format!("holding at 2: {OUTAGE}").as_str())
        );
    }

    #[test]
    fn a_stopped_worker_wakes_to_one_replica_even_with_an_outage_reported() {
        let policy = scaling(0, 10, 30);
        let mut history = History::default();
        assert_eq!(
            decide(&policy, 0, &ready(0), &mut history, 0.0, Some(OUTAGE)).replicas,
            0
        );
        let d = decide(&policy, 0, &ready(500), &mut history, 5.0, Some(OUTAGE));
        assert_eq!((d.replicas, d.event), (1, Some("WokeUp")));
        assert!(d.reason.expect("changed").contains("0 → 1"));
        // Without an outage the same backlog wakes it to what the backlog asks for.
        let d = decide(&policy, 0, &ready(500), &mut History::default(), 5.0, None);
        assert_eq!(d.replicas, 5);
    }
}
