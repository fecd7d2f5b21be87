//! Linux implementation of the platform boundary.

pub mod actions;
pub mod channel;
pub mod collect;
pub mod diagnose;
pub mod exec;
pub mod info;
pub mod port;
pub mod service;
