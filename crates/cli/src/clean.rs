//! `xrename clean [--remove] DIR...`: leftovers of interrupted moves.
//!
//! A move killed at the wrong moment can leave hidden entries beside its
//! destination or its source:
//! - `.xrename-<pid>-<16 hex>`: an unfinished copy (its source is intact).
//!   Never the only copy of anything: `--remove` deletes it.
//! - `.xrename-old-<pid>-<16 hex>`: a copy about to replace a destination,
//!   or the old destination it replaced, kept for rollback; a directory of
//!   this name is the private directory a symlink or special file was made
//!   in, and holds one of these. The old destination may exist only here:
//!   reported, never removed (but an empty directory, with `--remove`).
//! - `.xrename-src-<pid>-<16 hex>`: a moved source set aside to be deleted.
//!   Its copy is installed, but entries changed during the move may exist
//!   only here: reported, never removed.
//!
//! Unnamed `O_TMPFILE` copies of single files leave nothing at all. An entry
//! whose process is still alive (in this PID namespace) belongs to a move in
//! progress and is left alone. Everything is done relative to one open
//! descriptor of DIR, without following symlinks or crossing mount points.

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, StatxAttributes, StatxFlags};

use xrename_engine::names::{self, Role};

use crate::run::human;

pub fn main(m: &clap::ArgMatches) -> i32 {
    let remove = m.get_flag("remove");
    let dirs: Vec<&OsString> = m.get_many::<OsString>("dirs").into_iter().flatten().collect();
    let mut status = 0;
    for dir in dirs {
        if let Err(e) = clean(Path::new(dir), remove) {
            eprintln!("xrename clean: {}: {e}", Path::new(dir).display());
            status = 1;
        }
    }
    status
}

fn clean(dir: &Path, remove: bool) -> std::io::Result<()> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let dirfd: OwnedFd = rustix::fs::open(dir, flags, Mode::empty())?;
    let names = xrename_engine::walk::read_names(dirfd.as_fd()).map_err(errno)?;
    let dir_st = rustix::fs::fstat(&dirfd)?;
    let dir_dev = dir_st.st_dev;
    // Where someone else may rename entries (a directory others may write,
    // not sticky, or sticky but theirs), a name proves nothing: anyone
    // could have given one of our own directories a leftover's name.
    let me = rustix::process::geteuid().as_raw();
    let sticky = dir_st.st_mode & 0o1000 != 0 && (dir_st.st_uid == me || dir_st.st_uid == 0);
    let names_trusted = sticky || (dir_st.st_uid == me && dir_st.st_mode & 0o022 == 0);
    for name in names.iter().rev() {
        let Some((role, pid)) = names::parse(name.to_bytes()) else { continue };
        let path = dir.join(std::ffi::OsStr::from_bytes(name.to_bytes()));
        let st = match rustix::fs::statx(&dirfd, &**name, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::BASIC_STATS) {
            Ok(st) => st,
            Err(_) => continue, // gone meanwhile
        };
        let is_dir = FileType::from_raw_mode(st.stx_mode.into()) == FileType::Directory;
        let what = if is_dir { "directory".to_owned() } else { format!("file, {}", human(st.stx_size)) };
        if Path::new(&format!("/proc/{pid}")).exists() {
            println!("{}: in use by running process {pid} ({what}), left alone", path.display());
            continue;
        }
        let mounted = st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT)
            && st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT);
        let other_fs = rustix::fs::makedev(st.stx_dev_major, st.stx_dev_minor) != dir_dev;
        let removable = remove && !mounted && !other_fs;
        // A private directory a symlink or special file was made in: empty,
        // it holds nothing (rmdir removes nothing else).
        if role == Role::Old && is_dir && removable && rustix::fs::unlinkat(&dirfd, &**name, AtFlags::REMOVEDIR).is_ok()
        {
            println!("{}: removed (empty directory)", path.display());
            continue;
        }
        if role == Role::Old {
            println!(
                "{}: a replacing copy or the old destination it replaced, left by process {pid} ({what}); the \
                 old data may be only here: inspect it, then delete it yourself",
                path.display()
            );
            continue;
        }
        if role == Role::Source {
            println!(
                "{}: a moved source set aside by process {pid} ({what}); its copy is in place, but what changed \
                 during the move may be only here: inspect it, then delete it yourself",
                path.display()
            );
            continue;
        }
        if !removable || !names_trusted {
            let why = if removable && !names_trusted {
                "; not removed: others may rename entries in this directory, so its name proves nothing: \
                 inspect it, then delete it yourself"
            } else {
                ""
            };
            println!("{}: leftover of process {pid} ({what}){why}", path.display());
            continue;
        }
        let result = if is_dir {
            xrename_engine::tree::remove_tree(dirfd.as_fd(), name).map_err(errno)
        } else {
            rustix::fs::unlinkat(&dirfd, &**name, AtFlags::empty()).map_err(std::io::Error::from)
        };
        match result {
            Ok(()) => println!("{}: removed ({what})", path.display()),
            Err(e) => eprintln!("xrename clean: {}: {e}", path.display()),
        }
    }
    Ok(())
}

fn errno(e: xrename_engine::Error) -> std::io::Error {
    std::io::Error::from_raw_os_error(e.errno.raw_os_error())
}
