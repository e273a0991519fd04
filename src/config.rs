//! The `XRENAME_*` settings, read once when the library is loaded.
//!
//! Reading the environment takes a lock inside libc and may allocate, so it
//! never happens on a rename call; a program that changes its environment
//! later does not change xrename's behaviour.
//!
//! The variables, their values and meanings are defined once, in
//! [`xrename_engine::vars`] (also the source of the libxrename(7) man page).

use std::ffi::{CString, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::OnceLock;

use xrename_engine::{Options, vars, virtualisers};

/// Where log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    /// File descriptor 2.
    Stderr,
    /// A file opened with `O_APPEND` for each line (created if missing).
    File(CString),
    /// The summary log `xrename --summary` made: opened with `O_APPEND`
    /// for each line, never created and never through a symlink (its name
    /// sits in a shared temp directory; once the command has removed it, a
    /// process that outlives the command must not write through whatever
    /// someone put there).
    Made(CString),
}

/// The settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// `XRENAME_DISABLE`: never emulate, never log.
    pub disabled: bool,
    /// `XRENAME_MODE=observe`: never emulate, log every EXDEV.
    pub observe: bool,
    /// Values that were not understood, for the log.
    pub note: Option<&'static str>,
    /// `XRENAME_LOG`, then `XRENAME_SUMMARY_LOG`.
    pub logs: Vec<LogTarget>,
    /// Settings passed to the engine.
    pub engine: Options,
    /// `XRENAME_DEBUG=panic`: each move panics where the engine runs.
    pub debug_panic: bool,
    /// `XRENAME_SUPERVISOR`: the process runs under `xrename --trace`,
    /// whose supervisor has already handled (or deliberately left) every
    /// EXDEV this library could see: it stands aside, so that no call is
    /// ever handled twice.
    pub supervised: bool,
}

static CONFIG: OnceLock<Config> = OnceLock::new();

/// Reads the environment; called from the library constructor.
pub fn init() {
    get();
}

/// The settings, read from the environment on first use.
pub fn get() -> &'static Config {
    CONFIG.get_or_init(|| Config::from_vars(|name| std::env::var_os(name)))
}

static INTERPOSER: OnceLock<Option<&'static str>> = OnceLock::new();

/// Whether another library virtualises the filesystem (see
/// `real::interposer`), looked up at the first EXDEV rather than at load:
/// some 36 symbol lookups every preloaded process would pay for nothing.
pub fn interposer() -> Option<&'static str> {
    *INTERPOSER
        .get_or_init(|| crate::real::interposer().map(|lib| &*Box::leak(virtualisers::step(&lib).into_boxed_str())))
}

/// A yes/no value, read case-insensitively; `None` if not understood.
fn yes_no(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "yes" | "y" | "true" | "t" | "on" => Some(true),
        "0" | "no" | "n" | "false" | "f" | "off" => Some(false),
        _ => None,
    }
}

impl Config {
    /// Builds the settings from a variable lookup (the environment, or a test's map).
    ///
    /// Values are read case-insensitively. A value that is not understood
    /// is never taken as "emulate": an unknown `XRENAME_DISABLE` or
    /// `XRENAME_MODE` means pass-through, an unknown `XRENAME_DIRS` leaves
    /// directories to the program, an unknown `XRENAME_FSYNC` keeps fsync;
    /// and the log lines say which value was not understood.
    pub fn from_vars(var: impl Fn(&str) -> Option<OsString>) -> Config {
        let mut notes = Vec::new();
        let mut flag = |name: &str, default: bool, if_unknown: bool| match var(name) {
            // Set but empty (`XRENAME_FSYNC=` by accident): as if unset.
            None => default,
            Some(v) if v.is_empty() => default,
            Some(v) => match v.to_str().and_then(yes_no) {
                Some(b) => b,
                None => {
                    notes.push(format!("{name}={} not understood", v.to_string_lossy()));
                    if_unknown
                }
            },
        };
        let disabled = flag(vars::DISABLE.name, false, true);
        let fsync = flag(vars::FSYNC.name, true, true);
        let dirs = flag(vars::DIRS.name, true, false);
        let (observe, mode_passthrough) = match var(vars::MODE.name) {
            None => (false, false),
            Some(v) => match v.to_str().map(str::to_ascii_lowercase).as_deref() {
                Some("" | "emulate") => (false, false),
                Some("observe") => (true, false),
                _ => {
                    notes.push(format!("XRENAME_MODE={} not understood", v.to_string_lossy()));
                    (false, true)
                }
            },
        };
        let threads = match vars::threads(var(vars::THREADS.name).as_deref().map(|v| v.as_bytes())) {
            Ok(n) => n,
            Err(v) => {
                notes.push(format!("{}={v} not understood", vars::THREADS.name));
                None
            }
        };
        let log = var(vars::LOG.name).and_then(|v| match v.to_str() {
            Some("") => None,
            Some(s) if s.eq_ignore_ascii_case("stderr") || s == "-" => Some(LogTarget::Stderr),
            _ => CString::new(v.into_vec()).ok().map(LogTarget::File),
        });
        let summary = var(vars::SUMMARY_LOG.name)
            .filter(|v| !v.is_empty())
            .and_then(|v| CString::new(v.into_vec()).ok().map(LogTarget::Made));
        // Leaked once per process, so that log lines can carry it.
        let disabled = disabled || mode_passthrough;
        let verdict = if disabled { "pass-through" } else { "the safe choice taken" };
        let note: Option<&'static str> =
            (!notes.is_empty()).then(|| &*Box::leak(format!("{}: {verdict}", notes.join(", ")).into_boxed_str()));
        let debug = var(vars::DEBUG.name);
        let debug_panic = debug.as_ref().is_some_and(|v| v.eq_ignore_ascii_case("panic"));
        let progress = debug
            .is_some_and(|v| v.eq_ignore_ascii_case("panic-in-thread"))
            .then(|| std::sync::Arc::new(PanicInThread) as std::sync::Arc<dyn xrename_engine::Progress>);
        let supervised = var(vars::SUPERVISOR.name).is_some_and(|v| !v.is_empty());
        Config {
            debug_panic,
            supervised,
            disabled,
            observe,
            note,
            logs: log.into_iter().chain(summary).collect(),
            engine: Options {
                fsync,
                dirs,
                progress,
                // Other names of a multi-link file moved earlier become links.
                links: Some(std::sync::Arc::new(xrename_engine::links::Links::new())),
                leases: None,
                stages: None,
                threads,
                follow_cwd: true,
            },
        }
    }
}

/// `XRENAME_DEBUG=panic-in-thread`: counting progress panics on a thread
/// of the engine's crew (named "xrename"), so that a test can see what a
/// panic there does (EXDEV, nothing printed).
#[derive(Debug)]
struct PanicInThread;

impl xrename_engine::Progress for PanicInThread {
    fn bytes(&self, _: u64) {
        self.object();
    }

    fn object(&self) {
        if std::thread::current().name() == Some("xrename") {
            panic!("XRENAME_DEBUG=panic-in-thread");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(pairs: &[(&str, &str)]) -> Config {
        Config::from_vars(|name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| OsString::from(v)))
    }

    #[test]
    fn defaults_emulate_with_fsync_and_no_log() {
        let c = from(&[]);
        assert!(!c.disabled);
        assert!(c.engine.fsync && c.engine.dirs && !c.observe);
        assert!(c.logs.is_empty());
    }

    #[test]
    fn disable_accepts_one_and_rejects_zero() {
        assert!(from(&[("XRENAME_DISABLE", "1")]).disabled);
        assert!(!from(&[("XRENAME_DISABLE", "0")]).disabled);
        assert!(!from(&[("XRENAME_DISABLE", "")]).disabled);
        assert!(from(&[("XRENAME_FSYNC", "")]).engine.fsync, "empty is unset, not off");
    }

    #[test]
    fn log_targets() {
        assert_eq!(from(&[("XRENAME_LOG", "stderr")]).logs, [LogTarget::Stderr]);
        assert_eq!(from(&[("XRENAME_LOG", "/tmp/x.log")]).logs, [LogTarget::File(c"/tmp/x.log".into())]);
        assert!(from(&[("XRENAME_LOG", "")]).logs.is_empty());
        let both = from(&[("XRENAME_LOG", "-"), ("XRENAME_SUMMARY_LOG", "/s")]).logs;
        assert_eq!(both, [LogTarget::Stderr, LogTarget::Made(c"/s".into())]);
    }

    #[test]
    fn fsync_and_directories_can_be_turned_off() {
        assert!(!from(&[("XRENAME_FSYNC", "0")]).engine.fsync);
        assert!(!from(&[("XRENAME_DIRS", "0")]).engine.dirs);
    }

    #[test]
    fn observe_mode() {
        assert!(from(&[("XRENAME_MODE", "observe")]).observe);
        assert!(from(&[("XRENAME_MODE", "OBSERVE")]).observe);
        assert!(from(&[("XRENAME_MODE", "Observe")]).observe);
        assert!(!from(&[("XRENAME_MODE", "emulate")]).observe);
    }

    #[test]
    fn values_are_read_case_insensitively() {
        for off in ["FALSE", "No", "OFF", "0", "false"] {
            assert!(!from(&[("XRENAME_DISABLE", off)]).disabled, "{off}");
            assert!(!from(&[("XRENAME_FSYNC", off)]).engine.fsync, "{off}");
        }
        for on in ["TRUE", "Yes", "ON", "1"] {
            assert!(from(&[("XRENAME_DISABLE", on)]).disabled, "{on}");
        }
        assert_eq!(from(&[("XRENAME_LOG", "STDERR")]).logs, [LogTarget::Stderr]);
    }

    #[test]
    fn a_value_not_understood_is_never_taken_as_emulate() {
        let c = from(&[("XRENAME_MODE", "emulat")]);
        assert!(c.disabled && !c.observe);
        assert_eq!(c.note, Some("XRENAME_MODE=emulat not understood: pass-through"));
        assert!(from(&[("XRENAME_DISABLE", "maybe")]).disabled);
        let dirs = from(&[("XRENAME_DIRS", "sometimes")]);
        assert_eq!(dirs.note, Some("XRENAME_DIRS=sometimes not understood: the safe choice taken"));
        assert!(!from(&[("XRENAME_DIRS", "sometimes")]).engine.dirs);
        assert!(from(&[("XRENAME_FSYNC", "lazy")]).engine.fsync);
        assert!(from(&[]).note.is_none());
    }

    #[test]
    fn threads_are_a_whole_number_from_one_up_or_the_default() {
        assert_eq!(from(&[]).engine.threads, None);
        assert_eq!(from(&[("XRENAME_THREADS", "")]).engine.threads, None);
        assert_eq!(from(&[("XRENAME_THREADS", "1")]).engine.threads, Some(1));
        assert_eq!(from(&[("XRENAME_THREADS", " 4 ")]).engine.threads, Some(4));
        for bad in ["0", "-2", "many", "2.5"] {
            let c = from(&[("XRENAME_THREADS", bad)]);
            assert_eq!(c.engine.threads, None, "{bad}");
            assert_eq!(
                c.note.map(str::to_owned),
                Some(format!("XRENAME_THREADS={bad} not understood: the safe choice taken"))
            );
            assert!(!c.disabled, "{bad}");
        }
    }
}
