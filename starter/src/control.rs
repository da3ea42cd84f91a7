//! The ownerd ⇄ starter control channel: one command per line on the
//! starter's standard input. The starter carries them out through
//! [`crate::job::JobControl`].
//!
//! ```text
//! suspend
//! continue
//! vacate [max_vacate_time=SECS] REASON
//! kill REASON
//! ```
//!
//! `max_vacate_time` is the owner's policy's `MaxVacateTime` when the
//! vacate was decided: the checkpoint that a vacate takes is abandoned and
//! the job killed once it runs longer.
//!
//! End of input means nothing: the starter keeps running its job.

const MAX_VACATE: &str = "max_vacate_time=";

/// A command from the ownerd to its starter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Stop the job's processes (SIGSTOP to its process group).
    Suspend,
    /// Resume them (SIGCONT).
    Continue,
    /// Leave the machine: the job is ended (a later change checkpoints it
    /// first) and goes back to the queue.
    Vacate {
        reason: String,
        /// Longest the vacate's checkpoint may take (the starter's default
        /// when `None`).
        max_secs: Option<u64>,
    },
    /// Leave the machine at once.
    Kill { reason: String },
}

impl Control {
    /// The command as one line, newline included. Reasons lose line breaks.
    pub fn to_line(&self) -> String {
        let clean = |r: &str| r.replace(['\n', '\r'], " ");
        match self {
            Control::Suspend => "suspend\n".into(),
            Control::Continue => "continue\n".into(),
            Control::Vacate {
                reason,
                max_secs: None,
            } => format!("vacate {}\n", clean(reason)),
            Control::Vacate {
                reason,
                max_secs: Some(s),
            } => format!("vacate {MAX_VACATE}{s} {}\n", clean(reason)),
            Control::Kill { reason } => format!("kill {}\n", clean(reason)),
        }
    }

    /// Reads one line (without or with its newline).
    pub fn parse(line: &str) -> Option<Control> {
        let line = line.trim_end_matches(['\n', '\r']);
        let (word, mut rest) = line.split_once(' ').unwrap_or((line, ""));
        let mut max_secs = None;
        if word == "vacate"
            && let Some(v) = rest.strip_prefix(MAX_VACATE)
        {
            let (n, more) = v.split_once(' ').unwrap_or((v, ""));
            max_secs = Some(n.parse().ok()?);
            rest = more;
        }
        let reason = || {
            if rest.is_empty() {
                "asked by the execute host".to_string()
            } else {
                rest.to_string()
            }
        };
        match word {
            "suspend" => Some(Control::Suspend),
            "continue" => Some(Control::Continue),
            "vacate" => Some(Control::Vacate {
                reason: reason(),
                max_secs,
            }),
            "kill" => Some(Control::Kill { reason: reason() }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        for c in [
            Control::Suspend,
            Control::Continue,
            Control::Vacate {
                reason: "PREEMPT is true".into(),
                max_secs: None,
            },
            Control::Vacate {
                reason: "the owner's policy vacates the job".into(),
                max_secs: Some(7),
            },
            Control::Kill {
                reason: "too slow".into(),
            },
        ] {
            assert_eq!(Control::parse(&c.to_line()), Some(c));
        }
        assert_eq!(
            Control::Vacate {
                reason: "a\nb".into(),
                max_secs: None,
            }
            .to_line(),
            "vacate a b\n"
        );
        assert_eq!(
            Control::parse("vacate max_vacate_time=30 owner back"),
            Some(Control::Vacate {
                reason: "owner back".into(),
                max_secs: Some(30)
            })
        );
        assert_eq!(Control::parse("vacate max_vacate_time=soon x"), None);
        assert_eq!(
            Control::parse("kill"),
            Some(Control::Kill {
                reason: "asked by the execute host".into()
            })
        );
        assert_eq!(Control::parse("reboot now"), None);
        assert_eq!(Control::parse(""), None);
    }
}
