//! One log line: a JSON object per `EXDEV` met, formatted here for every
//! way in (the preloaded library and the supervisor of `xrename --trace`),
//! so that both write the same lines and `--summary` reads them alike.
//!
//! Fields: `time` (UTC, RFC 3339 with milliseconds), `pid`, `program`
//! (`comm`), `via` (`preload` or `trace`: which way in handled the call),
//! `op` (`rename`, `renameat`, `renameat2`), `src` and `dst` (as the
//! program passed them), `type` (`file`, `dir`, `symlink`, `fifo`, `chr`,
//! `blk`, `sock`, or `unknown`), `bytes` copied, `files` created, `ms`
//! spent, `result` (`ok` or the errno's name), and on failure `step`, what
//! xrename was doing; on success, `leftover`: a path that still holds some
//! of the source (entries changed during the move, put back under the
//! source name, or an old source that could not be deleted); `config`: a
//! setting that was not understood.

use std::ffi::CStr;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::FileType;
use rustix::io::Errno;

use super::error::Result;
use super::report::{Op, Report};

/// One handled `EXDEV`, as a log line tells it.
#[derive(Debug)]
pub struct Line<'a> {
    /// The process that made the call.
    pub pid: u32,
    /// Its `comm`.
    pub program: &'a str,
    /// Which way in handled it: `preload` or `trace`.
    pub via: &'static str,
    /// The function called.
    pub op: Op,
    /// Source path as passed.
    pub old: &'a CStr,
    /// Destination path as passed.
    pub new: &'a CStr,
    /// What the engine did.
    pub report: &'a Report,
    /// Time spent.
    pub elapsed: Duration,
    /// The outcome.
    pub result: Result<()>,
    /// Settings that were not understood, if any.
    pub note: Option<&'a str>,
    /// Something the user should know about this call beyond its result
    /// (the supervisor's helper was killed, say).
    pub warning: Option<&'a str>,
}

/// Formats one log line, newline included.
pub fn format(e: &Line<'_>, now: SystemTime) -> String {
    let mut s = String::with_capacity(256);
    s.push_str("{\"time\":");
    json_str(&mut s, time_rfc3339(now).as_bytes());
    let _ = write!(s, ",\"pid\":{}", e.pid);
    s.push_str(",\"program\":");
    json_str(&mut s, e.program.as_bytes());
    let _ = write!(s, ",\"via\":\"{}\",\"op\":\"{}\",\"src\":", e.via, e.op.name());
    json_str(&mut s, e.old.to_bytes());
    s.push_str(",\"dst\":");
    json_str(&mut s, e.new.to_bytes());
    let _ = write!(
        s,
        ",\"type\":\"{}\",\"bytes\":{},\"files\":{},\"ms\":{:.3},\"result\":",
        type_name(e.report.kind),
        e.report.bytes,
        e.report.files,
        e.elapsed.as_secs_f64() * 1000.0
    );
    match &e.result {
        Ok(()) => s.push_str("\"ok\""),
        Err(err) => {
            let _ = write!(s, "\"{}\",\"step\":", errno_name(err.errno));
            json_str(&mut s, err.step.as_bytes());
        }
    }
    if let Some(name) = &e.report.leftover {
        s.push_str(",\"leftover\":");
        json_str(&mut s, &leftover_path(e.old.to_bytes(), name.to_bytes()));
    }
    if let Some(note) = e.note {
        s.push_str(",\"config\":");
        json_str(&mut s, note.as_bytes());
    }
    if let Some(warning) = e.warning {
        s.push_str(",\"warning\":");
        json_str(&mut s, warning.as_bytes());
    }
    s.push_str("}\n");
    s
}

/// The path of `name`, an entry of the source's directory, as the program
/// would name it: the source path with its last component replaced.
fn leftover_path(old: &[u8], name: &[u8]) -> Vec<u8> {
    let mut end = old.len();
    while end > 1 && old[end - 1] == b'/' {
        end -= 1;
    }
    let dir = match old[..end].iter().rposition(|&b| b == b'/') {
        Some(i) => &old[..=i],
        None => &old[..0],
    };
    [dir, name].concat()
}

fn type_name(kind: Option<FileType>) -> &'static str {
    match kind {
        Some(FileType::RegularFile) => "file",
        Some(FileType::Directory) => "dir",
        Some(FileType::Symlink) => "symlink",
        Some(FileType::Fifo) => "fifo",
        Some(FileType::CharacterDevice) => "chr",
        Some(FileType::BlockDevice) => "blk",
        Some(FileType::Socket) => "sock",
        _ => "unknown",
    }
}

/// A JSON string; bytes that are not UTF-8 become U+FFFD (paths are for reading).
fn json_str(s: &mut String, bytes: &[u8]) {
    s.push('"');
    for c in String::from_utf8_lossy(bytes).chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(s, "\\u{:04x}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('"');
}

fn time_rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, d.subsec_millis())
}

/// Days since 1970-01-01 to (year, month, day); Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The symbolic name of an errno, as `errno(3)` lists it.
pub fn errno_name(e: Errno) -> String {
    const NAMES: &[(Errno, &str)] = &[
        (Errno::PERM, "EPERM"),
        (Errno::NOENT, "ENOENT"),
        (Errno::INTR, "EINTR"),
        (Errno::IO, "EIO"),
        (Errno::BADF, "EBADF"),
        (Errno::AGAIN, "EAGAIN"),
        (Errno::NOMEM, "ENOMEM"),
        (Errno::ACCESS, "EACCES"),
        (Errno::FAULT, "EFAULT"),
        (Errno::BUSY, "EBUSY"),
        (Errno::EXIST, "EEXIST"),
        (Errno::XDEV, "EXDEV"),
        (Errno::NOTDIR, "ENOTDIR"),
        (Errno::ISDIR, "EISDIR"),
        (Errno::INVAL, "EINVAL"),
        (Errno::MFILE, "EMFILE"),
        (Errno::NFILE, "ENFILE"),
        (Errno::FBIG, "EFBIG"),
        (Errno::NOSPC, "ENOSPC"),
        (Errno::ROFS, "EROFS"),
        (Errno::MLINK, "EMLINK"),
        (Errno::NAMETOOLONG, "ENAMETOOLONG"),
        (Errno::NOTEMPTY, "ENOTEMPTY"),
        (Errno::LOOP, "ELOOP"),
        (Errno::NODATA, "ENODATA"),
        (Errno::OPNOTSUPP, "EOPNOTSUPP"),
        (Errno::DQUOT, "EDQUOT"),
        (Errno::STALE, "ESTALE"),
        (Errno::NOSYS, "ENOSYS"),
        (Errno::TXTBSY, "ETXTBSY"),
        (Errno::OVERFLOW, "EOVERFLOW"),
        (Errno::RANGE, "ERANGE"),
    ];
    NAMES.iter().find(|(n, _)| *n == e).map_or_else(|| format!("E{}", e.raw_os_error()), |(_, s)| (*s).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    #[test]
    fn line_is_one_json_object_with_every_field() {
        let report = Report { kind: Some(FileType::RegularFile), bytes: 5, files: 1, leftover: None };
        let e = Line {
            pid: 7,
            program: "x",
            via: "preload",
            op: Op::Renameat,
            old: c"/a/b",
            new: c"c\"d\n",
            report: &report,
            elapsed: Duration::from_micros(1500),
            result: Ok(()),
            note: None,
            warning: None,
        };
        let line = format(&e, UNIX_EPOCH + Duration::from_millis(1_764_095_000_123));
        assert!(line.ends_with("}\n") && line.matches('\n').count() == 1);
        assert!(line.starts_with("{\"time\":\"2025-11-25T18:23:20.123Z\",\"pid\":7,"), "{line}");
        assert!(line.contains(",\"program\":\"x\",\"via\":\"preload\",\"op\":\"renameat\",\"src\":\"/a/b\",\"dst\":\"c\\\"d\\n\",\"type\":\"file\",\"bytes\":5,\"files\":1,\"ms\":1.500,\"result\":\"ok\"}"), "{line}");
    }

    #[test]
    fn leftover_is_named_as_the_program_names_the_source() {
        let report = Report { leftover: Some(c".xrename-src-1-ab".to_owned()), ..Report::default() };
        let e = Line {
            pid: 7,
            program: "x",
            via: "preload",
            op: Op::Rename,
            old: c"/data/in/tree/",
            new: c"b",
            report: &report,
            elapsed: Duration::ZERO,
            result: Ok(()),
            note: None,
            warning: None,
        };
        let line = format(&e, UNIX_EPOCH);
        assert!(line.contains("\"result\":\"ok\",\"leftover\":\"/data/in/.xrename-src-1-ab\"}"), "{line}");
        assert_eq!(leftover_path(b"tree", b"tree"), b"tree");
        assert_eq!(leftover_path(b"/t", b"t"), b"/t");
    }

    #[test]
    fn failure_names_errno_and_step() {
        let report = Report::default();
        let e = Line {
            pid: 7,
            program: "x",
            via: "preload",
            op: Op::Rename,
            old: c"a",
            new: c"b",
            report: &report,
            elapsed: Duration::ZERO,
            result: Err(Error::new(Errno::NOSPC, "copy")),
            note: None,
            warning: None,
        };
        let line = format(&e, UNIX_EPOCH);
        assert!(line.contains("\"type\":\"unknown\""), "{line}");
        assert!(line.contains("\"result\":\"ENOSPC\",\"step\":\"copy\"}"), "{line}");
    }

    #[test]
    fn non_utf8_and_control_bytes_stay_valid_json() {
        let mut s = String::new();
        json_str(&mut s, b"a\xffb\x01");
        assert_eq!(s, "\"a\u{fffd}b\\u0001\"");
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_417), (2025, 11, 25));
    }
}
