//! `xrename --trace -- CMD`: the supervisor, for programs `LD_PRELOAD`
//! cannot reach (Go, static and musl binaries, raw `rename` syscalls).
//!
//! CMD starts with a seccomp filter that stops it (`SECCOMP_RET_TRACE`) at
//! `rename`, `renameat` and `renameat2` (x86_64, x32 and the i386 numbers
//! of `int 0x80`), at `landlock_restrict_self`, and at `clone` with
//! `CLONE_UNTRACED`; `clone3` answers ENOSYS; every other call is allowed at
//! the cost of the filter alone. The supervisor is its tracer (`PTRACE_SEIZE`, following
//! every fork, vfork, clone and exec; `PTRACE_O_EXITKILL`: if it dies, they
//! die, never running on unhandled). At such a stop it lets the call run:
//! **the kernel makes the rename inside the program**, with its own
//! credentials, namespaces and sandbox. At the call's exit only an answer
//! of `-EXDEV` is acted on: a helper process takes the thread's
//! credentials (uids and gids, the filesystem ones, groups, capabilities,
//! as ids of its own user namespace), its mount and user namespaces, its
//! root and working directory, its file size limit and its leases, runs
//! the engine, and exits with the errno the program is to see (0 for
//! success), which becomes the call's return value. The tracer meanwhile
//! goes on serving the other threads and processes.
//!
//! Safety rules (README, "Programs LD_PRELOAD cannot reach"):
//! - the move never runs with more than the target's rights (a root
//!   supervisor, a target uid 65534: EACCES, nothing moved);
//! - a process that restricted itself (a successful `landlock_restrict_self`
//!   in any of its threads; more seccomp filters than it started with) is
//!   sandboxed: its EXDEV stands, logged as `sandboxed`;
//! - a process with a library loaded that virtualises the filesystem
//!   (fakeroot, fakechroot, pseudo: its `/proc/TID/maps` at the EXDEV) keeps
//!   its EXDEV, logged with the library's name: the helper's raw syscalls
//!   would bypass the owners, nodes and paths the library fakes;
//! - a result goes back only to the thread that asked (an exec by another
//!   thread takes the caller's id: its pending result is dropped);
//! - a child made with `CLONE_UNTRACED` is traced all the same (the flag is
//!   cleared), and `clone3` answers ENOSYS so that libc uses `clone`.

use std::collections::{HashMap, HashSet};
use std::ffi::{CString, OsString};
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use libc::{c_int, pid_t};
use rustix::fs::{Mode, OFlags};
use std::time::{Duration, Instant};

use xrename_engine::{self as engine, Op, Options, Report, Request};
use xrename_engine::{logline, virtualisers};

use crate::ptrace::{self, ARCH_I386, ARCH_X86_64, CLONE_UNTRACED, Creds, Insn, X32_BIT, event};

/// What the supervisor does at an EXDEV.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Log only, never move.
    pub observe: bool,
    /// fsync (off: `--no-fsync`).
    pub fsync: bool,
    /// Move directories.
    pub dirs: bool,
    /// Log lines go to stderr (`--log -`): no status line there.
    pub log_to_stderr: bool,
}

/// Syscall numbers that stop at our filter, by architecture.
mod nr {
    pub const RENAME: u64 = 82;
    pub const RENAMEAT: u64 = 264;
    pub const RENAMEAT2: u64 = 316;
    pub const CLONE: u64 = 56;
    pub const CLONE3: u64 = 435;
    pub const LANDLOCK_RESTRICT_SELF: u64 = 446;
    pub const I386_RENAME: u64 = 38;
    pub const I386_RENAMEAT: u64 = 302;
    pub const I386_RENAMEAT2: u64 = 353;
    pub const I386_CLONE: u64 = 120;
}

fn stmt(code: u32, k: u32) -> Insn {
    Insn { code: code as u16, jt: 0, jf: 0, k }
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> Insn {
    Insn { code: code as u16, jt, jf, k }
}

/// The filter: for each architecture, the numbers to trace, to refuse with
/// ENOSYS (`clone3`), and `clone` traced only with `CLONE_UNTRACED`.
pub fn filter() -> Vec<Insn> {
    use libc::{BPF_ABS, BPF_JEQ, BPF_JMP, BPF_JSET, BPF_K, BPF_LD, BPF_RET, BPF_W};
    const RET_ALLOW: u32 = 0x7fff_0000;
    const RET_TRACE: u32 = 0x7ff0_0000;
    const RET_ERRNO: u32 = 0x0005_0000;
    let ld = |off: u32| stmt(BPF_LD | BPF_W | BPF_ABS, off);
    let ret = |k: u32| stmt(BPF_RET | BPF_K, k);
    // One block per (arch, numbers): "if nr == n: trace".
    let block = |traced: &[u64], clone: u64, clone3: u64| {
        let mut b = vec![ld(0)]; // seccomp_data.nr
        for &n in traced {
            b.push(jump(BPF_JMP | BPF_JEQ | BPF_K, n as u32, 0, 1));
            b.push(ret(RET_TRACE));
        }
        b.push(jump(BPF_JMP | BPF_JEQ | BPF_K, clone3 as u32, 0, 1));
        b.push(ret(RET_ERRNO | libc::ENOSYS as u32));
        b.push(jump(BPF_JMP | BPF_JEQ | BPF_K, clone as u32, 0, 3));
        b.push(ld(16)); // args[0], low half: the flags
        b.push(jump(BPF_JMP | BPF_JSET | BPF_K, CLONE_UNTRACED as u32, 0, 1));
        b.push(ret(RET_TRACE));
        b.push(ret(RET_ALLOW));
        b
    };
    let x86_64 = [nr::RENAME, nr::RENAMEAT, nr::RENAMEAT2, nr::LANDLOCK_RESTRICT_SELF];
    let mut x32: Vec<u64> = x86_64.iter().map(|n| n | X32_BIT).collect();
    x32.extend_from_slice(&x86_64); // a x32 number is only ever seen with the bit
    let i386 = [nr::I386_RENAME, nr::I386_RENAMEAT, nr::I386_RENAMEAT2, nr::LANDLOCK_RESTRICT_SELF];
    let b64 = block(&x86_64, nr::CLONE, nr::CLONE3);
    let bx32 = block(&x32[..4], nr::CLONE | X32_BIT, nr::CLONE3 | X32_BIT);
    let b32 = block(&i386, nr::I386_CLONE, nr::CLONE3);
    let mut p = vec![ld(4)]; // seccomp_data.arch
    // x86_64: then x32 (the number has the x32 bit) or native.
    p.push(jump(BPF_JMP | BPF_JEQ | BPF_K, ARCH_X86_64, 0, (2 + b64.len() + bx32.len()) as u8));
    p.push(ld(0));
    p.push(jump(BPF_JMP | BPF_JSET | BPF_K, X32_BIT as u32, b64.len() as u8, 0));
    p.extend(b64);
    p.extend(bx32);
    p.push(jump(BPF_JMP | BPF_JEQ | BPF_K, ARCH_I386, 0, b32.len() as u8));
    p.extend(b32);
    p.push(ret(RET_ALLOW));
    p
}

/// Which rename a call is, from its number and architecture.
fn rename_op(arch: u32, n: u64) -> Option<Op> {
    match (arch, n & !X32_BIT) {
        (ARCH_X86_64, nr::RENAME) | (ARCH_I386, nr::I386_RENAME) => Some(Op::Rename),
        (ARCH_X86_64, nr::RENAMEAT) | (ARCH_I386, nr::I386_RENAMEAT) => Some(Op::Renameat),
        (ARCH_X86_64, nr::RENAMEAT2) | (ARCH_I386, nr::I386_RENAMEAT2) => Some(Op::Renameat2),
        _ => None,
    }
}

/// A call in flight between its seccomp stop and its exit.
#[derive(Debug, Clone)]
enum Call {
    /// A rename: what the thread asked for.
    Rename { op: Op, args: [u64; 6] },
    /// `landlock_restrict_self`: the process is sandboxed if it succeeds.
    Landlock,
}

/// Runs `argv` traced; returns the exit status to give (the program's,
/// 128 + signal when killed; 126 or 127 when it cannot be executed), or,
/// before the program has run at all, why it cannot be traced.
pub fn run(
    argv: &[OsString],
    path: &std::path::Path,
    env: Vec<(OsString, OsString)>,
    s: Settings,
    logs: &[OwnedFd],
) -> Result<i32, String> {
    let cargv: Vec<CString> = argv.iter().map(|a| CString::new(a.as_bytes()).unwrap_or_default()).collect();
    let cenv: Vec<CString> = env
        .iter()
        .map(|(k, v)| {
            let mut b = k.as_bytes().to_vec();
            b.push(b'=');
            b.extend_from_slice(v.as_bytes());
            CString::new(b).unwrap_or_default()
        })
        .collect();
    let cpath = CString::new(path.as_os_str().as_bytes()).unwrap_or_default();
    crate::run::signals::prepare();
    let (pid, go, report) =
        ptrace::spawn_waiting(&cpath, &cargv, &cenv, &filter()).map_err(|e| format!("cannot start it: {e}"))?;
    if let Err(e) = ptrace::seize(pid) {
        ptrace::kill(pid, libc::SIGKILL);
        let _ = ptrace::wait_any();
        return Err(match e.raw_os_error() {
            Some(libc::EPERM) => {
                format!("ptrace is not permitted (already traced, Yama ptrace_scope, or a seccomp policy): {e}")
            }
            _ => format!("ptrace failed: {e}"),
        });
    }
    let _ = rustix::io::write(&go, b"g");
    drop(go);
    let mut msg = [0u8; 8];
    let failed = match std::fs::File::from(report).read(&mut msg) {
        Ok(8) => Some((
            i32::from_ne_bytes(msg[..4].try_into().expect("4")),
            i32::from_ne_bytes(msg[4..].try_into().expect("4")),
        )),
        _ => None,
    };
    if let Some((1, e)) = failed {
        // The filter could not be installed: the program never ran.
        let _ = Supervisor { main: pid, ..Supervisor::default() }.serve();
        return Err(format!("cannot install the seccomp filter: {}", std::io::Error::from_raw_os_error(e)));
    }
    // Ctrl-C reaches the whole foreground group (the program gets it
    // itself); SIGTERM and SIGHUP sent to xrename alone are passed on.
    crate::run::signals::pass_on_to(pid);
    let logs = logs.iter().map(|fd| fd.as_fd()).collect();
    // Filters the program starts with: whatever xrename ran under, and ours.
    let filters = seccomp_filters(pid);
    let display = crate::status::Display::new(s.log_to_stderr);
    let mut sup = Supervisor { main: pid, settings: s, logs, filters, display, ..Supervisor::default() };
    sup.known.insert(pid);
    let status = sup.serve();
    Ok(match failed {
        Some((_, e)) if e == libc::ENOENT => 127,
        Some((_, e)) => {
            eprintln!("xrename: cannot run {}: {}", path.display(), std::io::Error::from_raw_os_error(e));
            126
        }
        None => status,
    })
}

#[derive(Default)]
struct Supervisor<'l> {
    main: pid_t,
    /// Where log lines go (`--log`, `--summary`).
    logs: Vec<BorrowedFd<'l>>,
    settings: Settings,
    /// Tracees seen (a first stop of an unknown one is its attach stop).
    known: HashSet<pid_t>,
    /// Threads between a rename's seccomp stop and its exit.
    calls: HashMap<pid_t, Call>,
    /// Helpers moving for a stopped thread, by helper pid.
    helpers: HashMap<pid_t, Helper>,
    /// Processes (thread group ids) that restricted themselves with
    /// Landlock, and their descendants. (A seccomp filter of their own is
    /// seen by counting filters; see `filters`.)
    sandboxed: HashSet<pid_t>,
    /// The program's exit status, once it has ended.
    status: Option<i32>,
    /// How many seccomp filters the program started with: a thread with
    /// more installed one of its own (also through prctl, which is not
    /// traced), and is sandboxed.
    filters: Option<u32>,
    /// setuid programs warned about.
    warned: HashSet<std::path::PathBuf>,
    /// The status line for long moves, on a terminal.
    display: Option<crate::status::Display>,
    /// The log steps of the virtualising libraries met, by file name.
    virtualiser_steps: HashMap<String, &'static str>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { observe: false, fsync: true, dirs: true, log_to_stderr: false }
    }
}

impl Supervisor<'_> {
    /// Serves every stop until no tracee and no helper is left.
    fn serve(&mut self) -> i32 {
        // Until no child is left (ECHILD).
        loop {
            let (pid, st) = match ptrace::wait_any_or_tick() {
                Ok(r) => r,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {
                    self.redraw();
                    continue;
                }
                Err(_) => break,
            };
            if let Some(helper) = self.helpers.remove(&pid) {
                self.helper_done(helper, st);
                continue;
            }
            if libc::WIFEXITED(st) || libc::WIFSIGNALED(st) {
                self.known.remove(&pid);
                self.calls.remove(&pid);
                // Its id may be reused by a new thread: a helper's answer
                // must never reach that one.
                for helper in self.helpers.values_mut() {
                    if helper.tid == Some(pid) {
                        helper.tid = None;
                    }
                }
                if pid == self.main {
                    self.status =
                        Some(if libc::WIFEXITED(st) { libc::WEXITSTATUS(st) } else { 128 + libc::WTERMSIG(st) });
                }
                continue;
            }
            if !libc::WIFSTOPPED(st) {
                continue;
            }
            self.stopped(pid, st);
        }
        if let Some(d) = &mut self.display {
            d.clear();
        }
        self.status.unwrap_or(125)
    }

    fn stopped(&mut self, tid: pid_t, st: c_int) {
        let sig = libc::WSTOPSIG(st);
        let ev = st >> 16;
        if self.known.insert(tid) && ev == event::STOP {
            // The first stop of a new tracee (auto-attached), before its
            // first system call: a new process takes its parent's sandbox
            // mark now, whether or not its parent's fork event has been
            // seen yet (it may never be: a parent killed at that stop).
            self.inherit_sandbox(tid);
            let _ = ptrace::cont(tid, 0);
            return;
        }
        match ev {
            event::SECCOMP => self.at_seccomp(tid),
            event::FORK | event::VFORK | event::CLONE => {
                // A new process (or thread): sandboxed if its parent is.
                if let Ok(child) = ptrace::event_msg(tid) {
                    if self.sandboxed.contains(&tgid(tid)) {
                        self.sandboxed.insert(child as pid_t);
                    }
                }
                let _ = ptrace::cont(tid, 0);
            }
            event::EXEC => {
                // The exec'ing thread now has the leader's id: whatever was
                // pending for the old leader (killed by the exec) is not for
                // the new program.
                self.calls.remove(&tid);
                for helper in self.helpers.values_mut() {
                    if helper.tid == Some(tid) {
                        helper.tid = None;
                    }
                }
                self.warn_setuid(tid);
                let _ = ptrace::cont(tid, 0);
            }
            // A group-stop (a PTRACE_SEIZE tracee reports it as this event
            // with the stopping signal): left stopped, as job control wants.
            event::STOP if matches!(sig, libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU) => {
                let _ = ptrace::listen(tid);
            }
            0 if sig == (libc::SIGTRAP | 0x80) => self.at_syscall_exit(tid),
            0 => {
                let _ = ptrace::cont(tid, sig); // a signal for the program
            }
            _ => {
                let _ = ptrace::cont(tid, 0); // exec, ...
            }
        }
    }

    fn at_seccomp(&mut self, tid: pid_t) {
        let Ok(info) = ptrace::syscall_info(tid) else {
            let _ = ptrace::cont(tid, 0);
            return;
        };
        let n = info.nr & !X32_BIT;
        let call = match rename_op(info.arch, info.nr) {
            // The kernel takes the low 32 bits of each register for the
            // i386 calls of `int 0x80`: so do we, or another path is read.
            Some(op) if info.arch == ARCH_I386 => Some(Call::Rename { op, args: info.args.map(|a| a & 0xffff_ffff) }),
            Some(op) => Some(Call::Rename { op, args: info.args }),
            None if n == nr::LANDLOCK_RESTRICT_SELF => Some(Call::Landlock),
            None => None,
        };
        if let Some(call) = call {
            // Judged at its exit.
            self.calls.insert(tid, call);
            if ptrace::to_syscall_exit(tid).is_err() {
                self.calls.remove(&tid);
            }
            return;
        }
        let is_clone = (info.arch == ARCH_X86_64 && n == nr::CLONE) || (info.arch == ARCH_I386 && n == nr::I386_CLONE);
        if is_clone {
            // A child the tracer would not see would get ENOSYS for its
            // renames (the filter is inherited, the tracer is not).
            let _ = ptrace::set_first_arg(tid, info.arch, info.args[0] & !CLONE_UNTRACED);
        }
        let _ = ptrace::cont(tid, 0);
    }

    fn at_syscall_exit(&mut self, tid: pid_t) {
        let rval = ptrace::syscall_info(tid).ok().filter(|i| i.op == 2).map(|i| i.rval);
        let call = match self.calls.remove(&tid) {
            Some(Call::Rename { op, args }) => Call::Rename { op, args },
            Some(Call::Landlock) => {
                // Restricted (the whole process counts: fail closed).
                if rval == Some(0) {
                    self.sandboxed.insert(tgid(tid));
                }
                let _ = ptrace::cont(tid, 0);
                return;
            }
            None => {
                let _ = ptrace::cont(tid, 0);
                return;
            }
        };
        let exdev = rval == Some(-(libc::EXDEV as i64));
        let s = self.settings;
        let left = if !exdev {
            None
        } else if s.observe {
            Some("observe")
        } else if self.sandboxed.contains(&tgid(tid))
            || matches!((seccomp_filters(tid), self.filters), (Some(now), Some(start)) if now > start)
        {
            Some("sandboxed")
        } else if let Some(why) = self.virtualised(tid) {
            Some(why)
        } else {
            let slot = self.display.as_mut().and_then(|d| d.take());
            match start_move(tid, &call, s, &self.logs, slot) {
                Ok((pid, helper)) => {
                    self.helpers.insert(pid, helper);
                    return;
                }
                Err(_) => {
                    if let (Some(d), Some(slot)) = (&mut self.display, slot) {
                        d.give_back(slot);
                    }
                    Some("cannot act for the program")
                }
            }
        };
        if let Some(why) = left {
            // The kernel's EXDEV stands: logged, with the reason.
            if let Call::Rename { op, args } = &call {
                // Paths that cannot be read (a program made undumpable)
                // are logged empty, but the call is logged.
                let req = Asked::read(tid, *op, args).unwrap_or_else(|_| Asked::unread(*op));
                let result = Err(engine::Error::new(rustix::io::Errno::XDEV, why));
                log(&self.logs, &Who::of(tid), &req, &Report::default(), Duration::ZERO, result, None);
            }
        }
        let _ = ptrace::cont(tid, 0);
    }

    /// Why thread `tid` must keep its EXDEV if its process has a library
    /// loaded that virtualises the filesystem (fakeroot, fakechroot,
    /// pseudo: `virtualisers`): the helper's raw syscalls would act on real
    /// paths and owners, not the ones the program sees; the program copies
    /// through the library itself. Read at each EXDEV, from the objects the
    /// process maps now (an exec or a `dlopen` changes them; a static
    /// program under fakeroot's environment has nothing loaded and is
    /// served); also a dynamically linked process whose environment says
    /// fakeroot or fakechroot (the library may be loaded under another
    /// name: `fakeroot -l`). Maps that cannot be read fail closed, as every other
    /// `/proc/TID` read the move needs (status, root, cwd, fd: the move is
    /// not made).
    fn virtualised(&mut self, tid: pid_t) -> Option<&'static str> {
        const UNREADABLE: &str = "cannot read the program's maps or environment (/proc/PID/maps, environ)";
        let Ok(maps) = std::fs::read(format!("/proc/{tid}/maps")) else { return Some(UNREADABLE) };
        // The environment only where the maps name no library.
        let lib = match virtualisers::in_maps(&maps) {
            Some(lib) => lib,
            None => match std::fs::read(format!("/proc/{tid}/environ")) {
                Ok(environ) => virtualisers::in_environ(&environ, &maps)?,
                Err(_) => return Some(UNREADABLE),
            },
        };
        // Leaked once per library name: a log step is static.
        let leak = |lib: &String| &*Box::leak(virtualisers::step(lib).into_boxed_str());
        Some(*self.virtualiser_steps.entry(lib).or_insert_with_key(leak))
    }

    /// Marks the new process `tid` sandboxed if its parent is; if its
    /// parent is already gone (or was never ours) while some traced
    /// process is sandboxed, it may have been that one's child: sandboxed
    /// too (failing closed costs only the emulation).
    fn inherit_sandbox(&mut self, tid: pid_t) {
        if self.sandboxed.is_empty() || tgid(tid) != tid {
            return; // a thread shares its process's mark
        }
        let parent = status_field(tid, "PPid").and_then(|v| v.parse::<pid_t>().ok());
        let sandboxed = match parent {
            Some(p) if self.known.contains(&p) => self.sandboxed.contains(&p),
            _ => true,
        };
        if sandboxed {
            self.sandboxed.insert(tid);
        }
    }

    /// Under an unprivileged supervisor a setuid or setgid program runs
    /// without its privileges (as under strace): said once per program.
    fn warn_setuid(&mut self, tid: pid_t) {
        use std::os::unix::fs::PermissionsExt;
        if rustix::process::geteuid().is_root() {
            return;
        }
        let Ok(exe) = std::fs::read_link(format!("/proc/{tid}/exe")) else { return };
        let special = std::fs::metadata(&exe).is_ok_and(|m| m.permissions().mode() & 0o6000 != 0);
        if special && self.warned.insert(exe.clone()) {
            eprintln!(
                "xrename: warning: {} is setuid/setgid: traced by an unprivileged supervisor it runs without \
                 its privileges (use --preload for it)",
                exe.display()
            );
        }
    }

    /// A helper ended: its exit status is the program's answer. A helper
    /// killed (by a signal, the OOM killer) cannot say; the last stage it
    /// reported decides ([`engine::Stage`]): once the source has left its
    /// name, checked, the rename has happened (0); before that the program
    /// keeps the kernel's EXDEV. The log says what may be left behind.
    fn redraw(&mut self) {
        if let Some(d) = &mut self.display {
            d.draw(self.helpers.values().map(|h| (h.asked.old.as_bytes(), h.asked.new.as_bytes(), h.started, h.slot)));
        }
    }

    fn helper_done(&mut self, helper: Helper, st: c_int) {
        if let (Some(d), Some(slot)) = (&mut self.display, helper.slot) {
            d.give_back(slot);
        }
        let errno = if libc::WIFEXITED(st) {
            libc::WEXITSTATUS(st)
        } else {
            let (result, warning) = match helper.last_stage() {
                Some(engine::Stage::Done) => {
                    (Ok(()), "the helper was killed after the move: hidden leftovers may remain (xrename clean)")
                }
                Some(engine::Stage::Installed) => (
                    Err(engine::Error::new(rustix::io::Errno::XDEV, "helper killed after the install")),
                    "the helper was killed after the install: the destination holds the copy (the old one \
                     at a hidden name), the source is whole at its name or a hidden one (xrename clean)",
                ),
                None => (
                    Err(engine::Error::new(rustix::io::Errno::XDEV, "helper killed")),
                    "the helper was killed before the install: the destination is as it was, the source is \
                     whole at its name (on overlayfs maybe a hidden one), a hidden copy may remain \
                     (xrename clean)",
                ),
            };
            let elapsed = helper.started.elapsed();
            log(&self.logs, &helper.who, &helper.asked, &Report::default(), elapsed, result, Some(warning));
            result.map_or_else(|e| e.errno.raw_os_error(), |()| 0)
        };
        if let Some(tid) = helper.tid {
            let value = if errno == 0 { 0 } else { -(errno as i64) };
            let _ = ptrace::set_return(tid, value);
            let _ = ptrace::cont(tid, 0);
        }
    }
}

/// A helper moving for a stopped thread.
struct Helper {
    /// The thread to answer; None once it is gone (an exec by another
    /// thread took its id: the result must not reach the new program).
    tid: Option<pid_t>,
    /// What it asked for, and who, for the log.
    asked: Asked,
    who: Who,
    /// The stages it reported (one byte each), non-blocking.
    stages: OwnedFd,
    started: Instant,
    /// Where it counts its progress, for the status line.
    slot: Option<crate::status::Slot>,
}

impl Helper {
    /// The last stage the helper reported before it ended.
    fn last_stage(&self) -> Option<engine::Stage> {
        let mut buf = [0u8; 8];
        let mut last = None;
        while let Ok(n @ 1..) = rustix::io::read(&self.stages, &mut buf) {
            last = buf[..n].last().copied();
        }
        match last {
            Some(b'i') => Some(engine::Stage::Installed),
            Some(b'd') => Some(engine::Stage::Done),
            _ => None,
        }
    }
}

/// What a thread asked for, read from its registers and memory.
#[derive(Clone)]
struct Asked {
    op: Op,
    old_dir: i32,
    old: CString,
    new_dir: i32,
    new: CString,
    flags: u32,
}

impl Asked {
    /// A call whose paths could not be read.
    fn unread(op: Op) -> Asked {
        Asked {
            op,
            old_dir: libc::AT_FDCWD,
            old: CString::default(),
            new_dir: libc::AT_FDCWD,
            new: CString::default(),
            flags: 0,
        }
    }

    fn read(tid: pid_t, op: Op, args: &[u64; 6]) -> std::io::Result<Asked> {
        let a = args;
        // (olddirfd, old, newdirfd, new, flags); a descriptor is an int: its
        // low 32 bits, on either architecture.
        let (od, op_path, nd, np, flags) = match op {
            Op::Rename => (libc::AT_FDCWD as u64, a[0], libc::AT_FDCWD as u64, a[1], 0),
            Op::Renameat => (a[0], a[1], a[2], a[3], 0),
            Op::Renameat2 => (a[0], a[1], a[2], a[3], a[4] as u32),
        };
        Ok(Asked {
            op,
            old_dir: od as i32,
            old: ptrace::read_path(tid, op_path)?,
            new_dir: nd as i32,
            new: ptrace::read_path(tid, np)?,
            flags,
        })
    }
}

/// Writes one log line for the call `req` of thread `tid` to every target.
/// The process a log line names: read by the supervisor, before a helper
/// leaves our /proc (a chroot, another pid namespace).
#[derive(Clone)]
struct Who {
    pid: u32,
    comm: String,
}

impl Who {
    fn of(tid: pid_t) -> Who {
        let comm = std::fs::read_to_string(format!("/proc/{tid}/comm")).unwrap_or_default();
        Who { pid: tgid(tid) as u32, comm: comm.trim_end().to_owned() }
    }
}

fn log(
    logs: &[BorrowedFd<'_>],
    who: &Who,
    req: &Asked,
    report: &Report,
    elapsed: Duration,
    result: engine::Result<()>,
    warning: Option<&str>,
) {
    if logs.is_empty() {
        return;
    }
    let line = logline::Line {
        pid: who.pid,
        program: &who.comm,
        via: "trace",
        op: req.op,
        old: &req.old,
        new: &req.new,
        report,
        elapsed,
        result,
        note: None,
        warning,
    };
    let text = logline::format(&line, std::time::SystemTime::now());
    for fd in logs {
        // One write to a file opened O_APPEND: lines never interleave. On a
        // terminal or pipe (`--log -`) a write can be cut short or
        // interrupted (the status line's tick): the rest follows.
        let mut rest = text.as_bytes();
        while !rest.is_empty() {
            match rustix::io::write(fd, rest) {
                Ok(0) => break,
                Ok(n) => rest = &rest[n..],
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => break,
            }
        }
    }
}

/// Reads what the thread asked for and starts a helper that moves it with
/// the thread's rights; returns the helper's pid.
fn start_move(
    tid: pid_t,
    call: &Call,
    s: Settings,
    logs: &[BorrowedFd<'_>],
    slot: Option<crate::status::Slot>,
) -> std::io::Result<(pid_t, Helper)> {
    let Call::Rename { op, args } = call else { return Err(std::io::Error::from_raw_os_error(libc::EINVAL)) };
    let req = Asked::read(tid, *op, args)?;
    let namespaces = differing_namespaces(tid);
    let mut creds = read_creds(tid)?;
    if namespaces & libc::CLONE_NEWUSER != 0 {
        // /proc shows the ids as our namespace sees them; the helper sets
        // them from inside the program's.
        creds = inside_ids(tid, creds)?;
    }
    // The program's own leases and file size limit, not the helper's.
    let leases = engine::copy::OwnLeases::of(tid as u32, tgid(tid) as u32);
    let fsize = ptrace::fsize_limit(tid);
    let proc = |p: String| -> std::io::Result<OwnedFd> {
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        rustix::fs::open(p.as_str(), flags, Mode::empty()).map_err(std::io::Error::from)
    };
    // Opened now, through the target's /proc entries, before the helper
    // leaves our root for the target's.
    let root = proc(format!("/proc/{tid}/root"))?;
    let cwd = proc(format!("/proc/{tid}/cwd"))?;
    // The kernel ignores the descriptor of an absolute path, and so do we.
    let dir = |fd: i32, path: &CString| -> std::io::Result<Option<OwnedFd>> {
        if fd == libc::AT_FDCWD || path.as_bytes().first() == Some(&b'/') {
            Ok(None)
        } else {
            proc(format!("/proc/{tid}/fd/{fd}")).map(Some)
        }
    };
    let (odir, ndir) = (dir(req.old_dir, &req.old)?, dir(req.new_dir, &req.new)?);
    let other_root = !same_file(&root, "/");
    // The helper tells each stage it reaches here, so that its death can
    // still be answered truthfully.
    let flags = rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK;
    let (stages, tell) = rustix::pipe::pipe_with(flags)?;
    let asked = req.clone();
    let who = Who::of(tid);
    let helper_who = who.clone();
    let pid = ptrace::fork_helper(move || {
        let started = Instant::now();
        let mut report = Report::default();
        let result = if ptrace::enter_namespaces(tid, namespaces).is_err()
            || (other_root && ptrace::chroot_to(&root).is_err())
            || ptrace::chdir_to(&cwd).is_err()
            || ptrace::take_creds(&creds).is_err()
            || fsize.is_some_and(|l| ptrace::set_fsize_limit(l).is_err())
        {
            // Cannot act as the target: its EXDEV stands.
            Err(engine::Error::new(rustix::io::Errno::XDEV, "cannot take the program's rights"))
        } else if [(&odir, &req.old), (&ndir, &req.new)]
            .iter()
            .any(|(d, p)| through_magic_link(d.as_ref().map_or(rustix::fs::CWD, |d| d.as_fd()), p))
        {
            // /proc/self/fd/N, /proc/self/cwd, /dev/fd/N... would name the
            // helper's descriptors, not the program's: the kernel's EXDEV.
            Err(engine::Error::new(rustix::io::Errno::XDEV, "path through a /proc descriptor link"))
        } else {
            let cwd_fd = rustix::fs::CWD;
            let old_dir = odir.as_ref().map_or(cwd_fd, |d| d.as_fd());
            let new_dir = ndir.as_ref().map_or(cwd_fd, |d| d.as_fd());
            let r = Request { op: req.op, old_dir, old: &req.old, new_dir, new: &req.new, flags: req.flags };
            let tell = std::sync::Arc::new(tell);
            let stages = engine::Stages(std::sync::Arc::new(move |stage| {
                let byte = match stage {
                    engine::Stage::Installed => b"i",
                    engine::Stage::Done => b"d",
                };
                // A pipe's buffer holds far more than a move's two bytes.
                let _ = rustix::io::write(&*tell, byte);
            }));
            let opts = Options {
                fsync: s.fsync,
                dirs: s.dirs,
                progress: slot.map(|s| std::sync::Arc::new(s) as std::sync::Arc<dyn engine::Progress>),
                links: None,
                leases: Some(leases),
                stages: Some(stages),
                threads: crate::mv::env_threads(),
                // The program is another process: its working directory
                // cannot be moved from here (README, Known limits).
                follow_cwd: false,
            };
            engine::rename(&r, &opts, &mut report)
        };
        log(logs, &who, &req, &report, started.elapsed(), result, None);
        match result {
            Ok(()) => 0,
            Err(e) => e.errno.raw_os_error(),
        }
    })?;
    Ok((pid, Helper { tid: Some(tid), asked, who: helper_who, stages, started: Instant::now(), slot }))
}

/// A field of `/proc/TID/status` (`Tgid`, `Seccomp_filters`, ...), trimmed.
fn status_field(tid: pid_t, key: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(':')).map(|v| v.trim().to_owned())
}

/// The thread group (process) of thread `tid`.
fn tgid(tid: pid_t) -> pid_t {
    status_field(tid, "Tgid").and_then(|v| v.parse().ok()).unwrap_or(tid)
}

/// The number of seccomp filters on thread `tid`, if it can be read.
fn seccomp_filters(tid: pid_t) -> Option<u32> {
    status_field(tid, "Seccomp_filters")?.parse().ok()
}

/// Whether the open directory `fd` is the directory `path`.
/// Whether resolving the parent of `path` from `dir` goes through a magic
/// link of /proc (`/proc/self/fd/N`, `.../cwd`, `.../root`, `/dev/fd/N`):
/// those name what the resolving process holds, and the helper is not the
/// program. (Without openat2, Linux < 5.6: any path into /proc or /dev/fd.)
fn through_magic_link(dir: BorrowedFd<'_>, path: &CString) -> bool {
    use rustix::fs::{OFlags, ResolveFlags};
    let bytes = path.as_bytes();
    let parent = match bytes.iter().rposition(|&b| b == b'/') {
        Some(0) => &b"/"[..],
        Some(i) => &bytes[..i],
        None => return false,
    };
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    match rustix::fs::openat2(dir, parent, flags, Mode::empty(), ResolveFlags::NO_MAGICLINKS) {
        Err(rustix::io::Errno::LOOP) => rustix::fs::openat(dir, parent, flags, Mode::empty()).is_ok(),
        Err(rustix::io::Errno::NOSYS) => {
            let text = String::from_utf8_lossy(bytes);
            text.contains("/proc/") || text.contains("/dev/fd") || text.starts_with("proc/")
        }
        _ => false,
    }
}

/// Whether `fd` is `path`: the same inode on the same mount (a bind mount
/// of `/` is another root).
fn same_file(fd: &OwnedFd, path: &str) -> bool {
    use rustix::fs::{AtFlags, StatxFlags};
    let flags = StatxFlags::INO | StatxFlags::MNT_ID;
    let a = rustix::fs::statx(fd, "", AtFlags::EMPTY_PATH, flags);
    let b = rustix::fs::statx(rustix::fs::CWD, path, AtFlags::empty(), flags);
    match (a, b) {
        (Ok(a), Ok(b)) => {
            (a.stx_dev_major, a.stx_dev_minor, a.stx_ino, a.stx_mnt_id)
                == (b.stx_dev_major, b.stx_dev_minor, b.stx_ino, b.stx_mnt_id)
                && a.stx_mask & StatxFlags::MNT_ID.bits() != 0
                && b.stx_mask & StatxFlags::MNT_ID.bits() != 0
        }
        _ => false,
    }
}

/// The namespaces (`CLONE_NEWNS`, `CLONE_NEWUSER`) the target is in and we
/// are not.
fn differing_namespaces(tid: pid_t) -> c_int {
    let mut kinds = 0;
    for (name, flag) in [("user", libc::CLONE_NEWUSER), ("mnt", libc::CLONE_NEWNS)] {
        let theirs = std::fs::read_link(format!("/proc/{tid}/ns/{name}")).ok();
        let ours = std::fs::read_link(format!("/proc/self/ns/{name}")).ok();
        if theirs != ours {
            kinds |= flag;
        }
    }
    kinds
}

/// `creds` (as our namespace sees them) as the ids inside the thread's
/// user namespace, through its `uid_map` and `gid_map` (whose outside ids
/// are given in the reader's namespace, ours); an id it does not map
/// cannot be taken: error.
fn inside_ids(tid: pid_t, mut creds: Creds) -> std::io::Result<Creds> {
    let map = |name: &str| -> std::io::Result<Vec<(u64, u64, u64)>> {
        let text = std::fs::read_to_string(format!("/proc/{tid}/{name}"))?;
        Ok(text
            .lines()
            .filter_map(|l| {
                let v: Vec<u64> = l.split_ascii_whitespace().filter_map(|x| x.parse().ok()).collect();
                (v.len() == 3).then(|| (v[0], v[1], v[2]))
            })
            .collect())
    };
    let inside = |map: &[(u64, u64, u64)], id: u32| -> std::io::Result<u32> {
        map.iter()
            .find(|&&(_, out, n)| (out..out + n).contains(&u64::from(id)))
            .map(|&(inn, out, _)| (u64::from(id) - out + inn) as u32)
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EOVERFLOW))
    };
    let (um, gm) = (map("uid_map")?, map("gid_map")?);
    for id in &mut creds.uid {
        *id = inside(&um, *id)?;
    }
    for id in &mut creds.gid {
        *id = inside(&gm, *id)?;
    }
    for id in &mut creds.groups {
        *id = inside(&gm, *id)?;
    }
    Ok(creds)
}

/// The thread's credentials from `/proc/TID/status`.
fn read_creds(tid: pid_t) -> std::io::Result<Creds> {
    let text = std::fs::read_to_string(format!("/proc/{tid}/status"))?;
    let mut c = Creds::default();
    let nums = |v: &str| -> Vec<u32> { v.split_ascii_whitespace().filter_map(|x| x.parse().ok()).collect() };
    let hex = |v: &str| u64::from_str_radix(v.trim(), 16).unwrap_or(0);
    let bad = || std::io::Error::from_raw_os_error(libc::EINVAL);
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else { continue };
        match k {
            "Uid" => c.uid = nums(v).try_into().map_err(|_| bad())?,
            "Gid" => c.gid = nums(v).try_into().map_err(|_| bad())?,
            "Groups" => c.groups = nums(v),
            "CapInh" => c.caps[0] = hex(v),
            "CapPrm" => c.caps[1] = hex(v),
            "CapEff" => c.caps[2] = hex(v),
            _ => {}
        }
    }
    Ok(c)
}
