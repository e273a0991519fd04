//! xrename: `rename(2)` that also works across devices.
//!
//! Loaded with `LD_PRELOAD`, this library interposes `rename`, `renameat` and
//! `renameat2`. Every call goes to the real function first; only when the
//! kernel answers `EXDEV` (the two paths sit on different mounts, a bind
//! mount of the same filesystem, or a lower-layer directory of overlayfs)
//! does xrename move the object itself: copied into an unnamed temp file in
//! the destination directory, metadata applied, fsynced, installed
//! atomically, and only then is the source removed.
//!
//! Layout, one responsibility per module:
//! - [`hooks`]: the three exported C functions, the only place that knows the C ABI.
//! - [`real`]: the next definitions of the hooked functions, resolved once.
//! - [`config`]: the `XRENAME_*` settings, read once at load.
//! - [`log`]: one JSON line per `EXDEV` handled.
//!
//! The move itself is the `xrename-engine` crate (safe Rust on file
//! descriptors), which the `xrename` command uses too.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod hooks;
pub mod log;
pub mod real;
