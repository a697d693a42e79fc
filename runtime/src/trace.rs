//! Phase tracing for `capsa bench startup`: with `CAPSA_TRACE=FILE` in the
//! environment, each phase boundary appends `NAME MONOTONIC_NS` to FILE.
//! capsa, its init and the VMM are separate processes; appends of one short
//! line are atomic, and CLOCK_MONOTONIC is shared, so the lines interleave
//! into one timeline. Without the variable, an event costs one lookup.

use std::io::Write;
use std::sync::OnceLock;

pub const ENV: &str = "CAPSA_TRACE";

/// Opened once, by capsa's first event; the init inherits the open file
/// through its clone, so it can still append after pivot_root.
fn target() -> Option<&'static std::fs::File> {
    static TARGET: OnceLock<Option<std::fs::File>> = OnceLock::new();
    TARGET
        .get_or_init(|| {
            let path = std::env::var_os(ENV)?;
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .ok()
        })
        .as_ref()
}

pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// Records that phase boundary `name` was reached now.
pub fn event(name: &str) {
    let Some(mut file) = target() else { return };
    let line = format!("{name} {}\n", monotonic_ns());
    // Tracing must never change an outcome: failures are ignored.
    let _ = file.write_all(line.as_bytes());
}

/// Parses a trace file into (name, ns) pairs in time order.
pub fn parse(text: &str) -> Vec<(String, u64)> {
    let mut events: Vec<(String, u64)> = text
        .lines()
        .filter_map(|line| {
            let (name, ns) = line.split_once(' ')?;
            Some((name.to_string(), ns.trim().parse().ok()?))
        })
        .collect();
    events.sort_by_key(|e| e.1);
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_orders_events_and_skips_garbage() {
        let events = parse("created 30\ncli 10\nbroken\nlaunch x\nexited 50\n");
        assert_eq!(
            events,
            vec![
                ("cli".into(), 10),
                ("created".into(), 30),
                ("exited".into(), 50)
            ]
        );
    }
}
