//! Stable VM ids: the same seed and index give the same uuid on every run, so a rerun of the
//! simulator reuses the VMs the host already registered.

use uuid::Uuid;

/// splitmix64: a good 64-bit mixer, enough to spread (seed, index) over the uuid space.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The uuid (version 4 layout) of VM `index` under `seed`.
pub fn vm_uuid(seed: u64, index: u64) -> Uuid {
    let high = mix(seed ^ mix(index));
    let low = mix(high ^ index.rotate_left(32) ^ 0x5EED);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&high.to_be_bytes());
    bytes[8..].copy_from_slice(&low.to_be_bytes());
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn same_seed_and_index_give_the_same_uuid() {
        assert_eq!(vm_uuid(7, 42), vm_uuid(7, 42));
        assert_ne!(vm_uuid(7, 42), vm_uuid(8, 42));
        assert_eq!(vm_uuid(7, 42).get_version_num(), 4);
    }

    #[test]
    fn twenty_thousand_indices_give_distinct_uuids() {
        let ids: HashSet<_> = (0..20_000).map(|i| vm_uuid(1, i)).collect();
        assert_eq!(ids.len(), 20_000);
    }
}
