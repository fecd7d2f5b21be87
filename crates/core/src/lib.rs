//! infinibay's guest-facing core: discovers the per-VM sockets QEMU creates, connects to each
//! as a client, ingests what the guest agents send (every guest is hostile), stores it through
//! one writer, publishes it on a bus and sends commands to the guests. libvirt joins it later.
//!
//! Modules follow the data's path: [`discover`] finds sockets → `connection` (one task per
//! VM, private) reads them → [`ingest`] validates and turns messages into records →
//! [`store_writer`] (bounded queue, single writer) and [`bus`] (publication of
//! [`infinibay_control::event`]s) → consumers. [`commands`] goes the other way and writes the
//! command log. [`Core`] is the running whole; the API reaches it only through
//! [`infinibay_control::VmControl`], which it implements.
//!
//! **Architecture invariant:** a VM's identity is the uuid in its socket's file name; nothing
//! a guest sends can make data land under another VM. No connection task ever waits for
//! storage or for a bus consumer. Nothing here decides who may see or do what.
#![deny(missing_docs)]
// `unsafe` is allowed only where the core calls libc (who this process is, the open-files
// limit): `diag` and `system`.
#![deny(unsafe_code)]

pub use infinibay_control as control;
pub use infinibay_protocol as protocol;
pub use infinibay_store as store;

pub mod alerts;
pub mod backoff;
#[cfg(feature = "bench")]
pub mod bench;
pub mod bus;
pub mod commands;
pub mod config;
mod connection;
#[allow(unsafe_code)]
pub mod diag;
pub mod discover;
mod handle;
pub mod health;
pub mod ingest;
pub mod maintenance;
pub mod registry;
mod shared;
pub mod store_writer;
#[allow(unsafe_code)]
pub mod system;
mod telemetry;

pub use alerts::PowerState;
pub use bus::{Bus, InProcessBus};
pub use commands::PendingCommand;
pub use config::CoreConfig;
pub use handle::Core;
pub use infinibay_control::{
    BusEvent, Command, CommandError, CommandKind, CommandSpec, CoreStats, Filter, Subscription,
    Topic, VmControl, VmSnapshot, VmStats, VmTotals,
};
