//! Just enough QMP to stop a guest cleanly (`quit`) and to look at its screen (`screendump`).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::lines::LineStream;
use crate::{Error, Result};

pub(crate) struct Qmp {
    lines: LineStream,
}

impl Qmp {
    /// Connect, read the greeting and leave capabilities negotiation mode.
    pub(crate) fn connect(path: &Path, timeout: Duration) -> Result<Self> {
        let deadline = Instant::now() + timeout;
        let lines = LineStream::connect(path, deadline, "QMP")?;
        let mut qmp = Self { lines };
        // An asynchronous event (VNC_INITIALIZED was seen in a loaded run) may come first.
        loop {
            let greeting = qmp.read_json(deadline)?;
            if greeting.get("QMP").is_some() {
                break;
            }
            if greeting.get("event").is_none() {
                return Err(Error::protocol("QMP greeting", greeting.to_string()));
            }
        }
        qmp.execute("qmp_capabilities", deadline)?;
        Ok(qmp)
    }

    fn read_json(&mut self, deadline: Instant) -> Result<Value> {
        let line = self.lines.read_line(deadline)?;
        serde_json::from_slice(&line).map_err(|e| Error::protocol("QMP", e.to_string()))
    }

    /// Run `command`; asynchronous events that arrive meanwhile are skipped.
    pub(crate) fn execute(&mut self, command: &str, deadline: Instant) -> Result<Value> {
        self.execute_with(command, Value::Null, deadline)
    }

    /// Run `command` with `arguments` (a JSON object, or `Null` for none).
    pub(crate) fn execute_with(
        &mut self,
        command: &str,
        arguments: Value,
        deadline: Instant,
    ) -> Result<Value> {
        let request = if arguments.is_null() {
            json!({ "execute": command })
        } else {
            json!({ "execute": command, "arguments": arguments })
        };
        self.lines.send(format!("{request}\n").as_bytes())?;
        loop {
            let reply = self.read_json(deadline)?;
            if let Some(value) = reply.get("return") {
                return Ok(value.clone());
            }
            if let Some(error) = reply.get("error") {
                return Err(Error::Remote {
                    command: command.to_owned(),
                    class: error["class"].as_str().unwrap_or("?").to_owned(),
                    desc: error["desc"].as_str().unwrap_or("?").to_owned(),
                });
            }
        }
    }
}
