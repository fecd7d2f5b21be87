//! Linux implementation of the platform boundary.

pub mod actions;
pub mod collect;
pub mod exec;
pub mod info;
pub mod port;
