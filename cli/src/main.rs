//! `roost`, the user's command: parses the command line and runs it (see
//! `roost --help`); the work is in the `cli` library.
#![forbid(unsafe_code)]

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = cli::args::Cli::parse();
    match cli::run(args) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        // `roost q | head`: the reader left; stop quietly, as a killed-by-SIGPIPE tool would.
        Err(e) if cli::is_broken_pipe(&e) => ExitCode::from(141),
        Err(e) => {
            eprintln!("roost: {e:#}");
            ExitCode::FAILURE
        }
    }
}
