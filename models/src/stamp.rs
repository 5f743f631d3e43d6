//! Content stamps for files that key caches on disk (the embedded default's export, the
//! trainer's teacher scores).

/// FNV-1a (64-bit) of `bytes`. Unlike std's `DefaultHasher` it is the same in every build
/// and toolchain, so a stamp written today still matches the same content tomorrow.
pub fn content_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::content_hash;

    #[test]
    fn matches_the_published_fnv1a_values() {
        // Reference values of the FNV-1a 64-bit test suite.
        assert_eq!(content_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(content_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(content_hash(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
