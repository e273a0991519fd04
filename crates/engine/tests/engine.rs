//! The engine on its own, in a private temp directory. The engine works on
//! descriptors and does not care whether the two sides are on one
//! filesystem, so these tests need no mounts; the C and Python suites run
//! the same moves across real devices.

use std::ffi::CString;
use std::fs;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::CWD;
use rustix::io::Errno;
use xrename_engine::durable::Durability;
use xrename_engine::names;
use xrename_engine::path::Entry;
use xrename_engine::{self as engine, Op, Options, Report, Request, install};

/// A private directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let base = std::env::temp_dir().join(format!("xrename-test-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(&base).unwrap();
        TempDir(base)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    fn names(&self) -> Vec<String> {
        let mut v: Vec<String> =
            fs::read_dir(&self.0).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        v.sort();
        v
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn move_path(old: &Path, new: &Path) -> (Result<(), engine::Error>, Report) {
    let (old, new) = (c(old), c(new));
    let req = Request { op: Op::Rename, old_dir: CWD, old: &old, new_dir: CWD, new: &new, flags: 0 };
    let mut report = Report::default();
    let r = engine::rename(&req, &Options::default(), &mut report);
    (r, report)
}

fn errno_of(r: Result<(), engine::Error>) -> Errno {
    r.expect_err("the move should have failed").errno
}

#[test]
fn moves_data_mode_and_nanosecond_times() {
    let t = TempDir::new("basic");
    let (a, b) = (t.path("a"), t.path("b"));
    fs::write(&a, b"hello world").unwrap();
    fs::set_permissions(&a, fs::Permissions::from_mode(0o640)).unwrap();
    let times = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec { tv_sec: 1_000_000_000, tv_nsec: 123_456_789 },
        last_modification: rustix::fs::Timespec { tv_sec: 999_999_999, tv_nsec: 987_654_321 },
    };
    rustix::fs::utimensat(CWD, &*c(&a), &times, rustix::fs::AtFlags::empty()).unwrap();

    let (r, report) = move_path(&a, &b);
    r.unwrap();
    let m = fs::metadata(&b).unwrap(); // before reading it changes atime
    assert_eq!(fs::read(&b).unwrap(), b"hello world");
    assert!(!a.exists());
    assert_eq!(m.mode() & 0o7777, 0o640);
    assert_eq!((m.atime(), m.atime_nsec()), (1_000_000_000, 123_456_789));
    assert_eq!((m.mtime(), m.mtime_nsec()), (999_999_999, 987_654_321));
    assert_eq!((report.bytes, report.files), (11, 1));
    assert_eq!(t.names(), ["b"]);
}

#[test]
fn sparse_file_keeps_its_holes() {
    let t = TempDir::new("sparse");
    let (a, b) = (t.path("a"), t.path("b"));
    let f = fs::File::create(&a).unwrap();
    rustix::io::pwrite(f.as_fd(), &[7u8; 4096], 0).unwrap();
    rustix::io::pwrite(f.as_fd(), &[9u8; 4096], 4 << 20).unwrap();
    f.set_len(8 << 20).unwrap();
    drop(f);
    let before = fs::read(&a).unwrap();

    let (r, report) = move_path(&a, &b);
    r.unwrap();
    assert_eq!(fs::read(&b).unwrap(), before);
    assert!(fs::metadata(&b).unwrap().blocks() * 512 <= 64 * 1024, "holes were filled");
    assert_eq!(report.bytes, 8192);
}

#[test]
fn replace_swaps_in_new_content_and_leaves_no_backup() {
    let t = TempDir::new("replace");
    let (a, b) = (t.path("a"), t.path("b"));
    fs::write(&a, b"new").unwrap();
    fs::write(&b, b"old").unwrap();
    move_path(&a, &b).0.unwrap();
    assert_eq!(fs::read(&b).unwrap(), b"new");
    assert_eq!(t.names(), ["b"]);
}

#[test]
fn same_inode_through_another_name_is_a_successful_no_op() {
    let t = TempDir::new("same");
    let (a, b) = (t.path("a"), t.path("b"));
    fs::write(&a, b"data").unwrap();
    fs::hard_link(&a, &b).unwrap();
    move_path(&a, &b).0.unwrap();
    assert_eq!(fs::read(&a).unwrap(), b"data");
    assert_eq!(fs::read(&b).unwrap(), b"data");
}

#[test]
fn directory_destination_is_eisdir_and_nothing_changes() {
    let t = TempDir::new("eisdir");
    let (a, d) = (t.path("a"), t.path("d"));
    fs::write(&a, b"data").unwrap();
    fs::create_dir(&d).unwrap();
    assert_eq!(errno_of(move_path(&a, &d).0), Errno::ISDIR);
    assert_eq!(fs::read(&a).unwrap(), b"data");
    assert_eq!(t.names(), ["a", "d"]);
}

#[test]
fn trailing_slash_on_a_file_is_enotdir() {
    let t = TempDir::new("slash");
    let a = t.path("a");
    fs::write(&a, b"data").unwrap();
    let slashed = PathBuf::from(format!("{}/", t.path("b").display()));
    assert_eq!(errno_of(move_path(&a, &slashed).0), Errno::NOTDIR);
    let src_slashed = PathBuf::from(format!("{}/", a.display()));
    assert_eq!(errno_of(move_path(&src_slashed, &t.path("c")).0), Errno::NOTDIR);
    assert_eq!(t.names(), ["a"]);
}

#[test]
fn missing_source_is_enoent() {
    let t = TempDir::new("enoent");
    assert_eq!(errno_of(move_path(&t.path("nope"), &t.path("b")).0), Errno::NOENT);
}

#[test]
fn dot_and_dotdot_are_ebusy() {
    let t = TempDir::new("dots");
    fs::write(t.path("a"), b"x").unwrap();
    assert_eq!(errno_of(move_path(&t.path("a"), &t.path(".")).0), Errno::BUSY);
    assert_eq!(errno_of(move_path(&t.path(".."), &t.path("b")).0), Errno::BUSY);
}

#[test]
fn symlink_moves_as_a_link_with_its_target_text() {
    let t = TempDir::new("symlink");
    std::os::unix::fs::symlink("no/such/target", t.path("l")).unwrap();
    let (r, report) = move_path(&t.path("l"), &t.path("m"));
    r.unwrap();
    assert_eq!(fs::read_link(t.path("m")).unwrap(), Path::new("no/such/target"));
    assert_eq!(report.kind, Some(rustix::fs::FileType::Symlink));
    assert_eq!(t.names(), ["m"]);
}

#[test]
fn fifo_is_recreated_with_its_mode() {
    let t = TempDir::new("fifo");
    rustix::fs::mknodat(CWD, &*c(&t.path("p")), rustix::fs::FileType::Fifo, rustix::fs::Mode::from_raw_mode(0o640), 0)
        .unwrap();
    rustix::fs::chmodat(CWD, &*c(&t.path("p")), rustix::fs::Mode::from_raw_mode(0o640), rustix::fs::AtFlags::empty())
        .unwrap();
    move_path(&t.path("p"), &t.path("q")).0.unwrap();
    let m = fs::symlink_metadata(t.path("q")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&m.file_type()));
    assert_eq!(m.mode() & 0o7777, 0o640);
    assert_eq!(t.names(), ["q"]);
}

/// Builds a small tree: files, a hard-link pair, a symlink, nested dirs.
fn small_tree(root: &Path) {
    fs::create_dir_all(root.join("a/b/c")).unwrap();
    fs::write(root.join("top"), b"top").unwrap();
    fs::write(root.join("a/b/c/deep"), b"deep").unwrap();
    fs::hard_link(root.join("top"), root.join("a/b/top-link")).unwrap();
    std::os::unix::fs::symlink("../top", root.join("a/up")).unwrap();
    fs::create_dir(root.join("empty")).unwrap();
}

#[test]
fn directory_tree_moves_with_hard_links_symlinks_and_empty_dirs() {
    let t = TempDir::new("tree");
    small_tree(&t.path("src"));
    fs::set_permissions(t.path("src/a/b"), fs::Permissions::from_mode(0o2750)).unwrap();
    move_path(&t.path("src"), &t.path("dst")).0.unwrap();
    let d = t.path("dst");
    assert_eq!(fs::read(d.join("a/b/c/deep")).unwrap(), b"deep");
    assert_eq!(fs::metadata(d.join("top")).unwrap().ino(), fs::metadata(d.join("a/b/top-link")).unwrap().ino());
    assert_eq!(fs::read_link(d.join("a/up")).unwrap(), Path::new("../top"));
    assert!(fs::metadata(d.join("empty")).unwrap().is_dir());
    assert_eq!(fs::metadata(d.join("a/b")).unwrap().mode() & 0o7777, 0o2750);
    assert_eq!(t.names(), ["dst"]);
}

/// A tree whose directories are deleted by the crew while the walk goes
/// on (files of up to three directories at once, each removed once its
/// files are): nested directories left with their files pending, files
/// with several names in them (the walk takes those back and judges them
/// with its count of names deleted), and a parent removed only after what
/// was left below it. Whatever order the threads finish in, the whole
/// source goes and the copy keeps every name and link.
#[test]
fn tree_deleted_by_threads_goes_whole_and_keeps_its_links() {
    let t = TempDir::new("tree-threads");
    let src = t.path("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("top"), b"top").unwrap();
    let mut names = vec!["top".to_string()];
    for i in 0..12 {
        for (j, dir) in ["", "/sub", "/sub/deeper"].iter().enumerate().take(1 + i % 3) {
            let d = format!("d{i}{dir}");
            fs::create_dir_all(src.join(&d)).unwrap();
            for k in 0..40 {
                let f = format!("{d}/f{k}");
                fs::write(src.join(&f), format!("{f} {j}")).unwrap();
                names.push(f);
            }
            let (first, top) = (format!("d{i}/f0"), format!("{d}/top-link"));
            fs::hard_link(src.join("top"), src.join(&top)).unwrap();
            names.push(top);
            if j > 0 {
                let f = format!("{d}/first-link");
                fs::hard_link(src.join(&first), src.join(&f)).unwrap();
                names.push(f);
            }
        }
    }
    let options = Options { threads: Some(4), ..Options::default() };
    let (old, new) = (c(&src), c(&t.path("dst")));
    let req = Request { op: Op::Rename, old_dir: CWD, old: &old, new_dir: CWD, new: &new, flags: 0 };
    let mut report = Report::default();
    engine::rename(&req, &options, &mut report).unwrap();
    assert_eq!(report.leftover, None);
    assert_eq!(t.names(), ["dst"]);
    let dst = t.path("dst");
    for n in &names {
        let want = if n.ends_with("top-link") {
            "top".to_string()
        } else if n.ends_with("first-link") {
            format!("{}/f0 0", &n[..n.find('/').unwrap()])
        } else if n == "top" {
            "top".to_string()
        } else {
            format!("{n} {}", n.matches('/').count() - 1)
        };
        assert_eq!(fs::read_to_string(dst.join(n)).unwrap(), want, "{n}");
    }
    let top = fs::metadata(dst.join("top")).unwrap();
    let top_links: Vec<_> = names.iter().filter(|n| n.ends_with("top-link")).collect();
    assert_eq!(top.nlink() as usize, 1 + top_links.len());
    for n in top_links {
        assert_eq!(fs::metadata(dst.join(n)).unwrap().ino(), top.ino(), "{n}");
    }
    for i in 0..12 {
        let first = fs::metadata(dst.join(format!("d{i}/f0"))).unwrap();
        assert_eq!(first.nlink(), 1 + (i % 3) as u64, "d{i}/f0");
    }
}

#[test]
fn directory_replaces_an_empty_directory() {
    let t = TempDir::new("tree-empty-dst");
    small_tree(&t.path("src"));
    fs::create_dir(t.path("dst")).unwrap();
    move_path(&t.path("src"), &t.path("dst")).0.unwrap();
    assert_eq!(fs::read(t.path("dst/top")).unwrap(), b"top");
    assert_eq!(t.names(), ["dst"]);
}

#[test]
fn directory_errors_change_nothing() {
    let t = TempDir::new("tree-errors");
    small_tree(&t.path("src"));
    fs::create_dir(t.path("full")).unwrap();
    fs::write(t.path("full/x"), b"x").unwrap();
    fs::write(t.path("file"), b"f").unwrap();
    assert_eq!(errno_of(move_path(&t.path("src"), &t.path("full")).0), Errno::NOTEMPTY);
    assert_eq!(errno_of(move_path(&t.path("src"), &t.path("file")).0), Errno::NOTDIR);
    assert_eq!(errno_of(move_path(&t.path("src"), &t.path("src/a/inside")).0), Errno::INVAL);
    assert_eq!(errno_of(move_path(&t.path("src/a"), &t.path("src")).0), Errno::NOTEMPTY);
    assert_eq!(t.names(), ["file", "full", "src"]);
    assert_eq!(fs::read(t.path("src/a/b/c/deep")).unwrap(), b"deep");
}

#[test]
fn ten_thousand_deep_chain_moves() {
    let t = TempDir::new("deep");
    let depth = 10_000;
    fs::create_dir(t.path("src")).unwrap();
    let mut fd =
        rustix::fs::open(&*c(&t.path("src")), rustix::fs::OFlags::DIRECTORY, rustix::fs::Mode::empty()).unwrap();
    for _ in 0..depth {
        rustix::fs::mkdirat(&fd, c"d", rustix::fs::Mode::from_raw_mode(0o755)).unwrap();
        fd = rustix::fs::openat(&fd, c"d", rustix::fs::OFlags::DIRECTORY, rustix::fs::Mode::empty()).unwrap();
    }
    let f = rustix::fs::openat(
        &fd,
        c"bottom",
        rustix::fs::OFlags::CREATE | rustix::fs::OFlags::WRONLY,
        rustix::fs::Mode::from_raw_mode(0o644),
    )
    .unwrap();
    rustix::io::write(&f, b"found").unwrap();
    drop((f, fd));

    move_path(&t.path("src"), &t.path("dst")).0.unwrap();
    let mut fd =
        rustix::fs::open(&*c(&t.path("dst")), rustix::fs::OFlags::DIRECTORY, rustix::fs::Mode::empty()).unwrap();
    for _ in 0..depth {
        fd = rustix::fs::openat(&fd, c"d", rustix::fs::OFlags::DIRECTORY, rustix::fs::Mode::empty()).unwrap();
    }
    let f = rustix::fs::openat(&fd, c"bottom", rustix::fs::OFlags::RDONLY, rustix::fs::Mode::empty()).unwrap();
    let mut buf = [0u8; 16];
    let n = rustix::io::read(&f, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"found");
    assert_eq!(t.names(), ["dst"]);
    // TempDir's remove_dir_all recurses natively; remove the chain with the engine's own walker.
    drop((f, fd));
    let dir = dir_fd(&t);
    xrename_engine::tree::remove_tree(dir.as_fd(), c"dst").unwrap();
}

#[test]
fn hard_linked_source_becomes_an_independent_copy() {
    let t = TempDir::new("nlink");
    let (a, other, b) = (t.path("a"), t.path("other"), t.path("b"));
    fs::write(&a, b"shared").unwrap();
    fs::hard_link(&a, &other).unwrap();
    move_path(&a, &b).0.unwrap();
    assert_eq!(fs::read(&b).unwrap(), b"shared");
    assert_ne!(fs::metadata(&b).unwrap().ino(), fs::metadata(&other).unwrap().ino());
    assert_eq!(fs::metadata(&other).unwrap().nlink(), 1);
}

fn dir_fd(t: &TempDir) -> std::os::fd::OwnedFd {
    rustix::fs::open(&*c(&t.0), rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY, rustix::fs::Mode::empty())
        .unwrap()
}

fn temp_with<'a>(dir: std::os::fd::BorrowedFd<'a>, data: &[u8]) -> install::Temp<'a> {
    let tmp = install::Temp::file(dir, c"b").unwrap();
    rustix::io::write(tmp.fd(), data).unwrap();
    tmp
}

#[test]
fn replace_keeps_old_destination_until_committed() {
    let t = TempDir::new("rollback-replace");
    fs::write(t.path("b"), b"old").unwrap();
    let dir = dir_fd(&t);
    let dst = Entry::open(dir.as_fd(), c"b").unwrap();
    let installed =
        install::install(temp_with(dst.dir.as_fd(), b"new"), &dst, install::Dest::Present, Durability::new(true), None)
            .unwrap();
    assert_eq!(fs::read(t.path("b")).unwrap(), b"new");
    // The old file is still there, under a hidden name, until commit or drop.
    assert_eq!(t.names().len(), 2);
    drop(installed); // as when removing the source failed
    assert_eq!(fs::read(t.path("b")).unwrap(), b"old");
    assert_eq!(t.names(), ["b"]);
}

#[test]
fn rollback_of_a_fresh_install_removes_it() {
    let t = TempDir::new("rollback-fresh");
    let dir = dir_fd(&t);
    let dst = Entry::open(dir.as_fd(), c"b").unwrap();
    let installed =
        install::install(temp_with(dst.dir.as_fd(), b"new"), &dst, install::Dest::Absent, Durability::new(true), None)
            .unwrap();
    assert_eq!(fs::read(t.path("b")).unwrap(), b"new");
    drop(installed);
    assert!(t.names().is_empty());
}

#[test]
fn install_replaces_a_destination_that_appeared_after_the_check() {
    let t = TempDir::new("race-appeared");
    fs::write(t.path("b"), b"old").unwrap();
    let dir = dir_fd(&t);
    let dst = Entry::open(dir.as_fd(), c"b").unwrap();
    let installed =
        install::install(temp_with(dst.dir.as_fd(), b"new"), &dst, install::Dest::Absent, Durability::new(true), None)
            .unwrap();
    installed.commit();
    assert_eq!(fs::read(t.path("b")).unwrap(), b"new");
    assert_eq!(t.names(), ["b"]);
}

#[test]
fn install_creates_a_destination_that_vanished_after_the_check() {
    let t = TempDir::new("race-vanished");
    let dir = dir_fd(&t);
    let dst = Entry::open(dir.as_fd(), c"b").unwrap();
    install::install(temp_with(dst.dir.as_fd(), b"new"), &dst, install::Dest::Present, Durability::new(true), None)
        .unwrap()
        .commit();
    assert_eq!(fs::read(t.path("b")).unwrap(), b"new");
    assert_eq!(t.names(), ["b"]);
}

#[test]
fn install_refuses_a_directory_that_appeared_after_the_check() {
    let t = TempDir::new("race-dir");
    fs::create_dir(t.path("b")).unwrap();
    let dir = dir_fd(&t);
    let dst = Entry::open(dir.as_fd(), c"b").unwrap();
    let err =
        install::install(temp_with(dst.dir.as_fd(), b"new"), &dst, install::Dest::Present, Durability::new(true), None)
            .unwrap_err();
    assert_eq!(err.errno, Errno::ISDIR);
    assert!(fs::metadata(t.path("b")).unwrap().is_dir());
    assert_eq!(t.names(), ["b"]);
}

#[test]
fn dropped_temp_file_leaves_nothing() {
    let t = TempDir::new("temp-drop");
    let dir = dir_fd(&t);
    drop(temp_with(dir.as_fd(), b"partial"));
    assert!(t.names().is_empty());
}

#[test]
fn temp_names_are_hidden_and_distinct() {
    let a = names::fresh(names::Role::Temp);
    let b = names::fresh(names::Role::Temp);
    assert!(a.to_str().unwrap().starts_with(names::PREFIX));
    assert_ne!(a, b);
    let src = names::fresh(names::Role::Source);
    assert!(src.to_str().unwrap().starts_with(".xrename-src-"));
}

/// Copies `src` (a small tree) to a temp beside it, as a tree move does,
/// and installs it at `dst`; the source stays.
fn install_tree_copy(t: &TempDir, dir: &std::os::fd::OwnedFd, body: impl FnOnce(install::Installed<'_>)) {
    let src = Entry::open(dir.as_fd(), c"src").unwrap();
    let dst = Entry::open(dir.as_fd(), c"dst").unwrap();
    let flags = rustix::fs::AtFlags::SYMLINK_NOFOLLOW;
    let st = rustix::fs::statx(dir.as_fd(), c"src", flags, rustix::fs::StatxFlags::BASIC_STATS).unwrap();
    let mut report = Report::default();
    let durable = Durability::new(true);
    let leases = engine::copy::OwnLeases::default();
    let route = engine::copy::Route::default();
    let job = engine::copy::Job {
        durability: durable,
        progress: None,
        leases: &leases,
        route: &route,
        inherits: true,
        threads: None,
    };
    let copied = engine::dir::copy_tree(&src, &st, &dst, job, None, &mut report).unwrap();
    let withdraw = engine::dir::Withdraw { original: &src, records: &copied.records };
    body(install::install(copied.tmp, &dst, install::Dest::Absent, durable, Some(&withdraw)).unwrap());
    assert_eq!(fs::read(t.path("src/a/b/c/deep")).unwrap(), b"deep", "the source is still there");
}

#[test]
fn rollback_of_an_installed_tree_keeps_what_others_added_to_it() {
    let t = TempDir::new("rollback-tree");
    small_tree(&t.path("src"));
    let dir = dir_fd(&t);
    install_tree_copy(&t, &dir, |installed| {
        // Someone writes into the tree as soon as it is visible...
        fs::write(t.path("dst/theirs"), b"precious").unwrap();
        // ...and then the move fails and is rolled back.
        drop(installed);
    });
    let mut left: Vec<String> =
        fs::read_dir(t.path("dst")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    left.sort();
    assert_eq!(left, ["theirs"], "only what others added stays");
    assert_eq!(fs::read(t.path("dst/theirs")).unwrap(), b"precious");
}

#[test]
fn rollback_of_an_untouched_installed_tree_removes_it_all() {
    let t = TempDir::new("rollback-tree-clean");
    small_tree(&t.path("src"));
    fs::set_permissions(t.path("src/a/b"), fs::Permissions::from_mode(0o555)).unwrap();
    let dir = dir_fd(&t);
    install_tree_copy(&t, &dir, |installed| drop(installed));
    assert_eq!(t.names(), ["src"]);
    fs::set_permissions(t.path("src/a/b"), fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn rollback_of_an_installed_tree_removes_its_stale_copy_of_an_edited_source() {
    let t = TempDir::new("rollback-tree-edited");
    small_tree(&t.path("src"));
    let dir = dir_fd(&t);
    install_tree_copy(&t, &dir, |installed| {
        // The source is edited after its copy was installed (the move will fail).
        fs::write(t.path("src/top"), b"top, edited").unwrap();
        drop(installed);
    });
    assert_eq!(t.names(), ["src"], "the stale copy is gone, nothing left at the destination");
}

#[test]
fn program_sees_only_errnos_rename_documents() {
    use engine::{Error, program_errno};
    for e in [Errno::AGAIN, Errno::INTR, Errno::NOSYS, Errno::FBIG, Errno::MFILE, Errno::NFILE, Errno::TXTBSY] {
        assert_eq!(program_errno(&Error::new(e, "copy_file_range")), Errno::XDEV, "{e:?}");
    }
    for e in [Errno::NOSPC, Errno::DQUOT, Errno::IO, Errno::ACCESS, Errno::PERM, Errno::NOENT, Errno::EXIST] {
        assert_eq!(program_errno(&Error::new(e, "install")), e, "{e:?}");
    }
    // A policy refusing a step rename never makes is not rename's EPERM;
    // nor is a filesystem's EINVAL there rename's EINVAL.
    assert_eq!(program_errno(&Error::copy_step(Errno::PERM, "write xattr")), Errno::XDEV);
    assert_eq!(program_errno(&Error::copy_step(Errno::ACCESS, "set size")), Errno::XDEV);
    assert_eq!(program_errno(&Error::copy_step(Errno::INVAL, "write xattr")), Errno::XDEV);
    assert_eq!(program_errno(&Error::copy_step(Errno::AGAIN, "fsync temp file")), Errno::XDEV);
    for e in [Errno::NOSPC, Errno::DQUOT, Errno::IO] {
        assert_eq!(program_errno(&Error::copy_step(e, "set size")), e, "{e:?}");
        assert_eq!(program_errno(&Error::copy_step(e, "write")), e, "{e:?}");
    }
    // Data steps are the copy's alone: a policy's EPERM or a filesystem's
    // EINVAL while writing is not rename's; reading the source's data is
    // nothing rename does at all, whatever fails.
    for e in [Errno::PERM, Errno::ACCESS, Errno::INVAL, Errno::BADF] {
        assert_eq!(program_errno(&Error::copy_step(e, "write")), Errno::XDEV, "{e:?}");
        assert_eq!(program_errno(&Error::copy_step(e, "sendfile")), Errno::XDEV, "{e:?}");
    }
    for e in [Errno::IO, Errno::PERM, Errno::INVAL, Errno::NOSPC] {
        assert_eq!(program_errno(&Error::read_step(e, "read")), Errno::XDEV, "{e:?}");
    }
}
