//! Random identifiers for connections and envelopes: UUID v4 text from the platform's CSPRNG
//! (`crypto.getRandomValues` in workerd, via getrandom's `wasm_js` backend).

use std::cell::RefCell;

thread_local! {
    /// Random bytes fetched 4 KiB at a time: one call into the platform's CSPRNG serves 256 ids
    /// instead of one per envelope.
    static POOL: RefCell<(Vec<u8>, usize)> = const { RefCell::new((Vec::new(), 0)) };
}

fn random_bytes<const N: usize>() -> [u8; N] {
    POOL.with(|pool| {
        let (buf, used) = &mut *pool.borrow_mut();
        if buf.len() < *used + N {
            buf.resize(4096, 0);
            if getrandom::fill(buf).is_err() {
                // getrandom cannot fail on workerd or Linux; if it ever did, ids must still be unique
                // enough not to collide within one user's hub.
                for chunk in buf.chunks_mut(16) {
                    let mut b = [0u8; 16];
                    fallback(&mut b);
                    chunk.copy_from_slice(&b[..chunk.len()]);
                }
            }
            *used = 0;
        }
        let mut out = [0u8; N];
        out.copy_from_slice(&buf[*used..*used + N]);
        *used += N;
        out
    })
}

/// A random UUID v4, e.g. `0f8fad5b-d9cb-469f-a165-70867728950e`.
pub fn uuid_v4() -> String {
    let mut b: [u8; 16] = random_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push(HEX[(byte >> 4) as usize] as char);
        s.push(HEX[(byte & 15) as usize] as char);
    }
    s
}

/// A random `u32` (for jitter).
pub fn random_u32() -> u32 {
    u32::from_le_bytes(random_bytes())
}

fn fallback(b: &mut [u8; 16]) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);
    let n = COUNTER.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
    b[..8].copy_from_slice(&n.to_le_bytes());
    b[8..].copy_from_slice(&n.rotate_left(29).wrapping_mul(0xbf58_476d_1ce4_e5b9).to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_shape_and_uniqueness() {
        let a = uuid_v4();
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"));
        let many: std::collections::HashSet<String> = (0..2000).map(|_| uuid_v4()).collect();
        assert_eq!(many.len(), 2000, "refills of the pool stay random");
        assert!(!many.contains(&a));
    }
}
