//! The command line, defined once. These definitions are what is parsed
//! (clap), what `--help` prints, and what the man pages (`xrename man`,
//! clap_mangen) and shell completions (`xrename completions SHELL`,
//! clap_complete) are made from: nothing is written twice, nothing drifts.
//!
//! Exit codes are the command's own, not clap's: a usage error is 125
//! (errors of xrename itself), or 1 for `xrename mv` (as GNU mv).

use std::ffi::OsString;

use clap::{Arg, ArgAction, ArgMatches, Command, value_parser};

const VERSION: &str = env!("CARGO_PKG_VERSION");

const ABOUT: &str = "Make rename(2) work across filesystems";

const LONG_ABOUT: &str = "\
Make rename(2) work across filesystems.

xrename runs CMD and everything it starts so that a rename the kernel \
refuses with EXDEV (\"Invalid cross-device link\": another filesystem, a \
bind mount, an overlayfs lower layer) is done anyway: the object is copied \
with its data, holes, metadata, xattrs and ACLs, made durable, installed \
atomically at the destination, and the source removed; the program sees \
rename return 0. A move that cannot keep these guarantees changes nothing \
and the program gets the kernel's EXDEV.

By default the command is traced (ptrace and seccomp), which reaches every \
program: dynamic, static, Go, musl, raw syscalls. Where tracing is \
impossible xrename warns and uses LD_PRELOAD alone.";

const EXAMPLES: &str = "\
Examples:
  xrename python3 app.py                      # os.rename across filesystems just works
  xrename --summary -- make install
  xrename --observe --log - ./legacy-tool     # which renames fail, and where?
  LD_PRELOAD=$(xrename lib) python3 app.py    # the library alone, no tracing
  xrename explain /tmp/report.pdf /mnt/usb/
  xrename mv -v --progress big.iso /mnt/backup/

Exit status: CMD's (128 + signal if it was killed); 125 for an error of
xrename itself, 126 if CMD cannot be run, 127 if it is not found.
The library is found next to this program, in ../lib/xrename/, in
../lib/<multiarch>/xrename/, in the Python package beside it, or at $XRENAME_LIB.";

/// The whole command: the run form and every subcommand.
pub fn command() -> Command {
    Command::new("xrename")
        .version(VERSION)
        .about(ABOUT)
        .long_about(LONG_ABOUT)
        .override_usage("xrename [OPTIONS] [--] CMD [ARGS...]\n       xrename <SUBCOMMAND> [ARGS...]")
        .after_help(EXAMPLES)
        .args_conflicts_with_subcommands(true)
        .args(run_args())
        .arg(
            Arg::new("cmd")
                .value_name("CMD")
                .help("The command to run, then its arguments")
                .num_args(1..)
                .trailing_var_arg(true)
                .value_parser(value_parser!(OsString))
                .value_hint(clap::ValueHint::CommandWithArguments),
        )
        .subcommands([explain(), mv(), clean(), lib(), completions(), man()])
}

fn flag(id: &'static str, help: &'static str) -> Arg {
    Arg::new(id).long(id).help(help).action(ArgAction::SetTrue)
}

fn run_args() -> Vec<Arg> {
    vec![
        Arg::new("log")
            .long("log")
            .value_name("FILE|-")
            .help("Log every EXDEV met, one JSON line each, to FILE or stderr (XRENAME_LOG)")
            .value_parser(value_parser!(OsString))
            .value_hint(clap::ValueHint::FilePath),
        flag("summary", "When CMD exits, print what xrename did across all its processes"),
        flag("observe", "Do not emulate: log every EXDEV and return it as the kernel did"),
        flag("no-fsync", "Skip fsync: faster, UNSAFE (a crash may lose moved data)"),
        flag("no-dirs", "Leave directory moves to the program (it gets EXDEV)"),
        flag("trace", "Trace, or fail (exit 125) where tracing is impossible").conflicts_with("preload"),
        flag(
            "preload",
            "LD_PRELOAD only, no tracing: cheaper for rename-heavy dynamic programs, and usable under a \
             debugger or strace; misses static, Go and raw-syscall programs",
        ),
    ]
}

fn explain() -> Command {
    Command::new("explain")
        .about("Say whether rename(SRC, DST) fails with EXDEV, and why")
        .long_about(
            "Say whether rename(SRC, DST) fails with EXDEV, and why.\n\n\
             Shows the mount, mount id and filesystem type of both sides, and the reason the kernel \
             would give EXDEV: two filesystems, two mounts of one filesystem (a bind mount), two btrfs \
             subvolumes, a directory from an overlayfs lower layer, different XFS/ext4 project quota \
             trees, an fscrypt encryption policy; then what xrename would do instead: the object, the \
             bytes and files it would copy. If DST is an existing directory, SRC is explained as moved \
             into it, as mv does. Nothing is changed.",
        )
        .after_help("Example:\n  xrename explain /var/lib/app/upload.tmp /srv/data/upload")
        .arg(path_arg("SRC", "The rename's source"))
        .arg(path_arg("DST", "The rename's destination"))
}

fn path_arg(name: &'static str, help: &'static str) -> Arg {
    Arg::new(name)
        .value_name(name)
        .help(help)
        .required(true)
        .value_parser(value_parser!(OsString))
        .value_hint(clap::ValueHint::AnyPath)
}

fn mv() -> Command {
    Command::new("mv")
        .override_usage("xrename mv [OPTIONS] SRC... DST")
        .about("Move files and trees, across filesystems too, atomically and durably")
        .long_about(
            "Move files and trees, across filesystems too.\n\n\
             Like mv, but a cross-device move is atomic at the destination (it appears complete or \
             not at all), durable (fsynced before the source is removed), and a failed move leaves \
             source and destination exactly as they were. As with mv, a DST that is an existing \
             directory receives the sources (unless -T). Exit status 1 if any move failed.",
        )
        .after_help("Examples:\n  xrename mv build/output.tar /mnt/nas/releases/\n  xrename mv -v --progress ~/videos /media/usb/")
        .arg(Arg::new("verbose").short('v').long("verbose").help("Say what was moved").action(ArgAction::SetTrue))
        .arg(flag("progress", "Show a progress bar for large moves (on a terminal only)"))
        .arg(
            Arg::new("no-target-directory")
                .short('T')
                .long("no-target-directory")
                .help("Treat DST as the name to create, even if it is a directory")
                .action(ArgAction::SetTrue),
        )
        .arg(flag("no-fsync", "Skip fsync: faster, UNSAFE (a crash may lose moved data)"))
        .arg(
            Arg::new("paths")
                .value_name("PATH")
                .help("SRC... DST: what to move, then where")
                .num_args(2..)
                .required(true)
                .value_parser(value_parser!(OsString))
                .value_hint(clap::ValueHint::AnyPath),
        )
}

fn clean() -> Command {
    Command::new("clean")
        .about("Find what interrupted moves left behind (.xrename-* entries)")
        .long_about(
            "Find what interrupted moves left behind.\n\n\
             Lists the hidden .xrename-* entries in each DIR (not below it):\n  \
             .xrename-<pid>-<hex>      an unfinished copy: never the only copy of anything\n  \
             .xrename-old-<pid>-<hex>  a replacing copy, or the old destination it replaced\n                            \
             (kept for rollback), or a directory holding one: the old data may be only here\n  \
             .xrename-src-<pid>-<hex>  a moved source being deleted: its copy is in place,\n                            \
             but what changed during the move may be only here\n\
             With --remove, deletes the first kind (and empty directories of the second) when its process \
             is gone. The others are only \
             reported: look inside, keep what you need, delete them yourself.",
        )
        .after_help("Examples:\n  xrename clean /srv/data\n  xrename clean --remove /srv/data /tmp")
        .arg(flag("remove", "Delete unfinished copies whose process is gone"))
        .arg(
            Arg::new("dirs")
                .value_name("DIR")
                .help("Directories to look in")
                .num_args(1..)
                .required(true)
                .value_parser(value_parser!(OsString))
                .value_hint(clap::ValueHint::DirPath),
        )
}

fn lib() -> Command {
    Command::new("lib")
        .about("Print the path of libxrename.so, for LD_PRELOAD=$(xrename lib)")
        .long_about(
            "Print the path of libxrename.so, for LD_PRELOAD=$(xrename lib).\n\n\
             The library alone handles dynamic programs that call libc's rename, renameat and renameat2; \
             see libxrename(7).",
        )
        .after_help("Example:\n  LD_PRELOAD=$(xrename lib) python3 app.py")
}

fn completions() -> Command {
    Command::new("completions")
        .about("Print a completion script for a shell")
        .after_help("Example:\n  xrename completions bash > /etc/bash_completion.d/xrename")
        .arg(
            Arg::new("shell")
                .value_name("SHELL")
                .help("The shell")
                .required(true)
                .value_parser(value_parser!(clap_complete::Shell)),
        )
}

fn man() -> Command {
    Command::new("man").about("Write the man pages (xrename.1, xrename-*.1, libxrename.7) into DIR").hide(true).arg(
        Arg::new("dir")
            .value_name("DIR")
            .required(true)
            .value_parser(value_parser!(std::path::PathBuf))
            .value_hint(clap::ValueHint::DirPath),
    )
}

/// Parses `args` (without the program name). Usage errors, `--help` and
/// `--version` are handled here: `Err(exit code)`.
pub fn parse(args: &[OsString]) -> Result<ArgMatches, i32> {
    let argv = std::iter::once(OsString::from("xrename")).chain(args.iter().cloned());
    command().try_get_matches_from(argv).map_err(|e| {
        use clap::error::ErrorKind;
        let _ = e.print();
        match e.kind() {
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => 0,
            // `xrename mv` usage errors: 1, as GNU mv.
            _ if args.first().is_some_and(|a| a == "mv") => 1,
            _ => 125,
        }
    })
}

/// Prints the completion script for `shell`.
pub fn print_completions(shell: clap_complete::Shell) {
    use std::io::Write;
    let mut buf = Vec::new();
    // The hidden `man` subcommand is for packaging, not for completion.
    let mut cmd = Command::new("xrename")
        .version(VERSION)
        .args(command().get_arguments().cloned())
        .subcommands(command().get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    clap_complete::generate(shell, &mut cmd, "xrename", &mut buf);
    let _ = std::io::stdout().write_all(&buf); // a closed pipe is not our error
}

/// Writes `xrename.1`, one `xrename-SUB.1` per visible subcommand, and
/// `libxrename.7` into `dir`.
pub fn write_man_pages(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let cmd = command();
    std::fs::write(dir.join("xrename.1"), man_page(&cmd, "libxrename(7)")?)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let page = format!("xrename-{}", sub.get_name());
        // The page is xrename-SUB(1); its synopsis names the real command line.
        let sub = sub.clone().display_name(page.clone()).bin_name(format!("xrename {}", sub.get_name()));
        std::fs::write(dir.join(format!("{page}.1")), man_page(&sub, "xrename(1)")?)?;
    }
    std::fs::write(dir.join("libxrename.7"), crate::libman::page(VERSION))?;
    Ok(())
}

/// A command's page: clap_mangen's sections, then the `after_help` text
/// (examples, exit status) kept as written, and SEE ALSO.
fn man_page(cmd: &Command, see_also: &str) -> std::io::Result<Vec<u8>> {
    let man = clap_mangen::Man::new(cmd.clone());
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    let subs: Vec<&Command> = cmd.get_subcommands().filter(|s| !s.is_hide_set()).collect();
    if !subs.is_empty() {
        out.extend_from_slice(b".SH SUBCOMMANDS\n");
        for sub in subs {
            let name = sub.get_name();
            let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
            let text = format!(
                ".TP\n\\fBxrename {name}\\fR\n{}.\nSee \\fB\\%xrename\\-{name}\\fR(1).\n",
                about.replace('-', "\\-")
            );
            out.extend_from_slice(text.as_bytes());
        }
    }
    if let Some(text) = cmd.get_after_help() {
        out.extend_from_slice(b".SH EXAMPLES\n.nf\n");
        for line in text.to_string().lines() {
            let line = line.replace('\\', "\\e").replace('-', "\\-");
            if line.starts_with('.') || line.starts_with('\'') {
                out.extend_from_slice(b"\\&");
            }
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
        }
        out.extend_from_slice(b".fi\n");
    }
    let (page, section) = see_also.trim_end_matches(')').split_once('(').unwrap_or((see_also, "1"));
    out.extend_from_slice(format!(".SH \"SEE ALSO\"\n.BR {page} ({section})\n").as_bytes());
    if cmd.get_version().is_some() {
        man.render_version_section(&mut out)?;
    }
    Ok(out)
}
