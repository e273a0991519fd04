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
mod explain;
mod mountinfo;
mod mv;
mod ptrace;
mod run;
mod trace;

use std::ffi::OsString;
use std::process::ExitCode;

const VERSION: &str = env!("CARGO_PKG_VERSION");

const HELP: &str = "\
xrename: make rename(2) work across filesystems

Usage:
  xrename [OPTIONS] [--] CMD [ARGS...]   run CMD and all it starts with every EXDEV handled
                                          (traced; LD_PRELOAD only where tracing is impossible)
  xrename explain SRC DST                 say whether rename(SRC, DST) fails with EXDEV, and why
  xrename mv [OPTIONS] SRC... DST         move with xrename's guarantees (atomic, durable)
  xrename clean [--remove] DIR...         find leftovers of interrupted moves (.xrename-*)
  xrename help [SUBCOMMAND] | --help | --version

Options for running a command:
  --log FILE|-     log every EXDEV met, one JSON line each, to FILE or stderr (XRENAME_LOG)
  --summary        when CMD exits, print what xrename did across all its processes
  --observe        do not emulate: log every EXDEV and return it as the kernel did
  --no-fsync       skip fsync: faster, UNSAFE (a crash may lose moved data)
  --no-dirs        leave directory moves to the program (it gets EXDEV)
  --trace          trace, or fail (exit 125) where tracing is impossible
  --preload        LD_PRELOAD only, no tracing: cheaper for rename-heavy dynamic programs,
                   and usable under a debugger or strace; misses static, Go and raw-syscall
                   programs

Examples:
  xrename python3 app.py                      # os.rename across filesystems just works
  xrename --summary -- make install
  xrename --observe --log - ./legacy-tool     # which renames fail, and where?
  xrename explain /tmp/report.pdf /mnt/usb/
  xrename mv -v --progress big.iso /mnt/backup/

The library is found next to this program, in ../lib/xrename/, or at $XRENAME_LIB.
";

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let code = match args.first().and_then(|a| a.to_str()) {
        None => {
            eprint!("{HELP}");
            125
        }
        Some("-h" | "--help") => {
            print!("{HELP}");
            0
        }
        Some("help") => help(args.get(1).and_then(|a| a.to_str())),
        Some("-V" | "--version") => {
            println!("xrename {VERSION}");
            0
        }
        Some("explain") => explain::main(&args[1..]),
        Some("mv") => mv::main(&args[1..]),
        Some("clean") => clean::main(&args[1..]),
        Some(_) => run::main(&args),
    };
    ExitCode::from(u8::try_from(code).unwrap_or(125))
}

fn help(topic: Option<&str>) -> i32 {
    match topic {
        Some("explain") => print!("{}", explain::HELP),
        Some("mv") => print!("{}", mv::HELP),
        Some("clean") => print!("{}", clean::HELP),
        _ => print!("{HELP}"),
    }
    0
}

/// Prints an error of xrename itself and returns the exit code for it.
fn fail(msg: impl std::fmt::Display) -> i32 {
    eprintln!("xrename: {msg}");
    125
}
