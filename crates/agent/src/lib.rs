//! InfiniService guest agent (being built; see issue "Guest agent").
#![deny(missing_docs)]

pub use infinibay_protocol as protocol;
