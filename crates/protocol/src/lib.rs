//! Wire protocol v1 between the InfiniService guest agent and the infinibay host.
//!
//! One JSON object per `\n`-terminated line over a virtio-serial port (a UNIX socket on the
//! host side). This crate owns everything both sides must agree on, and nothing else:
//!
//! - [`frame`]: line framing with a hard length limit and 0xFF resync;
//! - [`message`]: the typed messages, both directions;
//! - [`decode`]: bytes → messages, one error per bad line, never a panic;
//! - [`legacy`]: the original InfiniService agent's messages, read into the same model;
//! - [`sanitize`]: range checks and caps for data that came from a guest;
//! - [`samples`]: deterministic realistic messages for benchmarks, tests and the simulator.
//!
//! **Architecture invariant:** this crate does no I/O and depends on no runtime (no tokio,
//! no database, no HTTP). The specification is `docs/protocol.md`.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod decode;
pub mod frame;
pub mod legacy;
pub mod message;
pub mod samples;
pub mod sanitize;
pub mod time;

pub use decode::{
    DecodeError, DecoderStats, GuestStreamDecoder, HostStreamDecoder, decode_guest_line,
    decode_host_line, encode_line,
};
pub use frame::{DEFAULT_MAX_LINE, Frame, LineDecoder, RESYNC};
pub use message::{GuestMessage, HostMessage, PROTOCOL_VERSION};
pub use time::Timestamp;
