//! `xrename mv [OPTIONS] SRC... DST`: a cross-device mv with xrename's
//! guarantees, from the same engine as the library.
//!
//! Each source is first given to `rename(2)` (a raw syscall); only on EXDEV
//! does the engine copy, sync, install atomically, and remove the source.
//! As with mv, a DST that is an existing directory receives the sources
//! (unless `-T`).

use std::ffi::{CString, OsString};
use std::io::IsTerminal;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustix::io::Errno;
use xrename_engine::{self as engine, Op, Options, Report, Request};

pub fn main(m: &clap::ArgMatches) -> i32 {
    let verbose = m.get_flag("verbose");
    let progress = m.get_flag("progress");
    let no_target_dir = m.get_flag("no-target-directory");
    let fsync = !m.get_flag("no-fsync");
    let mut paths: Vec<PathBuf> = m.get_many::<OsString>("paths").into_iter().flatten().map(PathBuf::from).collect();
    if paths.len() < 2 {
        return usage("mv takes SRC... DST (see xrename help mv)");
    }
    let dst = paths.pop().expect("checked");
    let into_dir = !no_target_dir && dst.is_dir();
    if paths.len() > 1 && !into_dir {
        return usage(format_args!("target {} is not a directory", dst.display()));
    }
    let bar = progress && std::io::stderr().is_terminal();
    let mut status = 0;
    for src in &paths {
        let target = match (into_dir, src.file_name()) {
            (true, Some(name)) => dst.join(name),
            _ => dst.clone(),
        };
        match move_one(src, &target, fsync, bar) {
            Ok(()) if verbose => println!("renamed '{}' -> '{}'", src.display(), target.display()),
            Ok(()) => {}
            Err(e) => {
                eprintln!("xrename mv: cannot move '{}' to '{}': {e}", src.display(), target.display());
                status = 1;
            }
        }
    }
    status
}

/// A usage error: exit status 1, as GNU mv.
fn usage(msg: impl std::fmt::Display) -> i32 {
    eprintln!("xrename mv: {msg}");
    1
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("paths from argv have no NUL")
}

fn move_one(src: &Path, dst: &Path, fsync: bool, bar: bool) -> Result<(), String> {
    let (old, new) = (cstr(src), cstr(dst));
    match rustix::fs::rename(&*old, &*new) {
        Ok(()) => return Ok(()),
        Err(Errno::XDEV) => {}
        Err(e) => return Err(std::io::Error::from_raw_os_error(e.raw_os_error()).to_string()),
    }
    let counter = Arc::new(AtomicU64::new(0));
    let links = Some(std::sync::Arc::new(xrename_engine::links::Links::new()));
    let opts = Options {
        fsync,
        dirs: true,
        progress: Some(counter.clone()),
        links,
        leases: None,
        stages: None,
        threads: env_threads(),
        // The command names its operands by path, relative to where it was
        // started: a later operand must not be looked up from the copy of
        // a tree moved earlier (GNU mv, on one filesystem, resolves the
        // target directory once).
        follow_cwd: false,
    };
    let run = move || {
        let req = Request {
            op: Op::Rename,
            old_dir: rustix::fs::CWD,
            old: &old,
            new_dir: rustix::fs::CWD,
            new: &new,
            flags: 0,
        };
        let mut report = Report::default();
        engine::rename(&req, &opts, &mut report).map_err(|e| e.to_string())
    };
    if !bar {
        return run();
    }
    let total = total_bytes(src);
    let pb = indicatif::ProgressBar::new(total);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(src.display().to_string());
    let worker = std::thread::spawn(run);
    while !worker.is_finished() {
        pb.set_position(counter.load(Ordering::Relaxed));
        std::thread::sleep(Duration::from_millis(100));
    }
    pb.finish_and_clear();
    worker.join().unwrap_or_else(|_| Err("internal error".to_owned()))
}

/// Bytes of data under `src`, for the progress bar's total.
fn total_bytes(src: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(src) else { return 0 };
    if !meta.is_dir() {
        return meta.len();
    }
    let mut total = 0;
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map_or(0, |m| m.len()),
                _ => {}
            }
        }
    }
    total
}

/// `XRENAME_THREADS`, as the library reads it (a value not understood: the default).
pub fn env_threads() -> Option<usize> {
    use std::os::unix::ffi::OsStrExt;
    let v = std::env::var_os(xrename_engine::vars::THREADS.name);
    xrename_engine::vars::threads(v.as_deref().map(|v| v.as_bytes())).ok().flatten()
}
