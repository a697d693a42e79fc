//! Signal names as runc accepts them (`KILL`, `SIGKILL`, `9`).

use nix::sys::signal::Signal;

#[derive(Debug, thiserror::Error)]
#[error("invalid signal {0:?}")]
pub struct SignalError(pub String);

pub fn parse(name: &str) -> Result<Signal, SignalError> {
    let bad = || SignalError(name.to_string());
    if let Ok(number) = name.parse::<i32>() {
        return Signal::try_from(number).map_err(|_| bad());
    }
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse::<Signal>().map_err(|_| bad())
}

/// The signals `capsa run` forwards to the container's init.
pub const FORWARDED: [Signal; 6] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// [`FORWARDED`] as a set, for blocking and waiting on them.
pub fn forwarded_set() -> nix::sys::signal::SigSet {
    let mut set = nix::sys::signal::SigSet::empty();
    for signal in FORWARDED {
        set.add(signal);
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_runc_spellings() {
        for name in ["KILL", "SIGKILL", "kill", "9"] {
            assert_eq!(parse(name).expect(name), Signal::SIGKILL);
        }
        assert_eq!(parse("TERM").expect("TERM"), Signal::SIGTERM);
        assert_eq!(parse("usr1").expect("usr1"), Signal::SIGUSR1);
    }

    #[test]
    fn rejects_unknown_names_and_numbers() {
        for name in ["FOO", "SIGFOO", "0", "99", "-1", ""] {
            assert_eq!(
                parse(name).expect_err(name).to_string(),
                format!("invalid signal {name:?}")
            );
        }
    }
}
