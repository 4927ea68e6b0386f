//! Which device sends how many messages, and when.
//!
//! Messages are numbered globally in round-robin order: global message `g` belongs to
//! device `g % N` (0-based) and is that device's message `g / N`. So device `i` gets
//! `TOTAL / N` messages, one more for the first `TOTAL % N` devices, and with a total rate
//! `R` global message `g` is due `g / R` seconds after the start: the devices interleave
//! evenly instead of bursting together.

use std::time::Duration;

/// How many messages device `index` (0-based) of `devices` sends out of `total`.
pub fn messages_for_device(total: u64, devices: u32, index: u32) -> u64 {
    let devices = u64::from(devices.max(1));
    let index = u64::from(index);
    total / devices + u64::from(index < total % devices)
}

/// When message `k` (0-based, per device) of device `index` of `devices` is due, after the
/// start, for a total rate of `rate` messages per second across all devices. `None` when
/// `rate` is 0 (or not a positive number): send as fast as acknowledgements allow.
pub fn due_after(rate: f64, devices: u32, index: u32, k: u64) -> Option<Duration> {
    if !(rate.is_finite() && rate > 0.0) {
        return None;
    }
    let global = k as f64 * f64::from(devices.max(1)) + f64::from(index);
    Duration::try_from_secs_f64(global / rate).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_split_gives_every_device_the_same_count() {
        let counts: Vec<u64> = (0..20).map(|i| messages_for_device(2000, 20, i)).collect();
        assert!(counts.iter().all(|&c| c == 100));
    }

    #[test]
    fn remainder_goes_to_the_first_devices() {
        let counts: Vec<u64> = (0..4).map(|i| messages_for_device(10, 4, i)).collect();
        assert_eq!(counts, vec![3, 3, 2, 2]);
        assert_eq!(counts.iter().sum::<u64>(), 10);
    }

    #[test]
    fn fewer_messages_than_devices_leaves_some_idle() {
        let counts: Vec<u64> = (0..5).map(|i| messages_for_device(3, 5, i)).collect();
        assert_eq!(counts, vec![1, 1, 1, 0, 0]);
    }

    #[test]
    fn zero_rate_means_unpaced() {
        assert_eq!(due_after(0.0, 4, 1, 10), None);
        assert_eq!(due_after(f64::NAN, 4, 1, 10), None);
    }

    #[test]
    fn devices_interleave_at_the_total_rate() {
        // 4 devices, 100 msg/s in total: one message every 10 ms, round robin.
        let ms = |index, k| {
            due_after(100.0, 4, index, k)
                .map(|d| d.as_millis())
                .unwrap_or(u128::MAX)
        };
        assert_eq!([ms(0, 0), ms(1, 0), ms(2, 0), ms(3, 0)], [0, 10, 20, 30]);
        assert_eq!([ms(0, 1), ms(3, 1)], [40, 70]);
        // Device 2's 25th message: global message 4 * 25 + 2 = 102 → 1.02 s.
        assert_eq!(ms(2, 25), 1020);
    }
}
