//! The ownerd ⇄ starter control channel: one command per line on the
//! starter's standard input. The starter carries them out through
//! [`crate::job::JobControl`].
//!
//! ```text
//! suspend
//! continue
//! vacate REASON
//! kill REASON
//! ```
//!
//! End of input means nothing: the starter keeps running its job.

/// A command from the ownerd to its starter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Stop the job's processes (SIGSTOP to its process group).
    Suspend,
    /// Resume them (SIGCONT).
    Continue,
    /// Leave the machine: the job is ended (a later change checkpoints it
    /// first) and goes back to the queue.
    Vacate { reason: String },
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
            Control::Vacate { reason } => format!("vacate {}\n", clean(reason)),
            Control::Kill { reason } => format!("kill {}\n", clean(reason)),
        }
    }

    /// Reads one line (without or with its newline).
    pub fn parse(line: &str) -> Option<Control> {
        let line = line.trim_end_matches(['\n', '\r']);
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
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
            "vacate" => Some(Control::Vacate { reason: reason() }),
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
            },
            Control::Kill {
                reason: "too slow".into(),
            },
        ] {
            assert_eq!(Control::parse(&c.to_line()), Some(c));
        }
        assert_eq!(
            Control::Vacate {
                reason: "a\nb".into()
            }
            .to_line(),
            "vacate a b\n"
        );
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
