//! InfiniService: the guest agent. It reads the guest's state from /proc and /sys, sends it to
//! the infinibay host over a virtio-serial port, and runs the host's commands under a policy.
//!
//! The modules follow the data's path:
//! [`channel`] (bytes to and from the host) → [`session`] (decode, dispatch, timers) →
//! [`commands`] (checked by [`policy`], run by `platform::exec`) and the collectors in
//! [`platform`] → [`outbox`] (what waits to be written, and the backlog rule) → [`channel`].
//! [`config`] and [`cli`] set it up; [`diagnose`] and [`snapshot`] are the one-shot modes.
//!
//! **Architecture invariant:** everything OS-specific lives under [`platform`]; the rest is
//! portable. Only Linux exists today.
#![deny(missing_docs)]

pub mod channel;
pub mod cli;
pub mod commands;
pub mod config;
pub mod diagnose;
pub mod outbox;
pub mod platform;
pub mod policy;
pub mod session;
pub mod snapshot;

pub use infinibay_protocol as protocol;
