//! The command line's defaults and generated documents, driven through the real binary: the
//! default config path of every command, the man page rendered by groff, and the completion
//! scripts sourced into real bash, zsh and fish.
//!
//! The lists of commands and options are taken from the clap definitions themselves
//! (`CommandFactory`), so a new command or option that is not documented or completed fails.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use clap::CommandFactory;
use common::{bin, external};
use webprom_edge::cli::args::{Args, DEFAULT_CONFIG};

fn run(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The subcommands as defined (clap's own `help` is added only when the command is built).
fn subcommands() -> Vec<clap::Command> {
    Args::command().get_subcommands().cloned().collect()
}

/// The long options of `sub` as defined, with `--help` that clap adds to every command.
fn long_options(sub: &clap::Command) -> Vec<String> {
    let mut longs: Vec<String> = sub
        .get_arguments()
        .filter_map(|a| a.get_long())
        .map(|l| format!("--{l}"))
        .collect();
    longs.push("--help".to_owned());
    longs
}

#[test]
fn every_command_without_config_reads_the_default_path_and_exits_2_naming_it() {
    if Path::new(DEFAULT_CONFIG).exists() {
        eprintln!("SKIPPED: {DEFAULT_CONFIG} exists on this machine: the default would be read");
        return;
    }
    // One row per way of calling each command that reads the configuration.
    let rows: &[&[&str]] = &[
        &["run"],
        &["check-config"],
        &["investigate", "--ip", "192.0.2.1"],
        &["investigate", "--client", "-AAAAAAAAAAAAAAA"],
        &["erase", "--ip", "192.0.2.1"],
        &["erase", "--ip", "2001:db8::1", "--since", "2026-01-01"],
        &["keys"],
        &["certs"],
    ];
    for sub in subcommands() {
        if sub.get_arguments().any(|a| a.get_id() == "config") {
            assert!(
                rows.iter().any(|row| row[0] == sub.get_name()),
                "no row for `{}`, which takes --config",
                sub.get_name()
            );
        }
    }
    for row in rows {
        let out = run(row);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{row:?}: {stderr}");
        assert!(
            stderr.contains(&format!("cannot read config file {DEFAULT_CONFIG}")),
            "{row:?}: {stderr}"
        );
        assert!(stderr.contains("pass --config FILE"), "{row:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{row:?}: {}", text(&out.stdout));
    }
    assert!(!Path::new(DEFAULT_CONFIG).exists(), "a command created it");
}

#[test]
fn a_missing_config_given_with_config_is_named_without_the_default_hint() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let missing = missing.to_str().unwrap();
    let rows: &[&[&str]] = &[
        &["run", "--config", missing],
        &["check-config", "--config", missing],
        &["investigate", "--config", missing, "--ip", "192.0.2.1"],
        &["erase", "--config", missing, "--ip", "192.0.2.1"],
        &["keys", "--config", missing],
        &["certs", "--config", missing],
        // Given explicitly, even the default path is the operator's choice.
        &["keys", "--config", DEFAULT_CONFIG],
    ];
    for row in rows {
        let out = run(row);
        let stderr = text(&out.stderr);
        let path = row[row.iter().position(|a| *a == "--config").unwrap() + 1];
        assert_eq!(out.status.code(), Some(2), "{row:?}: {stderr}");
        assert!(
            stderr.contains(&format!("cannot read config file {path}")),
            "{row:?}: {stderr}"
        );
        assert!(!stderr.contains("pass --config"), "{row:?}: {stderr}");
    }
}

#[test]
fn every_command_that_reads_the_config_shows_the_default_path_in_its_help() {
    let mut checked = 0;
    for sub in subcommands() {
        if !sub.get_arguments().any(|a| a.get_id() == "config") {
            continue;
        }
        let out = run(&[sub.get_name(), "--help"]);
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{}", sub.get_name());
        assert!(
            stdout.contains(&format!("[default: {DEFAULT_CONFIG}]")),
            "{}: {stdout}",
            sub.get_name()
        );
        checked += 1;
    }
    assert_eq!(
        checked, 6,
        "run, check-config, investigate, erase, keys, certs"
    );
}

#[test]
fn the_generator_commands_document_how_to_install_their_output_in_their_help() {
    let rows = [
        ("man", "/usr/local/share/man/man1/webprom-edge.1"),
        (
            "completions",
            "/usr/local/share/bash-completion/completions/webprom-edge",
        ),
        (
            "completions",
            "/usr/local/share/zsh/site-functions/_webprom-edge",
        ),
        (
            "completions",
            "/usr/share/fish/vendor_completions.d/webprom-edge.fish",
        ),
    ];
    for (sub, expected) in rows {
        let out = run(&[sub, "--help"]);
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{sub}");
        assert!(stdout.contains(expected), "{sub}: {stdout}");
    }
}

/// groff's terminal output as plain text: overstruck bold (`N\bN`) and underline (`_\bN`)
/// reduced to the character.
fn plain(rendered: &str) -> String {
    let chars: Vec<char> = rendered.chars().collect();
    let mut out = String::with_capacity(chars.len());
    let mut i = 0;
    while i < chars.len() {
        if i + 1 < chars.len() && chars[i + 1] == '\u{8}' {
            i += 2;
            continue;
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// Letters and digits only, lower-cased: text compared across roff's typography and wrapping.
fn squashed(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

/// The man page as groff renders it for a terminal, checked to render without a warning.
fn rendered_man_page() -> Option<String> {
    if !external("groff", "groff-base") {
        return None;
    }
    let out = run(&["man"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with(".ie \\n(.g .ds Aq"));
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("webprom-edge.1");
    std::fs::write(&page, &out.stdout).unwrap();
    let groff = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-P-c"])
        .arg(&page)
        .env("MANWIDTH", "80")
        .output()
        .unwrap();
    assert_eq!(groff.status.code(), Some(0), "{}", text(&groff.stderr));
    assert_eq!(text(&groff.stderr), "", "groff warns");
    Some(plain(&text(&groff.stdout)))
}

/// The sections of a rendered page: each heading (a line starting at column 0, or indented
/// three columns for a subsection) with the text under it up to the next heading.
fn sections(page: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in page.lines().skip(1) {
        let indent = line.len() - line.trim_start().len();
        if !line.trim().is_empty() && (indent == 0 || indent == 3) {
            out.push((line.trim().to_owned(), String::new()));
        } else if let Some((_, body)) = out.last_mut() {
            body.push_str(line.trim());
            body.push('\n');
        }
    }
    out
}

fn section<'a>(sections: &'a [(String, String)], heading: &str) -> &'a str {
    sections
        .iter()
        .find(|(h, _)| h == heading)
        .map(|(_, body)| body.as_str())
        .unwrap_or_else(|| panic!("no section {heading:?} in the man page"))
}

#[test]
fn the_man_page_renders_without_warnings_and_documents_every_command_and_option() {
    let Some(page) = rendered_man_page() else {
        return;
    };
    let sections = sections(&page);
    let headings: Vec<&str> = sections.iter().map(|(h, _)| h.as_str()).collect();
    let top = [
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "OPTIONS",
        "COMMANDS",
        "FILES",
        "ENVIRONMENT",
        "SIGNALS",
        "EXIT STATUS",
        "SEE ALSO",
    ];
    let positions: Vec<usize> = top
        .iter()
        .map(|h| {
            headings
                .iter()
                .position(|x| x == h)
                .unwrap_or_else(|| panic!("no {h} in {headings:?}"))
        })
        .collect();
    assert!(positions.is_sorted(), "sections out of order: {headings:?}");

    let synopsis = section(&sections, "SYNOPSIS");
    for sub in subcommands() {
        let name = format!("webprom-edge {}", sub.get_name());
        assert!(
            synopsis.contains(&format!("{name} [")),
            "{name} not in SYNOPSIS"
        );
        let body = section(&sections, &name);
        let about = sub
            .get_about()
            .expect("every command has an about")
            .to_string();
        assert!(
            squashed(body).contains(&squashed(&about)),
            "{name}: about missing"
        );
        for arg in sub.get_arguments() {
            let help = arg
                .get_help()
                .unwrap_or_else(|| panic!("{name} {}: no help text", arg.get_id()))
                .to_string();
            assert!(
                squashed(body).contains(&squashed(&help)),
                "{name} {}: help {help:?} not in its section:\n{body}",
                arg.get_id()
            );
        }
        for long in long_options(&sub) {
            assert!(body.contains(&long), "{name}: {long} not in its section");
        }
        if sub.get_arguments().any(|a| a.get_id() == "config") {
            assert!(
                body.contains(&format!("[default: {DEFAULT_CONFIG}]")),
                "{name}: the default config path is not shown:\n{body}"
            );
        }
    }
    for possible in ["bash", "zsh", "fish", "elvish", "powershell"] {
        assert!(
            section(&sections, "webprom-edge completions").contains(possible),
            "{possible}"
        );
    }

    let description = squashed(section(&sections, "DESCRIPTION"));
    assert!(description.contains(&squashed(DEFAULT_CONFIG)));
    let files = section(&sections, "FILES");
    assert!(files.contains(DEFAULT_CONFIG), "{files}");
    for key in ["privacy.key_dir", "access_log.dir", "tls.cert"] {
        assert!(files.contains(key), "{key}: {files}");
    }
    let environment = section(&sections, "ENVIRONMENT");
    assert!(environment.contains("WEBPROM_EDGE_LOG"), "{environment}");
    let signals = section(&sections, "SIGNALS");
    for signal in ["SIGHUP", "SIGTERM", "SIGINT", "server.shutdown_grace"] {
        assert!(signals.contains(signal), "{signal}: {signals}");
    }
    let exit = section(&sections, "EXIT STATUS");
    for (status, meaning) in [("0", "Success"), ("1", "run time"), ("2", "Bad usage")] {
        let line = exit
            .lines()
            .find(|l| l.starts_with(&format!("{status} ")))
            .unwrap_or_else(|| panic!("no exit status {status}: {exit}"));
        assert!(line.contains(meaning), "{line}");
    }
    assert!(section(&sections, "SEE ALSO").contains("docs/policy.md"));
}

/// The completion script for `shell`, written to a file in `dir`.
fn completion_script(shell: &str, dir: &Path) -> std::path::PathBuf {
    let out = run(&["completions", shell]);
    assert_eq!(out.status.code(), Some(0), "{shell}: {}", text(&out.stderr));
    let script = text(&out.stdout);
    for sub in subcommands() {
        assert!(
            script.contains(sub.get_name()),
            "{shell}: {}",
            sub.get_name()
        );
    }
    let path = dir.join(format!("webprom-edge.{shell}"));
    std::fs::write(&path, script).unwrap();
    path
}

#[test]
fn every_shell_gets_a_completion_script_naming_every_command() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        completion_script(shell, dir.path());
    }
    let out = run(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2), "an unknown shell is bad usage");
}

/// What bash's completion function offers for `words`, the last being the word completed.
fn bash_complete(script: &Path, words: &[&str]) -> Vec<String> {
    let driver = r#"
        source "$1"; shift
        f=$(complete -p webprom-edge | sed -E 's/.* -F ([^ ]+) .*/\1/')
        COMP_WORDS=("$@")
        COMP_CWORD=$(( $# - 1 ))
        COMP_LINE="$*"
        COMP_POINT=${#COMP_LINE}
        "$f" webprom-edge "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}" 2>/dev/null
        printf '%s\n' "${COMPREPLY[@]}"
    "#;
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", driver, "bash"])
        .arg(script)
        .args(words)
        .output()
        .unwrap();
    assert!(out.status.success(), "{words:?}: {}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Rows of (words typed, the last being completed; offered; not offered).
fn completion_rows(config: &str) -> Vec<(Vec<String>, Vec<String>, Vec<String>)> {
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut rows = vec![
        (
            strings(&["webprom-edge", "ch"]),
            strings(&["check-config"]),
            strings(&["run", "keys"]),
        ),
        (
            strings(&["webprom-edge", "investigate", "--"]),
            strings(&["--ip", "--client", "--since", "--until", "--config"]),
            strings(&["--version"]),
        ),
        (
            strings(&["webprom-edge", "erase", "--"]),
            strings(&["--ip", "--since", "--until", "--config"]),
            strings(&["--client"]),
        ),
        (
            strings(&["webprom-edge", "keys", "--c"]),
            strings(&["--config"]),
            strings(&["--help"]),
        ),
        (
            strings(&["webprom-edge", "completions", ""]),
            strings(&["bash", "zsh", "fish", "elvish", "powershell"]),
            strings(&["tcsh"]),
        ),
        (
            strings(&[
                "webprom-edge",
                "run",
                "--config",
                &config[..config.len() - 4],
            ]),
            vec![config.to_owned()],
            vec![],
        ),
    ];
    // Every command after the program's name, and every long option after each command.
    rows.push((
        strings(&["webprom-edge", ""]),
        subcommands()
            .iter()
            .map(|s| s.get_name().to_owned())
            .collect(),
        vec![],
    ));
    for sub in subcommands() {
        rows.push((
            strings(&["webprom-edge", sub.get_name(), "--"]),
            long_options(&sub),
            vec![],
        ));
    }
    rows
}

fn check_offers(
    shell: &str,
    words: &[String],
    offered: &[String],
    want: &[String],
    not: &[String],
) {
    for w in want {
        assert!(
            offered.contains(w),
            "{shell} {words:?}: {w} not in {offered:?}"
        );
    }
    for n in not {
        assert!(
            !offered.contains(n),
            "{shell} {words:?}: {n} in {offered:?}"
        );
    }
}

#[test]
fn bash_completes_commands_options_and_values() {
    if !external("bash", "bash") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = completion_script("bash", dir.path());
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "").unwrap();
    for (words, want, not) in completion_rows(config.to_str().unwrap()) {
        let words_ref: Vec<&str> = words.iter().map(String::as_str).collect();
        let offered = bash_complete(&script, &words_ref);
        check_offers("bash", &words, &offered, &want, &not);
    }
}

#[test]
fn fish_reads_its_completion_script_and_completes_commands_options_and_values() {
    if !external("fish", "fish") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = completion_script("fish", dir.path());
    let check = Command::new("fish")
        .arg("--no-execute")
        .arg(&script)
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", text(&check.stderr));
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "").unwrap();
    for (words, want, not) in completion_rows(config.to_str().unwrap()) {
        // fish completes the command line as typed: `complete -C` with the words joined.
        let line = words.join(" ");
        let out = Command::new("fish")
            .args(["--no-config", "-c", "source $argv[1]; complete -C $argv[2]"])
            .arg(&script)
            .arg(&line)
            .output()
            .unwrap();
        assert!(out.status.success(), "{line}: {}", text(&out.stderr));
        let offered: Vec<String> = text(&out.stdout)
            .lines()
            .map(|l| l.split('\t').next().unwrap_or("").to_owned())
            .collect();
        check_offers("fish", &words, &offered, &want, &not);
    }
}

#[test]
fn zsh_reads_its_completion_script() {
    if !external("zsh", "zsh") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = completion_script("zsh", dir.path());
    let check = Command::new("zsh")
        .args(["--no-rcs", "-n"])
        .arg(&script)
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", text(&check.stderr));
    // Loaded as zsh loads a completion function from fpath: it defines `_webprom-edge` and
    // binds it to the command.
    let load = Command::new("zsh")
        .args([
            "--no-rcs",
            "-c",
            "autoload -Uz compinit && compinit -D -u && source $1 && \
             print -r -- ${_comps[webprom-edge]} && whence -w _webprom-edge",
            "zsh",
        ])
        .arg(&script)
        .output()
        .unwrap();
    let stdout = text(&load.stdout);
    assert!(load.status.success(), "{}{stdout}", text(&load.stderr));
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["_webprom-edge", "_webprom-edge: function"],
        "{}",
        text(&load.stderr)
    );
}

#[test]
fn a_reader_that_stops_reading_ends_the_output_quietly() {
    // Each command that prints on stdout, its reader gone before the first byte (`| head`
    // after it read enough): EPIPE ends the output with status 0, never a panic (status 101)
    // or an error message.
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.toml");
    let config = config.to_str().expect("UTF-8 path");
    let rows: [&[&str]; 5] = [
        &["check-config", "--config", config],
        &["man"],
        &["completions", "bash"],
        &["completions", "zsh"],
        &["completions", "fish"],
    ];
    for args in rows {
        let mut child = Command::new(bin())
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn the binary");
        // The read end closes while the child is still starting.
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("wait for the binary");
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "{args:?}: {stderr}"
        );
    }
}
