//! The operating-system boundary. Everything that reads OS state or runs OS tools lives below
//! this module; the rest of the agent is portable. Only Linux exists today; a `windows` module
//! can be added beside `linux` with the same surface.

#[cfg(target_os = "linux")]
pub mod linux;
#[cfg(target_os = "linux")]
pub use linux::*;
