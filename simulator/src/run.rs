//! A whole run: start every device, show progress once a second, add up the outcome.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::{interval_at, Instant, MissedTickBehavior};

use crate::device::{self, Clock, Outcome, Shared};
use crate::report::{progress_line, Summary};
use crate::settings::Settings;

/// Runs every device to the end (or until Ctrl-C) and returns the summary.
pub async fn run(settings: Settings) -> Summary {
    let shared = Arc::new(Shared::default());
    let start = Instant::now();
    let clock = Clock {
        start,
        stop_new_at: settings.duration.map(|duration| start + duration),
    };
    let device_count = u32::try_from(settings.devices.len()).unwrap_or(u32::MAX);
    let total = settings.total;
    let settings = Arc::new(settings);

    let mut devices = JoinSet::new();
    for spec in settings.devices.iter().cloned() {
        devices.spawn(device::run(spec, settings.clone(), shared.clone(), clock));
    }
    let progress = tokio::spawn(show_progress(shared.clone(), device_count));

    let (outcomes, failed_tasks, interrupted) =
        join_devices(&mut devices, &shared, settings.devices.len()).await;
    progress.abort();
    let seconds = start.elapsed().as_secs_f64();
    let snapshot = shared.counters.snapshot();
    shared
        .console
        .progress(&progress_line(&snapshot, device_count, 0.0));
    shared.console.finish_progress();
    for line in shared.console.error_summary() {
        shared.console.line(&line);
    }

    let mut ack_log_ok = !shared
        .ack_log_failed
        .load(std::sync::atomic::Ordering::Relaxed);
    if let Some(log) = &settings.ack_log {
        if let Err(error) = log.flush() {
            shared.console.line(&format!("error: --ack-log: {error}"));
            ack_log_ok = false;
        }
    }

    let devices_refused = outcomes.iter().filter(|o| o.refused).count();
    let complete = outcomes.len() == settings.devices.len()
        && outcomes.iter().all(|o: &Outcome| o.unacknowledged == 0);
    let ok = complete
        && ack_log_ok
        && !interrupted
        && failed_tasks == 0
        && total.is_none_or(|total| snapshot.acknowledged == total);
    Summary {
        devices: device_count,
        devices_refused: u32::try_from(devices_refused).unwrap_or(u32::MAX),
        expected: total,
        sent: snapshot.sent,
        acknowledged: snapshot.acknowledged,
        errors: snapshot.errors,
        duplicates_resent: snapshot.duplicates_resent,
        seconds,
        rate: if seconds > 0.0 {
            snapshot.acknowledged as f64 / seconds
        } else {
            0.0
        },
        ok,
    }
}

/// Collects every device's outcome; Ctrl-C stops the devices. Also returns how many device
/// tasks failed and whether the run was interrupted.
async fn join_devices(
    devices: &mut JoinSet<Outcome>,
    shared: &Shared,
    count: usize,
) -> (Vec<Outcome>, u32, bool) {
    let mut outcomes = Vec::with_capacity(count);
    let mut failed_tasks = 0u32;
    let mut interrupted = false;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            joined = devices.join_next() => match joined {
                Some(Ok(outcome)) => outcomes.push(outcome),
                Some(Err(error)) => {
                    failed_tasks += 1;
                    shared.console.error("simulator", &format!("device task failed: {error}"));
                }
                None => break,
            },
            _ = &mut ctrl_c, if !interrupted => {
                interrupted = true;
                shared.console.line("interrupted: stopping");
                devices.abort_all();
            }
        }
    }
    (outcomes, failed_tasks, interrupted)
}

/// Prints the progress line every second; the rate is acknowledgements per second since
/// the previous line.
async fn show_progress(shared: Arc<Shared>, devices: u32) {
    let period = Duration::from_secs(1);
    let mut ticks = interval_at(Instant::now() + period, period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut previous = (Instant::now(), 0u64);
    loop {
        ticks.tick().await;
        let snapshot = shared.counters.snapshot();
        let now = Instant::now();
        let elapsed = now.duration_since(previous.0).as_secs_f64();
        let rate = if elapsed > 0.0 {
            snapshot.acknowledged.saturating_sub(previous.1) as f64 / elapsed
        } else {
            0.0
        };
        previous = (now, snapshot.acknowledged);
        shared
            .console
            .progress(&progress_line(&snapshot, devices, rate));
    }
}
