//! `xrename`: run programs with cross-device renames emulated, explain why a
//! rename fails with EXDEV, move files with xrename's guarantees, and find
//! what an interrupted move left behind.
//!
//! Conventions follow `faketime`, `eatmydata` and `strace`: options first,
//! then the command, which inherits the terminal and whose exit status
//! becomes ours (128 + signal if it was killed). Errors of xrename itself
//! exit with 125, a command that cannot be found with 127, one that cannot
//! be executed with 126.
#![deny(unsafe_code)]

mod clean;
mod cli;
mod explain;
mod libman;
mod mountinfo;
mod mv;
mod ptrace;
mod run;
mod status;
mod trace;

use std::ffi::OsString;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let code = if args.is_empty() {
        let _ = cli::command().write_long_help(&mut std::io::stderr());
        125
    } else {
        match cli::parse(&args) {
            Err(code) => code,
            Ok(m) => match m.subcommand() {
                Some(("explain", m)) => explain::main(m),
                Some(("mv", m)) => mv::main(m),
                Some(("clean", m)) => clean::main(m),
                Some(("lib", _)) => run::print_library(),
                Some(("completions", m)) => {
                    cli::print_completions(*m.get_one("shell").expect("required"));
                    0
                }
                Some(("man", m)) => {
                    let dir: &std::path::PathBuf = m.get_one("dir").expect("required");
                    match cli::write_man_pages(dir) {
                        Ok(()) => 0,
                        Err(e) => fail(format_args!("{}: {e}", dir.display())),
                    }
                }
                _ => run::main(&m),
            },
        }
    };
    ExitCode::from(u8::try_from(code).unwrap_or(125))
}

/// Prints an error of xrename itself and returns the exit code for it.
fn fail(msg: impl std::fmt::Display) -> i32 {
    eprintln!("xrename: {msg}");
    125
}
