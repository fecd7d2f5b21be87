//! InfiniService guest agent (being built).
#![deny(missing_docs)]

pub mod platform;

pub use infinibay_protocol as protocol;
