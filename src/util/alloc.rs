//! A global allocator that keeps freed large blocks for reuse.
//!
//! glibc serves every allocation of 32 MiB or more (its largest mmap threshold, which
//! `tune_allocator` sets) with a fresh `mmap`: each page faults in zero-filled on first touch
//! and goes back with a TLB shootdown at `munmap`. A training step of a 49k-vocabulary model
//! makes several such blocks and frees them again (SmolLM2-135M, batch 8 × 128: the 201 MB
//! logits and their gradient, the 113 MB embedding gradients), and the page faults cost about
//! 13 % of the step's CPU time (docs/performance.md). `Recycling` keeps up to
//! [`MAX_BLOCKS`] freed blocks of 32 MiB or more, at most [`MAX_BYTES`] in all, and hands one
//! back when a request of the same size class comes: the next step's tensors of the same shapes
//! reuse the same, already resident, memory. Only a size class asked for twice among the last
//! [`HISTORY`] large requests is kept (a one-off buffer, such as a checkpoint read into memory,
//! goes straight back), and a kept block not asked for within [`MAX_AGE`] large requests goes
//! back too, so a phase's blocks do not outlive it for long. Sizes are rounded up to one of eight
//! classes per power of two (at most 12.5 % slack); smaller requests go straight to the system
//! allocator.
//!
//! Off until [`enable`] is called (the binary does, first thing), so a library user's process is
//! unaffected.
//!
//! It also bounds untrusted work: [`bounded`] runs a closure on a thread whose live allocations
//! may not exceed a budget (a model's chat template is a program, and `{% set s = s ~ s %}` in a
//! loop asks for gigabytes in seconds). A thread that goes over is parked for good at the
//! allocation that would exceed the budget, and the caller gets [`Bounded::OverBudget`].
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Requests of this size or more are recycled (glibc's largest mmap threshold).
pub const BIG: usize = 32 << 20;
/// Freed blocks kept at most.
pub const MAX_BLOCKS: usize = 16;
/// Bytes kept at most (a block that does not fit evicts the oldest ones).
pub const MAX_BYTES: usize = 2 << 30;
/// Largest alignment recycled (and the alignment of every kept block): glibc `malloc`'s own, so
/// blocks come from and go back to plain `malloc`/`free`. Candle's buffers ask for at most 8.
const ALIGN: usize = 16;

static ON: AtomicBool = AtomicBool::new(false);
/// Whether `Recycling` is the global allocator (set by [`enable`]), so budgets are enforced.
static INSTALLED: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// This thread's allocation budget in bytes (0: none), its live bytes, and the flag raised
    /// when it is exceeded.
    static LIMIT: Cell<usize> = const { Cell::new(0) };
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static TRIP: Cell<*const AtomicBool> = const { Cell::new(std::ptr::null()) };
}

/// Count `n` more live bytes against this thread's budget; over it, raise the flag and park the
/// thread for good (it never returns, so the allocation never happens).
#[inline]
fn charge(n: usize) {
    let _ = LIMIT.try_with(|lim| {
        let limit = lim.get();
        if limit == 0 {
            return;
        }
        let live = LIVE.with(|l| {
            let v = l.get().saturating_add(n);
            l.set(v);
            v
        });
        if live > limit {
            TRIP.with(|t| {
                let p = t.get();
                if !p.is_null() {
                    // SAFETY: set by `bounded`, whose thread keeps the flag's Arc alive
                    unsafe { (*p).store(true, Ordering::SeqCst) };
                }
            });
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
    });
}

#[inline]
fn credit(n: usize) {
    let _ = LIMIT.try_with(|lim| {
        if lim.get() != 0 {
            LIVE.with(|l| l.set(l.get().saturating_sub(n)));
        }
    });
}

/// The outcome of [`bounded`].
#[derive(Debug)]
pub enum Bounded<T> {
    Done(T),
    /// The closure's live allocations went over the budget.
    OverBudget,
    /// It ran longer than the time limit.
    TimedOut,
}

/// Run `f` on a new thread with at most `limit` live bytes (enforced where `Recycling` is the
/// global allocator, see [`budgets_enforced`]) and at most `timeout` of wall time. A thread
/// over its budget or its time is left behind (parked, or still running until `f` gives up);
/// its memory stays with it.
pub fn bounded<T: Send + 'static>(
    limit: usize,
    timeout: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Bounded<T> {
    let flag = std::sync::Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let f2 = flag.clone();
    let spawned = std::thread::Builder::new()
        .name("unlearn-bounded".into())
        .stack_size(16 << 20)
        .spawn(move || {
            let keep = f2; // the flag outlives a parked thread
            TRIP.with(|t| t.set(std::sync::Arc::as_ptr(&keep)));
            LIVE.with(|l| l.set(0));
            LIMIT.with(|l| l.set(limit));
            let r = f();
            LIMIT.with(|l| l.set(0));
            let _ = tx.send(r);
            drop(keep);
        });
    if spawned.is_err() {
        return Bounded::TimedOut;
    }
    let start = Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_millis(5)) {
            Ok(r) => return Bounded::Done(r),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Bounded::OverBudget,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        if flag.load(Ordering::SeqCst) {
            return Bounded::OverBudget;
        }
        if start.elapsed() > timeout {
            return Bounded::TimedOut;
        }
    }
}

/// Whether [`bounded`] enforces its memory budget (the binary installs `Recycling`).
pub fn budgets_enforced() -> bool {
    INSTALLED.load(Ordering::Relaxed)
}

/// The size class of a request of `n` ≥ BIG bytes: n rounded up to a multiple of 2^(k−3) where
/// 2^k ≤ n < 2^(k+1), so eight classes per power of two.
pub fn class(n: usize) -> usize {
    let k = usize::BITS - 1 - n.leading_zeros(); // 2^k ≤ n
    let step = 1usize << (k - 3);
    n.div_ceil(step) * step
}

#[derive(Clone, Copy)]
struct Block {
    ptr: usize,
    class: usize,
    /// Insertion order, for evicting the oldest.
    stamp: u64,
}

/// Size classes of the last requests, for admission: only a class requested twice among them is
/// kept, so one-off buffers (a checkpoint file read into memory, a model copy) go straight back.
pub const HISTORY: usize = 32;
/// A kept block not handed out again within this many large requests is given back.
pub const MAX_AGE: u64 = 64;

/// The kept blocks: fixed arrays, so the allocator never allocates while holding the lock.
struct Pool {
    blocks: [Option<Block>; MAX_BLOCKS],
    bytes: usize,
    /// Large requests so far (the age of a kept block is measured in these).
    clock: u64,
    history: [usize; HISTORY],
}

static POOL: Mutex<Pool> = Mutex::new(Pool::new());

impl Pool {
    const fn new() -> Self {
        Pool {
            blocks: [None; MAX_BLOCKS],
            bytes: 0,
            clock: 0,
            history: [0; HISTORY],
        }
    }

    /// A large request of `class`: a kept block of that class if there is one. Records the
    /// request and returns (in `stale`) the kept blocks that have waited too long.
    fn take(&mut self, class: usize, stale: &mut Vec<Block>) -> Option<*mut u8> {
        self.history[(self.clock % HISTORY as u64) as usize] = class;
        self.clock += 1;
        let found = self
            .blocks
            .iter()
            .position(|b| matches!(b, Some(b) if b.class == class))
            .and_then(|i| self.blocks[i].take());
        if let Some(b) = &found {
            self.bytes -= b.class;
        }
        for slot in self.blocks.iter_mut() {
            if matches!(slot, Some(b) if self.clock - b.stamp > MAX_AGE) {
                let b = slot.take().expect("matched above");
                self.bytes -= b.class;
                stale.push(b);
            }
        }
        found.map(|b| b.ptr as *mut u8)
    }

    /// Keep a freed block; returns the blocks to give back to the system (evicted ones, or the
    /// block itself when it cannot or should not be kept).
    fn put(&mut self, ptr: *mut u8, class: usize) -> Vec<Block> {
        let b = Block {
            ptr: ptr as usize,
            class,
            stamp: self.clock,
        };
        let seen = self.history.iter().filter(|&&c| c == class).count();
        if class > MAX_BYTES || seen < 2 {
            return vec![b];
        }
        let mut out = Vec::new();
        while self.bytes + class > MAX_BYTES || self.blocks.iter().all(|x| x.is_some()) {
            let oldest = self
                .blocks
                .iter()
                .enumerate()
                .filter_map(|(i, x)| x.map(|x| (i, x.stamp)))
                .min_by_key(|&(_, s)| s)
                .map(|(i, _)| i)
                .expect("a full pool has a block");
            let old = self.blocks[oldest].take().expect("chosen above");
            self.bytes -= old.class;
            out.push(old);
        }
        let slot = self
            .blocks
            .iter()
            .position(|x| x.is_none())
            .expect("made room above");
        self.blocks[slot] = Some(b);
        self.bytes += class;
        out
    }
}

fn big(l: &Layout) -> bool {
    l.size() >= BIG && l.align() <= ALIGN && ON.load(Ordering::Relaxed)
}

fn block_layout(class: usize) -> Layout {
    Layout::from_size_align(class, ALIGN).expect("class sizes are valid layouts")
}

/// Give blocks back to the system.
///
/// # Safety
/// Each block must have come from `System` with `block_layout(class)` and be unused.
unsafe fn free_blocks(blocks: Vec<Block>) {
    for b in blocks {
        System.dealloc(b.ptr as *mut u8, block_layout(b.class));
    }
}

/// A kept block of `class`, if any; gives stale kept blocks back to the system.
///
/// # Safety
/// As `free_blocks`: the pool only holds unused blocks allocated with `block_layout`.
unsafe fn take(class: usize) -> Option<*mut u8> {
    let mut stale = Vec::new();
    let p = POOL
        .lock()
        .map(|mut p| p.take(class, &mut stale))
        .unwrap_or(None);
    free_blocks(stale);
    p
}

/// The recycling allocator: `#[global_allocator] static A: Recycling = Recycling;`.
pub struct Recycling;

// SAFETY: every block handed out is either fresh from `System` or a kept block that nobody uses
// (it was deallocated and taken out of the pool under the lock); a block's class is computed
// from the layout's size the same way at allocation and deallocation, so it always goes back to
// `System` with the layout it was allocated with. Small requests are `System`'s own.
unsafe impl GlobalAlloc for Recycling {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        charge(l.size());
        if !big(&l) {
            return System.alloc(l);
        }
        let c = class(l.size());
        if let Some(p) = take(c) {
            return p;
        }
        System.alloc(block_layout(c))
    }

    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        charge(l.size());
        if !big(&l) {
            return System.alloc_zeroed(l);
        }
        let c = class(l.size());
        if let Some(p) = take(c) {
            std::ptr::write_bytes(p, 0, l.size());
            return p;
        }
        // fresh pages from the system are zero already
        System.alloc_zeroed(block_layout(c))
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        credit(l.size());
        if big(&l) {
            let c = class(l.size());
            match POOL.lock() {
                Ok(mut pool) => {
                    let out = pool.put(p, c);
                    drop(pool);
                    free_blocks(out);
                }
                Err(_) => System.dealloc(p, block_layout(c)),
            }
            return;
        }
        System.dealloc(p, l)
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        let new = Layout::from_size_align_unchecked(new_size, l.align());
        let (was_big, is_big) = (big(&l), big(&new));
        if !was_big && !is_big {
            if new_size > l.size() {
                charge(new_size - l.size());
            } else {
                credit(l.size() - new_size);
            }
            return System.realloc(p, l, new_size);
        }
        if was_big && is_big && class(l.size()) == class(new_size) {
            return p; // the block already holds the new size
        }
        let q = self.alloc(new);
        if !q.is_null() {
            std::ptr::copy_nonoverlapping(p, q, l.size().min(new_size));
            self.dealloc(p, l);
        }
        q
    }
}

/// Start recycling large blocks. Call before any allocation of 32 MiB or more exists (the binary
/// calls it first thing in `main`): a large block is assumed to have come through the recycling
/// path exactly when recycling is on, so the switch is one-way. Without `Recycling` as the
/// global allocator it has no effect.
pub fn enable() {
    ON.store(true, Ordering::Relaxed);
    INSTALLED.store(true, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_round_up_by_at_most_an_eighth() {
        assert_eq!(class(BIG), BIG);
        assert_eq!(class(BIG + 1), BIG + (BIG >> 3));
        for n in [BIG + 12345, 201_326_592, 113_246_208 + 7, 3_000_000_000] {
            let c = class(n);
            assert!(c >= n && c - n <= n / 8, "{n} -> {c}");
            assert_eq!(class(c), c, "a class is its own class");
        }
    }

    #[test]
    fn pool_reuses_by_class_and_evicts_the_oldest() {
        let mut p = Pool::new();
        let mut stale = Vec::new();
        let c = class(BIG * 3);
        // a class requested once is not kept (one-off buffers go straight back)
        assert_eq!(p.take(c, &mut stale), None);
        assert_eq!(p.put(0x1000 as *mut u8, c).len(), 1);
        assert_eq!(p.take(c, &mut stale), None);
        assert!(
            p.put(0x1000 as *mut u8, c).is_empty(),
            "requested twice: kept"
        );
        assert_eq!(
            p.take(class(BIG), &mut stale),
            None,
            "another class is not handed out"
        );
        assert_eq!(p.take(c, &mut stale), Some(0x1000 as *mut u8));
        assert_eq!(p.take(c, &mut stale), None, "a block is handed out once");
        assert_eq!(p.bytes, 0);
        assert!(stale.is_empty());
        // fill beyond MAX_BYTES: the oldest blocks go back
        let big = class(MAX_BYTES / 2);
        for _ in 0..2 {
            p.take(big, &mut stale);
        }
        assert!(p.put(0x2000 as *mut u8, big).is_empty());
        assert!(p.put(0x3000 as *mut u8, big).is_empty());
        let out = p.put(0x4000 as *mut u8, big);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].ptr, 0x2000);
        assert!(p.bytes <= MAX_BYTES);
        // a block larger than the whole pool is not kept
        let huge = class(MAX_BYTES + 1);
        let out = p.put(0x5000 as *mut u8, huge);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].ptr, 0x5000);
        // a kept block that waits MAX_AGE requests goes back
        let kept = p.bytes;
        assert!(kept > 0);
        for _ in 0..=MAX_AGE {
            p.take(class(BIG), &mut stale);
        }
        assert_eq!(p.bytes, 0);
        assert_eq!(stale.len(), 2);
    }
}
