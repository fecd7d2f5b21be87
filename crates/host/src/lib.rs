//! The `infinibay` binary's library: it composes the guest-facing core (`infinibay-core`) and
//! the user-facing API (`infinibay-api`) into one process — configuration, the command line,
//! `serve` (with `/healthz`), `demo` and `doctor` — or splits them over processes for
//! scale-out ([`roles`]: `infinibay node`, `infinibay api`, over NATS and PostgreSQL).
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub use infinibay_api as api;
pub use infinibay_cluster as cluster;
pub use infinibay_control as control;
pub use infinibay_core as core;
pub use infinibay_protocol as protocol;
pub use infinibay_store as store;

pub mod cli;
pub mod config;
pub mod console;
pub mod demo;
pub mod doctor;
pub mod http;
pub mod listener;
pub mod logging;
pub mod roles;
pub mod serve;

pub use config::Config;
