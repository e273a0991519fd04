//! The hidden names xrename gives what it makes in a user's directory,
//! formatted and parsed here and nowhere else.
//!
//! `.xrename-[old-|src-]<pid>-<16 hex digits>`: the role says what the name
//! may hold after a crash (and so what `xrename clean` may remove), the pid
//! which process made it, the random part makes it unguessable. A name is
//! always created exclusively (EEXIST: another fresh name is tried).

use std::ffi::{CStr, CString};

use rustix::io::Errno;

/// Prefix of every name xrename creates in a user's directory.
pub const PREFIX: &str = ".xrename-";

/// What a hidden name holds, for someone who finds it after a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `.xrename-<pid>-<hex>`: a copy being built (its source is intact) or
    /// an old empty directory. Never the only copy of anything: safe to remove.
    Temp,
    /// `.xrename-old-<pid>-<hex>`: a copy about to replace a destination, or,
    /// once swapped, the old destination kept for rollback; or a private
    /// directory holding one. After a crash the old destination may exist
    /// only here: to be inspected.
    Old,
    /// `.xrename-src-<pid>-<hex>`: a moved source set aside to be deleted. Its
    /// copy is installed, but entries changed during the move may be only
    /// here: to be inspected, never removed blindly.
    Source,
}

impl Role {
    fn infix(self) -> &'static str {
        match self {
            Role::Temp => "",
            Role::Old => "old-",
            Role::Source => "src-",
        }
    }
}

/// A fresh hidden name for `role`, made by this process.
pub fn fresh(role: Role) -> CString {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut bytes = [0u8; 8];
    if rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::NONBLOCK).is_err() {
        // No entropy yet (early boot): time and a counter are unique enough,
        // and a taken name is retried anyway.
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        bytes = (t.as_nanos() as u64 ^ COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed) << 48).to_le_bytes();
    }
    let pid = rustix::process::getpid().as_raw_nonzero();
    let name = format!("{PREFIX}{}{pid}-{:016x}", role.infix(), u64::from_le_bytes(bytes));
    CString::new(name).expect("no NUL")
}

/// Tries `f` with fresh hidden names until one is free (EEXIST: next name).
pub fn with_fresh<T>(
    role: Role,
    mut f: impl FnMut(&CStr) -> rustix::io::Result<T>,
) -> rustix::io::Result<(T, CString)> {
    for _ in 0..64 {
        let name = fresh(role);
        match f(&name) {
            Ok(v) => return Ok((v, name)),
            Err(Errno::EXIST) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Errno::EXIST)
}

/// The role and pid of a hidden name, if `name` is one of ours.
pub fn parse(name: &[u8]) -> Option<(Role, u32)> {
    let rest = name.strip_prefix(PREFIX.as_bytes())?;
    let (role, rest) = [Role::Source, Role::Old]
        .into_iter()
        .find_map(|r| rest.strip_prefix(r.infix().as_bytes()).map(|rest| (r, rest)))
        .unwrap_or((Role::Temp, rest));
    let dash = rest.iter().position(|&b| b == b'-')?;
    let (pid, hex) = (&rest[..dash], &rest[dash + 1..]);
    if hex.len() != 16 || !hex.iter().all(u8::is_ascii_hexdigit) || pid.is_empty() {
        return None;
    }
    Some((role, std::str::from_utf8(pid).ok()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fresh_name_parses_back_to_its_role_and_our_pid() {
        let pid = rustix::process::getpid().as_raw_nonzero().get() as u32;
        for role in [Role::Temp, Role::Old, Role::Source] {
            let name = fresh(role);
            assert_eq!(parse(name.to_bytes()), Some((role, pid)), "{name:?}");
        }
    }

    #[test]
    fn only_our_names_parse() {
        assert_eq!(parse(b".xrename-123-00112233445566ff"), Some((Role::Temp, 123)));
        assert_eq!(parse(b".xrename-src-7-00112233445566ff"), Some((Role::Source, 7)));
        assert_eq!(parse(b".xrename-old-8-00112233445566ff"), Some((Role::Old, 8)));
        assert_eq!(parse(b".xrename-123-0011"), None);
        assert_eq!(parse(b"xrename-123-00112233445566ff"), None);
        assert_eq!(parse(b".xrename-abc-00112233445566ff"), None);
        assert_eq!(parse(b".xrename--00112233445566ff"), None);
        assert_eq!(parse(b".xrename-old-00112233445566ff"), None);
    }
}
