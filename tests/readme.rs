//! The README's commands run as written on a fresh Debian machine used as
//! root, which has no sudo.

use std::path::Path;

#[test]
fn readme_commands_name_scripts_that_exist_and_need_no_sudo() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(repo.join("README.md")).expect("README.md");
    // Commands are the indented lines.
    let commands: Vec<&str> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("    "))
        .map(str::trim)
        .collect();
    for command in &commands {
        assert!(
            !command.starts_with("sudo"),
            "README command {command:?} needs sudo"
        );
    }
    for script in ["scripts/demo.sh", "scripts/test.sh"] {
        assert!(
            commands.contains(&script),
            "README does not run {script} plainly: {commands:?}"
        );
        let meta = std::fs::metadata(repo.join(script)).expect(script);
        use std::os::unix::fs::PermissionsExt;
        assert!(
            meta.permissions().mode() & 0o111 != 0,
            "{script} is not executable"
        );
    }
}
