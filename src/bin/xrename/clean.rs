//! `xrename clean [--remove] DIR...`: leftovers of interrupted moves.
//!
//! A move killed at the wrong moment can leave one hidden entry named
//! `.xrename-<pid>-<16 hex digits>` beside its destination or its source:
//! an unfinished copy (the user-visible name was never touched), an old
//! destination kept for rollback (the new one is in place), or an old source
//! tree being deleted (its content is at the destination). Unnamed
//! `O_TMPFILE` copies of single files leave nothing at all. An entry whose
//! process is still alive belongs to a move in progress and is left alone.

use std::ffi::OsString;
use std::os::fd::AsFd;
use std::path::Path;

use crate::fail;
use crate::run::human;

pub const HELP: &str = "\
xrename clean [--remove] DIR...: find what interrupted moves left behind

Lists the hidden .xrename-<pid>-<hex> entries in each DIR (not below it):
an unfinished copy, an old destination kept for rollback, or an old source
being deleted. Their user-visible counterparts are always complete. With
--remove, deletes those whose process is gone (a move still running is left
alone). Look at what is listed before removing: an old destination kept for
rollback holds the data the move replaced.

Examples:
  xrename clean /srv/data
  xrename clean --remove /srv/data /tmp
";

pub fn main(args: &[OsString]) -> i32 {
    let remove = args.iter().any(|a| a == "--remove");
    if args.iter().any(|a| a == "-h" || a == "--help") {
        print!("{HELP}");
        return 0;
    }
    let dirs: Vec<&OsString> = args.iter().filter(|a| *a != "--remove" && *a != "--").collect();
    if dirs.is_empty() {
        return fail("clean takes at least one DIR (see xrename help clean)");
    }
    let mut status = 0;
    for dir in dirs {
        if let Err(e) = clean(Path::new(dir), remove) {
            eprintln!("xrename clean: {}: {e}", Path::new(dir).display());
            status = 1;
        }
    }
    status
}

/// The pid in a leftover's name, if the name is one of ours.
pub fn leftover_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(".xrename-")?;
    let (pid, hex) = rest.split_once('-')?;
    (hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(())?;
    pid.parse().ok()
}

fn clean(dir: &Path, remove: bool) -> std::io::Result<()> {
    let dirfd =
        rustix::fs::open(dir, rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY, rustix::fs::Mode::empty())?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(leftover_pid) else { continue };
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path)?;
        let what = if meta.is_dir() { "directory".to_owned() } else { format!("file, {}", human(meta.len())) };
        if Path::new(&format!("/proc/{pid}")).exists() {
            println!("{}: in use by running process {pid} ({what}), left alone", path.display());
            continue;
        }
        if !remove {
            println!("{}: leftover of process {pid} ({what})", path.display());
            continue;
        }
        let cname = std::ffi::CString::new(name.as_encoded_bytes()).expect("no NUL in a file name");
        let result = if meta.is_dir() {
            xrename::engine::dir::remove_tree(dirfd.as_fd(), &cname)
                .map_err(|e| std::io::Error::from_raw_os_error(e.errno.raw_os_error()))
        } else {
            std::fs::remove_file(&path)
        };
        match result {
            Ok(()) => println!("{}: removed ({what})", path.display()),
            Err(e) => eprintln!("xrename clean: {}: {e}", path.display()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::leftover_pid;

    #[test]
    fn recognises_only_our_names() {
        assert_eq!(leftover_pid(".xrename-123-00112233445566ff"), Some(123));
        assert_eq!(leftover_pid(".xrename-123-0011"), None);
        assert_eq!(leftover_pid("xrename-123-00112233445566ff"), None);
        assert_eq!(leftover_pid(".xrename-abc-00112233445566ff"), None);
    }
}
