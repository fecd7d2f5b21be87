//! infinibay host: discovers the per-VM sockets QEMU creates, connects to each as a client,
//! ingests what the guest agents send (every guest is hostile), stores it, publishes it on a
//! bus and sends commands to the guests.
//!
//! Modules follow the data's path: [`discover`] finds sockets → [`connection`] (one task per
//! VM, private) reads them → [`ingest`] validates and turns messages into records →
//! [`store_writer`] (bounded queue, single writer) and [`bus`] (publication of [`event`]s) →
//! consumers. [`commands`] goes the other way. [`host::Host`] is the handle the API uses.
//!
//! **Architecture invariant:** a VM's identity is the uuid in its socket's file name; nothing
//! a guest sends can make data land under another VM. No connection task ever waits for
//! storage or for a bus consumer.
#![deny(missing_docs)]

pub use infinibay_protocol as protocol;
pub use infinibay_store as store;

pub mod api;
pub mod backoff;
#[cfg(feature = "bench")]
pub mod bench;
pub mod bus;
pub mod cli;
pub mod command;
pub mod commands;
pub mod config;
mod connection;
pub mod demo;
pub mod diag;
pub mod discover;
pub mod doctor;
pub mod event;
pub mod health;
pub mod host;
pub mod http;
pub mod ingest;
pub mod maintenance;
pub mod registry;
pub mod serve;
mod shared;
pub mod store_writer;
pub mod system;
pub mod users;

pub use bus::{Bus, InProcessBus};
pub use command::{Command, CommandError};
pub use commands::PendingCommand;
pub use config::Config;
pub use event::{BusEvent, Filter, Subscription, Topic};
pub use host::{Host, HostStats};
pub use registry::{VmSnapshot, VmStats, VmTotals};
