//! docs/MIGRATING.md tells PM2, Forever and Monit users which chatctl command replaces theirs:
//! every command of its side-by-side table runs here, in the table's order, against a real app,
//! and exits 0.

mod support;

use support::App;

/// The chatctl commands of the table under "## Commands, side by side", in order.
fn documented_commands() -> Vec<String> {
    let doc = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/MIGRATING.md");
    let text = std::fs::read_to_string(&doc).expect("docs/MIGRATING.md is missing");
    let section = text
        .split("## Commands, side by side")
        .nth(1)
        .expect("no 'Commands, side by side' section")
        .split("\n## ")
        .next()
        .unwrap_or_default();
    section
        .lines()
        .filter(|line| line.starts_with('|'))
        .filter_map(|row| {
            let last = row.trim_end_matches('|').rsplit('|').next()?.trim();
            let command = last.strip_prefix('`')?.strip_suffix('`')?;
            command.starts_with("chatctl ").then(|| command.to_owned())
        })
        .collect()
}

#[test]
fn every_command_of_the_migration_table_works() {
    let commands = documented_commands();
    assert!(
        commands.len() >= 15,
        "the table lost its commands: {commands:?}"
    );
    let app = App::new("chat");
    for command in &commands {
        let command = command.replace("127.0.0.1:3000", &app.listen());
        let args: Vec<&str> = command.split_whitespace().skip(1).collect();
        let output = app.run(&args);
        assert!(
            output.status.success(),
            "`{command}` (docs/MIGRATING.md) failed ({}):\n{}{}\nlog:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            app.log_text()
        );
    }
    assert!(
        app.listed().is_none(),
        "the table ends with delete: the app is gone"
    );
}
