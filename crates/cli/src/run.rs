//! `xrename [OPTIONS] [--] CMD [ARGS...]`: run a command with the library
//! preloaded.
//!
//! The library is put first in `LD_PRELOAD`, keeping what was there (after
//! fakechroot or fakeroot, if they are there, and it says so). Without
//! `--summary` xrename replaces itself with the command (`exec`), so the
//! command keeps our pid and its exit status is ours by construction. With
//! `--summary` it waits for the command, then reads the JSON lines every
//! process of the run appended to a private summary log.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::Command;

use xrename_engine::virtualisers;

use crate::fail;

#[derive(Default)]
struct Opts {
    log: Option<OsString>,
    summary: bool,
    observe: bool,
    no_fsync: bool,
    no_dirs: bool,
    trace: bool,
    preload: bool,
}

pub fn main(m: &clap::ArgMatches) -> i32 {
    let opts = Opts {
        log: m.get_one::<OsString>("log").cloned(),
        summary: m.get_flag("summary"),
        observe: m.get_flag("observe"),
        no_fsync: m.get_flag("no-fsync"),
        no_dirs: m.get_flag("no-dirs"),
        trace: m.get_flag("trace"),
        preload: m.get_flag("preload"),
    };
    let args: Vec<OsString> = m.get_many::<OsString>("cmd").into_iter().flatten().cloned().collect();
    let i = 0;
    let Some(cmd) = args.get(i) else { return fail("no command given (see xrename --help)") };
    if std::env::var_os("XRENAME_SUPERVISOR").is_some_and(|v| !v.is_empty()) {
        // Inside `xrename --trace` already: its supervisor serves this
        // command too; just run it.
        let err = Command::new(cmd).args(&args[i + 1..]).exec();
        return exec_failed(cmd, &err);
    }
    if !opts.preload {
        // The default: the supervisor serves the whole tree, dynamic or not;
        // the preload alone where tracing is impossible (with a warning), or
        // with --preload.
        match traced(&opts, &args[i..]) {
            Ok(status) => return status,
            Err(why) if opts.trace => {
                return fail(format_args!("--trace: cannot trace {}: {why}", cmd.to_string_lossy()));
            }
            Err(why) => {
                eprintln!(
                    "xrename: warning: cannot trace {} ({why}); running it with LD_PRELOAD only: static, Go and \
                 raw-syscall programs are not handled",
                    cmd.to_string_lossy()
                )
            }
        }
    }
    let lib = match find_library() {
        Ok(lib) => lib,
        Err(tried) => return not_found(&tried),
    };
    if let Some(why) = unreachable_by_preload(cmd) {
        eprintln!(
            "xrename: warning: {}: {why} (without --preload, xrename traces it and handles them)",
            cmd.to_string_lossy()
        );
    }

    let mut command = Command::new(cmd);
    command.args(&args[i + 1..]);
    let old = std::env::var_os("LD_PRELOAD").unwrap_or_default();
    let (preload, after) = preload_list(lib.as_os_str(), &old);
    if !after.is_empty() {
        eprintln!("{}", virtualiser_note(&after, true));
    }
    command.env("LD_PRELOAD", preload);
    if let Some(log) = &opts.log {
        command.env("XRENAME_LOG", if log == "-" { OsStr::new("stderr") } else { log });
    }
    if opts.observe {
        command.env("XRENAME_MODE", "observe");
    }
    if opts.no_fsync {
        command.env("XRENAME_FSYNC", "0");
    }
    if opts.no_dirs {
        command.env("XRENAME_DIRS", "0");
    }
    if !opts.summary {
        let err = command.exec();
        return exec_failed(cmd, &err);
    }
    let summary = match SummaryLog::create() {
        Ok(s) => s,
        Err(e) => return fail(format_args!("cannot create the summary log: {e}")),
    };
    command.env("XRENAME_SUMMARY_LOG", &summary.path);
    signals::prepare();
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => return exec_failed(cmd, &e),
    };
    signals::pass_on_to(child.id() as i32);
    let status = child.wait();
    eprintln!("xrename: {}", summary.read().describe(opts.observe));
    drop(summary); // the temp log goes before we pass a signal on
    match status {
        // Killed by a signal: 128 + its number, as a shell reports it.
        Ok(status) => status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
        Err(e) => fail(format_args!("waiting for {}: {e}", cmd.to_string_lossy())),
    }
}

/// `xrename --trace`: the supervisor, with the same options.
fn traced(opts: &Opts, argv: &[OsString]) -> Result<i32, String> {
    let cmd = &argv[0];
    let Some(path) = resolve(cmd) else {
        eprintln!("xrename: {}: command not found", cmd.to_string_lossy());
        return Ok(127);
    };
    // Log targets are opened here, once, as the user who runs xrename: the
    // helpers that move write to them whatever rights they take.
    let mut logs = Vec::new();
    match &opts.log {
        Some(l) if l == "-" => match rustix::io::fcntl_dupfd_cloexec(rustix::stdio::stderr(), 3) {
            Ok(fd) => logs.push(fd),
            Err(e) => return Ok(fail(format_args!("--log -: {e}"))),
        },
        Some(l) => match std::fs::OpenOptions::new().append(true).create(true).open(l) {
            Ok(f) => logs.push(f.into()),
            Err(e) => return Ok(fail(format_args!("--log {}: {e}", l.to_string_lossy()))),
        },
        None => {}
    }
    let summary = match opts.summary.then(SummaryLog::create).transpose() {
        Ok(s) => s,
        Err(e) => return Ok(fail(format_args!("cannot create the summary log: {e}"))),
    };
    if let Some(s) = &summary {
        match std::fs::OpenOptions::new().append(true).open(&s.path) {
            Ok(f) => logs.push(f.into()),
            Err(e) => return Ok(fail(format_args!("cannot open the summary log: {e}"))),
        }
    }
    let settings = crate::trace::Settings {
        observe: opts.observe,
        fsync: !opts.no_fsync,
        dirs: !opts.no_dirs,
        log_to_stderr: opts.log.as_deref().is_some_and(|l| l == "-"),
    };
    // The supervisor decides for each process at its EXDEV (what it has
    // loaded); the note says so now if the environment shows a virtualiser.
    let shown = virtualisers::in_environment(|name| std::env::var_os(name));
    if !shown.is_empty() {
        eprintln!("{}", virtualiser_note(&shown, false));
    }
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os().filter(|(k, _)| k != "XRENAME_SUPERVISOR").collect();
    // A copy of the library preloaded anyway stands aside (see config.rs).
    env.push(("XRENAME_SUPERVISOR".into(), std::process::id().to_string().into()));
    let status = crate::trace::run(argv, &path, env, settings, &logs)?;
    if let Some(s) = summary {
        eprintln!("xrename: {}", s.read().describe(opts.observe));
    }
    Ok(status)
}

/// Signals while `xrename --summary` waits for its command.
#[allow(unsafe_code)]
pub(crate) mod signals {
    use std::sync::atomic::{AtomicI32, Ordering};

    static CHILD: AtomicI32 = AtomicI32::new(0);

    extern "C" fn forward(sig: libc::c_int) {
        let pid = CHILD.load(Ordering::Relaxed);
        if pid > 0 {
            // SAFETY: kill is async-signal-safe.
            unsafe { libc::kill(pid, sig) };
        }
    }

    extern "C" fn ignore(_: libc::c_int) {}

    /// Installs the handlers before the command starts, so that a Ctrl-C
    /// meanwhile cannot kill xrename first. Handlers, unlike an ignored
    /// disposition, are reset by exec: the command gets the defaults.
    pub fn prepare() {
        // SAFETY: plain signal dispositions; the handlers are async-signal-safe.
        unsafe {
            libc::signal(libc::SIGINT, ignore as *const () as libc::sighandler_t);
            libc::signal(libc::SIGQUIT, ignore as *const () as libc::sighandler_t);
            libc::signal(libc::SIGTERM, forward as *const () as libc::sighandler_t);
            libc::signal(libc::SIGHUP, forward as *const () as libc::sighandler_t);
        }
    }

    /// Ctrl-C and Ctrl-\\ reach the whole foreground process group, the
    /// command included: xrename then waits for it to end (and prints the
    /// summary). SIGTERM and SIGHUP sent to xrename alone are passed on.
    pub fn pass_on_to(pid: i32) {
        CHILD.store(pid, Ordering::Relaxed);
    }
}

fn exec_failed(cmd: &OsStr, err: &std::io::Error) -> i32 {
    eprintln!("xrename: {}: {err}", cmd.to_string_lossy());
    if err.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 }
}

/// Where the library may be, in order: `$XRENAME_LIB`, beside this program,
/// `../lib/xrename/` from it (`make install`), `../lib/<multiarch>/xrename/`
/// (the Debian package), and the `xrename` Python package of the
/// environment this program was installed into by pip
/// (`../lib/python3.*/{site,dist}-packages/xrename/`). Returns the first
/// that exists, or all tried.
pub fn find_library() -> Result<PathBuf, Vec<PathBuf>> {
    let mut tried = Vec::new();
    if let Some(p) = std::env::var_os("XRENAME_LIB").filter(|p| !p.is_empty()) {
        tried.push(PathBuf::from(p));
    }
    // The program as started (a venv's bin may be a symlink to elsewhere),
    // then as resolved.
    let started = std::env::args_os().next().map(PathBuf::from).filter(|p| p.components().count() > 1);
    let mut exes: Vec<PathBuf> = started.into_iter().collect();
    exes.extend(std::env::current_exe());
    exes.dedup_by(|a, b| a.parent() == b.parent());
    for exe in exes {
        if let Some(dir) = exe.parent() {
            tried.push(dir.join("libxrename.so"));
            tried.push(dir.join("../lib/xrename/libxrename.so"));
            tried.push(dir.join(concat!("../lib/", env!("XRENAME_MULTIARCH"), "/xrename/libxrename.so")));
            let mut pythons: Vec<PathBuf> = std::fs::read_dir(dir.join("../lib"))
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.file_name().as_bytes().starts_with(b"python3"))
                .map(|e| e.path())
                .collect();
            pythons.sort();
            for p in pythons.iter().rev() {
                tried.push(p.join("site-packages/xrename/libxrename.so"));
                tried.push(p.join("dist-packages/xrename/libxrename.so"));
            }
            // pip install --target DIR: DIR/bin/xrename, DIR/xrename/.
            tried.push(dir.join("../xrename/libxrename.so"));
        }
    }
    match tried.iter().find(|p| p.is_file()) {
        Some(p) => Ok(p.canonicalize().unwrap_or_else(|_| p.clone())),
        None => Err(tried),
    }
}

/// `xrename lib`: prints the library's path (for `LD_PRELOAD=$(xrename lib)`).
pub fn print_library() -> i32 {
    match find_library() {
        Ok(lib) => {
            println!("{}", lib.display());
            0
        }
        Err(tried) => not_found(&tried),
    }
}

fn not_found(tried: &[PathBuf]) -> i32 {
    let list: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
    fail(format_args!("cannot find libxrename.so; tried: {} (set XRENAME_LIB to its path)", list.join(", ")))
}

/// The note `xrename --` prints when libraries that virtualise paths or
/// owners (`virtualisers::VIRTUALISERS`) are about: with the preload, the
/// library goes after them in `LD_PRELOAD`, so that the calls it sees are
/// theirs, translated, and steps aside under them (`real::interposer`);
/// the supervisor steps aside for each process that has one loaded.
fn virtualiser_note(libs: &[String], preload: bool) -> String {
    let placed = if preload { "the library goes after it in LD_PRELOAD, and " } else { "" };
    format!(
        "xrename: {} virtualises the filesystem: {placed}moves under it are left to the program (EXDEV)",
        libs.join(", ")
    )
}

/// `LD_PRELOAD` with the library: first, or after the last virtualising
/// library already there; and the names of those libraries.
fn preload_list(lib: &OsStr, old: &OsStr) -> (OsString, Vec<String>) {
    let entries: Vec<&[u8]> = old.as_bytes().split(|&b| b == b':' || b == b' ').filter(|e| !e.is_empty()).collect();
    let at = entries.iter().rposition(|e| virtualisers::virtualiser(e).is_some()).map_or(0, |i| i + 1);
    let after: Vec<String> = entries[..at]
        .iter()
        .filter_map(|e| virtualisers::virtualiser(e))
        .map(|name| String::from_utf8_lossy(name).into_owned())
        .collect();
    let mut list: Vec<&[u8]> = entries.clone();
    list.insert(at, lib.as_bytes());
    (OsString::from(std::ffi::OsStr::from_bytes(&list.join(&b':'))), after)
}

/// Why `LD_PRELOAD` will not reach `cmd`, if it will not.
fn unreachable_by_preload(cmd: &OsStr) -> Option<&'static str> {
    let path = resolve(cmd)?;
    let meta = std::fs::metadata(&path).ok()?;
    // A FIFO or a device given as the command is never read.
    if !meta.is_file() {
        return None;
    }
    if meta.permissions().mode() & 0o6000 != 0 {
        return Some(
            "setuid/setgid program: when it runs with raised privileges the loader ignores LD_PRELOAD, and its renames are not emulated",
        );
    }
    if rustix::fs::getxattr(&path, "security.capability", &mut [0u8; 64][..]).is_ok() {
        return Some(
            "program with file capabilities: when they raise its privileges the loader ignores LD_PRELOAD, and its renames are not emulated",
        );
    }
    let file = std::fs::File::open(&path).ok()?;
    match elf_kind(&file)? {
        Elf { go: true, .. } => {
            Some("Go program: it makes rename syscalls directly, not through libc, so they are not emulated")
        }
        Elf { dynamic: false, .. } => {
            Some("statically linked program: LD_PRELOAD cannot reach it, its renames are not emulated")
        }
        _ => None,
    }
}

/// Finds `cmd` as execvp would.
fn resolve(cmd: &OsStr) -> Option<PathBuf> {
    if cmd.as_bytes().contains(&b'/') {
        return Some(PathBuf::from(cmd));
    }
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(cmd)).find(|p| p.is_file())
}

/// What the program headers of an ELF file say.
struct Elf {
    /// It has a PT_INTERP header (a dynamic loader).
    dynamic: bool,
    /// It has a PT_NOTE holding a note named "Go" (the Go build ID).
    go: bool,
}

/// Reads only the ELF header, the program header table and the notes of a
/// 64-bit little-endian ELF file (a few KiB, whatever the file's size).
/// None if it is not such a file.
fn elf_kind(file: &std::fs::File) -> Option<Elf> {
    use std::os::unix::fs::FileExt;
    let read = |at: u64, len: usize| -> Option<Vec<u8>> {
        let mut buf = vec![0u8; len.min(64 << 10)];
        let n = file.read_at(&mut buf, at).ok()?;
        buf.truncate(n);
        Some(buf)
    };
    let head = read(0, 64)?;
    if head.len() < 64 || &head[..4] != b"\x7fELF" || head[4] != 2 || head[5] != 1 {
        return None;
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    let (phoff, phentsize, phnum) = (u64_at(&head, 0x20), u16_at(&head, 0x36), u16_at(&head, 0x38));
    if phentsize < 56 {
        return None;
    }
    let table = read(phoff, phentsize * phnum)?;
    let mut elf = Elf { dynamic: false, go: false };
    for ph in table.chunks_exact(phentsize) {
        match u32_at(ph, 0) {
            3 => elf.dynamic = true, // PT_INTERP
            4 => {
                // PT_NOTE: namesz, descsz, type, name (4-byte aligned), desc.
                let notes = read(u64_at(ph, 8), u64_at(ph, 32) as usize)?;
                let mut o = 0;
                while o + 12 <= notes.len() {
                    let (namesz, descsz) = (u32_at(&notes, o) as usize, u32_at(&notes, o + 4) as usize);
                    if notes.get(o + 12..o + 12 + namesz).is_some_and(|n| n.starts_with(b"Go\0")) {
                        elf.go = true;
                    }
                    o += 12 + namesz.next_multiple_of(4) + descsz.next_multiple_of(4);
                }
            }
            _ => {}
        }
    }
    Some(elf)
}

/// A private file every process of the run appends its log lines to.
struct SummaryLog {
    path: PathBuf,
}

impl SummaryLog {
    fn create() -> std::io::Result<SummaryLog> {
        let dir = std::env::temp_dir();
        for _ in 0..100u32 {
            // Unpredictable, and created exclusively: another user cannot
            // plant a file or a symlink there beforehand.
            let mut r = [0u8; 8];
            let _ = rustix::rand::getrandom(&mut r, rustix::rand::GetRandomFlags::empty());
            let path = dir.join(format!("xrename-summary-{}-{:016x}.jsonl", std::process::id(), u64::from_le_bytes(r)));
            // 0600: the moves it lists are nobody else's business.
            match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path) {
                Ok(_) => return Ok(SummaryLog { path }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(std::io::Error::from(std::io::ErrorKind::AlreadyExists))
    }

    fn read(&self) -> Summary {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        Summary::from_lines(&text)
    }
}

impl Drop for SummaryLog {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What the log lines of a run add up to.
#[derive(Debug, Default, PartialEq)]
pub struct Summary {
    met: u64,
    moved: u64,
    failed: Vec<String>,
    bytes: u64,
    files: u64,
    ms: f64,
    processes: std::collections::BTreeSet<u64>,
    /// Paths that still hold some of a moved source (the `leftover` field).
    leftovers: Vec<String>,
}

impl Summary {
    pub fn from_lines(text: &str) -> Summary {
        let mut s = Summary::default();
        for v in text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()) {
            s.met += 1;
            s.processes.insert(v["pid"].as_u64().unwrap_or(0));
            s.bytes += v["bytes"].as_u64().unwrap_or(0);
            s.files += v["files"].as_u64().unwrap_or(0);
            s.ms += v["ms"].as_f64().unwrap_or(0.0);
            if let Some(path) = v["leftover"].as_str() {
                s.leftovers.push(path.to_owned());
            }
            match v["result"].as_str() {
                Some("ok") => s.moved += 1,
                Some(_) if v["step"] == "observe" => {}
                Some(e) => s.failed.push(e.to_owned()),
                None => {}
            }
        }
        s
    }

    pub fn describe(&self, observe: bool) -> String {
        let procs = self.processes.len();
        if observe {
            return format!(
                "{} EXDEV met in {procs} process(es), observed and returned as the kernel gave them",
                self.met
            );
        }
        let mut failed = format!("{} failed", self.failed.len());
        if !self.failed.is_empty() {
            let mut counts = std::collections::BTreeMap::new();
            for e in &self.failed {
                *counts.entry(e.as_str()).or_insert(0) += 1;
            }
            let list: Vec<String> = counts.iter().map(|(e, n)| format!("{n} {e}")).collect();
            failed.push_str(&format!(" ({})", list.join(", ")));
        }
        let mut line = format!(
            "{} EXDEV met in {procs} process(es): {} moved, {failed}; {} objects and {} copied in {:.1} ms",
            self.met,
            self.moved,
            self.files,
            human(self.bytes),
            self.ms
        );
        if !self.leftovers.is_empty() {
            // Entries changed during a move, or an old source that could not
            // be deleted: never removed unseen, so the user must look.
            line.push_str(&format!(
                "; {} move(s) left something at the source: {}",
                self.leftovers.len(),
                self.leftovers.join(", ")
            ));
        }
        line
    }
}

/// Bytes in binary units.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{bytes} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_goes_first_or_after_a_virtualiser() {
        let lib = OsStr::new("/x/libxrename.so");
        assert_eq!(preload_list(lib, OsStr::new("")).0, OsString::from("/x/libxrename.so"));
        assert_eq!(preload_list(lib, OsStr::new("/l/a.so")).0, OsString::from("/x/libxrename.so:/l/a.so"));
        let (list, after) = preload_list(lib, OsStr::new("/l/a.so /usr/lib/libfakeroot-sysv.so:/l/b.so"));
        assert_eq!(list, OsString::from("/l/a.so:/usr/lib/libfakeroot-sysv.so:/x/libxrename.so:/l/b.so"));
        assert_eq!(after, ["libfakeroot-sysv.so"]);
    }

    #[test]
    fn summary_counts_moves_failures_bytes_and_processes() {
        let lines = concat!(
            r#"{"pid":1,"result":"ok","bytes":1024,"files":1,"ms":1.5}"#,
            "\n",
            r#"{"pid":2,"result":"ok","bytes":1024,"files":3,"ms":0.5}"#,
            "\n",
            r#"{"pid":2,"result":"ENOSPC","step":"copy","bytes":7,"files":0,"ms":1.0}"#,
            "\n",
            "not json\n"
        );
        let s = Summary::from_lines(lines);
        assert_eq!((s.met, s.moved, s.failed.len(), s.bytes, s.files), (3, 2, 1, 2055, 4));
        assert_eq!(
            s.describe(false),
            "3 EXDEV met in 2 process(es): 2 moved, 1 failed (1 ENOSPC); 4 objects and 2.0 KiB copied in 3.0 ms"
        );
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(10), "10 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(3 << 30), "3.0 GiB");
    }
}
