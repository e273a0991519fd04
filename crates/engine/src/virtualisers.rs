//! Libraries that virtualise the filesystem inside the processes that load
//! them, and those that interpose the same calls harmlessly: one list for
//! the preload, `xrename --` and the supervisor.
//!
//! fakeroot (`libfakeroot`: owners, modes and device nodes kept by its
//! daemon `faked`), fakechroot (`libfakechroot`: paths translated into a
//! fake root) and Yocto's pseudo (`libpseudo`: both) answer the program's
//! filesystem calls from a world of their own. The engine makes raw
//! syscalls, which they never see: it would act on real paths and real
//! owners, not the ones the program sees (issue 11, 2: a fake device node
//! arrived as an empty file, a fake owner as root; under fakechroot the
//! real `/a/f` outside the fake root was moved). Under them xrename steps
//! aside: the program gets the kernel's EXDEV and copies through them, as
//! without xrename. libeatmydata and libfaketime interpose some of the same
//! calls but change neither paths nor owners: under them xrename moves.
//!
//! Who looks, and how: the preload asks the loader which object defines
//! each filesystem call (`dlsym`, `dladdr`), so it catches any interposer,
//! named here or not, except [`HARMLESS`] ones; the supervisor cannot ask
//! another process's loader, so it reads the objects mapped executable in
//! `/proc/PID/maps` ([`in_maps`]) and knows [`VIRTUALISERS`] only;
//! `xrename --` reads its own environment ([`in_environment`]).

use std::ffi::OsString;

/// File name prefixes of the libraries that virtualise paths or owners.
pub const VIRTUALISERS: [&str; 3] = ["libfakechroot", "libfakeroot", "libpseudo"];

/// The environment variables fakeroot and fakechroot set in the processes
/// they run, with the library each stands for.
const ENVIRONMENT: [(&str, &str); 2] = [("FAKEROOTKEY", "libfakeroot"), ("FAKECHROOT", "libfakechroot")];

/// File name prefixes of libraries that interpose filesystem calls without
/// changing what a path names or who owns what.
pub const HARMLESS: [&str; 2] = ["libeatmydata", "libfaketime"];

/// The log's step when a virtualising library is loaded: the kernel's
/// EXDEV stands (`lib`: the library's file name, and what tells).
pub fn step(lib: &str) -> String {
    format!("another library virtualises the filesystem: {lib}")
}

/// The last component of a path.
fn base(path: &[u8]) -> &[u8] {
    path.rsplit(|&b| b == b'/').next().unwrap_or(path)
}

/// The file name of `path` if it is a virtualising library.
pub fn virtualiser(path: &[u8]) -> Option<&[u8]> {
    let name = base(path);
    VIRTUALISERS.iter().any(|v| name.starts_with(v.as_bytes())).then_some(name)
}

/// Whether the file name `name` is a [`HARMLESS`] library's.
pub fn harmless(name: &str) -> bool {
    HARMLESS.iter().any(|h| name.starts_with(h))
}

/// The first virtualising library among the objects mapped executable in
/// `maps` (the text of `/proc/PID/maps`), by file name. Only executable
/// mappings count: a loaded library always has one, while a program that
/// merely reads such a file (a packager, `cp`) maps it readable only.
pub fn in_maps(maps: &[u8]) -> Option<String> {
    executable_files(maps).find_map(|path| virtualiser(path).map(|name| String::from_utf8_lossy(name).into_owned()))
}

/// The files mapped executable in `maps` (the text of `/proc/PID/maps`),
/// by path (as the kernel prints it: maybe with " (deleted)").
fn executable_files(maps: &[u8]) -> impl Iterator<Item = &[u8]> {
    maps.split(|&b| b == b'\n').filter_map(|line| {
        // address perms offset dev inode [pathname]; the pathname may hold spaces.
        let mut rest = line;
        let mut fields = [&b""[..]; 5];
        for field in &mut fields {
            rest = rest.trim_ascii_start();
            let end = rest.iter().position(u8::is_ascii_whitespace)?;
            (*field, rest) = rest.split_at(end);
        }
        let path = rest.trim_ascii_start();
        (fields[1].get(2) == Some(&b'x') && path.first() == Some(&b'/')).then_some(path)
    })
}

/// A dynamically linked process (its maps show the dynamic loader) whose
/// environment says it runs under fakeroot or fakechroot (`FAKEROOTKEY`,
/// `FAKECHROOT`, as `environ`, NUL-separated): it may have loaded the
/// library under another name (`fakeroot -l`), which the maps cannot tell.
/// A static program has nothing to load it into, and sees the real
/// filesystem: not named.
pub fn in_environ(environ: &[u8], maps: &[u8]) -> Option<String> {
    let dynamic = executable_files(maps).any(|path| {
        let name = base(path.trim_ascii_end());
        name.starts_with(b"ld-linux") || name.starts_with(b"ld-musl") || name.starts_with(b"ld.so")
    });
    if !dynamic {
        return None;
    }
    environ.split(|&b| b == 0).find_map(|pair| {
        ENVIRONMENT.iter().find_map(|(key, lib)| {
            let value = pair.strip_prefix(key.as_bytes())?.strip_prefix(b"=")?;
            (!value.is_empty()).then(|| format!("{lib} ({key})"))
        })
    })
}

/// The virtualising libraries `var` (the environment) shows: those in
/// `LD_PRELOAD`, by file name; else fakeroot's `FAKEROOTKEY` or
/// fakechroot's `FAKECHROOT`, by variable.
pub fn in_environment(var: impl Fn(&str) -> Option<OsString>) -> Vec<String> {
    use std::os::unix::ffi::OsStrExt;
    let preload = var("LD_PRELOAD").unwrap_or_default();
    let mut found: Vec<String> = preload
        .as_bytes()
        .split(|&b| b == b':' || b == b' ')
        .filter_map(virtualiser)
        .map(|name| String::from_utf8_lossy(name).into_owned())
        .collect();
    for (key, lib) in ENVIRONMENT {
        if var(key).is_some_and(|v| !v.is_empty()) && !found.iter().any(|f| f.starts_with(lib)) {
            found.push(format!("{lib} ({key})"));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0a00000-55d0c0a02000 r--p 00000000 fe:00 1311       /usr/bin/mv
7f3c1c000000-7f3c1c021000 rw-p 00000000 00:00 0 
7f3c1d100000-7f3c1d104000 r--p 00000000 fe:00 2054       /usr/lib/x86_64-linux-gnu/libfakeroot/libfakeroot-tcp.so
7f3c1d200000-7f3c1d204000 r--p 00000000 fe:00 2055       /usr/lib/x86_64-linux-gnu/libfakeroot/libfakeroot-sysv.so
7f3c1d204000-7f3c1d20c000 r-xp 00004000 fe:00 2055       /usr/lib/x86_64-linux-gnu/libfakeroot/libfakeroot-sysv.so
7ffd5e3f0000-7ffd5e411000 rw-p 00000000 00:00 0          [stack]
";

    #[test]
    fn a_library_mapped_executable_is_found_by_file_name() {
        assert_eq!(in_maps(MAPS.as_bytes()).as_deref(), Some("libfakeroot-sysv.so"));
        let chroot = "7f00-7f10 r-xp 00000000 fe:00 9 /usr/lib/fakechroot/libfakechroot.so\n";
        assert_eq!(in_maps(chroot.as_bytes()).as_deref(), Some("libfakechroot.so"));
        let spaces = "7f00-7f10 r-xp 00000000 fe:00 9    /opt/my dir/libpseudo.so (deleted)\n";
        assert_eq!(in_maps(spaces.as_bytes()).as_deref(), Some("libpseudo.so (deleted)"));
    }

    #[test]
    fn files_only_read_and_harmless_libraries_are_not_virtualisers() {
        let read_only = "7f00-7f10 r--p 00000000 fe:00 9 /srv/pkg/libfakeroot-sysv.so\n";
        assert_eq!(in_maps(read_only.as_bytes()), None);
        let interposers = "7f00-7f10 r-xp 00000000 fe:00 9 /usr/lib/x86_64-linux-gnu/libeatmydata.so\n\
                        7f00-7f10 r-xp 00000000 fe:00 9 /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1\n";
        assert_eq!(in_maps(interposers.as_bytes()), None);
        assert_eq!(in_maps(b"7f00-7f10 r-xp 00000000 00:00 0 [vdso]\n"), None);
        assert_eq!(in_maps(b"truncated line"), None);
        assert!(harmless("libfaketimeMT.so.1") && !harmless("libfakeroot-0.so"));
    }

    #[test]
    fn a_dynamic_process_under_fakeroots_environment_is_named_whatever_its_library_is_called() {
        let dynamic = "7f00-7f10 r-xp 00000000 fe:00 9 /usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2\n\
                       7f20-7f30 r-xp 00000000 fe:00 10 /tmp/libfr.so\n";
        let env = b"PATH=/bin\0FAKEROOTKEY=1234\0";
        assert_eq!(in_environ(env, dynamic.as_bytes()).as_deref(), Some("libfakeroot (FAKEROOTKEY)"));
        assert_eq!(in_environ(b"FAKECHROOT=true\0", dynamic.as_bytes()).as_deref(), Some("libfakechroot (FAKECHROOT)"));
        assert_eq!(in_environ(b"FAKEROOTKEY=\0HOME=/\0", dynamic.as_bytes()), None);
        let static_program = "00400000-00401000 r-xp 00000000 fe:00 9 /usr/local/bin/static\n";
        assert_eq!(in_environ(env, static_program.as_bytes()), None);
    }

    #[test]
    fn the_environment_shows_preloads_and_fakeroot_and_fakechroot_variables() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| OsString::from(v))
        };
        assert!(in_environment(env(&[("LD_PRELOAD", "/l/a.so:libeatmydata.so")])).is_empty());
        assert_eq!(
            in_environment(env(&[("LD_PRELOAD", "/l/a.so libfakeroot-sysv.so"), ("FAKEROOTKEY", "123")])),
            ["libfakeroot-sysv.so"]
        );
        assert_eq!(in_environment(env(&[("FAKEROOTKEY", "123")])), ["libfakeroot (FAKEROOTKEY)"]);
        assert_eq!(
            in_environment(env(&[("FAKECHROOT", "true"), ("LD_PRELOAD", "/usr/lib/libpseudo.so")])),
            ["libpseudo.so", "libfakechroot (FAKECHROOT)"]
        );
    }
}
