//! How much of the calling thread's stack is left: the term conversions
//! recurse once per level of nesting (about 1 KiB a level), and a Python
//! thread may have a small stack (`threading.stack_size`, musl's 128 KiB),
//! where the level limit alone would not keep them from overflowing it.

use std::cell::Cell;

thread_local! {
    // The lowest usable address of this thread's stack (0: not looked up
    // yet; `usize::MAX`: unknown, no check).
    static STACK_LOW: Cell<usize> = const { Cell::new(0) };
}

/// Bytes of stack between the caller's frame and the end of the thread's
/// stack; `None` if the thread's stack bounds cannot be read.
pub fn remaining() -> Option<usize> {
    let here = approximate_sp();
    let low = STACK_LOW.with(|low| {
        if low.get() == 0 {
            low.set(stack_low().unwrap_or(usize::MAX));
        }
        low.get()
    });
    (low != usize::MAX).then(|| here.saturating_sub(low))
}

/// True while at least `bytes` of stack are left (or the bounds are
/// unknown).
pub fn has_room(bytes: usize) -> bool {
    remaining().is_none_or(|left| left >= bytes)
}

#[inline(never)]
fn approximate_sp() -> usize {
    let marker = 0u8;
    std::hint::black_box(&marker) as *const u8 as usize
}

/// The lowest address of the calling thread's stack (stacks grow down on
/// every platform this runs on), guard page excluded.
fn stack_low() -> Option<usize> {
    let mut attr = std::mem::MaybeUninit::<libc::pthread_attr_t>::uninit();
    // SAFETY: pthread_getattr_np initialises `attr` for the calling thread
    // when it returns 0; it is then read and destroyed exactly once.
    unsafe {
        if libc::pthread_getattr_np(libc::pthread_self(), attr.as_mut_ptr()) != 0 {
            return None;
        }
        let mut addr: *mut libc::c_void = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let mut guard: libc::size_t = 0;
        let got = libc::pthread_attr_getstack(attr.as_ptr(), &mut addr, &mut size) == 0
            && libc::pthread_attr_getguardsize(attr.as_ptr(), &mut guard) == 0;
        libc::pthread_attr_destroy(attr.as_mut_ptr());
        got.then(|| addr as usize + guard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_thread_has_little_room_left() {
        let small = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(|| remaining().unwrap())
            .unwrap()
            .join()
            .unwrap();
        assert!(small > 128 * 1024 && small < 256 * 1024, "{small}");
        let big = std::thread::Builder::new()
            .stack_size(8 << 20)
            .spawn(|| (remaining().unwrap(), has_room(1 << 20)))
            .unwrap()
            .join()
            .unwrap();
        assert!(big.0 > 7 << 20 && big.1, "{big:?}");
    }
}
