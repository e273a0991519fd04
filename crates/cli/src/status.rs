//! The status line of `xrename -- CMD` on a terminal: while a move in any
//! process of CMD has taken longer than a second, one line on stderr says
//! what is being moved, the bytes and objects so far and the rate; it is
//! cleared when the move ends. Nothing when stderr is not a terminal, and
//! nothing ever from the library (the program's stderr is its own).
//!
//! Helpers count into slots of memory shared with the supervisor
//! ([`ptrace::shared_counters`]); a tick (SIGALRM, 4 a second) wakes the
//! supervisor's wait to redraw.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use xrename_engine::Progress;

use crate::ptrace;
use crate::run::human;

/// Moves counted at once; more simply go uncounted.
const SLOTS: usize = 64;
/// A move shows after this long.
const AFTER: Duration = Duration::from_secs(1);
const TICK: Duration = Duration::from_millis(250);

/// A helper's two counters: bytes, objects.
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    index: usize,
    counters: &'static [AtomicU64],
}

impl Slot {
    fn get(&self) -> (u64, u64) {
        (self.counters[0].load(Ordering::Relaxed), self.counters[1].load(Ordering::Relaxed))
    }
}

impl Progress for Slot {
    fn bytes(&self, n: u64) {
        self.counters[0].fetch_add(n, Ordering::Relaxed);
    }
    fn object(&self) {
        self.counters[1].fetch_add(1, Ordering::Relaxed);
    }
}

/// The line, and the slots helpers count into.
pub struct Display {
    counters: &'static [AtomicU64],
    free: Vec<usize>,
    shown: bool,
}

impl Display {
    /// A display if stderr is a terminal (and the shared memory and the
    /// tick can be had).
    pub fn new(logs_to_stderr: bool) -> Option<Display> {
        // Log lines on the same terminal would land on the status line.
        if logs_to_stderr || !std::io::stderr().is_terminal() {
            return None;
        }
        let counters = ptrace::shared_counters(SLOTS * 2).ok()?;
        ptrace::tick_every(TICK).ok()?;
        Some(Display { counters, free: (0..SLOTS).rev().collect(), shown: false })
    }

    /// A zeroed slot for a new helper, if one is free.
    pub fn take(&mut self) -> Option<Slot> {
        let index = self.free.pop()?;
        let counters = &self.counters[index * 2..index * 2 + 2];
        counters.iter().for_each(|c| c.store(0, Ordering::Relaxed));
        Some(Slot { index, counters })
    }

    /// A helper ended: its slot is free, and its line goes.
    pub fn give_back(&mut self, slot: Slot) {
        self.free.push(slot.index);
        self.clear();
    }

    /// Redraws the line for the oldest of `moves` (source, destination,
    /// start, slot) running for longer than a second, or clears it.
    pub fn draw<'a>(&mut self, moves: impl Iterator<Item = (&'a [u8], &'a [u8], Instant, Option<Slot>)>) {
        let oldest = moves.filter(|m| m.2.elapsed() >= AFTER).min_by_key(|m| m.2);
        let Some((old, new, started, slot)) = oldest else {
            self.clear();
            return;
        };
        let (bytes, objects) = slot.map_or((0, 0), |s| s.get());
        let secs = started.elapsed().as_secs_f64();
        let rate = (bytes as f64 / secs) as u64;
        // Objects are counted as they are completed: none yet for a file.
        let objects = match objects {
            0 => String::new(),
            1 => ", 1 object".to_owned(),
            n => format!(", {n} objects"),
        };
        let counts = format!(": {}{objects}, {}/s", human(bytes), human(rate));
        // One row: wider than the terminal, a line would wrap, and `\r`
        // with erase-line clears only its last row.
        let width = ptrace::terminal_width(rustix::stdio::stderr()).unwrap_or(80).saturating_sub(1);
        let room = width.saturating_sub("xrename: moving  -> ".len() + counts.chars().count());
        let text = format!("xrename: moving {} -> {}{counts}", short(old, room / 2), short(new, room - room / 2));
        let text: String = text.chars().take(width).collect();
        let _ = write!(std::io::stderr(), "\r\x1b[K{text}");
        self.shown = true;
    }

    /// Clears the line if it is shown.
    pub fn clear(&mut self) {
        if std::mem::take(&mut self.shown) {
            let _ = write!(std::io::stderr(), "\r\x1b[K");
        }
    }
}

/// A path cut to its last `room` characters (with `...` before), so that
/// the line fits.
fn short(path: &[u8], room: usize) -> String {
    let s = String::from_utf8_lossy(path);
    let n = s.chars().count();
    if n <= room {
        s.into_owned()
    } else {
        let keep = room.saturating_sub(3);
        format!("...{}", s.chars().skip(n - keep).collect::<String>())
    }
}
