//! Installed programs from the registry's Uninstall keys — what "Apps & features" lists — in
//! both views a 64-bit Windows keeps: the 64-bit programs' and the 32-bit ones'
//! (`WOW6432Node`).
//!
//! Shown as Windows shows them: an entry needs a `DisplayName`; `SystemComponent = 1`
//! entries and updates (those with a `ParentKeyName`) are left out.

use infinibay_protocol::message::Application;

use crate::platform::windows::registry::{HKEY_LOCAL_MACHINE, Key, View};

/// Where programs register.
pub const UNINSTALL_KEY: &str = r"SOFTWARE\Microsoft\Windows\CurrentVersion\Uninstall";

/// Every installed program, sorted by name, architecture, version.
pub fn installed_programs() -> Vec<Application> {
    let mut programs = Vec::new();
    for (view, architecture) in [(View::Bits64, "x64"), (View::Bits32, "x86")] {
        programs.extend(programs_in(UNINSTALL_KEY, view, architecture));
    }
    programs.sort_by(|a, b| {
        (&a.name, &a.architecture, &a.version).cmp(&(&b.name, &b.architecture, &b.version))
    });
    programs.dedup();
    programs
}

/// The programs under one Uninstall key in one view.
pub fn programs_in(path: &str, view: View, architecture: &str) -> Vec<Application> {
    let Ok(uninstall) = Key::open(HKEY_LOCAL_MACHINE, path, view) else {
        return Vec::new();
    };
    uninstall
        .subkeys()
        .into_iter()
        .filter_map(|sub| {
            let entry = Key::open(HKEY_LOCAL_MACHINE, &format!(r"{path}\{sub}"), view).ok()?;
            let name = entry.string("DisplayName")?.trim().to_owned();
            if name.is_empty()
                || entry.dword("SystemComponent") == Some(1)
                || entry.string("ParentKeyName").is_some()
            {
                return None;
            }
            Some(Application {
                name,
                version: entry
                    .string("DisplayVersion")
                    .map(|v| v.trim().to_owned())
                    .filter(|v| !v.is_empty()),
                // EstimatedSize is in kB.
                size_kb: entry.dword("EstimatedSize").map(u64::from),
                architecture: Some(architecture.into()),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A throwaway Uninstall-like key of our own (under HKLM\SOFTWARE\InfinibayTests).
    struct TestKey(String);

    impl Drop for TestKey {
        fn drop(&mut self) {
            let _ = Key::delete_tree(HKEY_LOCAL_MACHINE, &self.0);
        }
    }

    #[test]
    fn programs_need_a_name_and_hide_components_and_updates() {
        let root = format!(r"SOFTWARE\InfinibayTests\apps-{}", std::process::id());
        let _cleanup = TestKey(root.clone());
        let add = |sub: &str, values: &[(&str, &str)], dwords: &[(&str, u32)]| {
            let key = Key::create(HKEY_LOCAL_MACHINE, &format!(r"{root}\{sub}")).expect("create");
            for (n, v) in values {
                key.set_string(n, v, false).expect("set");
            }
            for (n, v) in dwords {
                key.set_dword(n, *v).expect("set");
            }
        };
        add(
            "{A}",
            &[("DisplayName", "Zeta Tool"), ("DisplayVersion", "2.1")],
            &[("EstimatedSize", 2048)],
        );
        add("alpha", &[("DisplayName", " Alpha ")], &[]);
        add(
            "hidden",
            &[("DisplayName", "Runtime part")],
            &[("SystemComponent", 1)],
        );
        add(
            "KB123",
            &[("DisplayName", "Update for Zeta"), ("ParentKeyName", "{A}")],
            &[],
        );
        add("noname", &[("DisplayVersion", "1")], &[]);
        let mut found = programs_in(&root, View::Bits64, "x64");
        found.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(
            found,
            vec![
                Application {
                    name: "Alpha".into(),
                    version: None,
                    size_kb: None,
                    architecture: Some("x64".into()),
                },
                Application {
                    name: "Zeta Tool".into(),
                    version: Some("2.1".into()),
                    size_kb: Some(2048),
                    architecture: Some("x64".into()),
                },
            ]
        );
    }
}
