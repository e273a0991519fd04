//! The `XRENAME_*` settings, read once when the library is loaded.
//!
//! Reading the environment takes a lock inside libc and may allocate, so it
//! never happens on a rename call; a program that changes its environment
//! later does not change xrename's behaviour.
//!
//! | variable | meaning |
//! | --- | --- |
//! | `XRENAME_DISABLE=1` | pure pass-through: `EXDEV` is returned as the kernel gave it |
//! | `XRENAME_MODE=observe` | do not emulate; log every `EXDEV` and return it as the kernel did |
//! | `XRENAME_LOG=stderr` or `=/path` | one JSON line per `EXDEV` met (see [`crate::log`]) |
//! | `XRENAME_SUMMARY_LOG=/path` | the same lines, for `xrename --summary` |
//! | `XRENAME_FSYNC=0` | skip every fsync: faster, and unsafe on a crash |
//! | `XRENAME_DIRS=0` | leave directory moves to the program (EXDEV) |

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStringExt;
use std::sync::OnceLock;

use crate::engine::Options;

/// Where log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    /// File descriptor 2.
    Stderr,
    /// A file opened with `O_APPEND` for each line.
    File(CString),
}

/// The settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// `XRENAME_DISABLE`: never emulate, never log.
    pub disabled: bool,
    /// `XRENAME_MODE=observe`: never emulate, log every EXDEV.
    pub observe: bool,
    /// `XRENAME_LOG`, then `XRENAME_SUMMARY_LOG`.
    pub logs: Vec<LogTarget>,
    /// Settings passed to the engine.
    pub engine: Options,
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

impl Config {
    /// Builds the settings from a variable lookup (the environment, or a test's map).
    pub fn from_vars(var: impl Fn(&str) -> Option<OsString>) -> Config {
        let flag = |name: &str, default: bool| match var(name) {
            None => default,
            Some(v) => !matches!(v.to_str(), Some("" | "0" | "no" | "false" | "off")),
        };
        let log = var("XRENAME_LOG").and_then(|v| match v.to_str() {
            Some("") => None,
            Some("stderr" | "-") => Some(LogTarget::Stderr),
            _ => CString::new(v.into_vec()).ok().map(LogTarget::File),
        });
        let summary = var("XRENAME_SUMMARY_LOG")
            .filter(|v| !v.is_empty())
            .and_then(|v| CString::new(v.into_vec()).ok().map(LogTarget::File));
        Config {
            disabled: flag("XRENAME_DISABLE", false),
            observe: var("XRENAME_MODE").is_some_and(|v| v == "observe"),
            logs: log.into_iter().chain(summary).collect(),
            engine: Options {
                fsync: flag("XRENAME_FSYNC", true),
                dirs: flag("XRENAME_DIRS", true),
                progress: None,
                // Other names of a multi-link file moved earlier become links.
                links: Some(std::sync::Arc::new(crate::engine::links::Links::new())),
            },
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
    }

    #[test]
    fn log_targets() {
        assert_eq!(from(&[("XRENAME_LOG", "stderr")]).logs, [LogTarget::Stderr]);
        assert_eq!(from(&[("XRENAME_LOG", "/tmp/x.log")]).logs, [LogTarget::File(c"/tmp/x.log".into())]);
        assert!(from(&[("XRENAME_LOG", "")]).logs.is_empty());
        let both = from(&[("XRENAME_LOG", "-"), ("XRENAME_SUMMARY_LOG", "/s")]).logs;
        assert_eq!(both, [LogTarget::Stderr, LogTarget::File(c"/s".into())]);
    }

    #[test]
    fn fsync_and_directories_can_be_turned_off() {
        assert!(!from(&[("XRENAME_FSYNC", "0")]).engine.fsync);
        assert!(!from(&[("XRENAME_DIRS", "0")]).engine.dirs);
    }

    #[test]
    fn observe_mode() {
        assert!(from(&[("XRENAME_MODE", "observe")]).observe);
        assert!(!from(&[("XRENAME_MODE", "emulate")]).observe);
    }
}
