//! infinibay host (being built; see issue "Host").
#![deny(missing_docs)]

pub use infinibay_protocol as protocol;
