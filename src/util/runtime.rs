//! Process-level settings and the compute device: the allocator and thread tuning the binary
//! applies at start, the rayon worker the CLI runs on, the device by name.
use crate::error::{Error, Result};

/// Keep freed memory in the process for reuse (glibc): every training step allocates and frees the
/// same large activation tensors, and with glibc's defaults each one above a dynamic threshold is a
/// fresh `mmap` whose pages fault in zeroed and go back with a TLB shootdown at `munmap`. Raising
/// the mmap threshold to glibc's maximum (32 MiB) and never trimming the heap took the reference
/// training step from 0.37 s to 0.28 s (docs/performance.md). No effect on other C libraries.
/// Returns whether both settings were accepted. Call once, early (the binary does).
pub fn tune_allocator() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; called before heavy allocation.
        unsafe {
            let a = libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            let b = libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
            a == 1 && b == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Restore the default SIGPIPE action (Rust ignores it, so `println!` to a closed pipe, as in
/// `unlearn metrics | head`, panics): the process ends quietly, as command-line tools do.
pub fn default_sigpipe() {
    #[cfg(unix)]
    // SAFETY: resets one signal's disposition to the default, before any thread writes output.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Let candle's element-wise thread pool sleep as soon as an op is done. By default its worker
/// spins for 25 000 pause instructions after every element-wise op (a few hundred µs), waiting
/// for the next one; between ops the matrix products run on rayon's threads, so on a 2-core
/// machine the spinning worker takes a core from them (about 14 % of a training step's CPU
/// samples; docs/performance.md). A parked worker costs a wake-up per op instead. Sets
/// `CANDLE_BARRIER_POOL_SPIN_LIMIT=1` unless the variable is set.
///
/// Also sets `RAYON_NUM_THREADS` (unless set) to the CPUs this process may use, the number
/// rayon picks anyway: without it candle asks `num_cpus::get_physical()` on every matrix product,
/// which parses /proc/cpuinfo each time (visible in a profile of generation, whose attention runs
/// candle's matmul per layer and token).
///
/// Call first thing in `main`, before any other thread exists and before candle's first
/// element-wise op (the binary does).
pub fn tune_threads() {
    let set = |var: &str, value: &dyn Fn() -> String| {
        if std::env::var_os(var).is_none() {
            std::env::set_var(var, value());
        }
    };
    set("CANDLE_BARRIER_POOL_SPIN_LIMIT", &|| "1".into());
    set("RAYON_NUM_THREADS", &|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .to_string()
    });
}

/// Run `f` on a worker of a rayon thread pool built for it (RAYON_NUM_THREADS or one thread per
/// CPU, 64 MiB stacks for candle's recursive graph walk), so every parallel op it starts (the
/// matrix products, the fused kernels) is shared with the thread that started it. Called from a
/// thread outside any pool, each such op would hand its work to the pool's threads and put the
/// caller to sleep on a lock until they finish: a sleep and a wake-up per op, several hundred
/// per generated token (SmolLM2 generation, batch 4: 84 → 98 tokens/s with the pool;
/// docs/performance.md). Falls back to calling `f` directly if the pool cannot be built.
pub fn run_in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    match rayon::ThreadPoolBuilder::new()
        .stack_size(64 << 20)
        .thread_name(|i| format!("unlearn-{i}"))
        .build()
    {
        Ok(pool) => pool.install(f),
        Err(_) => f(),
    }
}

/// The compute device by name: `cpu`, or `cuda` / `cuda:N` (needs the `cuda` cargo feature).
pub fn device(name: &str) -> Result<candle_core::Device> {
    match name {
        "cpu" => Ok(candle_core::Device::Cpu),
        s if s.starts_with("cuda") => {
            let ord = s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            if !candle_core::utils::cuda_is_available() {
                return Err(Error::Invalid(format!(
                    "device `{s}`: this build has no CUDA support (rebuild with `--features cuda`)"
                )));
            }
            candle_core::Device::new_cuda(ord).map_err(|e| {
                // the driver's error, without the backtrace candle attaches under RUST_BACKTRACE
                let e = match e {
                    candle_core::Error::WithBacktrace { inner, .. } => *inner,
                    e => e,
                };
                Error::Invalid(format!(
                    "device `{s}`: CUDA did not start ({e}); it needs an NVIDIA GPU, its driver \
                     (libcuda.so.1) and the CUDA 13 runtime libraries (docs/gpu.md)"
                ))
            })
        }
        other => Err(Error::Invalid(format!(
            "unknown device `{other}` (cpu, cuda, cuda:N)"
        ))),
    }
}
