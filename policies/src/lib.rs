//! The expression language, ads, owner policy and job description files.
//!
//! - [`jobfile`]: job description files (TOML) → [`jobfile::JobDescription`]
//!   → one `proto::job::JobSpec` per process; [`submit`] reads the HTCondor
//!   `.sub` subset into the same type; [`jobfile::parse_any`] picks by name.
//! - [`expr`]: the ClassAd-like expression language (parse, print, eval).
//! - [`ad`]: ads (case-insensitive attribute → expression maps), their wire
//!   form, their text form, and [`ad::job_ad`] for a queued job.
//! - [`matching`]: symmetric requirements, rank, and [`matching::explain`]
//!   for `roost why`.
//! - [`policy`]: the workstation owner's policy file and its desktop default.
//!
//! Every fallible entry point returns [`PolicyError`], whose `Display` names
//! the file, the line and column, and the key that is wrong.
#![forbid(unsafe_code)]

pub mod ad;
pub mod expr;
pub mod jobfile;
pub mod matching;
pub mod policy;
mod source;
pub mod submit;

pub use ad::{Ad, job_ad};
pub use expr::{Expr, ParseError, Value};
pub use matching::{Explanation, explain, rank, requirements_hold, symmetric_match};
pub use source::Loc;

/// Everything that can be wrong with a job file, a policy file or an
/// expression.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    /// The file is not valid TOML (or not a valid submit file line).
    #[error("{loc}: {message}")]
    Syntax { loc: Loc, message: String },
    /// A key this kind of file does not know.
    #[error("{loc}: unknown key '{key}' (expected one of: {expected})")]
    UnknownKey {
        loc: Loc,
        key: String,
        expected: String,
    },
    /// A known key with a value of the wrong type or out of range.
    #[error("{loc}: key '{key}': {message}")]
    BadValue {
        loc: Loc,
        key: String,
        message: String,
    },
    /// A key that must be present is not.
    #[error("{file}: missing required key '{key}'")]
    MissingKey { file: String, key: String },
    /// An expression-valued key whose text does not parse; `loc` is the
    /// offending character when it can be known, else the value.
    #[error("{loc}: key '{key}': bad expression: {}", source.message)]
    BadExpression {
        loc: Loc,
        key: String,
        #[source]
        source: ParseError,
    },
    /// An ad attribute whose expression text does not parse.
    #[error("attribute {name}: bad expression at {source}")]
    BadAttribute {
        name: String,
        #[source]
        source: ParseError,
    },
    /// A standalone expression that does not parse.
    #[error("bad expression at {0}")]
    Expression(#[from] ParseError),
    /// A `$(name)` that nothing defines.
    #[error("{loc}: key '{key}': unknown macro $({name}) (defined here: {known})")]
    UnknownMacro {
        loc: Loc,
        key: String,
        name: String,
        known: String,
    },
}
