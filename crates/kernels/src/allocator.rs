//! Keeping freed memory in the process.
//!
//! A training step allocates and frees hundreds of megabytes of activations, gradients and
//! im2col buffers. With glibc's defaults, a freed block above the (dynamic) mmap threshold goes
//! back to the kernel, and the heap top is trimmed as soon as 128 KiB are free at its end; the
//! next step's allocations then page-fault and the kernel zeroes every page again. Profiling the
//! E-ABS training step (`cargo bench -p eabs-models --bench train_step`, perf) put 15-20% of its
//! CPU time in page faults and `clear_page`; with the settings below its system time fell from
//! 6.7 s to 1.1 s for the same work.
//!
//! This is a process-wide allocator setting, so the library never applies it by itself: the
//! binaries that run long numeric jobs (`xtask`, the benchmarks) call [`retain_freed_memory`]
//! once at start-up.

/// glibc's largest accepted mmap threshold on 64-bit targets (`HEAP_MAX_SIZE / 2`).
pub const MMAP_THRESHOLD: usize = 32 << 20;
/// Extra memory requested from the kernel whenever the heap grows, so that a growing workload
/// does not call `sbrk` for every step.
pub const TOP_PAD: usize = 256 << 20;

/// Makes glibc's malloc keep freed memory for reuse: blocks up to [`MMAP_THRESHOLD`] come from
/// the heap (not fresh `mmap`s), the heap is never trimmed, and it grows by [`TOP_PAD`] at a time.
/// Returns whether the settings were applied (only on Linux with glibc; elsewhere a no-op).
/// Costs resident memory: the process keeps its peak heap size.
pub fn retain_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; it is safe to call at any time.
        unsafe {
            let a = libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
            let b = libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
            let c = libc::mallopt(libc::M_TOP_PAD, TOP_PAD as libc::c_int);
            a == 1 && b == 1 && c == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn settings_are_accepted_on_glibc() {
        assert!(super::retain_freed_memory());
        // Allocation still works afterwards, large and small.
        let v = vec![1.0f32; 16 << 20];
        assert_eq!(v[v.len() - 1], 1.0);
    }
}
