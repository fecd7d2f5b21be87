//! InfiniService: the guest agent. It reads the guest's state from the OS (/proc and /sys on
//! Linux, Win32 on Windows), sends it to the infinibay host over a virtio-serial port, and runs
//! the host's commands under a policy.
//!
//! The modules follow the data's path:
//! [`channel`] (bytes to and from the host) → [`session`] (decode, dispatch, timers) →
//! [`commands`] (checked by [`policy`], run by [`exec`]) and the collectors in
//! [`platform`] → [`outbox`] (what waits to be written, and the backlog rule) → [`channel`].
//! [`app`], [`config`] and [`cli`] set it up; [`diagnose`] and [`snapshot`] are the one-shot
//! modes.
//!
//! **Architecture invariant:** everything OS-specific lives under [`platform`] (`linux`,
//! `windows`), behind one surface; the rest is portable and has no `cfg`.
#![deny(missing_docs)]

pub mod app;
pub mod channel;
pub mod cli;
pub mod commands;
pub mod config;
pub mod diagnose;
pub mod exec;
pub mod outbox;
pub mod platform;
pub mod policy;
pub mod session;
pub mod snapshot;

pub use infinibay_protocol as protocol;
