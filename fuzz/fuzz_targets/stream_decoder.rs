//! Feed arbitrary bytes, in chunks the input itself chooses, to both stream decoders and the
//! sanitiser. The decoders must never panic and never hold more than the line limit.
#![no_main]

use infinibay_protocol::sanitize::{Limits, sanitize};
use infinibay_protocol::{GuestStreamDecoder, HostStreamDecoder};
use libfuzzer_sys::fuzz_target;

const MAX_LINE: usize = 4096;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the chunk size, so the fuzzer explores chunk boundaries too.
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first).max(1);
    let limits = Limits::default();
    let mut guest = GuestStreamDecoder::new(MAX_LINE);
    let mut host = HostStreamDecoder::new(MAX_LINE);
    for piece in rest.chunks(chunk) {
        guest.decode(piece, |item| {
            if let Ok(mut message) = item {
                sanitize(&mut message, &limits);
            }
        });
        host.decode(piece, |_| {});
        assert!(guest.buffered() <= MAX_LINE);
        assert!(host.buffered() <= MAX_LINE);
    }
});
