//! Linux implementation of the platform boundary.

pub mod collect;
