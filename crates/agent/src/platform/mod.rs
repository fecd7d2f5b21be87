//! The operating-system boundary. Everything that reads OS state, runs OS tools or talks to
//! the OS's service manager lives below this module; the rest of the agent is portable and has
//! no `cfg` of its own. Each OS module has the same surface:
//!
//! | module | what |
//! | --- | --- |
//! | `collect` | `Collector` (`system_metrics`, `process_snapshot`, the inventories, identification) and `Roots` |
//! | `channel`, `port` | finding and opening the port to the host; its events |
//! | `exec` | the process tree of a command (`Tree`), shells, how a child's exit reads |
//! | `actions` | what each safe action does (`commands::Work`) |
//! | `info` | `SystemInfo`, `OsInfo`, identification, the agent's CPU time |
//! | `diagnose` | the OS's part of `--diagnose` |
//! | `service` | config path, logging, shutdown signal, service install (Windows) |

pub(crate) mod rates;

#[cfg(target_os = "linux")]
pub mod linux;
#[cfg(target_os = "linux")]
pub use linux::*;

#[cfg(windows)]
pub mod windows;
#[cfg(windows)]
pub use windows::*;
