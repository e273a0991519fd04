//! libxrename(7): the library's man page, made from the engine's table of
//! `XRENAME_*` variables ([`xrename_engine::vars`]), the same table the
//! library reads them by.

use std::fmt::Write;

use xrename_engine::vars;

/// Escapes text for roff: backslashes, and a leading `.` or `'` that would
/// read as a request; hyphens stay hyphens in options and paths (`\-`).
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split('\n') {
        if !out.is_empty() {
            out.push('\n');
        }
        if line.starts_with('.') || line.starts_with('\'') {
            out.push_str("\\&");
        }
        out.push_str(&line.replace('\\', "\\e").replace('-', "\\-"));
    }
    out
}

const DESCRIPTION: &str = "\
libxrename.so interposes rename(3), renameat(2) and renameat2(2). Every call goes straight to the \
real function; only when the kernel answers EXDEV (\"Invalid cross-device link\": the source and \
the destination are on different filesystems, on two mounts of one filesystem, or a directory \
sits in an overlayfs lower layer) does the library move the object itself: data and holes, mode, \
owner, nanosecond timestamps, extended attributes and ACLs, symbolic links, special files and \
whole directory trees. The copy is made durable (fsync), installed atomically under the \
destination name, and only then is the source removed; the call returns 0 as if the kernel had \
done the rename.";

const GUARANTEES: &str = "\
At every instant the object is complete at the source or at the destination; a partial \
destination is never visible. A failed move leaves the source and any old destination exactly \
as they were, with no temporary files, and returns an errno rename(2) documents, with its \
meaning there. Where a guarantee cannot be kept (a writer still holds a file, a sandbox \
refuses a step, another preloaded library virtualises the filesystem) nothing changes and the \
program gets the kernel's EXDEV, exactly as without the library. RENAME_NOREPLACE is kept \
atomically; RENAME_EXCHANGE across filesystems keeps EXDEV. Calls that do not fail with EXDEV \
cost nothing measurable: no allocation, no lock, no environment read, and errno untouched.";

const LIMITS: &str = "\
LD_PRELOAD reaches only dynamically linked programs that call these functions through libc: not \
statically linked or Go programs, musl programs, raw rename system calls, nor io_uring's \
IORING_OP_RENAMEAT. xrename(1) traces such programs by default (xrename \\-\\- CMD). A \
setuid or setgid program started with raised privileges ignores LD_PRELOAD. A crash in the \
middle of a move can leave hidden .xrename\\-* entries beside the source or the destination, \
never the only copy of anything without saying so: xrename clean DIR lists them.";

/// The page, in roff.
pub fn page(version: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, ".TH LIBXRENAME 7 \"\" \"xrename {version}\" \"xrename\"");
    s.push_str(".SH NAME\nlibxrename \\- make rename(2) work across filesystems, as a preloaded library\n");
    s.push_str(".SH SYNOPSIS\n.B LD_PRELOAD=$(xrename lib)\n.I program\n.RI [ args ...]\n");
    let _ = writeln!(s, ".SH DESCRIPTION\n{}", esc(DESCRIPTION));
    let _ = writeln!(s, ".SH GUARANTEES\n{}", esc(GUARANTEES));
    s.push_str(
        ".SH ENVIRONMENT\nRead once, when the library is loaded. Values are read case-insensitively; \
                an empty value counts as unset; a value that is not understood is never taken as \
                \\(lqemulate\\(rq.\n",
    );
    for v in vars::ALL {
        let _ = writeln!(s, ".TP\n\\fB{}\\fR=\\fI{}\\fR\n{}", v.name, esc(v.values), esc(v.meaning));
    }
    let _ = writeln!(s, ".SH LIMITS\n{}", LIMITS);
    s.push_str(".SH SEE ALSO\n.BR xrename (1),\n.BR rename (2),\n.BR ld.so (8)\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variable_is_on_the_page() {
        let page = page("0");
        for v in vars::ALL {
            assert!(page.contains(v.name), "{} missing", v.name);
        }
        assert!(!page.lines().any(|l| l.starts_with('.') && l.len() > 1 && l.as_bytes()[1] == b' '));
    }

    #[test]
    fn roff_requests_in_text_are_escaped() {
        assert_eq!(esc(".x\n'y\\z-w"), "\\&.x\n\\&'y\\ez\\-w");
    }
}
