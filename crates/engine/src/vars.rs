//! The `XRENAME_*` environment variables the library reads: names, values
//! and meanings, defined once for the library (which reads them by these
//! names) and for its man page, libxrename(7), which the command writes.

/// One variable.
#[derive(Debug, Clone, Copy)]
pub struct Var {
    /// Its name.
    pub name: &'static str,
    /// The values it takes, as shown to users.
    pub values: &'static str,
    /// What it does.
    pub meaning: &'static str,
}

/// Pure pass-through.
pub const DISABLE: Var = Var {
    name: "XRENAME_DISABLE",
    values: "1",
    meaning: "Pure pass-through: EXDEV is returned exactly as the kernel gave it; nothing is logged.",
};
/// Observe mode.
pub const MODE: Var = Var {
    name: "XRENAME_MODE",
    values: "observe",
    meaning: "Do not emulate: log every EXDEV and return it as the kernel did.",
};
/// The log.
pub const LOG: Var = Var {
    name: "XRENAME_LOG",
    values: "stderr | /path/file",
    meaning: "One JSON line per EXDEV met, on standard error or appended to the file.",
};
/// fsync.
pub const FSYNC: Var = Var {
    name: "XRENAME_FSYNC",
    values: "0",
    meaning: "Skip every fsync: faster, and UNSAFE: a crash may lose the moved data.",
};
/// Directory moves.
pub const DIRS: Var =
    Var { name: "XRENAME_DIRS", values: "0", meaning: "Leave directory moves to the program (it gets EXDEV)." };
/// The summary log.
pub const SUMMARY_LOG: Var =
    Var { name: "XRENAME_SUMMARY_LOG", values: "/path", meaning: "A second log file, used by xrename --summary." };
/// Set by the supervisor.
pub const SUPERVISOR: Var = Var {
    name: "XRENAME_SUPERVISOR",
    values: "PID",
    meaning: "Set by xrename for the programs it traces: the supervisor handles every EXDEV and a \
              preloaded library stands aside, so that no call is handled twice.",
};
/// Test knob.
pub const DEBUG: Var = Var {
    name: "XRENAME_DEBUG",
    values: "panic | panic-in-thread",
    meaning: "For tests only: every move panics inside the library, on the calling thread (panic) or \
              on a thread of a tree move's crew, as soon as it copies a file (panic-in-thread); the \
              program gets EXDEV, nothing changes, nothing is printed.",
};

/// Threads of a tree move.
pub const THREADS: Var = Var {
    name: "XRENAME_THREADS",
    values: "N",
    meaning: "Most threads a directory tree move uses, the calling thread's included (1: no other \
              thread). Default: one per CPU the program may run on, at most 8.",
};

/// Every variable, in the order the man page lists them.
pub const ALL: [Var; 9] = [DISABLE, MODE, LOG, FSYNC, DIRS, THREADS, SUMMARY_LOG, SUPERVISOR, DEBUG];

/// The value of [`THREADS`] (`None` if unset or empty), or `Err` with the
/// value when it is not a whole number from 1 up.
pub fn threads(value: Option<&[u8]>) -> Result<Option<usize>, String> {
    match value {
        None | Some(b"") => Ok(None),
        Some(v) => match std::str::from_utf8(v).ok().and_then(|s| s.trim().parse::<usize>().ok()) {
            Some(n) if n >= 1 => Ok(Some(n)),
            _ => Err(String::from_utf8_lossy(v).into_owned()),
        },
    }
}
